//! Preflight: before any input is read, find out what answers at the backend URL (Ollama or an
//! OpenAI-compatible server) and which models it holds, so a typo in a URL or a model name costs
//! one clear message instead of a batch of identical error lines.

use std::collections::HashSet;

use serde_json::Value;

use super::BackendError;
use super::http::{GetFailure, HttpBackend};
use crate::paths::Knobs;

/// What kind of server answers at the backend URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    Ollama { version: String },
    OpenAiCompatible,
}

/// Ollama's context when a request sets no `num_ctx` (0.6 and later).
pub const DEFAULT_NUM_CTX: u64 = 4096;

/// The name Ollama gives `model` when it has no tag (`llama3.2` is `llama3.2:latest`); `None`
/// for a tagged name.
pub fn latest_tagged(model: &str) -> Option<String> {
    (!model.contains(':')).then(|| format!("{model}:latest"))
}

/// The models a server holds, for checking names before sending.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    kind: ServerKind,
    names: HashSet<String>,
}

impl ModelCatalog {
    /// Whether the server has `model`. For Ollama a name without a tag means `:latest`.
    pub fn has(&self, model: &str) -> bool {
        if self.names.contains(model) {
            return true;
        }
        matches!(self.kind, ServerKind::Ollama { .. })
            && latest_tagged(model).is_some_and(|tagged| self.names.contains(&tagged))
    }

    /// The error for a missing model, listing what the server does have.
    pub fn missing(&self, url: &str, model: &str) -> BackendError {
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        names.sort_unstable();
        let available = if names.is_empty() {
            "no models at all".to_owned()
        } else {
            names.join(", ")
        };
        BackendError::ModelMissing {
            url: url.to_owned(),
            model: model.to_owned(),
            available,
        }
    }

    pub fn kind(&self) -> &ServerKind {
        &self.kind
    }

    /// The models of several servers together: a model is there if any of them has it (an
    /// untagged name means `:latest` if any of them is Ollama).
    pub fn merged<'a>(
        catalogs: impl IntoIterator<Item = &'a ModelCatalog>,
    ) -> Option<ModelCatalog> {
        let mut catalogs = catalogs.into_iter();
        let mut merged = catalogs.next()?.clone();
        for catalog in catalogs {
            merged.names.extend(catalog.names.iter().cloned());
            if let ServerKind::Ollama { .. } = catalog.kind {
                merged.kind = catalog.kind.clone();
            }
        }
        Some(merged)
    }
}

/// Identifies the server and fetches its model list.
pub async fn check(backend: &HttpBackend, knobs: &Knobs) -> Result<ModelCatalog, BackendError> {
    let kind = detect(backend, knobs).await?;
    let (path, list_key, name_key) = match kind {
        ServerKind::Ollama { .. } => ("/api/tags", "models", "name"),
        ServerKind::OpenAiCompatible => ("/v1/models", "data", "id"),
    };
    let unreachable = |cause: String| BackendError::Unreachable {
        url: backend.base_url().to_owned(),
        cause,
    };
    let (status, body) = backend
        .get(path)
        .await
        .map_err(|failure| unreachable(failure.chain))?;
    if status != 200 {
        return Err(unreachable(format!("GET {path} answered HTTP {status}")));
    }
    let listing: Value = serde_json::from_slice(&body)
        .map_err(|error| unreachable(format!("GET {path} did not answer JSON ({error})")))?;
    let names = listing[list_key]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|model| model[name_key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(ModelCatalog { kind, names })
}

async fn detect(backend: &HttpBackend, knobs: &Knobs) -> Result<ServerKind, BackendError> {
    let url = backend.base_url().to_owned();
    let unreachable = |failure: GetFailure| match failure.no_connection {
        // The first contact: most often no server was started, or the URL points elsewhere.
        Some(cause) => BackendError::NoServer {
            url: url.clone(),
            cause,
            knob: knobs.backend.clone(),
        },
        None => BackendError::Unreachable {
            url: url.clone(),
            cause: failure.chain,
        },
    };
    let (ollama_status, body) = backend.get("/api/version").await.map_err(unreachable)?;
    if ollama_status == 200 {
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) {
            if let Some(Value::String(version)) = fields.get("version") {
                return Ok(ServerKind::Ollama {
                    version: version.clone(),
                });
            }
        }
    }
    let (openai_status, _) = backend.get("/v1/models").await.map_err(unreachable)?;
    match openai_status {
        200 => Ok(ServerKind::OpenAiCompatible),
        401 | 403 => Err(BackendError::Unrecognised {
            url,
            detail: format!(
                "GET /v1/models answered HTTP {openai_status}: the API key is missing or refused (see {})",
                knobs.api_key_env
            ),
        }),
        _ => Err(BackendError::Unrecognised {
            url,
            detail: format!(
                "GET /api/version answered HTTP {ollama_status} and GET /v1/models HTTP {openai_status} (turn preflight off with {} to send anyway)",
                knobs.no_preflight
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_names_without_a_tag_mean_latest() {
        let catalog = ModelCatalog {
            kind: ServerKind::Ollama {
                version: "0".into(),
            },
            names: HashSet::from(["llama3.2:latest".to_owned(), "qwen3:8b".to_owned()]),
        };
        assert!(catalog.has("llama3.2"));
        assert!(catalog.has("llama3.2:latest"));
        assert!(!catalog.has("qwen3"));
        let message = catalog.missing("http://h:1", "qwen3").to_string();
        assert!(message.contains("llama3.2:latest, qwen3:8b"), "{message}");
    }

    #[test]
    fn merged_catalogs_have_what_any_server_has() {
        let openai = ModelCatalog {
            kind: ServerKind::OpenAiCompatible,
            names: HashSet::from(["gpt-small".to_owned()]),
        };
        let ollama = ModelCatalog {
            kind: ServerKind::Ollama {
                version: "0".into(),
            },
            names: HashSet::from(["llama3.2:latest".to_owned()]),
        };
        let merged = ModelCatalog::merged([&openai, &ollama]).expect("two catalogs");
        assert!(merged.has("gpt-small") && merged.has("llama3.2") && !merged.has("qwen3"));
        assert!(ModelCatalog::merged([]).is_none());
    }
}
