//! Records into requests: a pipeline's `[request]` section applied to each record (a JSONL
//! object or a Parquet row), giving an OpenAI Batch request that then goes through the same
//! checks as a request line.
//!
//! Prompts are templates with `{{column}}` placeholders. The `custom_id` comes from a chosen
//! column, or is derived from the record's content so that it is stable across runs, versions
//! and machines (resume needs that); the private `content_id` specifies how.

use std::sync::Arc;

use serde_json::{Map, Number, Value, json};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::schema::OutputSchema;

/// Names the derived-id scheme in a results file's fingerprint: a resume whose ids would be
/// derived otherwise is refused rather than sending every record again.
pub const CONTENT_ID_SCHEME: &str =
    "rec- + xxh3-64 (seed 0x6261746368666c77) of the canonical record encoding v1";

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

    /// The template in its canonical form (placeholders written `{{column}}`), which is what
    /// a results file's fingerprint hashes.
    pub fn canonical_text(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Column(column) => format!("{{{{{column}}}}}"),
            })
            .collect()
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

/// The seed of [`content_id`]'s hash: the ASCII bytes of `batchflw` read as a big-endian
/// `u64`, `0x6261_7463_6866_6c77`. Changing it changes every derived custom_id.
const CONTENT_ID_SEED: u64 = u64::from_be_bytes(*b"batchflw");

/// A custom_id from the record's content: the same record gives the same id on every run,
/// version, toolchain and machine. This is the reference for the format; it must never change,
/// since checkpoints and earlier results name records by it.
///
/// The id is `rec-` followed by the 16 lowercase hex digits (zero-padded) of the 64-bit
/// XXH3 hash (`xxh3_64_with_seed`) of the record's encoding, with seed `0x6261746368666c77`
/// (the ASCII bytes of `batchflw` read big-endian). The encoding is binary: each value is a
/// one-byte tag and a body; every length, count and number is 8 bytes big-endian (integers in
/// two's complement, lengths and counts as `u64`).
///
/// | value | tag | body |
/// | --- | --- | --- |
/// | `null` | `0x00` | none |
/// | `false` / `true` | `0x01` / `0x02` | none |
/// | integer that fits `i64` | `0x03` | the `i64` |
/// | integer that fits `u64`, not `i64` | `0x04` | the `u64` |
/// | any other number | `0x05` | the IEEE-754 binary64 bits of the nearest `f64` |
/// | string | `0x06` | the UTF-8 byte length, the UTF-8 bytes |
/// | array | `0x07` | the element count, each element's encoding in order |
/// | object | `0x08` | the member count, then per member: key length, key bytes, value |
///
/// A number is an integer when its JSON text has no `.`, `e` or `E`; so `1.0` and `1e2` are
/// floats (`0x05`), `1.5` and `1.50` encode alike, `-0` is the integer 0 while `-0.0` keeps its
/// sign bit, and an integer beyond both `i64` and `u64` becomes the nearest `f64` (±infinity
/// past its range). Object members are written in ascending byte order of their keys, whatever
/// their order in the input, and members whose value is `null` are left out (and not counted),
/// at every depth: a record with a null column and one lacking that column get the same id
/// (Parquet rows arrive without their null columns). Nulls inside arrays are kept.
///
/// For example `{}` encodes as `08 0000000000000000`, and `{"a":[true],"b":null}` as
/// `08 0000000000000001 | 0000000000000001 61 | 07 0000000000000001 02`.
fn content_id(record: &Map<String, Value>) -> String {
    let mut encoding = Vec::new();
    encode_object(record, &mut encoding);
    format!("rec-{:016x}", xxh3_64_with_seed(&encoding, CONTENT_ID_SEED))
}

/// Appends the encoding of one value, as [`content_id`] specifies.
fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0x00),
        Value::Bool(false) => out.push(0x01),
        Value::Bool(true) => out.push(0x02),
        Value::Number(number) => encode_number(number, out),
        Value::String(text) => {
            out.push(0x06);
            encode_bytes(text.as_bytes(), out);
        }
        Value::Array(elements) => {
            out.push(0x07);
            encode_len(elements.len(), out);
            for element in elements {
                encode_value(element, out);
            }
        }
        Value::Object(members) => encode_object(members, out),
    }
}

/// Appends an object: its non-null members in ascending byte order of their keys.
fn encode_object(members: &Map<String, Value>, out: &mut Vec<u8>) {
    // Sorted here rather than trusting the map's order, which would change if some crate in the
    // build turned on serde_json's `preserve_order`.
    let mut present: Vec<(&String, &Value)> = members
        .iter()
        .filter(|(_, value)| !value.is_null())
        .collect();
    present.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    out.push(0x08);
    encode_len(present.len(), out);
    for (key, value) in present {
        encode_bytes(key.as_bytes(), out);
        encode_value(value, out);
    }
}

/// Appends a number, telling integers from floats by its JSON text.
fn encode_number(number: &Number, out: &mut Vec<u8>) {
    let text = number.to_string();
    let integer = !text.contains(['.', 'e', 'E']);
    if let (true, Some(signed)) = (integer, number.as_i64()) {
        out.push(0x03);
        out.extend_from_slice(&signed.to_be_bytes());
    } else if let (true, Some(unsigned)) = (integer, number.as_u64()) {
        out.push(0x04);
        out.extend_from_slice(&unsigned.to_be_bytes());
    } else {
        // `str::parse` rounds to nearest and gives ±infinity past the range (where `as_f64`
        // gives `None`). The text of a `Number` is always JSON number syntax, which parses; the
        // quiet-NaN fallback only keeps this total.
        let bits = text
            .parse::<f64>()
            .map_or(0x7ff8_0000_0000_0000, f64::to_bits);
        out.push(0x05);
        out.extend_from_slice(&bits.to_be_bytes());
    }
}

/// Appends a byte string: its length, then the bytes.
fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    encode_len(bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// Appends a length or count as a `u64`, 8 bytes big-endian.
fn encode_len(len: usize, out: &mut Vec<u8>) {
    // usize is at most 64 bits on every target Rust supports, so this is lossless.
    out.extend_from_slice(&(len as u64).to_be_bytes());
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

    /// The content_id of a record given as JSON text (parsed, so number texts are kept).
    fn id(text: &str) -> String {
        content_id(&serde_json::from_str(text).expect("a JSON object"))
    }

    /// Pinned once (and checked against an independent implementation of the spec, Python's
    /// `xxhash` package): a change here breaks resume for every existing checkpoint.
    const GOLDEN: [(&str, &str); 6] = [
        ("{}", "rec-1df05fc2277f6cb6"),
        (
            r#"{"name":"Ada","city":"Zürich","crab":"🦀","empty":""}"#,
            "rec-13bc72316a17b10a",
        ),
        (
            r#"{"nested":{"list":[1,[2,3],{"k":"v"}],"none":[]},"on":true,"off":false}"#,
            "rec-827d91cb6eacb8c8",
        ),
        (
            r#"{"neg":-42,"zero":0,"max":9223372036854775807,"above":18446744073709551615,"huge":123456789012345678901234567890}"#,
            "rec-73732965d1cd0f37",
        ),
        (r#"{"x":1.5,"y":1.0,"z":-2.5e-3}"#, "rec-dea844f45b21615b"),
        (
            r#"{"a":null,"b":[null,1],"c":{"d":null}}"#,
            "rec-91be76d1ab4c2fc0",
        ),
    ];

    #[test]
    fn content_ids_match_their_pinned_values() {
        for (record, expected) in GOLDEN {
            assert_eq!(id(record), expected, "{record}");
        }
    }

    #[test]
    fn the_empty_object_hashes_its_documented_encoding() {
        assert_eq!(CONTENT_ID_SEED, 0x6261_7463_6866_6c77);
        let bytes = [0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        let expected = format!("rec-{:016x}", xxh3_64_with_seed(&bytes, CONTENT_ID_SEED));
        assert_eq!(id("{}"), expected);
        assert_eq!(GOLDEN[0], ("{}", expected.as_str()));
    }

    #[test]
    fn the_documented_example_encodes_as_written() {
        let record = json!({"a": [true], "b": null});
        let mut encoding = Vec::new();
        encode_value(&record, &mut encoding);
        let mut expected = vec![0x08, 0, 0, 0, 0, 0, 0, 0, 1];
        expected.extend([0, 0, 0, 0, 0, 0, 0, 1, b'a']);
        expected.extend([0x07, 0, 0, 0, 0, 0, 0, 0, 1, 0x02]);
        assert_eq!(encoding, expected);
    }

    #[test]
    fn content_ids_ignore_key_order_number_spelling_and_null_members() {
        assert_eq!(
            id(r#"{"b":1,"a":{"y":"2","x":[3]}}"#),
            id(r#"{"a":{"x":[3],"y":"2"},"b":1}"#)
        );
        assert_eq!(id(r#"{"x":1.5}"#), id(r#"{"x":1.50}"#));
        assert_eq!(id(r#"{"x":1.5}"#), id(r#"{"x":15e-1}"#));
        assert_eq!(id(r#"{"x":-0}"#), id(r#"{"x":0}"#));
        assert_eq!(id(r#"{"a":null}"#), id("{}"));
        assert_eq!(id(r#"{"a":{"b":null},"c":1}"#), id(r#"{"c":1,"a":{}}"#));
    }

    #[test]
    fn different_records_get_different_content_ids() {
        let records = [
            "{}",
            r#"{"a":0}"#,
            r#"{"a":false}"#,
            r#"{"a":"0"}"#,
            r#"{"a":1}"#,
            r#"{"a":1.0}"#,
            r#"{"a":-0.0}"#,
            r#"{"a":[]}"#,
            r#"{"a":{}}"#,
            r#"{"a":[null]}"#,
            r#"{"a":[1,2]}"#,
            r#"{"a":[[1],2]}"#,
            r#"{"ab":""}"#,
            r#"{"a":"b"}"#,
            r#"{"a":9223372036854775807}"#,
            r#"{"a":9223372036854775808}"#,
        ];
        let ids: std::collections::BTreeSet<String> = records.iter().map(|r| id(r)).collect();
        assert_eq!(ids.len(), records.len());
    }
}
