//! Property tests (proptest) of the input-line reader and parser: whatever bytes come in, the
//! reader splits them as a simple model says without ever returning more than the limit, and
//! the parser never panics and gives, for every non-blank line, either a request or an invalid
//! item naming that line. For JSON-ish lines built from the request fields, the verdict (and
//! the rewritten body) matches an independent statement of the input rules in the README.
//!
//! Case counts are kept so that this file runs in a few seconds in a debug build; raise
//! `PROPTEST_CASES` to search longer.

use std::collections::HashSet;
use std::io::BufReader;

use batchflow::item::{ErrorCode, SourceItem};
use batchflow::source::lines::{LineReader, RawLine};
use batchflow::source::request::{MAX_CUSTOM_ID_BYTES, Position, RequestParser};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line as the reader returns it: its bytes, or `Err(bytes_seen)` when it was too long.
type ReadLine = Result<Vec<u8>, u64>;

/// The lines of `input`: split on `\n`, a last line without one still counting.
fn pieces(input: &[u8]) -> Vec<&[u8]> {
    let mut pieces: Vec<&[u8]> = input.split(|byte| *byte == b'\n').collect();
    if pieces.last().is_some_and(|last| last.is_empty()) {
        pieces.pop();
    }
    pieces
}

/// Whether the reader returned what it must for `piece`, line `index` (0-based) of its input,
/// with `max` bytes per line: a line over `max` bytes is refused with its length, any other
/// is returned without one `\r` at its end and, on the first line, without a leading BOM. A
/// line over `max` only by its `\r` may go either way (see
/// `the_line_limit_does_not_count_a_crlf_line_end` in `bad_input.rs`).
fn read_as_the_model_says(got: &ReadLine, piece: &[u8], index: usize, max: usize) -> bool {
    let content = piece.strip_suffix(b"\r").unwrap_or(piece);
    let mut bytes = content;
    if index == 0 {
        bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    }
    let returned = *got == Ok(bytes.to_vec());
    let refused = [piece.len() as u64, content.len() as u64]
        .iter()
        .any(|seen| *got == Err(*seen));
    if piece.len() <= max {
        returned
    } else if content.len() > max {
        refused
    } else {
        returned || refused
    }
}

/// Checks one parser verdict on line `number` against the promise every item keeps: blank
/// lines give nothing, anything else a request or an invalid item that names the line.
fn check_names_the_line(
    number: u64,
    blank: bool,
    item: Option<SourceItem>,
) -> Result<(), TestCaseError> {
    match item {
        None => prop_assert!(blank, "line {number} gave nothing but is not blank"),
        Some(SourceItem::Request(request)) => {
            prop_assert!(!blank);
            prop_assert_eq!(request.line, number);
        }
        Some(SourceItem::Invalid(invalid)) => {
            prop_assert!(!blank);
            prop_assert_eq!(invalid.line, number);
            let prefix = format!("line {number}: ");
            prop_assert!(
                invalid.message.starts_with(&prefix),
                "{:?} does not name line {}",
                invalid.message,
                number
            );
            prop_assert!(invalid.code.is_invalid_input(), "{:?}", invalid.code);
        }
    }
    Ok(())
}

/// Bytes with many line ends, carriage returns, spaces and JSON punctuation among arbitrary
/// ones, sometimes after a BOM.
fn raw_input() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => any::<u8>(),
        2 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(b' '),
        1 => prop::sample::select(b"{}[]\",:0".to_vec()),
    ];
    (any::<bool>(), prop::collection::vec(byte, 0..300)).prop_map(|(bom, bytes)| {
        if bom { [BOM, &bytes].concat() } else { bytes }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_reader_splits_any_bytes_as_the_model_says_and_never_returns_more_than_the_limit(
        input in raw_input(),
        max in 1usize..48,
        capacity in 1usize..24,
    ) {
        let expected = pieces(&input);
        let mut reader = LineReader::new(BufReader::with_capacity(capacity, input.as_slice()), max);
        let mut parser = RequestParser::new(None);
        let mut got = Vec::new();
        while let Some(raw) = reader.next_line().expect("reading a slice cannot fail") {
            let number = got.len() as u64 + 1;
            let (line, blank) = match &raw {
                RawLine::Line { number: read, bytes } => {
                    prop_assert_eq!(*read, number);
                    prop_assert!(
                        bytes.len() <= max,
                        "{} bytes returned over a limit of {}",
                        bytes.len(),
                        max
                    );
                    (Ok(bytes.to_vec()), bytes.iter().all(u8::is_ascii_whitespace))
                }
                RawLine::TooLong { number: read, bytes_seen } => {
                    prop_assert_eq!(*read, number);
                    (Err(*bytes_seen), false)
                }
            };
            check_names_the_line(number, blank, parser.parse(raw))?;
            prop_assert_eq!(reader.line_number(), number);
            got.push(line);
        }
        prop_assert_eq!(got.len(), expected.len(), "{:?}", got);
        for (index, (got, piece)) in got.iter().zip(&expected).enumerate() {
            prop_assert!(
                read_as_the_model_says(got, piece, index, max),
                "line {} {:?} was read as {:?} with a limit of {}",
                index + 1,
                String::from_utf8_lossy(piece),
                got,
                max
            );
        }
        prop_assert!(reader.next_line().expect("still a slice").is_none(), "the end stays the end");
    }

    #[test]
    fn mangled_request_lines_never_panic_and_always_name_their_line(
        lines in prop::collection::vec(mangled_line(), 1..20),
        model in prop::option::of("[a-z0-9:.]{1,8}"),
    ) {
        let mut parser = RequestParser::new(model);
        for (index, line) in lines.iter().enumerate() {
            let number = index as u64 + 1;
            let item = parser.parse(RawLine::Line { number, bytes: line });
            check_names_the_line(number, line.iter().all(u8::is_ascii_whitespace), item)?;
        }
    }

    #[test]
    fn request_lines_get_the_verdict_the_input_rules_give(
        lines in prop::collection::vec(request_value(), 1..24),
        model in prop::option::of(prop_oneof!["llama3.2", "m:1", ""]),
    ) {
        let mut parser = RequestParser::new(model.clone());
        let mut rules = Rules { model, seen: HashSet::new() };
        for (index, value) in lines.into_iter().enumerate() {
            let number = index as u64 + 1;
            let text = value.to_string();
            let verdict = rules.verdict(&value);
            let item = parser.parse(RawLine::Line { number, bytes: text.as_bytes() });
            check_verdict(number, &value, verdict, item, "line")?;
        }
    }

    #[test]
    fn parquet_rows_with_text_bodies_get_the_same_verdicts_named_by_row(
        rows in prop::collection::vec((request_value(), any::<bool>()), 1..24),
    ) {
        let mut parser = RequestParser::new(None).with_text_bodies();
        let mut rules = Rules { model: None, seen: HashSet::new() };
        for (index, (value, body_as_text)) in rows.into_iter().enumerate() {
            let number = index as u64 + 1;
            // `expected` is the request as meant, `sent` as the row holds it: a body stored as
            // JSON text is parsed into the value it holds; text that is not JSON is refused
            // as such.
            let (expected, sent, verdict) = match value.get("body").cloned() {
                Some(Value::String(text)) => match serde_json::from_str::<Value>(&text) {
                    Ok(body) => {
                        let mut parsed = value.clone();
                        parsed["body"] = body;
                        let verdict = rules.verdict(&parsed);
                        (parsed, value, verdict)
                    }
                    Err(_) => {
                        let verdict = rules.verdict_before_body(&value, ErrorCode::InvalidJson);
                        (value.clone(), value, verdict)
                    }
                },
                Some(body) if body_as_text => {
                    let mut text = value.clone();
                    text["body"] = Value::String(body.to_string());
                    let verdict = rules.verdict(&value);
                    (value, text, verdict)
                }
                _ => {
                    let verdict = rules.verdict(&value);
                    (value.clone(), value, verdict)
                }
            };
            let item = parser.parse_value(Position::Row(number), sent);
            check_verdict(number, &expected, verdict, Some(item), "row")?;
        }
    }
}

/// A request line's JSON text, then cut short, spliced with arbitrary bytes, or padded.
fn mangled_line() -> impl Strategy<Value = Vec<u8>> {
    (
        request_value(),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..8),
        0u8..5,
    )
        .prop_map(|(value, at, noise, how)| {
            let text = value.to_string().into_bytes();
            let cut = at.index(text.len() + 1);
            match how {
                0 => text[..cut].to_vec(),
                1 => [&text[..cut], noise.as_slice(), &text[cut..]].concat(),
                2 => [&text[..cut], &text[(cut + noise.len()).min(text.len())..]].concat(),
                3 => [b" \t".as_slice(), &text, b" \r"].concat(),
                _ => text,
            }
        })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Floats that survive a parse exactly (see `body_numbers_are_sent_as_written`).
        (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        any::<String>().prop_map(Value::String),
        "[a-z/:\"\\\\ ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,9}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Ids from a small pool (so duplicates happen), at and around the length limit, or anything.
fn custom_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "id-[0-4]".prop_map(Value::String),
        1 => Just(json!("")),
        1 => (MAX_CUSTOM_ID_BYTES - 1..=MAX_CUSTOM_ID_BYTES + 1)
            .prop_map(|length| Value::String("x".repeat(length))),
        1 => (MAX_CUSTOM_ID_BYTES / 2 - 1..=MAX_CUSTOM_ID_BYTES / 2 + 1)
            .prop_map(|chars| Value::String("é".repeat(chars))),
        1 => any::<String>().prop_map(Value::String),
        1 => any_json(),
    ]
}

fn method() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!("POST")),
        1 => Just(json!("post")),
        1 => Just(json!("GET")),
        1 => any_json(),
    ]
}

fn url() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!("/api/chat")),
        2 => Just(json!("/v1/chat/completions")),
        1 => Just(json!("/api/embed")),
        1 => Just(json!("//evil.example/api/chat")),
        1 => Just(json!("http://evil.example/api/chat")),
        1 => Just(json!("api/chat")),
        1 => any_json(),
    ]
}

fn body() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        4 => Just(Some(json!("llama3.2"))),
        1 => Just(Some(json!(""))),
        1 => Just(None),
        1 => any_json().prop_map(Some),
    ];
    let stream = prop::option::of(prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        any_json()
    ]);
    prop_oneof![
        6 => (model, stream, prop::option::of(any_json())).prop_map(|(model, stream, extra)| {
            let mut body = Map::new();
            if let Some(model) = model {
                body.insert("model".into(), model);
            }
            if let Some(stream) = stream {
                body.insert("stream".into(), stream);
            }
            if let Some(extra) = extra {
                body.insert("messages".into(), extra);
            }
            Value::Object(body)
        }),
        1 => any_json(),
    ]
}

/// A request line's value: usually an object whose fields are each present or not, valid or
/// not; sometimes any JSON at all.
fn request_value() -> impl Strategy<Value = Value> {
    let field =
        |strategy: BoxedStrategy<Value>| prop_oneof![8 => strategy.prop_map(Some), 1 => Just(None)];
    prop_oneof![
        12 => (
            field(custom_id().boxed()),
            field(method().boxed()),
            field(url().boxed()),
            field(body().boxed()),
            prop::option::of(any_json()),
        )
            .prop_map(|(custom_id, method, url, body, extra)| {
                let mut fields = Map::new();
                for (name, value) in [
                    ("custom_id", custom_id),
                    ("method", method),
                    ("url", url),
                    ("body", body),
                    ("extra", extra),
                ] {
                    if let Some(value) = value {
                        fields.insert(name.into(), value);
                    }
                }
                Value::Object(fields)
            }),
        1 => any_json(),
    ]
}

/// The input rules of the README, stated independently of the parser: an object with a
/// non-empty `custom_id` of at most 1024 bytes, unique among valid lines; `method` "POST"; a
/// `url` path (not `//host`); a `body` object whose `model` (or `--model`) is a non-empty
/// string.
struct Rules {
    model: Option<String>,
    seen: HashSet<String>,
}

/// What a line must become: a request, or an invalid item with this code, this custom_id and
/// a message naming `field`.
#[derive(Debug)]
enum Verdict {
    Request,
    Invalid {
        code: ErrorCode,
        custom_id: Option<String>,
        field: &'static str,
    },
}

impl Rules {
    fn verdict(&mut self, value: &Value) -> Verdict {
        self.verdict_before_body(value, ErrorCode::InvalidRequest)
    }

    /// The verdict when everything before `body` is checked as usual and a body that is not
    /// an object is refused with `body_code`.
    fn verdict_before_body(&mut self, value: &Value, body_code: ErrorCode) -> Verdict {
        let invalid = |code, custom_id: Option<&str>, field| Verdict::Invalid {
            code,
            custom_id: custom_id.map(str::to_owned),
            field,
        };
        let request = ErrorCode::InvalidRequest;
        let Value::Object(fields) = value else {
            return invalid(request, None, "object");
        };
        let id = match fields.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_CUSTOM_ID_BYTES => id,
            _ => return invalid(request, None, "custom_id"),
        };
        let id = id.as_str();
        let post = matches!(
            fields.get("method"),
            Some(Value::String(method)) if method.eq_ignore_ascii_case("POST")
        );
        if !post {
            return invalid(request, Some(id), "method");
        }
        let path = matches!(
            fields.get("url"),
            Some(Value::String(url)) if url.starts_with('/') && !url.starts_with("//")
        );
        if !path {
            return invalid(request, Some(id), "url");
        }
        let Some(Value::Object(body)) = fields.get("body") else {
            return invalid(body_code, Some(id), "body");
        };
        let model = self
            .model
            .as_ref()
            .map(|model| Value::String(model.clone()))
            .or_else(|| body.get("model").cloned());
        if !matches!(model, Some(Value::String(model)) if !model.is_empty()) {
            return invalid(request, Some(id), "model");
        }
        if !self.seen.insert(id.to_owned()) {
            return invalid(ErrorCode::DuplicateCustomId, Some(id), "custom_id");
        }
        Verdict::Request
    }
}

fn check_verdict(
    number: u64,
    value: &Value,
    verdict: Verdict,
    item: Option<SourceItem>,
    unit: &str,
) -> Result<(), TestCaseError> {
    match (verdict, item) {
        (Verdict::Request, Some(SourceItem::Request(request))) => {
            prop_assert_eq!(request.line, number);
            prop_assert_eq!(
                Some(request.custom_id.as_str()),
                value["custom_id"].as_str()
            );
            prop_assert_eq!(Some(request.url.as_str()), value["url"].as_str());
            let body: Value =
                serde_json::from_slice(&request.body).expect("a request's body is JSON");
            prop_assert!(body.is_object());
            prop_assert_eq!(body["model"].as_str(), request.model.as_deref());
            prop_assert!(
                request
                    .model
                    .as_deref()
                    .is_some_and(|model| !model.is_empty())
            );
            let stream_was = &value["body"]["stream"];
            if request.url.starts_with("/api/") || *stream_was == json!(true) {
                prop_assert_eq!(&body["stream"], &json!(false), "streaming is turned off");
            } else {
                prop_assert_eq!(&body["stream"], stream_was, "stream is left alone");
            }
        }
        (
            Verdict::Invalid {
                code,
                custom_id,
                field,
            },
            Some(SourceItem::Invalid(invalid)),
        ) => {
            prop_assert_eq!(invalid.line, number);
            prop_assert_eq!(invalid.code, code, "{}", invalid.message);
            prop_assert_eq!(invalid.custom_id, custom_id);
            let prefix = format!("{unit} {number}: ");
            prop_assert!(
                invalid.message.starts_with(&prefix),
                "{:?}",
                invalid.message
            );
            prop_assert!(
                invalid.message.contains(field),
                "{:?} does not name {}",
                invalid.message,
                field
            );
        }
        (verdict, item) => {
            prop_assert!(
                false,
                "{unit} {number} {value}: expected {verdict:?}, got {item:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let mut parser = RequestParser::new(None);
    for (number, line) in [
        "[".repeat(200_000),
        "[".repeat(100_000) + &"]".repeat(100_000),
        r#"{"custom_id":"a","body":"#.to_owned() + &"{\"a\":".repeat(50_000),
    ]
    .iter()
    .enumerate()
    {
        let number = number as u64 + 1;
        let item = parser.parse(RawLine::Line {
            number,
            bytes: line.as_bytes(),
        });
        match item {
            Some(SourceItem::Invalid(invalid)) => {
                assert_eq!(invalid.code, ErrorCode::InvalidJson, "{}", invalid.message);
                assert!(
                    invalid.message.starts_with(&format!("line {number}: ")),
                    "{}",
                    invalid.message
                );
            }
            other => panic!("line {number}: {other:?}"),
        }
    }
}

#[test]
fn body_numbers_are_sent_as_written() {
    let mut parser = RequestParser::new(None);
    let line = concat!(
        r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","#,
        r#""body":{"model":"m","temperature":132058065.63327253,"seed":18446744073709551616}}"#
    );
    let Some(SourceItem::Request(request)) = parser.parse(RawLine::Line {
        number: 1,
        bytes: line.as_bytes(),
    }) else {
        panic!("a valid line");
    };
    let sent = String::from_utf8(request.body.to_vec()).expect("UTF-8");
    for number in ["132058065.63327253", "18446744073709551616"] {
        assert!(
            sent.contains(number),
            "{number} is not in the body sent: {sent}"
        );
    }
}
