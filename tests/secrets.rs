//! An API key given through `--api-key-env` never leaves the process except in the
//! `Authorization` header: not on stdout, not on stderr at the most verbose level, not in the
//! stats file, the results file (raw bytes or decoded values) or its staging file, whether
//! requests succeed, fail, are retried, or the backend cannot be reached at all.

use crate::support;

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_schema::DataType;
use batchflow::mock::MockConfig;
use batchflow::sink::checkpoint;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use support::{Mock, Run, batchflow, chat_line, parse_output};

const KEY_VARIABLE: &str = "BATCHFLOW_TEST_SECRET_KEY";
/// Recognisable anywhere, and no part of it could come from the mock or the input.
const KEY: &str = "sk-test-Zq8vW3xY7kP2mN9rT4bL6cJ1hG5dF0sA";

/// Every form in which the key would show if it leaked: whole, as the header value, and its
/// distinctive middle (a cut-short or partly masked key).
fn leaks(text: &[u8]) -> Vec<&'static str> {
    [
        KEY,
        "Bearer sk-test",
        "Zq8vW3xY7kP2mN9r",
        "T4bL6cJ1hG5dF0sA",
    ]
    .into_iter()
    .filter(|needle| {
        text.windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
    .collect()
}

/// Every text value of the results file, decoded (its pages are compressed, so the raw bytes
/// alone would hide a leaked key). Other columns hold numbers and times, which cannot.
fn decoded_results(path: &Path) -> Vec<u8> {
    let file = File::open(path).expect("the results file exists");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("the results file is Parquet")
        .build()
        .expect("a reader");
    let mut text = Vec::new();
    let mut text_columns = HashSet::new();
    for batch in reader {
        let batch = batch.expect("a readable batch");
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if field.data_type() != &DataType::Utf8 {
                continue;
            }
            text_columns.insert(field.name().clone());
            for value in column.as_string::<i32>().iter().flatten() {
                text.extend_from_slice(value.as_bytes());
                text.push(b'\n');
            }
        }
    }
    for name in ["custom_id", "content", "error_message", "raw_response"] {
        assert!(
            text_columns.contains(name),
            "{name} was decoded: {text_columns:?}"
        );
    }
    text
}

/// Runs the binary with the key in its environment and `--api-key-env`, at the most verbose
/// level, writing every output there is into `dir`; checks that the key is in none of them and
/// returns the run.
fn run_with_key(dir: &Path, backend: &str, input: &str, extra: &[&str]) -> Run {
    let input_path = dir.join("input.jsonl");
    std::fs::write(&input_path, input).expect("write the input");
    let results = dir.join("results.parquet");
    let stats = dir.join("stats.json");
    let output = batchflow()
        .arg(&input_path)
        .args(["--backend", backend, "--api-key-env", KEY_VARIABLE])
        .args(["--jsonl", "-v", "--progress-interval", "10ms"])
        .arg("--output")
        .arg(&results)
        .arg("--stats")
        .arg(&stats)
        .args(extra)
        .env(KEY_VARIABLE, KEY)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let run = parse_output(output);
    let mut outputs = vec![
        ("stdout", run.stdout.clone().into_bytes()),
        ("stderr", run.stderr.clone().into_bytes()),
    ];
    if stats.exists() {
        outputs.push(("stats file", std::fs::read(&stats).expect("read")));
    }
    let staging = batchflow::paths::with_suffix(&results, checkpoint::STAGING_SUFFIX);
    if staging.exists() {
        outputs.push(("staging file", std::fs::read(&staging).expect("read")));
    }
    if results.exists() {
        outputs.push(("results file", std::fs::read(&results).expect("read")));
        outputs.push(("decoded results", decoded_results(&results)));
    }
    for (name, bytes) in &outputs {
        let found = leaks(bytes);
        assert!(found.is_empty(), "{name} holds {found:?}");
    }
    run
}

/// The output line of `custom_id`.
fn line_of<'a>(run: &'a Run, custom_id: &str) -> &'a Value {
    run.lines
        .iter()
        .find(|line| line["custom_id"] == custom_id)
        .unwrap_or_else(|| panic!("no output line for {custom_id}: {}", run.stdout))
}

#[test]
fn the_api_key_appears_in_no_output_when_requests_succeed_fail_and_are_retried() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let input = [
        chat_line("ok-1", "hello"),
        chat_line("server-error", "[mock:status=500] always fails"),
        chat_line("reset-once", "[mock:fail=1:reset] retried once"),
        chat_line("unauthorized", "[mock:status=401] refused"),
        chat_line("truncated-once", "[mock:fail=1:truncated] retried once"),
        "{not json".to_owned(),
        chat_line("ok-2", "bye"),
    ]
    .join("\n");
    let dir = tempfile::tempdir().expect("a temp dir");
    let run = run_with_key(
        dir.path(),
        &mock.url(),
        &input,
        &[
            "--retries",
            "2",
            "--retry-base",
            "1ms",
            "--retry-max",
            "2ms",
        ],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(run.lines.len(), 7);
    for id in ["ok-1", "ok-2", "reset-once", "truncated-once"] {
        assert!(line_of(&run, id)["error"].is_null(), "{id}: {}", run.stdout);
    }
    assert_eq!(
        line_of(&run, "server-error")["error"]["code"],
        "server_error"
    );
    assert_eq!(
        line_of(&run, "unauthorized")["error"]["code"],
        "client_error"
    );
    let stats = mock.server.stats();
    assert!(
        stats.resets == 1 && stats.truncated == 1 && stats.server_errors == 3,
        "the failures happened: {stats:?}"
    );
    for checked in ["results.parquet", "stats.json"] {
        assert!(dir.path().join(checked).exists(), "{checked} was written");
    }
    assert!(
        run.stderr.contains("DEBUG"),
        "verbose logging was on: {}",
        run.stderr
    );
}

#[test]
fn the_api_key_appears_in_no_output_when_the_backend_cannot_be_reached() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let backend = format!("127.0.0.1:{port}");
    let input = [chat_line("a", "one"), chat_line("b", "two")].join("\n");

    let dir = tempfile::tempdir().expect("a temp dir");
    let preflight = run_with_key(dir.path(), &backend, &input, &[]);
    assert_eq!(preflight.code(), Some(2), "{}", preflight.stderr);
    assert!(
        preflight.stderr.contains("no server at"),
        "{}",
        preflight.stderr
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let every_request = run_with_key(
        dir.path(),
        &backend,
        &input,
        &["--no-preflight", "--retries", "1", "--retry-base", "1ms"],
    );
    assert_eq!(every_request.code(), Some(1), "{}", every_request.stderr);
    assert_eq!(every_request.lines.len(), 2);
    for line in &every_request.lines {
        assert_eq!(line["error"]["code"], "connection_error", "{line}");
    }
}

#[test]
fn a_key_that_cannot_be_a_header_is_refused_without_being_printed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, chat_line("a", "one")).expect("write the input");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            "127.0.0.1:9",
            "--api-key-env",
            KEY_VARIABLE,
            "-v",
        ])
        .env(KEY_VARIABLE, format!("{KEY}\nsecond line"))
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("API key"), "{}", run.stderr);
    assert!(leaks(run.stderr.as_bytes()).is_empty(), "{}", run.stderr);
    assert!(leaks(run.stdout.as_bytes()).is_empty(), "{}", run.stdout);
}
