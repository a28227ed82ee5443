//! The mock's answers, shaped like Ollama's and OpenAI's (see `shared/reference/wire-formats.md`):
//! field names, nesting, nanosecond durations and token counts. Replies are a pure function of
//! the request, so tests can predict them; a structured answer's text comes from
//! [`structured`].

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::structured;

/// The inference endpoints the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OpenAiChat,
    OpenAiEmbeddings,
}

impl Endpoint {
    pub fn is_openai(self) -> bool {
        matches!(self, Endpoint::OpenAiChat | Endpoint::OpenAiEmbeddings)
    }
}

/// The text the request asks about: the last message, the prompt, or the first input.
pub fn prompt_text(endpoint: Endpoint, request: &Value) -> String {
    let text = match endpoint {
        Endpoint::OllamaChat | Endpoint::OpenAiChat => request["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .map(|message| &message["content"]),
        Endpoint::OllamaGenerate => Some(&request["prompt"]),
        Endpoint::OllamaEmbed | Endpoint::OpenAiEmbeddings => Some(&request["input"]),
    };
    match text {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Token counts are words: close enough for throughput figures, and predictable.
fn tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

/// The assistant's text for a prompt: names the model and echoes the prompt's first words.
pub fn reply_text(model: &str, prompt: &str) -> String {
    let echo: Vec<&str> = prompt.split_whitespace().take(12).collect();
    format!("Mock reply from {model}: {}", echo.join(" "))
}

/// A deterministic unit vector for an input text.
fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut values: Vec<f32> = (0..dimensions)
        .map(|index| {
            let mut hasher = DefaultHasher::new();
            (text, index).hash(&mut hasher);
            (hasher.finish() % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = values
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    values.iter_mut().for_each(|v| *v /= norm);
    values
}

fn embed_inputs(request: &Value) -> Vec<String> {
    match &request["input"] {
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().unwrap_or_default().to_owned())
            .collect(),
        Value::String(text) => vec![text.clone()],
        _ => vec![String::new()],
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The context `request` asks for (Ollama's `options.num_ctx`), else Ollama's default.
pub fn num_ctx(request: &Value) -> u64 {
    request["options"]["num_ctx"]
        .as_u64()
        .filter(|context| *context > 0)
        .unwrap_or(crate::backend::preflight::DEFAULT_NUM_CTX)
}

/// The successful answer to `request` at `endpoint`, having spent `elapsed` in a slot.
pub fn success(
    endpoint: Endpoint,
    model: &str,
    request: &Value,
    elapsed: Duration,
    load: Option<Duration>,
    dimensions: usize,
) -> Value {
    let prompt = prompt_text(endpoint, request);
    let text = || match structured::requested_format(request) {
        Some(schema) => structured::structured_text(&schema, &prompt, &reply_text(model, &prompt)),
        None => reply_text(model, &prompt),
    };
    let total = nanos(elapsed);
    // A warm model answers with a load of a hundredth of its time (tens of microseconds).
    let load = load.map_or(total / 100, nanos);
    let prompt_eval = total.saturating_sub(load) / 5;
    let now = SystemTime::now();
    let created_at = humantime::format_rfc3339_nanos(now).to_string();
    let created = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match endpoint {
        Endpoint::OllamaChat | Endpoint::OllamaGenerate => {
            let content = text();
            let mut reply = json!({
                "model": model,
                "created_at": created_at,
                "done": true,
                "done_reason": "stop",
                "total_duration": total,
                "load_duration": load,
                // Ollama cuts a prompt longer than the context, and counts what it kept.
                "prompt_eval_count": tokens(&prompt).min(num_ctx(request)),
                "prompt_eval_duration": prompt_eval,
                "eval_count": tokens(&content),
                "eval_duration": total.saturating_sub(load).saturating_sub(prompt_eval),
            });
            if endpoint == Endpoint::OllamaChat {
                reply["message"] = json!({"role": "assistant", "content": content});
            } else {
                reply["response"] = Value::String(content);
                reply["context"] = json!([1, 2, 3]);
            }
            reply
        }
        Endpoint::OllamaEmbed => {
            let inputs = embed_inputs(request);
            json!({
                "model": model,
                "embeddings": inputs.iter().map(|text| embedding(text, dimensions)).collect::<Vec<_>>(),
                "total_duration": total,
                "load_duration": load,
                "prompt_eval_count": inputs.iter().map(|text| tokens(text)).sum::<u64>(),
            })
        }
        Endpoint::OpenAiChat => {
            let content = text();
            let (prompt_tokens, completion_tokens) = (tokens(&prompt), tokens(&content));
            json!({
                "id": format!("chatcmpl-{}", fastrand::u32(..)),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            })
        }
        Endpoint::OpenAiEmbeddings => {
            let inputs = embed_inputs(request);
            let prompt_tokens: u64 = inputs.iter().map(|text| tokens(text)).sum();
            json!({
                "object": "list",
                "data": inputs.iter().enumerate().map(|(index, text)| json!({
                    "object": "embedding",
                    "embedding": embedding(text, dimensions),
                    "index": index,
                })).collect::<Vec<_>>(),
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            })
        }
    }
}

/// An error body in the dialect of the endpoint: Ollama's `{"error": "…"}` or OpenAI's
/// `{"error": {"message", "type", …}}`.
pub fn error(endpoint: Option<Endpoint>, message: &str) -> Value {
    if endpoint.is_some_and(Endpoint::is_openai) {
        json!({"error": {"message": message, "type": "api_error", "param": null, "code": null}})
    } else {
        json!({"error": message})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_reply_has_ollama_fields() {
        let request =
            json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]});
        let reply = success(
            Endpoint::OllamaChat,
            "m",
            &request,
            Duration::from_millis(50),
            None,
            4,
        );
        assert_eq!(
            reply["message"]["content"],
            "Mock reply from m: hello there"
        );
        assert_eq!(reply["done"], true);
        assert_eq!(reply["total_duration"], 50_000_000);
        assert_eq!(reply["prompt_eval_count"], 2);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let request = json!({"model": "e", "input": ["a", "b"]});
        let reply = success(
            Endpoint::OllamaEmbed,
            "e",
            &request,
            Duration::ZERO,
            None,
            8,
        );
        let first: Vec<f64> =
            serde_json::from_value(reply["embeddings"][0].clone()).expect("floats");
        assert_eq!(first.len(), 8);
        let norm: f64 = first.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert_eq!(
            reply,
            success(
                Endpoint::OllamaEmbed,
                "e",
                &request,
                Duration::ZERO,
                None,
                8
            )
        );
    }
}
