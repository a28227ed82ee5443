//! A batch's validation, as OpenAI's: every line of its input file checked before a request is
//! sent, and a file with any bad line fails the batch with each line named by OpenAI's code and
//! the JSON path of the field at fault (`param`): `invalid_json_line`,
//! `missing_required_parameter` (a line's `custom_id`, `method`, `url` or `body`, or a chat
//! body's `messages`), `invalid_url` (not the batch's endpoint), `streaming_unsupported`
//! (`body.stream` on), `model_not_found` (no backend serves `body.model`) and
//! `duplicate_custom_id`. The engine's own request parser reads every line too (line length,
//! duplicates, what it would refuse), so nothing passes here that a run would turn away.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::wire::BatchError;
use crate::backend::preflight::ModelCatalog;
use crate::item::{ErrorCode, SourceItem};
use crate::source::lines::{LineReader, RawLine};
use crate::source::request::RequestParser;

/// Errors listed in `errors.data` at most; the count of the others is in the last entry.
const MAX_REPORTED: usize = 100;

/// Endpoints a batch may name: OpenAI's paths, and Ollama's native ones as an extension.
pub const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
];

/// Endpoints whose bodies are chats: they need `messages`.
const CHAT_ENDPOINTS: &[&str] = &["/v1/chat/completions", "/api/chat"];

/// What validation reads of a line: its fields, the body left as text.
#[derive(Deserialize)]
struct LineProbe<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    url: Option<serde_json::Value>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// What validation reads of a body.
#[derive(Deserialize)]
struct BodyProbe {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
    messages: Option<serde::de::IgnoredAny>,
}

/// OpenAI's verdict on one line, if it has a problem: the first in the order OpenAI checks.
fn openai_problem(
    bytes: &[u8],
    line: u64,
    endpoint: &str,
    models: Option<&ModelCatalog>,
) -> Option<BatchError> {
    let problem = |code: &str, param: Option<&str>, message: String| BatchError {
        code: code.to_owned(),
        message: format!("line {line}: {message}"),
        param: param.map(str::to_owned),
        line: Some(line),
    };
    let Ok(probe) = serde_json::from_slice::<LineProbe>(bytes) else {
        return Some(problem(
            "invalid_json_line",
            None,
            "not a JSON object".into(),
        ));
    };
    let fields = [
        ("custom_id", probe.custom_id.is_some()),
        ("method", probe.method.is_some()),
        ("url", probe.url.is_some()),
        ("body", probe.body.is_some()),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, present)| !present) {
        return Some(problem(
            "missing_required_parameter",
            Some(field),
            format!("the required field {field} is missing"),
        ));
    }
    let url = probe.url.as_ref().and_then(serde_json::Value::as_str);
    if url != Some(endpoint) {
        return Some(problem(
            "invalid_url",
            Some("url"),
            format!("url {url:?} is not the batch's endpoint {endpoint:?}"),
        ));
    }
    let body: BodyProbe = probe
        .body
        .and_then(|body| serde_json::from_str(body.get()).ok())?;
    // `"True"` too: vLLM's tests send the Python spelling, and a server would stream it.
    let streams = match &body.stream {
        Some(serde_json::Value::Bool(on)) => *on,
        Some(serde_json::Value::String(text)) => text.eq_ignore_ascii_case("true"),
        _ => false,
    };
    if streams {
        return Some(problem(
            "streaming_unsupported",
            Some("body.stream"),
            "a batch cannot stream its answers: remove body.stream".into(),
        ));
    }
    if CHAT_ENDPOINTS.contains(&endpoint) && body.messages.is_none() {
        return Some(problem(
            "missing_required_parameter",
            Some("body.messages"),
            "a chat body needs messages".into(),
        ));
    }
    let model = body.model.as_ref().and_then(serde_json::Value::as_str);
    if let (Some(models), Some(model)) = (models, model) {
        if !models.has(model) {
            return Some(problem(
                "model_not_found",
                Some("body.model"),
                format!("no backend serves the model {model:?}"),
            ));
        }
    }
    None
}

/// The engine's refusal of a line in OpenAI's terms.
fn engine_problem(code: ErrorCode, message: String, line: u64) -> BatchError {
    let (code, param) = match code {
        ErrorCode::InvalidJson => ("invalid_json_line", None),
        ErrorCode::DuplicateCustomId => ("duplicate_custom_id", Some("custom_id")),
        other => (other.as_str(), None),
    };
    BatchError {
        code: code.to_owned(),
        message,
        param: param.map(str::to_owned),
        line: Some(line),
    }
}

/// The input's request count, or why it cannot run (the problems, by line). `models` is what
/// the backends serve, when they could be asked.
pub fn check_input(
    path: &Path,
    endpoint: &str,
    max_line_bytes: usize,
    models: Option<&ModelCatalog>,
) -> io::Result<Result<u64, Vec<BatchError>>> {
    // The engine's line reader: a line over the limit is skipped as it is read and reported
    // by its length, so validating a file never holds more than `max_line_bytes` of it.
    let mut reader = LineReader::new(BufReader::new(File::open(path)?), max_line_bytes);
    let mut parser = RequestParser::new(None);
    let (mut requests, mut problems, mut unreported) = (0u64, Vec::new(), 0u64);
    let mut report = |problem: BatchError| {
        if problems.len() < MAX_REPORTED {
            problems.push(problem);
        } else {
            unreported += 1;
        }
    };
    while let Some(raw) = reader.next_line()? {
        let openai = match raw {
            RawLine::Line { number, bytes } if !bytes.trim_ascii().is_empty() => {
                openai_problem(bytes, number, endpoint, models)
            }
            _ => None,
        };
        // The engine reads every line, so that a duplicate of a refused line is still known.
        let engine = parser.parse(raw);
        match (openai, engine) {
            (Some(problem), _) => report(problem),
            (None, None) => {}
            (None, Some(SourceItem::Invalid(invalid))) => {
                report(engine_problem(invalid.code, invalid.message, invalid.line))
            }
            (None, Some(SourceItem::Request(_))) => requests += 1,
        }
    }
    if unreported > 0 {
        problems.push(BatchError {
            code: "more_errors".into(),
            message: format!("{unreported} more lines have problems"),
            param: None,
            line: None,
        });
    }
    if problems.is_empty() && requests == 0 {
        problems.push(BatchError {
            code: "empty_file".into(),
            message: "the input file holds no requests".into(),
            param: None,
            line: None,
        });
    }
    Ok(if problems.is_empty() {
        Ok(requests)
    } else {
        Err(problems)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<u64, Vec<BatchError>> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("input.jsonl");
        std::fs::write(&path, text).expect("written");
        check_input(&path, "/v1/chat/completions", 1 << 20, None).expect("readable")
    }

    fn line(id: &str, url: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"m","messages":[]}}}}"#
        ) + "\n"
    }

    #[test]
    fn good_lines_are_counted() {
        let text = line("a", "/v1/chat/completions") + "\n" + &line("b", "/v1/chat/completions");
        assert_eq!(check(&text), Ok(2));
    }

    #[test]
    fn bad_lines_are_named() {
        let text = line("z", "/v1/embeddings")
            + "not json\n"
            + &line("a", "/v1/chat/completions")
            + &line("a", "/v1/chat/completions");
        let problems = check(&text).expect_err("refused");
        let lines: Vec<_> = problems.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, [Some(1), Some(2), Some(4)], "{problems:?}");
        assert_eq!(problems[0].code, "invalid_url");
        assert_eq!(problems[0].param.as_deref(), Some("url"));
        assert_eq!(problems[1].code, "invalid_json_line");
        assert_eq!(problems[2].code, "duplicate_custom_id");
        assert_eq!(problems[2].param.as_deref(), Some("custom_id"));
        assert_eq!(check("").expect_err("refused")[0].code, "empty_file");
    }

    #[test]
    fn a_line_over_the_limit_is_named_and_the_next_ones_still_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("input.jsonl");
        let long = format!("{}\n", "x".repeat(5000));
        let text = line("a", "/v1/chat/completions") + &long + &line("b", "/v1/chat/completions");
        std::fs::write(&path, text).expect("written");
        let problems = check_input(&path, "/v1/chat/completions", 1000, None)
            .expect("readable")
            .expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn each_problem_has_openais_code_and_param() {
        let cases = [
            (
                r#"{"method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}"#,
                "missing_required_parameter",
                Some("custom_id"),
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#,
                "missing_required_parameter",
                Some("body"),
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[],"stream":"True"}}"#,
                "streaming_unsupported",
                Some("body.stream"),
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#,
                "missing_required_parameter",
                Some("body.messages"),
            ),
            (r#"[1, 2]"#, "invalid_json_line", None),
        ];
        for (text, code, param) in cases {
            let problems = check(&format!("{text}\n")).expect_err(text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].code, code, "{text}");
            assert_eq!(problems[0].param.as_deref(), param, "{text}");
            assert_eq!(problems[0].line, Some(1));
        }
    }
}
