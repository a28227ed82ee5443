//! Records into requests: a pipeline's `[request]` section applied to each record (a JSONL
//! object or a Parquet row), giving an OpenAI Batch request that then goes through the same
//! checks as a request line.
//!
//! Prompts are templates with `{{column}}` placeholders. The `custom_id` comes from a chosen
//! column, or is derived from the record's content so that it is stable across runs (resume
//! needs that).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::schema::OutputSchema;

/// A prompt with `{{column}}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                format!(
                    "a placeholder opened with {{{{ is never closed: {:?}",
                    &rest[start..]
                )
            })?;
            let column = after[..end].trim();
            if column.is_empty() {
                return Err("an empty placeholder {{}}".into());
            }
            parts.push(Part::Column(column.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The columns the template reads, in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Column(column) => Some(column.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders. Strings go in as they are, other values as JSON, null as
    /// nothing; a missing column is an error naming it.
    pub fn render(&self, record: &Map<String, Value>) -> Result<String, String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(literal) => text.push_str(literal),
                Part::Column(column) => match record.get(column) {
                    Some(Value::String(value)) => text.push_str(value),
                    Some(Value::Null) => {}
                    Some(value) => text.push_str(&value.to_string()),
                    None => {
                        return Err(format!(
                            "the record has no column {column:?} (used in the prompt)"
                        ));
                    }
                },
            }
        }
        Ok(text)
    }
}

/// How each record becomes a request.
#[derive(Debug, Clone)]
pub struct RecordShape {
    /// Path on the backend: `/api/chat`, `/api/generate`, `/api/embed`,
    /// `/v1/chat/completions` or `/v1/embeddings`.
    pub endpoint: String,
    pub model: String,
    pub system: Option<String>,
    pub prompt: Template,
    /// Ollama `options` (temperature, num_ctx, seed, …); top-level fields for `/v1` endpoints.
    pub options: Map<String, Value>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub output: Option<Arc<OutputSchema>>,
    /// The column holding each record's custom_id; `None` derives one from the content.
    pub id_column: Option<String>,
    /// Columns copied into the results, in this order.
    pub passthrough: Vec<String>,
}

/// A record turned into request form, with its passthrough values.
pub struct Shaped {
    pub request: Value,
    pub passthrough: Vec<Value>,
}

impl RecordShape {
    /// The columns a record must have.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self.prompt.columns().collect();
        columns.extend(self.id_column.as_deref());
        columns.extend(self.passthrough.iter().map(String::as_str));
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// The request for one record, or why there is none (without the position: the caller
    /// names the line or row).
    pub fn shape(&self, record: Value) -> Result<Shaped, (Option<String>, String)> {
        let Value::Object(record) = record else {
            return Err((None, "a record must be a JSON object".into()));
        };
        let custom_id = match &self.id_column {
            Some(column) => match record.get(column) {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(id)) => id.to_string(),
                Some(other) => {
                    return Err((
                        None,
                        format!("the id column {column:?} holds {other}, not a string or number"),
                    ));
                }
                None => return Err((None, format!("the record has no id column {column:?}"))),
            },
            None => content_id(&record),
        };
        let prompt = self
            .prompt
            .render(&record)
            .map_err(|why| (Some(custom_id.clone()), why))?;
        let passthrough = self
            .passthrough
            .iter()
            .map(|column| record.get(column).cloned().unwrap_or(Value::Null))
            .collect();
        Ok(Shaped {
            request: json!({
                "custom_id": custom_id,
                "method": "POST",
                "url": self.endpoint,
                "body": self.body(prompt),
            }),
            passthrough,
        })
    }

    fn body(&self, prompt: String) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        let openai = self.endpoint.starts_with("/v1/");
        let messages = || {
            let mut messages = Vec::new();
            if let Some(system) = &self.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            Value::Array(messages)
        };
        match self.endpoint.as_str() {
            "/api/embed" | "/v1/embeddings" => {
                body.insert("input".into(), Value::String(prompt.clone()));
            }
            "/api/generate" => {
                body.insert("prompt".into(), Value::String(prompt.clone()));
                if let Some(system) = &self.system {
                    body.insert("system".into(), Value::String(system.clone()));
                }
            }
            _ => {
                body.insert("messages".into(), messages());
            }
        }
        if openai {
            for (key, value) in &self.options {
                body.insert(key.clone(), value.clone());
            }
        } else if !self.options.is_empty() {
            body.insert("options".into(), Value::Object(self.options.clone()));
        }
        if let Some(keep_alive) = &self.keep_alive {
            body.insert("keep_alive".into(), keep_alive.clone());
        }
        if let Some(think) = &self.think {
            body.insert("think".into(), think.clone());
        }
        if let Some(output) = &self.output {
            if openai {
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": output.json}}),
                );
            } else {
                body.insert("format".into(), output.json.clone());
            }
        }
        Value::Object(body)
    }
}

/// A custom_id from the record's content: the same record gives the same id on every run.
fn content_id(record: &Map<String, Value>) -> String {
    let mut hasher = DefaultHasher::new();
    Value::Object(record.clone()).to_string().hash(&mut hasher);
    format!("rec-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(endpoint: &str, id_column: Option<&str>) -> RecordShape {
        RecordShape {
            endpoint: endpoint.into(),
            model: "llama3.2".into(),
            system: Some("Be brief.".into()),
            prompt: Template::parse("Rate {{name}} ({{years}} years)").expect("template"),
            options: Map::from_iter([("temperature".to_owned(), json!(0))]),
            keep_alive: Some(json!("30m")),
            think: None,
            output: None,
            id_column: id_column.map(str::to_owned),
            passthrough: vec!["name".into()],
        }
    }

    #[test]
    fn templates_fill_placeholders_and_name_missing_columns() {
        let template = Template::parse("Hi {{ name }}, {{n}}{{gone}}!").expect("parses");
        assert_eq!(
            template.columns().collect::<Vec<_>>(),
            ["name", "n", "gone"]
        );
        let record = json!({"name": "Ada", "n": 3, "gone": null});
        assert_eq!(
            template
                .render(record.as_object().expect("object"))
                .expect("renders"),
            "Hi Ada, 3!"
        );
        let error = template
            .render(json!({"name": "x"}).as_object().expect("object"))
            .expect_err("missing");
        assert!(error.contains("\"n\""), "{error}");
        assert!(Template::parse("{{open").is_err());
    }

    #[test]
    fn records_become_native_and_openai_requests() {
        let record = json!({"id": 42, "name": "Ada", "years": 7});
        let native = shape("/api/chat", Some("id"))
            .shape(record.clone())
            .expect("shapes");
        assert_eq!(native.request["custom_id"], "42");
        assert_eq!(
            native.request["body"]["messages"][1]["content"],
            "Rate Ada (7 years)"
        );
        assert_eq!(native.request["body"]["options"]["temperature"], 0);
        assert_eq!(native.request["body"]["keep_alive"], "30m");
        assert_eq!(native.passthrough, vec![json!("Ada")]);
        let openai = shape("/v1/chat/completions", Some("id"))
            .shape(record.clone())
            .expect("shapes");
        assert_eq!(openai.request["body"]["temperature"], 0);
        let generated = shape("/api/generate", None)
            .shape(record.clone())
            .expect("shapes");
        let again = shape("/api/generate", None).shape(record).expect("shapes");
        assert_eq!(
            generated.request["custom_id"], again.request["custom_id"],
            "stable ids"
        );
        assert_eq!(generated.request["body"]["system"], "Be brief.");
    }
}
