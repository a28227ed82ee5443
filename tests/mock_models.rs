//! The built-in mock as a stand-in for any server: a run with `--mock` (or `mock = true`)
//! answers whatever model its lines, flags or pipeline name, needs no API key, and fills an
//! output schema's typed columns with values that follow the schema. The standalone
//! `mock-server` keeps its fixed models unless `--any-model` asks.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use serde_json::{Value, json};
use support::{batchflow, parse_output, pipelines_dir, read_batches, run_stdin};

/// The reply text of an output line, whichever endpoint answered it.
fn reply_text(line: &Value) -> &str {
    let body = &line["response"]["body"];
    [
        &body["message"]["content"],
        &body["response"],
        &body["choices"][0]["message"]["content"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .unwrap_or_else(|| panic!("no reply text in {line}"))
}

#[test]
fn a_run_with_mock_answers_every_model_its_lines_and_flags_name() {
    let lines = [
        (
            "chat",
            "/api/chat",
            json!({"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "generate",
            "/api/generate",
            json!({"model": "mistral", "prompt": "hi"}),
        ),
        (
            "openai",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "default",
            "/api/chat",
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    let input: String = lines
        .iter()
        .map(|(id, url, body)| {
            json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string() + "\n"
        })
        .collect();

    let run = run_stdin(&input, &["--mock", "--quiet"]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let by_id = run.by_id();
    assert_eq!(by_id.len(), lines.len());
    for (id, _, body) in &lines {
        let line = &by_id[*id];
        assert!(line["error"].is_null(), "{line}");
        let model = body["model"].as_str().expect("a model");
        assert!(
            reply_text(line).starts_with(&format!("Mock reply from {model}:")),
            "{line}"
        );
    }

    let run = run_stdin(
        &input,
        &["--mock", "--quiet", "--model", "a-mistyped-model"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.ok_lines().len(), lines.len(), "{}", run.stdout);
    for line in &run.lines {
        assert!(
            reply_text(line).starts_with("Mock reply from a-mistyped-model:"),
            "{line}"
        );
    }
}

/// `pipelines/openai.toml` in `dir`, reading the example data where it is and writing its
/// results into `dir`.
fn openai_pipeline(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(pipelines_dir().join("openai.toml"))
        .expect("the example")
        .replace(
            "path = \"data/",
            &format!("path = \"{}/data/", pipelines_dir().display()),
        )
        .replace("\"../results/", "\"");
    assert!(text.contains("api_key_env = \"OPENAI_API_KEY\""), "{text}");
    let path = dir.join("openai.toml");
    std::fs::write(&path, text).expect("write the pipeline");
    path
}

#[test]
fn an_openai_pipeline_runs_against_the_mock_without_its_api_key() {
    let dir = tempfile::tempdir().expect("dir");
    let pipeline = openai_pipeline(dir.path());
    let output = batchflow()
        .env_remove("OPENAI_API_KEY")
        .arg("run")
        .arg(&pipeline)
        .args(["--mock", "--quiet"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);

    let batches = read_batches(&dir.path().join("openai.parquet"));
    let mut rows = 0;
    for batch in &batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("a {name} column"))
                .clone()
        };
        let (scores, reasons, codes) = (column("score"), column("reason"), column("error_code"));
        let (scores, reasons) = (
            scores.as_primitive::<Int64Type>(),
            reasons.as_string::<i32>(),
        );
        for row in 0..batch.num_rows() {
            assert!(codes.is_null(row), "row {row} failed");
            assert!(scores.is_valid(row) && reasons.is_valid(row), "row {row}");
            assert!(reasons.value(row).starts_with("mock reason"));
        }
        rows += batch.num_rows();
    }
    let candidates = std::fs::read_to_string(pipelines_dir().join("data/candidates.jsonl"))
        .expect("the example data");
    assert_eq!(rows, candidates.lines().count());

    let dry = batchflow()
        .env_remove("OPENAI_API_KEY")
        .arg("run")
        .arg(&pipeline)
        .args(["--mock", "--dry-run", "--quiet"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(stdout.contains("response_format"), "{stdout}");

    let tune = batchflow()
        .env_remove("OPENAI_API_KEY")
        .arg("tune")
        .arg(&pipeline)
        .args(["--mock", "--quiet", "--sample", "4", "--max-workers", "2"])
        .output()
        .expect("runs");
    let report = String::from_utf8_lossy(&tune.stdout);
    assert_eq!(
        tune.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&tune.stderr)
    );
    let steps: Vec<&str> = report.lines().skip(1).take(2).collect();
    assert!(
        steps.len() == 2 && steps.iter().all(|step| step.ends_with(" 0")),
        "no request failed at any step: {report}"
    );
}

/// One candidate's typed columns: score, fit, confidence, remote, skills, headline.
type Screened = (i64, String, f64, bool, Vec<String>, String);

/// Runs a pipeline with an Ollama `format` schema against `mock = true`, into `results`.
fn screen_with_schema(dir: &Path, results: &str) -> BTreeMap<String, Screened> {
    let pipeline = dir.join(format!("{results}.toml"));
    std::fs::write(
        &pipeline,
        format!(
            r#"
[source]
path = "{}/data/candidates.jsonl"
id_column = "candidate_id"

[request]
model = "qwen2.5:7b"
prompt = "Screen this candidate: {{{{summary}}}}"

[request.output]
retries = 0
schema = {{ type = "object", required = ["score", "fit", "confidence", "remote", "skills", "headline"], properties = {{ score = {{ type = "integer", minimum = 1, maximum = 5 }}, fit = {{ type = "string", enum = ["strong", "weak"] }}, confidence = {{ type = "number", minimum = 0.25, maximum = 0.5 }}, remote = {{ type = "boolean" }}, skills = {{ type = "array", items = {{ type = "string" }}, minItems = 3 }}, headline = {{ type = "string", maxLength = 12 }} }} }}

[backend]
mock = true

[sink]
parquet = "{results}.parquet"
"#,
            pipelines_dir().display()
        ),
    )
    .expect("write the pipeline");
    let output = batchflow()
        .arg("run")
        .arg(&pipeline)
        .arg("--quiet")
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);

    let mut rows = BTreeMap::new();
    for batch in read_batches(&dir.join(format!("{results}.parquet"))) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("a {name} column"))
                .clone()
        };
        let ids = column("custom_id");
        let codes = column("error_code");
        let scores = column("score");
        let fits = column("fit");
        let confidences = column("confidence");
        let remotes = column("remote");
        let skills = column("skills");
        let headlines = column("headline");
        for row in 0..batch.num_rows() {
            let id = ids.as_string::<i32>().value(row).to_owned();
            assert!(
                codes.is_null(row),
                "{id}: {}",
                codes.as_string::<i32>().value(row)
            );
            let row_skills = skills.as_list::<i32>().value(row);
            let row_skills = row_skills.as_string::<i32>();
            let screened = (
                scores.as_primitive::<Int64Type>().value(row),
                fits.as_string::<i32>().value(row).to_owned(),
                confidences.as_primitive::<Float64Type>().value(row),
                remotes.as_boolean().value(row),
                (0..row_skills.len())
                    .map(|index| row_skills.value(index).to_owned())
                    .collect(),
                headlines.as_string::<i32>().value(row).to_owned(),
            );
            assert!(rows.insert(id, screened).is_none(), "one row per candidate");
        }
    }
    rows
}

#[test]
fn a_schema_sent_as_ollama_format_fills_typed_columns_within_its_bounds_the_same_each_run() {
    let dir = tempfile::tempdir().expect("dir");
    let first = screen_with_schema(dir.path(), "first");
    assert_eq!(first.len(), 48);
    for (id, (score, fit, confidence, _, skills, headline)) in &first {
        assert!((1..=5).contains(score), "{id}: score {score}");
        assert!(
            ["strong", "weak"].contains(&fit.as_str()),
            "{id}: fit {fit}"
        );
        assert!(
            (0.25..=0.5).contains(confidence),
            "{id}: confidence {confidence}"
        );
        assert!(skills.len() >= 3, "{id}: skills {skills:?}");
        assert!(
            headline.chars().count() <= 12,
            "{id}: headline {headline:?}"
        );
    }
    let scores: std::collections::BTreeSet<i64> = first.values().map(|row| row.0).collect();
    assert!(scores.len() > 1, "scores vary with the prompt: {scores:?}");
    let second = screen_with_schema(dir.path(), "second");
    assert_eq!(first, second, "the same prompts get the same answers");
}

/// A `batchflow mock-server` process, stopped when dropped.
struct MockServerProcess {
    child: Child,
    url: String,
}

impl MockServerProcess {
    fn start(args: &[&str]) -> MockServerProcess {
        let mut child = batchflow()
            .args(["mock-server", "--port", "0", "--latency", "0s"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mock server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut url = String::new();
        BufReader::new(stdout)
            .read_line(&mut url)
            .expect("the mock server prints its URL");
        MockServerProcess {
            child,
            url: url.trim().to_owned(),
        }
    }
}

impl Drop for MockServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_standalone_mock_server_keeps_its_models_unless_asked_to_answer_any() {
    let input = json!({"custom_id": "q", "method": "POST", "url": "/api/generate",
                       "body": {"model": "qwen2.5:7b", "prompt": "hi"}})
    .to_string()
        + "\n";

    let fixed = MockServerProcess::start(&[]);
    assert!(fixed.url.starts_with("http://127.0.0.1:"), "{}", fixed.url);
    let run = run_stdin(
        &input,
        &["--backend", &fixed.url, "--no-preflight", "--quiet"],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(
        run.lines[0]["error"]["code"], "model_not_found",
        "{}",
        run.stdout
    );

    let any = MockServerProcess::start(&["--any-model"]);
    let named = [
        "--backend",
        any.url.as_str(),
        "--model",
        "qwen2.5:7b",
        "--quiet",
    ];
    let before = run_stdin(&input, &named);
    assert_eq!(before.code(), Some(2), "not listed before it is asked for");
    assert!(
        before.stderr.contains("no model \"qwen2.5:7b\""),
        "{}",
        before.stderr
    );
    let run = run_stdin(
        &input,
        &["--backend", &any.url, "--no-preflight", "--quiet"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(reply_text(&run.lines[0]).starts_with("Mock reply from qwen2.5:7b:"));
    let after = run_stdin(&input, &named);
    assert_eq!(
        after.code(),
        Some(0),
        "listed once asked for: {}",
        after.stderr
    );
    assert!(after.lines[0]["error"].is_null(), "{}", after.stdout);
}

#[test]
fn a_server_on_the_mock_runs_a_batch_naming_a_model_of_its_own_without_a_key() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut command = batchflow();
    command
        .env_remove("OPENAI_API_KEY")
        .args(["serve", "--mock", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--backend-api-key-env", "OPENAI_API_KEY"]);
    let server = crate::serve::Server::spawn(command);
    let lines: String = (0..5)
        .map(|index| {
            let line = json!({
                "custom_id": format!("req-{index}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            });
            format!("{line}\n")
        })
        .collect();
    let batch = server.python(
        "f = client.files.create(file=('in.jsonl', args['content'].encode()), purpose='batch')\n\
         b = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')\n\
         b = wait(b.id, lambda b: b.status in ('completed', 'failed'))\n\
         print(json.dumps(b.model_dump()))",
        json!({"content": lines}),
    );
    assert_eq!(batch["status"], "completed", "{batch}\n{}", server.log());
    assert_eq!(batch["request_counts"]["completed"], 5, "{batch}");
}
