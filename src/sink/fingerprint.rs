//! What produced a results file, kept in its footer's key-value metadata (`batchflow.*` keys,
//! readable with `parquet_kv_metadata` in DuckDB or `pyarrow.parquet.read_metadata`): the
//! batchflow version, the backend, the model, the endpoint, the request options, hashes of the
//! system prompt, the template and the output schema, and the input's name and size.
//!
//! A resumed run compares its own with the file's: rows made with another model, template,
//! options or schema would be mixed into one table without a trace, so a difference stops the
//! run unless `--allow-config-change` is given, and then it is recorded in the file
//! (`batchflow.config_changes`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use parquet::file::metadata::KeyValue;

/// Key prefix of every entry.
const PREFIX: &str = "batchflow.";
/// The entry listing allowed changes, carried from run to run.
const CHANGES: &str = "config_changes";

/// Entries that decide what a row holds: a resumed run must agree on each.
const COMPARED: [&str; 8] = [
    "model",
    "endpoint",
    "options",
    "system_hash",
    "template_hash",
    "output_schema_hash",
    "id_scheme",
    "upstream",
];

/// What a run asks of the server, as far as the rows depend on it. `None` where each input
/// line says it for itself (OpenAI Batch request lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipe {
    pub model: Option<String>,
    pub endpoint: Option<String>,
    /// Canonical JSON (sorted keys) of the request options, `keep_alive` and `think`.
    pub options: Option<String>,
    pub system: Option<String>,
    /// The prompt template, as written.
    pub template: Option<String>,
    /// The structured-output JSON schema, as canonical JSON.
    pub output_schema: Option<String>,
    /// The derived-id scheme, when custom_ids are derived from record content.
    pub id_scheme: Option<&'static str>,
    /// A later stage's input: the stage it reads and its filter.
    pub upstream: Option<String>,
}

/// Where the run is going and what it reads, beside the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// How each backend answered preflight (`ollama 0.12.3`, `openai-compatible`), or that it
    /// was not checked.
    pub backend: String,
    pub input_name: String,
    pub input_bytes: Option<u64>,
    /// The results' column names, comma-separated (their types are checked on resume).
    pub results_schema: String,
}

/// The `batchflow.*` entries of one results file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    entries: BTreeMap<String, String>,
}

fn hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

const PER_LINE: &str = "(each input line's own)";
const AS_GIVEN: &str = "custom_id as given";

impl Fingerprint {
    pub fn of(recipe: &Recipe, facts: &RunFacts) -> Fingerprint {
        let mut entries = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            entries.insert(key.to_owned(), value);
        };
        put("version", env!("CARGO_PKG_VERSION").to_owned());
        put("backend", facts.backend.clone());
        let or_per_line = |value: &Option<String>| value.clone().unwrap_or(PER_LINE.to_owned());
        put("model", or_per_line(&recipe.model));
        put("endpoint", or_per_line(&recipe.endpoint));
        put("options", or_per_line(&recipe.options));
        let hash_or_none = |value: &Option<String>| value.as_deref().map_or("none".into(), hash);
        put("system_hash", hash_or_none(&recipe.system));
        put("template_hash", hash_or_none(&recipe.template));
        put(
            "output_schema_hash",
            hash(&format!(
                "{}\n{}",
                facts.results_schema,
                recipe.output_schema.as_deref().unwrap_or("")
            )),
        );
        put("id_scheme", recipe.id_scheme.unwrap_or(AS_GIVEN).to_owned());
        if let Some(upstream) = &recipe.upstream {
            put("upstream", upstream.clone());
        }
        put("input", facts.input_name.clone());
        if let Some(bytes) = facts.input_bytes {
            put("input_bytes", bytes.to_string());
        }
        Fingerprint { entries }
    }

    /// The file's entries; `None` for a file written before fingerprints (or by another tool).
    pub fn read(key_values: Option<&Vec<KeyValue>>) -> Option<Fingerprint> {
        let entries: BTreeMap<String, String> = key_values?
            .iter()
            .filter_map(|entry| {
                let key = entry.key.strip_prefix(PREFIX)?;
                Some((key.to_owned(), entry.value.clone()?))
            })
            // How the run ended and which generation wrote the file are not what produced it.
            .filter(|(key, _)| key != "state" && key != "generation")
            .collect();
        entries
            .contains_key("version")
            .then_some(Fingerprint { entries })
    }

    /// What differs between the file's (`self`) and this run's, one phrase each.
    pub fn changes(&self, run: &Fingerprint) -> Vec<String> {
        COMPARED
            .iter()
            .filter_map(|key| {
                let (was, now) = (self.entries.get(*key), run.entries.get(*key));
                (was != now).then(|| {
                    fn show(value: Option<&String>) -> &str {
                        value.map_or("nothing", String::as_str)
                    }
                    if key.ends_with("_hash") {
                        format!(
                            "{} changed",
                            key.trim_end_matches("_hash").replace('_', " ")
                        )
                    } else {
                        format!("{key} was {} and is now {}", show(was), show(now))
                    }
                })
            })
            .collect()
    }

    /// How custom_ids are derived, or that they are taken as given.
    pub fn id_scheme(&self) -> &str {
        self.entries
            .get("id_scheme")
            .map_or(AS_GIVEN, String::as_str)
    }

    /// For a later stage of a pipeline: the stage it reads and its filter
    /// (`screen where fit != 'weak'`).
    pub fn upstream(&self) -> Option<&str> {
        self.entries.get("upstream").map(String::as_str)
    }

    /// Whether custom_ids are derived from record content (and so depend on the scheme).
    pub fn derives_ids(&self) -> bool {
        self.id_scheme() != AS_GIVEN
    }

    /// Carries the file's record of allowed changes into this run's, adding `changes`.
    pub fn record_changes(&mut self, file: Option<&Fingerprint>, changes: &[String]) {
        let mut history: Vec<serde_json::Value> = file
            .and_then(|file| file.entries.get(CHANGES))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        if !changes.is_empty() {
            history.push(serde_json::json!({
                "at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                "version": env!("CARGO_PKG_VERSION"),
                "changes": changes,
            }));
        }
        if !history.is_empty() {
            self.entries.insert(
                CHANGES.to_owned(),
                serde_json::Value::Array(history).to_string(),
            );
        }
    }

    pub fn key_values(&self) -> Vec<KeyValue> {
        self.entries
            .iter()
            .map(|(key, value)| KeyValue::new(format!("{PREFIX}{key}"), value.clone()))
            .collect()
    }

    /// `(key, value)` pairs without the prefix, in key order, for `batchflow status`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(model: &str, template: &str) -> Recipe {
        Recipe {
            model: Some(model.into()),
            endpoint: Some("/api/chat".into()),
            template: Some(template.into()),
            ..Recipe::default()
        }
    }

    #[test]
    fn a_changed_model_or_template_is_named_and_the_input_is_not_compared() {
        let facts = RunFacts {
            backend: "ollama 0.12.3".into(),
            input_name: "a.jsonl".into(),
            input_bytes: Some(10),
            results_schema: "custom_id: Utf8".into(),
        };
        let file = Fingerprint::of(&recipe("llama3.2", "Rate {{name}}"), &facts);
        let bigger_input = RunFacts {
            input_name: "b.jsonl".into(),
            input_bytes: Some(99),
            ..facts.clone()
        };
        assert!(
            file.changes(&Fingerprint::of(
                &recipe("llama3.2", "Rate {{name}}"),
                &bigger_input
            ))
            .is_empty()
        );
        let changed = file.changes(&Fingerprint::of(
            &recipe("qwen3:8b", "Score {{name}}"),
            &facts,
        ));
        assert_eq!(
            changed,
            vec![
                "model was llama3.2 and is now qwen3:8b".to_owned(),
                "template changed".to_owned()
            ]
        );
    }

    #[test]
    fn entries_survive_the_footer_and_changes_accumulate() {
        let mut first = Fingerprint::of(&recipe("a", "t"), &RunFacts::default());
        first.record_changes(None, &["model was x and is now a".to_owned()]);
        let read = Fingerprint::read(Some(&first.key_values())).expect("a fingerprint");
        assert_eq!(read, first);
        let mut second = Fingerprint::of(&recipe("b", "t"), &RunFacts::default());
        second.record_changes(Some(&read), &["model was a and is now b".to_owned()]);
        let history: serde_json::Value =
            serde_json::from_str(&second.entries[CHANGES]).expect("JSON");
        assert_eq!(history.as_array().map(Vec::len), Some(2));
        assert!(
            Fingerprint::read(Some(&vec![KeyValue::new("other".into(), "x".to_owned())])).is_none()
        );
    }
}
