//! What batchflow reads from a model server's answer, in Ollama's native shape or OpenAI's:
//! the assistant text, the stop reason, token counts, server timings and the first embedding.
//! One parse per outcome serves the results columns and the run statistics.

use serde::Deserialize;

use crate::item::{Outcome, ReplyBody};

/// The fields of an answer that batchflow uses. Unknown fields are ignored; a body that does not
/// parse gives all `None`.
#[derive(Debug, Default, Deserialize)]
pub struct ReplyFields {
    pub model: Option<String>,
    message: Option<ChatMessage>,
    response: Option<String>,
    choices: Option<Vec<Choice>>,
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    usage: Option<Usage>,
    pub total_duration: Option<u64>,
    pub load_duration: Option<u64>,
    pub prompt_eval_duration: Option<u64>,
    pub eval_duration: Option<u64>,
    embeddings: Option<Vec<Vec<f32>>>,
    data: Option<Vec<EmbeddingItem>>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Option<ChatMessage>,
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
}

impl ReplyFields {
    /// Reads a JSON body; anything unreadable gives empty fields.
    pub fn parse(json: &str) -> ReplyFields {
        serde_json::from_str(json).unwrap_or_default()
    }

    /// The fields of an outcome's last answer (empty without a JSON answer). The sink thread
    /// calls this once per outcome and hands the result to the statistics and every sink.
    pub fn of(outcome: &Outcome) -> ReplyFields {
        match outcome.reply.as_ref().map(|reply| &reply.body) {
            Some(ReplyBody::Json(json)) => ReplyFields::parse(json.get()),
            _ => ReplyFields::default(),
        }
    }

    fn first_choice(&self) -> Option<&Choice> {
        self.choices.as_ref().and_then(|choices| choices.first())
    }

    /// Ollama `message.content` or `response`, OpenAI `choices[0].message.content` or `text`.
    pub fn content(&self) -> Option<&str> {
        self.message
            .as_ref()
            .and_then(|message| message.content.as_deref())
            .or(self.response.as_deref())
            .or_else(|| {
                self.first_choice().and_then(|choice| {
                    choice
                        .message
                        .as_ref()
                        .and_then(|message| message.content.as_deref())
                        .or(choice.text.as_deref())
                })
            })
    }

    /// Ollama `done_reason` or OpenAI `finish_reason`.
    pub fn done_reason(&self) -> Option<&str> {
        self.done_reason.as_deref().or_else(|| {
            self.first_choice()
                .and_then(|choice| choice.finish_reason.as_deref())
        })
    }

    pub fn prompt_tokens(&self) -> Option<u64> {
        self.prompt_eval_count
            .or_else(|| self.usage.as_ref().and_then(|usage| usage.prompt_tokens))
    }

    pub fn completion_tokens(&self) -> Option<u64> {
        self.eval_count.or_else(|| {
            self.usage
                .as_ref()
                .and_then(|usage| usage.completion_tokens)
        })
    }

    /// The first embedding of `/api/embed` or `/v1/embeddings`.
    pub fn embedding(&self) -> Option<&[f32]> {
        self.embeddings
            .as_ref()
            .and_then(|embeddings| embeddings.first())
            .or_else(|| {
                self.data
                    .as_ref()
                    .and_then(|data| data.first())
                    .map(|item| &item.embedding)
            })
            .map(Vec::as_slice)
    }
}
