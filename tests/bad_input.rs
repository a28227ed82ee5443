//! The bad-input corpus: every way an input file or an output path can be wrong, run through
//! the real binary against the in-process mock. Each case states what a user must see: an
//! error naming the line, row, field or file; the exit code; and every other request still
//! processed and written exactly once, on standard output and in the results file alike.
//!
//! Corpus files live in `tests/bad_input/` (byte-exact: CRLF, BOMs, NUL bytes and invalid
//! UTF-8 are the point). Inputs that are too large or too exact to keep as files (ids thousands
//! of lines apart, lines of an exact length, a 100 MB line, Parquet files) are generated here.

use crate::support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch};
use batchflow::mock::MockConfig;
use batchflow::sink::checkpoint;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::{Mock, ResultRow, Run, batchflow, chat_line, parse_output, result_rows, strings};

fn fast_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 8,
        latency: Duration::ZERO,
        ..MockConfig::default()
    })
}

fn corpus_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_input")
        .join(name)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// An input line (or Parquet row) that must be refused, and how.
struct Bad {
    line: u64,
    custom_id: Option<String>,
    code: &'static str,
    /// A part of the message naming the field or the problem.
    says: String,
}

/// Where a case's input comes from.
enum Input {
    /// A file of `tests/bad_input/`, read in place.
    Corpus(&'static str),
    /// Bytes written to a temp file of this name.
    Generated(&'static str, Vec<u8>),
}

/// One case of the table: an input, extra flags, and what must come out.
struct Case {
    input: Input,
    args: Vec<String>,
    /// "line" for JSONL, "row" for Parquet: how messages count.
    unit: &'static str,
    ok: Vec<(u64, String)>,
    bad: Vec<Bad>,
    /// Case-specific checks of the run; each returns what is wrong.
    extra: Option<fn(&Run) -> Vec<String>>,
}

impl Case {
    fn corpus(name: &'static str) -> Case {
        Case::new(Input::Corpus(name))
    }

    fn generated(name: &'static str, bytes: Vec<u8>) -> Case {
        Case::new(Input::Generated(name, bytes))
    }

    fn new(input: Input) -> Case {
        Case {
            input,
            args: Vec::new(),
            unit: "line",
            ok: Vec::new(),
            bad: Vec::new(),
            extra: None,
        }
    }

    fn name(&self) -> &str {
        match &self.input {
            Input::Corpus(name) | Input::Generated(name, _) => name,
        }
    }

    fn args(mut self, args: &[&str]) -> Case {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    fn rows(mut self) -> Case {
        self.unit = "row";
        self
    }

    /// Line `line` is a valid request with this id: it is sent and succeeds.
    fn ok(mut self, line: u64, custom_id: impl Into<String>) -> Case {
        self.ok.push((line, custom_id.into()));
        self
    }

    /// Line `line` is refused with `code`, a message naming it and containing `says`; the
    /// output line carries `custom_id` when the line had a usable one.
    fn bad(mut self, line: u64, custom_id: Option<&str>, code: &'static str, says: &str) -> Case {
        self.bad.push(Bad {
            line,
            custom_id: custom_id.map(str::to_owned),
            code,
            says: says.to_owned(),
        });
        self
    }

    fn extra(mut self, check: fn(&Run) -> Vec<String>) -> Case {
        self.extra = Some(check);
        self
    }

    /// Runs the case with both outputs (JSONL on stdout and a results file) and lists every
    /// way the outcome differs from the expected one.
    fn check(&self) -> Vec<String> {
        let mock = fast_mock();
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = match &self.input {
            Input::Corpus(name) => corpus_file(name),
            Input::Generated(name, bytes) => {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).expect("write the input");
                path
            }
        };
        let results = dir.path().join("results.parquet");
        let output = batchflow()
            .arg(&input)
            .args(["--backend", &mock.url(), "--quiet", "--jsonl", "--output"])
            .arg(&results)
            .args(&self.args)
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        let run = parse_output(output);
        let mut problems = Vec::new();
        let expected_code = if self.bad.is_empty() { 0 } else { 1 };
        if run.code() != Some(expected_code) {
            problems.push(format!(
                "exit code {:?}, expected {expected_code}",
                run.code()
            ));
        }
        if run.stderr.contains("panicked") {
            problems.push("a panic".into());
        }
        if run.lines.len() != self.ok.len() + self.bad.len() {
            problems.push(format!(
                "{} output lines for {} non-blank input lines",
                run.lines.len(),
                self.ok.len() + self.bad.len()
            ));
        }
        for (line, id) in &self.ok {
            let matching = run
                .lines
                .iter()
                .filter(|output| output["custom_id"] == id.as_str() && output["error"].is_null())
                .filter(|output| output["response"]["status_code"] == 200)
                .count();
            if matching != 1 {
                problems.push(format!(
                    "{} {line} ({id}): {matching} successful output lines",
                    self.unit
                ));
            }
        }
        for bad in &self.bad {
            let prefix = format!("{} {}: ", self.unit, bad.line);
            let matching: Vec<_> = run
                .lines
                .iter()
                .filter(|output| {
                    output["error"]["message"]
                        .as_str()
                        .is_some_and(|message| message.starts_with(&prefix))
                })
                .collect();
            let [output] = matching.as_slice() else {
                problems.push(format!(
                    "{} output lines name {prefix:?}: {matching:?}",
                    matching.len()
                ));
                continue;
            };
            let message = output["error"]["message"].as_str().unwrap_or_default();
            if output["error"]["code"] != bad.code {
                problems.push(format!(
                    "{prefix}code {}, not {}",
                    output["error"], bad.code
                ));
            }
            if !message.contains(&bad.says) {
                problems.push(format!("{message:?} does not say {:?}", bad.says));
            }
            if output["custom_id"].as_str() != bad.custom_id.as_deref() {
                problems.push(format!(
                    "{prefix}custom_id {}, not {:?}",
                    output["custom_id"], bad.custom_id
                ));
            }
            if !run.stderr.contains(message) {
                problems.push(format!("stderr does not log {message:?}"));
            }
        }
        let mut expected_rows: Vec<ResultRow> = self
            .ok
            .iter()
            .map(|(line, id)| (Some(id.clone()), *line as i64, None))
            .chain(self.bad.iter().map(|bad| {
                (
                    bad.custom_id.clone(),
                    bad.line as i64,
                    Some(bad.code.to_owned()),
                )
            }))
            .collect();
        expected_rows.sort();
        if !results.exists() {
            problems.push("no results file".into());
        } else {
            let rows = result_rows(&results);
            if rows != expected_rows {
                problems.push(format!(
                    "results file rows {rows:?}, expected {expected_rows:?}"
                ));
            }
        }
        let sent = mock.server.stats().requests;
        if sent != self.ok.len() as u64 {
            problems.push(format!(
                "the mock got {sent} requests, expected {}",
                self.ok.len()
            ));
        }
        if let Some(extra) = self.extra {
            problems.extend(extra(&run));
        }
        if !problems.is_empty() {
            problems.push(format!("stderr: {}", run.stderr));
        }
        problems
    }
}

/// Runs every case and reports all that fail, not only the first.
fn check_all(cases: &[Case]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let problems = case.check();
            (!problems.is_empty())
                .then(|| format!("case {}:\n  {}", case.name(), problems.join("\n  ")))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reply's content in the successful output line of `custom_id`.
fn content<'a>(run: &'a Run, custom_id: &str) -> Option<&'a str> {
    run.lines
        .iter()
        .find(|line| line["custom_id"] == custom_id && line["error"].is_null())
        .and_then(|line| line["response"]["body"]["message"]["content"].as_str())
}

fn content_is(run: &Run, custom_id: &str, expected: &str) -> Vec<String> {
    let got = content(run, custom_id);
    if got == Some(expected) {
        Vec::new()
    } else {
        vec![format!("{custom_id} got content {got:?}, not {expected:?}")]
    }
}

/// How a `url` that is not a path on the backend is refused, up to the value found.
const URL_PATH: &str =
    r#"url must be a path on the backend such as "/v1/chat/completions", found "#;

fn jsonl_corpus() -> Vec<Case> {
    // The error codes: a line that is not JSON, and one whose fields are wrong.
    let (json, field) = ("invalid_json", "invalid_request");
    vec![
        Case::corpus("not_json.jsonl")
            .ok(1, "ok-1")
            .bad(2, None, json, "not valid JSON")
            .bad(3, None, json, "not valid JSON")
            .bad(4, None, json, "not valid JSON")
            .ok(5, "ok-2"),
        Case::corpus("truncated_last_line.jsonl")
            .ok(1, "ok-1")
            .ok(2, "ok-2")
            .bad(3, None, json, "not valid JSON"),
        Case::corpus("unterminated_last_line.jsonl")
            .ok(1, "ok-1")
            .ok(2, "ok-2"),
        Case::corpus("not_an_object.jsonl")
            .ok(1, "ok-1")
            .bad(
                2,
                None,
                field,
                "expected a JSON object with custom_id, method, url and body, found an array",
            )
            .bad(3, None, field, "found an array")
            .bad(4, None, field, "found a string")
            .bad(5, None, field, "found a number")
            .bad(6, None, field, "found null")
            .bad(7, None, field, "found a boolean")
            .ok(8, "ok-2"),
        Case::corpus("custom_id.jsonl")
            .ok(1, "ok-1")
            .bad(2, None, field, "missing custom_id")
            .bad(3, None, field, "custom_id is empty")
            .bad(4, None, field, "custom_id must be a string, found a number")
            .bad(5, None, field, "custom_id must be a string, found null")
            .bad(6, None, field, "custom_id must be a string, found an array")
            .bad(
                7,
                None,
                field,
                "custom_id must be a string, found an object",
            )
            .bad(
                8,
                None,
                field,
                "custom_id is 1025 bytes, longer than the limit of 1024",
            )
            .ok(9, "y".repeat(1024))
            .bad(
                10,
                None,
                field,
                "custom_id is 1026 bytes, longer than the limit of 1024",
            )
            .ok(11, "é".repeat(512))
            .ok(12, "ok-2"),
        Case::corpus("method.jsonl")
            .ok(1, "ok-1")
            .bad(
                2,
                Some("get"),
                field,
                r#"method must be "POST", found "GET""#,
            )
            .bad(3, Some("no-method"), field, "missing method")
            .bad(
                4,
                Some("number-method"),
                field,
                r#"method must be "POST", found 1"#,
            )
            .bad(
                5,
                Some("put"),
                field,
                r#"method must be "POST", found "PUT""#,
            )
            .ok(6, "ok-2"),
        Case::corpus("url.jsonl")
            .ok(1, "ok-1")
            .bad(2, Some("no-url"), field, "missing url")
            .bad(
                3,
                Some("other-host"),
                field,
                &format!(r#"{URL_PATH}"http://evil.example/api/chat""#),
            )
            .bad(
                4,
                Some("scheme-relative"),
                field,
                &format!(r#"{URL_PATH}"//evil.example/api/chat""#),
            )
            .bad(
                5,
                Some("relative"),
                field,
                &format!(r#"{URL_PATH}"api/chat""#),
            )
            .bad(6, Some("number-url"), field, &format!("{URL_PATH}7"))
            .ok(7, "ok-2"),
        Case::corpus("body.jsonl")
            .ok(1, "ok-1")
            .bad(
                2,
                Some("text-body"),
                field,
                "body must be a JSON object, found a string",
            )
            .bad(
                3,
                Some("array-body"),
                field,
                "body must be a JSON object, found an array",
            )
            .bad(
                4,
                Some("number-body"),
                field,
                "body must be a JSON object, found a number",
            )
            .bad(
                5,
                Some("null-body"),
                field,
                "body must be a JSON object, found null",
            )
            .bad(6, Some("no-body"), field, "missing body")
            .ok(7, "ok-2"),
        Case::corpus("invalid_utf8.jsonl")
            .ok(1, "ok-1")
            .bad(2, None, json, "not valid UTF-8")
            .bad(3, None, json, "not valid UTF-8")
            .bad(4, None, json, "not valid UTF-8")
            .ok(5, "ok-2")
            .extra(|run| content_is(run, "ok-2", "Mock reply from llama3.2: héllo, 日本語 🙂")),
        // Only a byte-order mark at the very start of the input is ignored.
        Case::corpus("bom.jsonl")
            .ok(1, "ok-1")
            .bad(2, None, json, "not valid JSON")
            .ok(3, "ok-2"),
        // CRLF and LF mixed, with blank lines of both kinds: blank lines still count.
        Case::corpus("crlf.jsonl")
            .ok(1, "ok-1")
            .ok(3, "ok-2")
            .ok(4, "ok-3")
            .ok(6, "ok-4"),
        Case::corpus("nul_bytes.jsonl")
            .ok(1, "ok-1")
            .bad(2, None, json, "control character")
            .bad(3, None, json, "trailing characters")
            .bad(4, None, json, "not valid JSON")
            .ok(5, "escaped-nul")
            .ok(6, "ok-2")
            .extra(|run| content_is(run, "escaped-nul", "Mock reply from llama3.2: a\0b")),
        Case::corpus("empty.jsonl"),
        Case::corpus("blank_lines.jsonl"),
    ]
}

#[test]
fn every_bad_line_of_the_corpus_is_named_and_the_rest_is_processed() {
    check_all(&jsonl_corpus());
}

/// `count` chat lines, each ending in `\n`, with ids `req-{first}…`.
fn numbered_lines(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|index| chat_line(&format!("req-{index}"), &format!("question {index}")) + "\n")
        .collect()
}

/// A chat line exactly `length` bytes long (without its line end).
fn line_of_length(custom_id: &str, length: usize) -> String {
    let bare = chat_line(custom_id, "");
    let line = chat_line(custom_id, &"p".repeat(length - bare.len()));
    assert_eq!(line.len(), length);
    line
}

#[test]
fn duplicate_ids_thousands_of_lines_apart_are_caught_and_the_first_use_is_kept() {
    // Farther apart than every buffer between the reader and the writer.
    const BETWEEN: usize = 3000;
    let mut input = chat_line("twin", "first") + "\n";
    input.push_str(&numbered_lines(0, BETWEEN));
    input.push_str(&(chat_line("twin", "second") + "\n"));
    input.push_str(&(chat_line("twin", "third") + "\n"));
    let mut case = Case::generated("duplicates.jsonl", input.into_bytes()).ok(1, "twin");
    for index in 0..BETWEEN {
        case = case.ok(index as u64 + 2, format!("req-{index}"));
    }
    let says = r#"custom_id "twin" is already used by line 1"#;
    let last = BETWEEN as u64 + 2;
    let case = case
        .bad(last, Some("twin"), "duplicate_custom_id", says)
        .bad(last + 1, Some("twin"), "duplicate_custom_id", says)
        .extra(|run| content_is(run, "twin", "Mock reply from llama3.2: first"))
        .args(&["--workers", "8"]);
    check_all(&[case]);
}

#[test]
fn a_line_over_max_line_bytes_is_refused_by_number_and_one_at_the_limit_is_not() {
    let input = [
        chat_line("ok-1", "hi"),
        line_of_length("at-limit", 200),
        line_of_length("one-over", 201),
        line_of_length("far-over", 5000),
        chat_line("ok-2", "hi"),
    ]
    .join("\n")
        + "\n";
    let case = Case::generated("long_lines.jsonl", input.into_bytes())
        .args(&["--max-line-bytes", "200"])
        .ok(1, "ok-1")
        .ok(2, "at-limit")
        .bad(
            3,
            None,
            "line_too_long",
            "201 bytes is longer than --max-line-bytes",
        )
        .bad(
            4,
            None,
            "line_too_long",
            "5000 bytes is longer than --max-line-bytes",
        )
        .ok(5, "ok-2");
    check_all(&[case]);
}

#[test]
fn the_line_limit_does_not_count_a_crlf_line_end() {
    let input = line_of_length("at-limit", 200) + "\r\n";
    let case = Case::generated("crlf_at_limit.jsonl", input.into_bytes())
        .args(&["--max-line-bytes", "200"])
        .ok(1, "at-limit");
    check_all(&[case]);
}

#[test]
fn a_json_error_message_names_only_the_input_line() {
    let mock = fast_mock();
    for name in ["not_json.jsonl", "invalid_utf8.jsonl", "nul_bytes.jsonl"] {
        let run = run_on(&mock, &corpus_file(name), &[]);
        assert_eq!(run.code(), Some(1), "{}", run.stderr);
        for line in run.error_lines() {
            let message = line["error"]["message"].as_str().expect("a message");
            assert_eq!(message.matches("line").count(), 1, "{name}: {message}");
        }
    }
}

fn parquet_bytes(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
    let batch = RecordBatch::try_from_iter(columns).expect("columns of equal length");
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).expect("a writer");
    writer.write(&batch).expect("write a batch");
    writer.close().expect("close");
    bytes
}

/// Requests as Parquet rows with a text `body` column; `None` leaves a field null.
fn request_rows(rows: &[[Option<&str>; 4]]) -> Vec<u8> {
    let column = |index: usize| strings(rows.iter().map(|row| row[index]));
    parquet_bytes(vec![
        ("custom_id", column(0)),
        ("method", column(1)),
        ("url", column(2)),
        ("body", column(3)),
    ])
}

const BODY: &str = r#"{"model": "llama3.2", "prompt": "hi"}"#;

fn good_rows(count: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..count).map(|index| format!("row-{index}")).collect();
    let rows: Vec<[Option<&str>; 4]> = ids
        .iter()
        .map(|id| {
            [
                Some(id.as_str()),
                Some("POST"),
                Some("/api/generate"),
                Some(BODY),
            ]
        })
        .collect();
    request_rows(&rows)
}

#[test]
fn bad_parquet_rows_are_named_by_row_and_the_rest_is_processed() {
    let input = request_rows(&[
        [
            Some("row-1"),
            Some("POST"),
            Some("/api/generate"),
            Some(BODY),
        ],
        [None, Some("POST"), Some("/api/generate"), Some(BODY)],
        [Some("get"), Some("GET"), Some("/api/generate"), Some(BODY)],
        [
            Some("far"),
            Some("POST"),
            Some("https://evil.example/x"),
            Some(BODY),
        ],
        [
            Some("array"),
            Some("POST"),
            Some("/api/generate"),
            Some("[1]"),
        ],
        [
            Some("text"),
            Some("POST"),
            Some("/api/generate"),
            Some("{oops"),
        ],
        [Some("no-body"), Some("POST"), Some("/api/generate"), None],
        [
            Some("row-1"),
            Some("POST"),
            Some("/api/generate"),
            Some(BODY),
        ],
        [
            Some("row-9"),
            Some("POST"),
            Some("/api/generate"),
            Some(BODY),
        ],
    ]);
    let case = Case::generated("rows.parquet", input)
        .rows()
        .ok(1, "row-1")
        .bad(2, None, "invalid_request", "missing custom_id")
        .bad(3, Some("get"), "invalid_request", "method must be \"POST\"")
        .bad(4, Some("far"), "invalid_request", "url must be a path")
        .bad(
            5,
            Some("array"),
            "invalid_request",
            "body must be a JSON object, found an array",
        )
        .bad(
            6,
            Some("text"),
            "invalid_json",
            "body is text but not valid JSON",
        )
        .bad(7, Some("no-body"), "invalid_request", "missing body")
        .bad(
            8,
            Some("row-1"),
            "duplicate_custom_id",
            "already used by row 1",
        )
        .ok(9, "row-9");
    check_all(&[case]);
}

/// Expects a run that stopped before sending anything: exit 2, no output, and one line on
/// stderr that names `path` and says each of `words`.
fn assert_refused(run: &Run, path: &Path, words: &[&str]) {
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let stderr = run.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    assert!(stderr.starts_with("batchflow: "), "{stderr}");
    for word in std::iter::once(utf8(path)).chain(words.iter().copied()) {
        assert!(stderr.contains(word), "no {word:?} in {stderr}");
    }
}

/// Runs the binary on `input` (quietly, against `mock`) with `args`.
fn run_on(mock: &Mock, input: &Path, args: &[&str]) -> Run {
    let output = batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    parse_output(output)
}

#[test]
fn a_parquet_input_that_is_not_parquet_truncated_or_without_columns_is_refused_at_once() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let results = dir.path().join("results.parquet");

    let whole = good_rows(50);
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    // Without the .parquet name it is still known by its magic bytes.
    let truncated_unnamed = dir.path().join("truncated.bin");
    std::fs::write(&truncated_unnamed, &whole[..whole.len() - 9]).expect("write");
    let missing = dir.path().join("missing.parquet");
    std::fs::write(
        &missing,
        parquet_bytes(vec![
            ("custom_id", strings([Some("a")])),
            ("body", strings([Some(BODY)])),
            ("prompt", strings([Some("hi")])),
        ]),
    )
    .expect("write");

    let cases: [(&Path, &[&str]); 4] = [
        (&corpus_file("not_parquet.parquet"), &["as Parquet"]),
        (&truncated, &["as Parquet"]),
        (&truncated_unnamed, &["as Parquet"]),
        (
            &missing,
            &["lacks the column(s) method, url", "custom_id, body, prompt"],
        ),
    ];
    for (input, words) in cases {
        let run = run_on(&mock, input, &["--output", utf8(&results)]);
        assert_refused(&run, input, words);
        assert!(!results.exists(), "no results file for {}", input.display());
    }
    assert_eq!(mock.server.stats().requests, 0);
}

#[test]
fn an_output_in_a_missing_folder_or_that_is_a_directory_is_refused_and_left_alone() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, numbered_lines(0, 5)).expect("write the input");

    let missing = dir.path().join("no-such-folder/results.parquet");
    let run = run_on(&mock, &input, &["--output", utf8(&missing)]);
    assert_refused(&run, &missing, &["--output", "does not exist"]);
    assert!(!dir.path().join("no-such-folder").exists());

    let folder = dir.path().join("results.parquet");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("keep.txt"), "precious").expect("write");
    for (mode, says) in [
        (None, "is a directory, not a regular file"),
        (Some("--overwrite"), "is a directory, not a regular file"),
        (Some("--resume"), "is a directory, not a regular file"),
    ] {
        let mut args = vec!["--output", utf8(&folder)];
        args.extend(mode);
        let run = run_on(&mock, &input, &args);
        assert_refused(&run, &folder, &[says]);
        assert!(folder.is_dir(), "{mode:?}");
        assert_eq!(
            std::fs::read_to_string(folder.join("keep.txt")).expect("still there"),
            "precious"
        );
        let entries = std::fs::read_dir(&folder).expect("list").count();
        assert_eq!(entries, 1, "{mode:?} added nothing to the folder");
        assert!(
            !batchflow::paths::with_suffix(&folder, checkpoint::STAGING_SUFFIX).exists(),
            "{mode:?}"
        );
    }
    assert_eq!(mock.server.stats().requests, 0);
}

#[test]
fn an_output_in_a_read_only_folder_is_refused_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    // Readable by the unprivileged user the binary may run as below.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, numbered_lines(0, 5)).expect("write the input");
    let folder = dir.path().join("read-only");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let results = folder.join("results.parquet");

    let mut command = batchflow();
    command
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output"])
        .arg(&results)
        .stdin(Stdio::null());
    // Root ignores folder permissions; the binary then runs as `nobody` so that they apply.
    let probe = folder.join("probe");
    if File::create(&probe).is_ok() {
        std::fs::remove_file(&probe).expect("remove the probe");
        command.uid(65534).gid(65534);
    }
    let run = parse_output(command.output().expect("the binary runs"));
    assert_refused(&run, &results, &["Permission denied"]);
    assert_eq!(std::fs::read_dir(&folder).expect("list").count(), 0);
    assert_eq!(mock.server.stats().requests, 0);
}

const FILLED_INPUT_LINES: usize = 3000;

/// Runs the binary on `FILLED_INPUT_LINES` requests with `--output` in `dir`, under a file
/// size limit that the results file reaches mid-run. Returns the run and the results path.
fn run_until_the_disk_is_full(mock: &Mock, dir: &Path) -> (Run, PathBuf, PathBuf) {
    let input = dir.join("input.jsonl");
    std::fs::write(&input, numbered_lines(0, FILLED_INPUT_LINES)).expect("write the input");
    let results = dir.join("results.parquet");
    // RLIMIT_FSIZE stands in for a full disk: with SIGXFSZ ignored, a write past the limit
    // fails with EFBIG, as one on a full disk fails with ENOSPC.
    let output = Command::new("bash")
        .args([
            "-c",
            r#"trap '' XFSZ; ulimit -f 256; exec "$@""#,
            "bash",
            env!("CARGO_BIN_EXE_batchflow"),
        ])
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--checkpoint-rows",
            "50",
        ])
        .arg("--output")
        .arg(&results)
        .env_remove("OLLAMA_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    (parse_output(output), input, results)
}

#[test]
fn a_disk_that_fills_mid_run_exits_2_naming_the_file_and_the_checkpoint_before_it_resumes() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (full, input, results) = run_until_the_disk_is_full(&mock, dir.path());
    assert_eq!(full.code(), Some(2), "{}", full.stderr);
    let stderr = full.stderr.trim();
    assert!(
        stderr.contains(utf8(&results)) && stderr.contains("File too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let durable = checkpoint::inspect(&results)
        .unwrap_or_else(|error| panic!("the last checkpoint is readable: {error}"))
        .rows();
    assert!(
        durable > 0 && durable < FILLED_INPUT_LINES as u64,
        "the disk filled mid-run, after {durable} durable rows"
    );
    let sent_before = mock.server.stats().requests;

    let resumed = run_on(&mock, &input, &["--output", utf8(&results), "--resume"]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let rows = result_rows(&results);
    let mut ids: Vec<String> = rows
        .iter()
        .map(|(id, _, code)| {
            assert_eq!(code, &None, "{id:?} failed");
            id.clone().expect("custom_id")
        })
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..FILLED_INPUT_LINES)
        .map(|index| format!("req-{index}"))
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "each custom_id exactly once");
    assert_eq!(
        mock.server.stats().requests - sent_before,
        FILLED_INPUT_LINES as u64 - durable,
        "the resume sent exactly the requests without a durable row"
    );
}

#[test]
fn after_a_full_disk_what_stderr_says_about_the_results_file_is_true() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (full, _, results) = run_until_the_disk_is_full(&mock, dir.path());
    assert_eq!(full.code(), Some(2), "{}", full.stderr);
    if full.stderr.contains("is closed and readable") {
        let durable = checkpoint::inspect(&results).expect("a checkpoint").rows();
        let readable = File::open(&results)
            .map_err(|error| error.to_string())
            .and_then(|file| {
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|error| error.to_string())
            });
        match readable {
            Ok(reader) => assert_eq!(
                reader.metadata().file_metadata().num_rows() as u64,
                durable,
                "the file holds its durable rows"
            ),
            Err(error) => panic!(
                "stderr says the file is readable, but a Parquet reader says: {error}\n{}",
                full.stderr
            ),
        }
    }
}

#[test]
fn an_input_that_fails_to_read_does_not_leave_a_results_file_marked_complete() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    // A folder opens like a file but fails at the first read (EISDIR).
    let input = dir.path().join("requests.jsonl");
    std::fs::create_dir(&input).expect("mkdir");
    let results = dir.path().join("results.parquet");
    let run = run_on(&mock, &input, &["--output", utf8(&results)]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains(utf8(&input)), "{}", run.stderr);
    if results.exists() {
        let state = checkpoint::inspect(&results)
            .expect("a readable results file")
            .state();
        assert_ne!(
            state,
            Some(checkpoint::FileState::Complete),
            "the input was never read, yet the results file says the run reached its end"
        );
    }
}

/// Peak resident memory of a child, from `wait4(2)`: the kernel's own high-water mark for that
/// one process, whatever ran beside it.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
/// Runs a records pipeline (`records.jsonl` in `dir`, prompt `Rate {{name}}`) to
/// `results.parquet`.
fn run_records(mock: &Mock, dir: &Path, records: &str) -> Run {
    std::fs::write(dir.join("records.jsonl"), records).expect("write records");
    let pipeline = dir.join("pipe.toml");
    let text = format!(
        "[source]\npath = \"records.jsonl\"\n\n[request]\nmodel = \"llama3.2\"\nprompt = \"Rate {{{{name}}}}\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\nparquet = \"results.parquet\"\n",
        mock.url()
    );
    std::fs::write(&pipeline, text).expect("write the pipeline");
    let output = batchflow()
        .args(["run", utf8(&pipeline)])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    parse_output(output)
}

#[test]
fn identical_records_are_named_by_both_lines_with_how_to_give_ids() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let records = "{\"name\":\"Ada\",\"bio\":\"x\"}\n{\"name\":\"Bob\",\"bio\":\"y\"}\n{\"name\":\"Cy\",\"bio\":\"z\"}\n{\"bio\":\"y\",\"name\":\"Bob\"}\n";
    let run = run_records(&mock, dir.path(), records);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let rows = result_rows(&dir.path().join("results.parquet"));
    let duplicate = rows
        .iter()
        .find(|(_, line, _)| *line == 4)
        .expect("line 4 has a row");
    assert_eq!(duplicate.2.as_deref(), Some("duplicate_custom_id"));
    let id = duplicate.0.clone().expect("the duplicate row keeps its id");
    assert!(id.starts_with("rec-"), "{id}");
    let says = format!("line 4: custom_id \"{id}\" is already used by line 2");
    assert!(run.stderr.contains(&says), "{}", run.stderr);
    for hint in ["made from the record's content", "source.id_column"] {
        assert!(run.stderr.contains(hint), "no {hint:?} in {}", run.stderr);
    }
    assert_eq!(rows.len(), 4, "{rows:?}");
}

#[test]
fn status_after_a_duplicate_suggests_the_fix_and_not_retry_errors() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let records = "{\"name\":\"Ada\"}\n{\"name\":\"Ada\"}\n{\"name\":\"Bob\"}\n";
    let run = run_records(&mock, dir.path(), records);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let status = batchflow()
        .args(["status", utf8(&dir.path().join("results.parquet"))])
        .output()
        .expect("status runs");
    let report = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{report}");
    assert!(
        report.contains("rows:       3 (ok 2, failed 0, invalid 1)"),
        "{report}"
    );
    assert!(!report.contains("--retry-errors"), "{report}");
    assert!(report.contains("duplicates: 1 lines"), "{report}");
    assert!(report.contains("source.id_column"), "{report}");
}

#[test]
fn status_counts_failed_requests_apart_from_duplicate_lines() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = [
        chat_line("a", "hi"),
        chat_line("a", "again"),
        chat_line("gone", "x [mock:fail=9:404]"),
    ]
    .join("\n");
    let input_path = dir.path().join("input.jsonl");
    std::fs::write(&input_path, input + "\n").expect("write input");
    let results = dir.path().join("results.parquet");
    let run = run_on(&mock, &input_path, &["--output", utf8(&results)]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let status = batchflow()
        .args(["status", utf8(&results)])
        .output()
        .expect("status runs");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        report.contains("rows:       3 (ok 1, failed 1, invalid 1)"),
        "{report}"
    );
    assert!(
        report.contains("--resume --retry-errors sends the 1 failed requests again"),
        "{report}"
    );
    assert!(report.contains("duplicates: 1 lines"), "{report}");
}

mod peak_memory {
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, ExitStatus};

    unsafe extern "C" {
        /// `usage` points at a `struct rusage`: on 64-bit Linux two `struct timeval`s (4 longs)
        /// then 14 longs, the first of which is `ru_maxrss` in KiB.
        fn wait4(pid: i32, status: *mut i32, options: i32, usage: *mut i64) -> i32;
    }

    /// Reaps `child` (so `Child::wait` must not be called on it) and returns how it ended and
    /// its peak resident set size in bytes.
    pub fn wait(child: Child) -> (ExitStatus, u64) {
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        let mut status = 0;
        let mut usage = [0i64; 18];
        loop {
            // SAFETY: `status` and `usage` are valid for writes of an int and a
            // `struct rusage` (144 bytes on 64-bit Linux) for the duration of the call.
            let reaped = unsafe { wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
            if reaped == pid {
                break;
            }
            let error = io::Error::last_os_error();
            assert_eq!(error.kind(), io::ErrorKind::Interrupted, "wait4: {error}");
        }
        let peak_kib = u64::try_from(usage[4]).expect("ru_maxrss is not negative");
        (ExitStatus::from_raw(status), peak_kib * 1024)
    }
}

/// Runs the binary on `input` with stdout and stderr going to files, and returns the run and
/// its peak memory in bytes.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn run_measuring_memory(mock: &Mock, dir: &Path, input: &Path) -> (Run, u64) {
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let child = batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--quiet"])
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("the binary starts");
    let (status, peak) = peak_memory::wait(child);
    let run = parse_output(std::process::Output {
        status,
        stdout: std::fs::read(&stdout_path).expect("stdout"),
        stderr: std::fs::read(&stderr_path).expect("stderr"),
    });
    (run, peak)
}

#[test]
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn a_100_mb_line_is_refused_by_line_number_without_being_held_in_memory() {
    const LINE_CONTENT: usize = 100 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");

    let small = dir.path().join("small.jsonl");
    std::fs::write(&small, numbered_lines(0, 3)).expect("write");
    let (baseline_run, baseline) = run_measuring_memory(&mock, dir.path(), &small);
    assert_eq!(baseline_run.code(), Some(0), "{}", baseline_run.stderr);

    let input = dir.path().join("huge.jsonl");
    let mut file = BufWriter::new(File::create(&input).expect("create the input"));
    file.write_all(numbered_lines(0, 1).as_bytes())
        .expect("write");
    let marked = chat_line("huge", "#");
    let (head, tail) = marked
        .split_once('#')
        .expect("the prompt marker is in the line");
    file.write_all(head.as_bytes()).expect("write");
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..LINE_CONTENT / chunk.len() {
        file.write_all(&chunk).expect("write");
    }
    file.write_all(tail.as_bytes()).expect("write");
    file.write_all(b"\n").expect("write");
    file.write_all(numbered_lines(1, 1).as_bytes())
        .expect("write");
    file.into_inner()
        .expect("flush")
        .sync_all()
        .expect("written");
    let line_length = head.len() + LINE_CONTENT + tail.len();

    let (run, peak) = run_measuring_memory(&mock, dir.path(), &input);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(run.lines.len(), 3, "{}", run.stdout);
    for id in ["req-0", "req-1"] {
        assert!(
            run.lines
                .iter()
                .any(|line| line["custom_id"] == id && line["error"].is_null()),
            "{id} was processed: {}",
            run.stdout
        );
    }
    let refused: Vec<_> = run.error_lines();
    assert_eq!(refused.len(), 1, "{}", run.stdout);
    assert_eq!(refused[0]["error"]["code"], "line_too_long");
    assert_eq!(
        refused[0]["error"]["message"],
        format!("line 2: {line_length} bytes is longer than --max-line-bytes")
    );
    assert!(run.stderr.contains("line 2: "), "{}", run.stderr);
    // The reader may hold up to the 16 MiB limit of the line before refusing it; holding the
    // line (or a copy) would take 100 MiB or more.
    assert!(
        peak < 64 * MIB,
        "peak memory {} MiB for a {} MiB line (a 3-line run peaks at {} MiB)",
        peak / MIB,
        line_length as u64 / MIB,
        baseline / MIB
    );
    assert_eq!(mock.server.stats().requests, 5);
}
