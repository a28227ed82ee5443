//! Shared test harness: an in-process mock Ollama server on 127.0.0.1:0, request-line
//! builders, and a runner for the real `batchflow` binary.

pub mod s3;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use batchflow::mock::{MockConfig, MockServer};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

/// A mock server with the runtime that drives it; both live as long as this value.
pub struct Mock {
    pub server: MockServer,
    _runtime: tokio::runtime::Runtime,
}

impl Mock {
    pub fn start(config: MockConfig) -> Mock {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the mock");
        let server = runtime
            .block_on(MockServer::start(config))
            .expect("the mock binds 127.0.0.1:0");
        Mock {
            server,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

/// The binary, with no inherited `OLLAMA_HOST` to point it elsewhere.
pub fn batchflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchflow"));
    command.env_remove("OLLAMA_HOST");
    command
}

/// A chat request line whose prompt is `prompt`.
pub fn chat_line(custom_id: &str, prompt: &str) -> String {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/api/chat",
        "body": {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]},
    })
    .to_string()
}

/// `count` chat lines with ids `req-0…` and prompts `question N`.
pub fn chat_lines(count: usize) -> String {
    (0..count)
        .map(|index| chat_line(&format!("req-{index}"), &format!("question {index}")) + "\n")
        .collect()
}

/// A finished run of the binary.
pub struct Run {
    pub status: ExitStatus,
    pub lines: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Output lines by custom_id (ids must be unique).
    pub fn by_id(&self) -> HashMap<String, Value> {
        let mut map = HashMap::new();
        for line in &self.lines {
            let id = line["custom_id"].as_str().expect("custom_id").to_owned();
            assert!(
                map.insert(id.clone(), line.clone()).is_none(),
                "duplicate output for {id}"
            );
        }
        map
    }

    pub fn ok_lines(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|line| line["error"].is_null())
            .collect()
    }

    pub fn error_lines(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|line| !line["error"].is_null())
            .collect()
    }
}

/// Writes `input` to a file in `dir` and runs the binary on it with `args`.
pub fn run_file(dir: &Path, input: &str, args: &[&str]) -> Run {
    let path = write_input(dir, input);
    let mut command = batchflow();
    command.arg(&path).args(args);
    finish(command.stdin(Stdio::null()))
}

/// Runs the binary with `input` on standard input.
pub fn run_stdin(input: &str, args: &[&str]) -> Run {
    let mut child = batchflow()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        // The binary may exit before reading everything (that is what some tests check).
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("the binary runs");
    writer.join().expect("the writer thread");
    parse_output(output)
}

pub fn write_input(dir: &Path, input: &str) -> PathBuf {
    let path = dir.join("input.jsonl");
    std::fs::write(&path, input).expect("write input");
    path
}

fn finish(command: &mut Command) -> Run {
    let output = command.output().expect("the binary runs");
    parse_output(output)
}

pub fn parse_output(output: std::process::Output) -> Run {
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("invalid output line {line:?}: {error}"))
        })
        .collect();
    Run {
        status: output.status,
        lines,
        stdout,
        stderr,
    }
}

/// One row of a results file: custom_id, request_line, error_code.
pub type ResultRow = (Option<String>, i64, Option<String>);

/// Every record batch of the Parquet file at `path`, in order.
pub fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("a reader")
        .map(|batch| batch.expect("a readable batch"))
        .collect()
}

/// The repository's `pipelines/` folder of example pipeline files.
pub fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// The rows of a results file, read with the parquet crate alone (no batchflow code), sorted.
pub fn result_rows(path: &Path) -> Vec<ResultRow> {
    let file = File::open(path).expect("the results file exists");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("the results file is Parquet")
        .build()
        .expect("a reader");
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("a readable batch");
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("the results have a {name} column"))
                .clone()
        };
        let (ids, lines, codes) = (
            column("custom_id"),
            column("request_line"),
            column("error_code"),
        );
        let (ids, lines, codes) = (
            ids.as_string::<i32>(),
            lines.as_primitive::<Int64Type>(),
            codes.as_string::<i32>(),
        );
        for index in 0..batch.num_rows() {
            let text =
                |array: &StringArray| array.is_valid(index).then(|| array.value(index).to_owned());
            rows.push((text(ids), lines.value(index), text(codes)));
        }
    }
    rows.sort();
    rows
}

/// A string column.
pub fn strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

/// Writes `batches` (all with the first one's schema) as one Parquet file.
pub fn write_parquet(path: &Path, batches: impl IntoIterator<Item = RecordBatch>) {
    let mut batches = batches.into_iter().peekable();
    let schema = batches.peek().expect("at least one batch").schema();
    let file = File::create(path).expect("create the input");
    let mut writer = ArrowWriter::try_new(file, schema, None).expect("a Parquet writer");
    for batch in batches {
        writer.write(&batch).expect("write a batch");
    }
    writer.close().expect("close the input");
}

/// Generate requests for `ids`, `body` as JSON text; `None` leaves a row's custom_id null.
pub fn text_body_batch(ids: &[Option<String>]) -> RecordBatch {
    let bodies: Vec<String> = (0..ids.len())
        .map(|index| {
            serde_json::json!({"model": "llama3.2", "prompt": format!("question {index}")})
                .to_string()
        })
        .collect();
    RecordBatch::try_from_iter([
        ("custom_id", strings(ids.iter().map(Option::as_deref))),
        ("method", strings(ids.iter().map(|_| Some("POST")))),
        ("url", strings(ids.iter().map(|_| Some("/api/generate")))),
        (
            "body",
            strings(bodies.iter().map(|body| Some(body.as_str()))),
        ),
    ])
    .expect("columns of equal length")
}

/// The metric families `/metrics` can expose, as `tests/fixtures/metrics-families.txt` lists
/// them: `NAME TYPE LABELS`, one a line, label names sorted and comma-separated.
pub fn metric_families() -> std::collections::BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics-families.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Polls `condition` every few milliseconds until it holds; panics naming `what` after 60 s, so
/// that no test waits for ever on an event that never comes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The tests' Python: `$BATCHFLOW_TEST_PYTHON`, else the venv `.venv` that `.ci/run` makes
/// from `tests/requirements.txt`, so that a test can check batchflow's output with the real
/// tools of other ecosystems (a Prometheus text parser, an S3 server). A missing one fails the
/// test, saying how to make it: a silent skip would pass without checking anything.
pub fn python() -> Command {
    let path = python_path();
    assert!(
        path.exists(),
        "no test Python at {}: run .ci/run, which makes the venv .venv from tests/requirements.txt (or set BATCHFLOW_TEST_PYTHON to an interpreter that has those packages)",
        path.display()
    );
    Command::new(path)
}

/// Where the tests' Python is (see [`python`]); the venv's other programs lie beside it.
pub fn python_path() -> PathBuf {
    std::env::var_os("BATCHFLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// Runs `script` with the tests' Python, `input` on its standard input; its standard output.
/// Panics with its standard error if it fails.
pub fn run_python(script: &str, input: &[u8]) -> String {
    let mut child = python()
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tests' Python starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("the tests' Python runs");
    writer
        .join()
        .expect("the writer thread")
        .expect("the script reads its input");
    assert!(
        output.status.success(),
        "the Python script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the script prints UTF-8")
}
