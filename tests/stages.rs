//! Pipelines of stages through the binary against the mock: a later stage reads exactly the
//! earlier stage's rows that pass its filter, with the source's and the earlier stage's columns
//! in its template; it starts before the earlier stage ends; SIGKILL at any moment and
//! `--resume` leave one row per input line in the first stage and one per passing row in the
//! second; a change to the second stage alone redoes only it; validate and the dry run name
//! each stage. Results are read with DuckDB, the reader users query them with.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::Value;

use crate::support::{Mock, batchflow, result_rows, run_python, wait_until};

/// The filter of the second stage, which is also SQL: DuckDB computes what it should pass.
pub(crate) const FILTER: &str = "fit != 'weak' and score >= 4";

pub(crate) fn mock(latency_ms: u64) -> Mock {
    Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(latency_ms),
        models: vec!["screener".into(), "extractor".into()],
        ..MockConfig::default()
    })
}

/// Records with an id, a name and a bio of a few words each.
pub(crate) fn write_records(dir: &Path, count: usize) -> PathBuf {
    let path = dir.join("people.jsonl");
    let lines: String = (0..count)
        .map(|index| {
            format!(
                "{{\"id\":\"p{index:04}\",\"name\":\"Person{index}\",\"bio\":\"writes code {index}\"}}\n"
            )
        })
        .collect();
    fs::write(&path, lines).expect("write the records");
    path
}

/// A two-stage pipeline over `people.jsonl`: a structured screen, then an extract over the
/// rows that pass, whose prompt (echoed by the mock) shows what the template read.
pub(crate) fn write_pipeline(dir: &Path, url: &str, extract_prompt: &str) -> PathBuf {
    let path = dir.join("staged.toml");
    let text = format!(
        r#"[source]
path = "people.jsonl"
id_column = "id"
passthrough = ["name"]

[[stage]]
name = "screen"
model = "screener"
prompt = "Screen {{{{name}}}}: {{{{bio}}}}"

[stage.output.schema]
type = "object"
required = ["score", "fit"]

[stage.output.schema.properties]
score = {{ type = "integer", minimum = 1, maximum = 10 }}
fit = {{ type = "string", enum = ["strong", "possible", "weak"] }}

[[stage]]
name = "extract"
from = "screen"
where = "{FILTER}"
model = "extractor"
prompt = "{extract_prompt}"

[backend]
url = "{url}"
workers = 4

[sink]
parquet = "results"
checkpoint_rows = 10
"#
    );
    fs::write(&path, text).expect("write the pipeline");
    path
}

pub(crate) const EXTRACT_PROMPT: &str = "{{screen.fit}} {{score}} {{bio}}";

/// Runs DuckDB over the two stages' results and returns its answer (one JSON value).
fn duckdb(dir: &Path, query: &str) -> Value {
    let script = format!(
        r#"
import duckdb, json, os
os.chdir({dir:?})
rows = duckdb.sql("""{query}""").fetchall()
print(json.dumps([list(row) for row in rows], default=str))
"#,
        dir = dir.display().to_string()
    );
    serde_json::from_str(&run_python(&script, b"")).expect("DuckDB's answer is JSON")
}

/// The custom_ids of the screen's rows that pass the filter, as DuckDB sees them.
fn passing_ids(dir: &Path) -> BTreeSet<String> {
    let rows = duckdb(
        dir,
        &format!("select custom_id from 'results/screen.parquet' where status = 'ok' and {FILTER}"),
    );
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| row[0].as_str().expect("an id").to_owned())
        .collect()
}

/// Each custom_id of a stage's results with how many rows it has.
fn row_counts(path: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (id, _, _) in result_rows(path) {
        *counts.entry(id.expect("a custom_id")).or_insert(0) += 1;
    }
    counts
}

fn run(pipeline: &Path, args: &[&str]) -> std::process::Output {
    batchflow()
        .arg("run")
        .arg(pipeline)
        .args(args)
        .output()
        .expect("batchflow runs")
}

#[test]
fn the_second_stage_reads_the_passing_rows_with_both_stages_columns_and_starts_early() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(15);
    write_records(dir.path(), 400);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let output = run(&pipeline, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Stage screen: Summary"), "{stderr}");
    assert!(stderr.contains("Stage extract: Summary"), "{stderr}");

    let screen = row_counts(&dir.path().join("results/screen.parquet"));
    assert_eq!(screen.len(), 400);
    assert!(screen.values().all(|rows| *rows == 1));
    let passing = passing_ids(dir.path());
    assert!(
        !passing.is_empty() && passing.len() < 400,
        "the filter passes some rows, not all: {}",
        passing.len()
    );
    let extract = row_counts(&dir.path().join("results/extract.parquet"));
    assert_eq!(extract.keys().cloned().collect::<BTreeSet<_>>(), passing);
    assert!(extract.values().all(|rows| *rows == 1));

    // The template read the screen's answer (prefixed and not) and the source's bio, which
    // the screen carried without being asked; the name is passed through to both stages.
    let mismatched = duckdb(
        dir.path(),
        "select count(*) from 'results/extract.parquet' e join 'results/screen.parquet' s using (custom_id)
         where e.content != 'Mock reply from extractor: ' || s.fit || ' ' || s.score || ' ' || s.bio
            or e.name != s.name or e.name is null",
    );
    assert_eq!(mismatched, serde_json::json!([[0]]));

    // Streaming: the first extract finished before the last screen did.
    let order = duckdb(
        dir.path(),
        "select (select min(finished_at) from 'results/extract.parquet')
              < (select max(finished_at) from 'results/screen.parquet')",
    );
    assert_eq!(
        order,
        serde_json::json!([[true]]),
        "extract waited for the screen to end"
    );
}

#[test]
fn sigkill_at_any_moment_then_resume_leaves_each_stage_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(5);
    write_records(dir.path(), 300);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let screen = dir.path().join("results/screen.parquet");
    let extract = dir.path().join("results/extract.parquet");
    let rows = |path: &Path| {
        if path.exists() {
            result_rows(path).len()
        } else {
            0
        }
    };
    // Kill points: before the screen's first checkpoint, once it has rows, once the extract
    // has rows, and later again in the extract, each run resuming the last.
    // Kill points, as rows the screen and the extract must hold first: at once, once the
    // screen has rows, once the extract has, and later in the extract, each run resuming the
    // last.
    let points = [
        ("the run started", 0, 0),
        ("the screen has rows", 20, 0),
        ("the extract has rows", 0, 5),
        ("the extract has more rows", 0, 25),
    ];
    for (index, (what, screen_rows, extract_rows)) in points.into_iter().enumerate() {
        let mut command = batchflow();
        command.arg("run").arg(&pipeline).arg("--quiet");
        if index > 0 {
            command.arg("--resume");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("batchflow starts");
        wait_until(what, || {
            (rows(&screen) >= screen_rows && rows(&extract) >= extract_rows)
                || child.try_wait().ok().flatten().is_some()
        });
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let output = run(&pipeline, &["--resume"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let screen_rows = row_counts(&screen);
    assert_eq!(screen_rows.len(), 300);
    assert!(
        screen_rows.values().all(|rows| *rows == 1),
        "a screen row doubled"
    );
    let extract_rows = row_counts(&extract);
    assert_eq!(
        extract_rows.keys().cloned().collect::<BTreeSet<_>>(),
        passing_ids(dir.path())
    );
    assert!(
        extract_rows.values().all(|rows| *rows == 1),
        "an extract row doubled"
    );
}

#[test]
fn changing_the_second_stage_alone_keeps_the_first_and_redoes_the_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(1);
    write_records(dir.path(), 60);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    assert_eq!(run(&pipeline, &[]).status.code(), Some(0));
    let screen_before = duckdb(
        dir.path(),
        "select custom_id, finished_at::varchar from 'results/screen.parquet' order by 1",
    );

    write_pipeline(dir.path(), &mock.url(), "Again: {{name}}");
    let refused = run(&pipeline, &["--resume"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("extract.parquet") && stderr.contains("--allow-config-change"),
        "{stderr}"
    );

    let redone = run(&pipeline, &["--resume", "--allow-config-change"]);
    let stderr = String::from_utf8_lossy(&redone.stderr);
    assert_eq!(redone.status.code(), Some(0), "{stderr}");
    assert_eq!(
        duckdb(
            dir.path(),
            "select custom_id, finished_at::varchar from 'results/screen.parquet' order by 1"
        ),
        screen_before,
        "the screen's rows were kept as they were"
    );
    let stale = duckdb(
        dir.path(),
        "select count(*) from 'results/extract.parquet' where content not like 'Mock reply from extractor: Again: %'",
    );
    assert_eq!(stale, serde_json::json!([[0]]));
    assert_eq!(
        row_counts(&dir.path().join("results/extract.parquet"))
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        passing_ids(dir.path())
    );
}

#[test]
fn validate_names_the_stage_of_an_unknown_column_and_the_dry_run_shows_each_stage() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_records(dir.path(), 5);
    let pipeline = write_pipeline(dir.path(), "http://127.0.0.1:9", "{{screen.fit}} {{hobby}}");
    let output = batchflow()
        .args(["validate", "--offline"])
        .arg(&pipeline)
        .output()
        .expect("batchflow runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"stage "extract": prompt: column "hobby""#),
        "{stderr}"
    );

    let pipeline = write_pipeline(dir.path(), "http://127.0.0.1:9", EXTRACT_PROMPT);
    let output = batchflow()
        .args(["run", "--mock", "--dry-run"])
        .arg(&pipeline)
        .output()
        .expect("batchflow runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Stage screen:"), "{stdout}");
    assert!(stdout.contains("Screen Person0: writes code 0"), "{stdout}");
    assert!(
        stdout.contains(&format!("Stage extract (reads screen where {FILTER}):")),
        "{stdout}"
    );
    assert!(stdout.contains("<screen.fit> <score> <bio>"), "{stdout}");
    assert!(
        !dir.path().join("results").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn metrics_and_stats_carry_each_stage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(2);
    write_records(dir.path(), 80);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let stats = dir.path().join("stats.json");
    let mut child = batchflow()
        .arg("run")
        .arg(&pipeline)
        .arg("--stats")
        .arg(&stats)
        .args(["--metrics", "127.0.0.1:0", "--metrics-linger", "10m"])
        .env(crate::metrics::NO_NVML.0, crate::metrics::NO_NVML.1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("batchflow starts");
    let stderr = crate::metrics::collect_stderr(&mut child);
    let addr = crate::metrics::logged_addr(&stderr);
    let mut text = String::new();
    wait_until("both stages say they finished", || {
        text = crate::metrics::scrape(addr);
        ["screen", "extract"].iter().all(|stage| {
            text.lines()
                .any(|line| line == format!("batchflow_run_finished{{stage=\"{stage}\"}} 1"))
        })
    });
    // The page shows a stage chosen by name, with a link to each; its JSON is that stage's.
    let page = http_get(addr, "/?stage=extract");
    assert!(page.contains("batchflow run · stage extract"), "{page}");
    assert!(
        page.contains(r#"<a href="/?stage=screen">screen</a>"#)
            && page.contains(r#"<a href="/?stage=extract" aria-current="page">extract</a>"#),
        "{page}"
    );
    let extract_view: Value = serde_json::from_str(&http_get(addr, "/api/run?stage=extract"))
        .expect("the stage's figures as JSON");
    let screen_view: Value =
        serde_json::from_str(&http_get(addr, "/api/run")).expect("the first stage's figures");
    assert_eq!(screen_view["stage"], "screen");
    assert_eq!(extract_view["stage"], "extract");
    assert_eq!(screen_view["succeeded"].as_f64(), Some(80.0));
    crate::metrics::sigterm(&child);
    let status = child.wait().expect("the exit status");
    assert_eq!(status.code(), Some(0), "{}", stderr.lock().expect("stderr"));

    // The Prometheus project's own parser reads every stage's samples.
    let parsed = run_python(
        r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
ok = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        if sample.name == "batchflow_requests_total" and sample.labels.get("outcome") == "ok":
            ok[sample.labels["stage"]] = sample.value
print(json.dumps(ok))
"#,
        text.as_bytes(),
    );
    let ok: BTreeMap<String, f64> = serde_json::from_str(&parsed).expect("JSON");
    let passing = passing_ids(dir.path()).len() as f64;
    assert_eq!(ok.get("screen"), Some(&80.0), "{text}");
    assert_eq!(ok.get("extract"), Some(&passing), "{text}");

    for (stage, succeeded) in [("screen", 80.0), ("extract", passing)] {
        let file = dir.path().join(format!("stats.{stage}.json"));
        let figures: Value =
            serde_json::from_slice(&fs::read(&file).expect("a stats file per stage"))
                .expect("stats JSON");
        assert_eq!(figures["stage"], stage);
        assert_eq!(figures["succeeded"].as_f64(), Some(succeeded));
    }
}

#[test]
fn stages_write_datasets_when_the_folder_ends_in_a_slash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(1);
    write_records(dir.path(), 120);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let text = fs::read_to_string(&pipeline).expect("read");
    fs::write(
        &pipeline,
        text.replace("parquet = \"results\"", "parquet = \"results/\""),
    )
    .expect("write");
    let output = run(&pipeline, &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts = duckdb(
        dir.path(),
        &format!(
            "select (select count(distinct custom_id) from read_parquet('results/screen/*.parquet')),
                    (select count(*) from read_parquet('results/extract/*.parquet')),
                    (select count(*) from read_parquet('results/screen/*.parquet') where status = 'ok' and {FILTER})"
        ),
    );
    let row = &counts[0];
    assert_eq!(row[0], 120);
    assert_eq!(row[1], row[2], "one extract row per passing screen row");
    assert!(row[1].as_u64().is_some_and(|passing| passing > 0));
}

#[test]
fn model_given_on_the_command_line_is_every_stages_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(1);
    write_records(dir.path(), 30);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let output = run(&pipeline, &["--model", "screener"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let models = duckdb(
        dir.path(),
        "select distinct model from 'results/screen.parquet'
         union select distinct model from 'results/extract.parquet'",
    );
    assert_eq!(models, serde_json::json!([["screener"]]));
}

/// The body of a GET of `path` on the metrics endpoint, which must answer 200.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the endpoint accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[test]
fn plan_projects_a_later_stage_from_the_probes_answers_that_pass_its_filter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(1);
    write_records(dir.path(), 200);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let output = batchflow()
        .arg("plan")
        .arg(&pipeline)
        .args(["--json", "--sample", "20", "--max-workers", "2"])
        .output()
        .expect("batchflow runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the plan as JSON");
    let stage = &report["stages"][0];
    assert_eq!(stage["name"], "extract");
    assert_eq!(stage["reads"], format!("screen where {FILTER}"));
    let answers = stage["probe_answers"].as_u64().expect("answers");
    let passing = stage["probe_passing"].as_u64().expect("passing");
    assert!((20..200).contains(&answers), "{stage}");
    let share = passing as f64 / answers as f64;
    assert_eq!(
        stage["requests"].as_u64(),
        Some((share * 200.0).round() as u64)
    );

    // The mock answers each prompt alike every time: the run's first screen rows pass as the
    // probe's did.
    assert_eq!(run(&pipeline, &[]).status.code(), Some(0));
    let passed_in_run = duckdb(
        dir.path(),
        &format!(
            "select count(*) from 'results/screen.parquet'
             where custom_id < 'p{answers:04}' and status = 'ok' and {FILTER}"
        ),
    );
    assert_eq!(passed_in_run, serde_json::json!([[passing]]));
}
