//! The request parser: an OpenAI Batch request, or a record to shape into one, from a JSONL
//! line or a Parquet row, checked field by field with the line or row named in every message.
//! It also owns duplicate `custom_id` detection and the body rewrites batchflow needs
//! (`--model`, `"stream": false`). Its checks start from a parsed JSON value
//! ([`RequestParser::parse_value`]), so `source::parquet` hands its rows to the same parser as
//! `source::lines` hands its lines.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::lines::{self, RawLine};
use super::template::{RecordShape, Shaped};
use crate::idset::IdMap;
use crate::item::{ErrorCode, InvalidLine, Request, SourceItem, id_hash};

/// Longest accepted `custom_id`, in bytes. Ids are stored in results and compared on resume;
/// anything longer is almost certainly a mistake (a whole prompt pasted in the id).
pub const MAX_CUSTOM_ID_BYTES: usize = 1024;

/// Where an item sits in its input (1-based), so that every message names it the way the input
/// counts: JSONL by line, Parquet by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Line(u64),
    Row(u64),
}

impl Position {
    /// The number recorded in [`InvalidLine::line`] and [`Request::line`].
    pub fn number(self) -> u64 {
        match self {
            Position::Line(number) | Position::Row(number) => number,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Position::Line(_) => "line",
            Position::Row(_) => "row",
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.unit(), self.number())
    }
}

/// Turns raw lines (or rows already made into JSON values) into requests. Stateful: it
/// remembers every valid `custom_id` (as a 64-bit hash, 8 bytes each) with the line that used
/// it first (4 bytes more), to flag duplicates naming both lines.
pub struct RequestParser {
    model_override: Option<String>,
    text_bodies: bool,
    /// Records mode: each value is a record to shape into a request first.
    shape: Option<Arc<RecordShape>>,
    /// The line or row of each id's first use; 0 past `u32::MAX`, where it is not named.
    seen_ids: IdMap<u32>,
    /// How the user sets the model for every line, for messages (`--model`, `request.model`).
    model_knob: String,
    /// Set on every request to Ollama's own API over its own (`--options`, `--keep-alive`).
    ollama_options: Option<Map<String, Value>>,
    keep_alive: Option<Value>,
}

impl RequestParser {
    pub fn new(model_override: Option<String>) -> Self {
        RequestParser {
            model_override,
            text_bodies: false,
            shape: None,
            seen_ids: IdMap::new(),
            model_knob: "--model".into(),
            ollama_options: None,
            keep_alive: None,
        }
    }

    /// Sets `options` (key by key, over the request's own) and `keep_alive` on every request
    /// to Ollama's own API (`/api/…`): one model configuration for the whole run.
    pub fn with_ollama_overrides(
        mut self,
        options: Option<Map<String, Value>>,
        keep_alive: Option<Value>,
    ) -> Self {
        self.ollama_options = options;
        self.keep_alive = keep_alive;
        self
    }

    /// Names the knob that sets the model for every line in messages.
    pub fn with_model_knob(mut self, knob: &str) -> Self {
        self.model_knob = knob.to_owned();
        self
    }

    /// Reads records (any JSON objects) and shapes each into a request with `shape`.
    pub fn with_records(mut self, shape: Arc<RecordShape>) -> Self {
        self.shape = Some(shape);
        self
    }

    /// Also accepts a `body` given as a string of JSON text, parsed into the object it must
    /// hold. Columnar inputs store bodies that way because their rows vary too much for one
    /// struct type; a JSONL line has no such reason, so there a string body stays an error.
    pub fn with_text_bodies(mut self) -> Self {
        self.text_bodies = true;
        self
    }

    /// Parses one line. Blank lines give `None`: they produce no output.
    pub fn parse(&mut self, raw: RawLine<'_>) -> Option<SourceItem> {
        let (number, bytes) = match raw {
            RawLine::TooLong { number, bytes_seen } => {
                return Some(SourceItem::Invalid(InvalidLine {
                    line: number,
                    custom_id: None,
                    code: ErrorCode::LineTooLong,
                    message: format!(
                        "line {number}: {bytes_seen} bytes is longer than --max-line-bytes"
                    ),
                }));
            }
            RawLine::Line { number, bytes } => (number, bytes),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let invalid = |what: String| {
            Some(SourceItem::Invalid(InvalidLine {
                line: number,
                custom_id: None,
                code: ErrorCode::InvalidJson,
                message: format!("line {number}: {what}"),
            }))
        };
        if let Err(error) = std::str::from_utf8(bytes) {
            return invalid(format!(
                "not valid UTF-8 (at byte {})",
                error.valid_up_to() + 1
            ));
        }
        match serde_json::from_slice(bytes) {
            Ok(value) => Some(self.parse_value(Position::Line(number), value)),
            Err(error) => invalid(
                (number == 1)
                    .then(|| lines::csv_header_hint(&String::from_utf8_lossy(bytes)))
                    .flatten()
                    .unwrap_or_else(|| format!("not valid JSON ({})", json_error(&error))),
            ),
        }
    }

    /// Checks one request already parsed as JSON, whatever input it came from, so that every
    /// source gives the same verdicts and messages.
    pub fn parse_value(&mut self, position: Position, value: Value) -> SourceItem {
        let shaped = match self.shape.as_deref() {
            None => Ok(Shaped {
                request: value,
                passthrough: Vec::new(),
            }),
            Some(shape) => shape.shape(value),
        };
        let (value, passthrough) = match shaped {
            Ok(Shaped {
                request,
                passthrough,
            }) => (request, passthrough),
            Err((custom_id, why)) => {
                return SourceItem::Invalid(InvalidLine {
                    line: position.number(),
                    custom_id,
                    code: ErrorCode::InvalidRequest,
                    message: format!("{position}: {why}"),
                });
            }
        };
        match self.parse_request(position, value) {
            Ok(request) => SourceItem::Request(Request {
                passthrough,
                ..request
            }),
            Err(invalid) => SourceItem::Invalid(invalid),
        }
    }

    fn parse_request(&mut self, position: Position, value: Value) -> Result<Request, InvalidLine> {
        let invalid = |custom_id: Option<&str>, (code, what): Refusal| InvalidLine {
            line: position.number(),
            custom_id: custom_id.map(str::to_owned),
            code,
            message: format!("{position}: {what}"),
        };
        let Value::Object(mut fields) = value else {
            let what = format!(
                "expected a JSON object with custom_id, method, url and body, found {}",
                json_kind(&value)
            );
            return Err(invalid(None, (ErrorCode::InvalidRequest, what)));
        };
        if is_record(&fields) {
            return Err(invalid(
                None,
                (ErrorCode::InvalidRequest, RECORD_HINT.to_owned()),
            ));
        }
        let custom_id = take_custom_id(&mut fields).map_err(|why| invalid(None, why))?;
        let id = Some(custom_id.as_str());
        let refused = |why| invalid(id, why);
        check_method(&fields).map_err(refused)?;
        let url = take_url(&mut fields).map_err(refused)?;
        let mut body = self.take_body(&mut fields).map_err(refused)?;
        let model = self
            .body_model(&mut body, position.unit())
            .map_err(refused)?;
        disable_streaming(&url, &mut body);
        self.override_ollama(&url, &mut body);
        let line = u32::try_from(position.number()).unwrap_or(0);
        if let Err(first) = self.seen_ids.try_insert(id_hash(&custom_id), line) {
            let what = self.duplicate_message(&custom_id, position, first);
            return Err(refused((ErrorCode::DuplicateCustomId, what)));
        }
        let body = serde_json::to_vec(&Value::Object(body))
            .map_err(|error| refused((ErrorCode::InvalidRequest, format!("body: {error}"))))?;
        Ok(Request {
            passthrough: Vec::new(),
            line: position.number(),
            custom_id,
            url,
            model,
            body: Bytes::from(body),
        })
    }

    /// Why a second use of `custom_id` is refused: the line that used it first and, when the
    /// id was made from the record's content (so the two records are the same), how to give
    /// ids instead.
    fn duplicate_message(&self, custom_id: &str, position: Position, first: u32) -> String {
        let unit = position.unit();
        let earlier = match first {
            0 => format!("an earlier {unit}"),
            first => format!("{unit} {first}"),
        };
        let mut what = format!("custom_id {custom_id:?} is already used by {earlier}");
        if self
            .shape
            .as_deref()
            .is_some_and(|shape| shape.id_column.is_none())
        {
            what.push_str(&format!(
                " (this id is made from the record's content: the two records are identical; \
                 give each record an id with --id-column COLUMN on the command line or \
                 source.id_column = \"COLUMN\" in a pipeline file, or remove the repeated {unit})"
            ));
        }
        what
    }

    /// `body`: a JSON object (or, from Parquet, JSON text of one).
    fn take_body(&self, fields: &mut Map<String, Value>) -> Result<Map<String, Value>, Refusal> {
        let body = match fields.remove("body") {
            Some(Value::String(text)) if self.text_bodies => serde_json::from_str::<Value>(&text)
                .map(Some)
                .map_err(|error| {
                    let what = format!("body is text but not valid JSON ({error})");
                    (ErrorCode::InvalidJson, what)
                })?,
            other => other,
        };
        match body {
            Some(Value::Object(body)) => Ok(body),
            Some(other) => Err(request_error(format!(
                "body must be a JSON object, found {}",
                json_kind(&other)
            ))),
            None => Err(request_error("missing body".into())),
        }
    }

    /// `body.model`, set first by `--model` when given.
    fn body_model(
        &self,
        body: &mut Map<String, Value>,
        unit: &str,
    ) -> Result<Option<String>, Refusal> {
        if let Some(model) = &self.model_override {
            body.insert("model".into(), Value::String(model.clone()));
        }
        match body.get("model") {
            Some(Value::String(model)) if !model.is_empty() => Ok(Some(model.clone())),
            Some(other) => Err(request_error(format!(
                "body.model must be a non-empty string, found {other}"
            ))),
            None => Err(request_error(format!(
                "body.model is missing (set it in the {unit} or give {})",
                self.model_knob
            ))),
        }
    }
}

/// Why a field refuses the request: the error code and what to say.
type Refusal = (ErrorCode, String);

/// What a record given where request lines are read is told: how to send a prompt for each.
pub const RECORD_HINT: &str = "a record, not an OpenAI Batch request line (it has none of \
     custom_id, method, url, body): to send a prompt for each record, give --prompt 'Screen \
     {{name}}: {{bio}}' --model NAME, or describe the job in a pipeline file and run `batchflow \
     run PIPELINE.toml`";

/// A JSON object with none of a request line's fields: a record.
pub fn is_record(fields: &Map<String, Value>) -> bool {
    ["custom_id", "method", "url", "body"]
        .iter()
        .all(|field| !fields.contains_key(*field))
}

fn request_error(what: String) -> Refusal {
    (ErrorCode::InvalidRequest, what)
}

/// `custom_id`: a non-empty string of at most [`MAX_CUSTOM_ID_BYTES`].
fn take_custom_id(fields: &mut Map<String, Value>) -> Result<String, Refusal> {
    match fields.remove("custom_id") {
        None => Err(request_error("missing custom_id".into())),
        Some(Value::String(id)) if id.is_empty() => Err(request_error("custom_id is empty".into())),
        Some(Value::String(id)) if id.len() > MAX_CUSTOM_ID_BYTES => Err(request_error(format!(
            "custom_id is {} bytes, longer than the limit of {MAX_CUSTOM_ID_BYTES}",
            id.len()
        ))),
        Some(Value::String(id)) => Ok(id),
        Some(other) => Err(request_error(format!(
            "custom_id must be a string, found {}",
            json_kind(&other)
        ))),
    }
}

/// `method`: `POST`, in any case.
fn check_method(fields: &Map<String, Value>) -> Result<(), Refusal> {
    match fields.get("method") {
        Some(Value::String(method)) if method.eq_ignore_ascii_case("POST") => Ok(()),
        Some(other) => Err(request_error(format!(
            "method must be \"POST\", found {other}"
        ))),
        None => Err(request_error("missing method (must be \"POST\")".into())),
    }
}

/// `url`: a path on the backend, never an absolute URL (which could send the key elsewhere).
fn take_url(fields: &mut Map<String, Value>) -> Result<String, Refusal> {
    match fields.remove("url") {
        Some(Value::String(url)) if url.starts_with('/') && !url.starts_with("//") => Ok(url),
        Some(other) => Err(request_error(format!(
            "url must be a path on the backend such as \"/v1/chat/completions\", found {other}"
        ))),
        None => Err(request_error("missing url".into())),
    }
}

/// A batch client wants one whole answer per request. Ollama's native API streams unless told
/// not to; OpenAI-style endpoints stream only when asked.
impl RequestParser {
    fn override_ollama(&self, url: &str, body: &mut Map<String, Value>) {
        if !url.starts_with("/api/") {
            return;
        }
        if let Some(overrides) = &self.ollama_options {
            let options = body
                .entry("options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(options) = options {
                for (key, value) in overrides {
                    options.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some(keep_alive) = &self.keep_alive {
            body.insert("keep_alive".into(), keep_alive.clone());
        }
    }
}

fn disable_streaming(url: &str, body: &mut Map<String, Value>) {
    if url.starts_with("/api/") || body.get("stream") == Some(&Value::Bool(true)) {
        body.insert("stream".into(), Value::Bool(false));
    }
}

/// serde_json's message without its own "at line L column C": the input's line is already
/// named, and within a line only the column means anything.
fn json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(reason, _)| reason);
    format!("{reason} at column {}", error.column())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(parser: &mut RequestParser, text: &str) -> Option<SourceItem> {
        parser.parse(RawLine::Line {
            number: 7,
            bytes: text.as_bytes(),
        })
    }

    fn invalid_message(item: Option<SourceItem>) -> (ErrorCode, String) {
        match item {
            Some(SourceItem::Invalid(invalid)) => (invalid.code, invalid.message),
            other => panic!("expected an invalid line, got {other:?}"),
        }
    }

    #[test]
    fn parser_names_the_line_and_the_field() {
        let mut parser = RequestParser::new(None);
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "found an array"),
            (
                r#"{"method":"POST","url":"/api/chat","body":{}}"#,
                "missing custom_id",
            ),
            (
                r#"{"custom_id":5}"#,
                "custom_id must be a string, found a number",
            ),
            (
                r#"{"custom_id":"a","method":"GET","url":"/x","body":{}}"#,
                "method must be",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"http://evil/x","body":{}}"#,
                "url must be a path",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/x","body":"hi"}"#,
                "body must be a JSON object",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/x","body":{}}"#,
                "body.model is missing",
            ),
        ];
        for (line, expected) in cases {
            let (_, message) = invalid_message(parse(&mut parser, line));
            assert!(message.starts_with("line 7: "), "{message}");
            assert!(message.contains(expected), "{line} gave {message}");
        }
    }

    #[test]
    fn parser_flags_duplicates_and_rewrites_the_body() {
        let mut parser = RequestParser::new(Some("m:1".into()));
        let line = r#"{"custom_id":"a","method":"POST","url":"/api/chat","body":{"model":"x","stream":true}}"#;
        let Some(SourceItem::Request(request)) = parse(&mut parser, line) else {
            panic!("first line is valid");
        };
        let body: Value = serde_json::from_slice(&request.body).expect("body is JSON");
        assert_eq!(body["model"], "m:1");
        assert_eq!(body["stream"], false);
        assert_eq!(request.model.as_deref(), Some("m:1"));
        let (code, message) = invalid_message(parser.parse(RawLine::Line {
            number: 9,
            bytes: line.as_bytes(),
        }));
        assert_eq!(code, ErrorCode::DuplicateCustomId);
        assert_eq!(message, "line 9: custom_id \"a\" is already used by line 7");
        assert!(parse(&mut parser, "  \t").is_none());
    }

    #[test]
    fn values_from_rows_are_named_by_row_and_may_carry_a_text_body() {
        let request = |body: &str| {
            serde_json::json!({
                "custom_id": "a",
                "method": "POST",
                "url": "/api/generate",
                "body": body,
            })
        };
        let text_body = request(r#"{"model":"m","prompt":"p"}"#);

        let mut lines = RequestParser::new(None);
        let (_, message) = invalid_message(Some(
            lines.parse_value(Position::Line(3), text_body.clone()),
        ));
        assert_eq!(
            message,
            "line 3: body must be a JSON object, found a string"
        );

        let mut rows = RequestParser::new(None).with_text_bodies();
        let SourceItem::Request(parsed) = rows.parse_value(Position::Row(4), text_body.clone())
        else {
            panic!("a text body is parsed for rows");
        };
        assert_eq!(parsed.line, 4);
        let body: Value = serde_json::from_slice(&parsed.body).expect("body is JSON");
        assert_eq!(
            body,
            serde_json::json!({"model": "m", "prompt": "p", "stream": false})
        );
        let (code, message) = invalid_message(Some(rows.parse_value(Position::Row(5), text_body)));
        assert_eq!(code, ErrorCode::DuplicateCustomId);
        assert!(message.ends_with("is already used by row 4"), "{message}");
        let (code, message) =
            invalid_message(Some(rows.parse_value(Position::Row(6), request("[1]"))));
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_eq!(message, "row 6: body must be a JSON object, found an array");
    }
}
