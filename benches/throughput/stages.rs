//! Pipelines of stages (issue 25): two stages in one run, a screen of 10,000 records and an
//! extract from the ~30% that pass, against the same number of requests as one stage (target
//! ≤ 1.03×), beside the two-runs baseline (the screen run to its end, the passing rows
//! written to a file, then an extract run over it).
//!
//! One mock of 32 slots at 25 ms (1,280 requests/s, the bottleneck), every run with
//! `--workers 32` through `batchflow run PIPELINE.toml`, the whole process timed. The screen's
//! answers are the mock's, drawn from each prompt's hash, so the same rows pass every time:
//! the first two-stage run counts them (and the checks that follow hold each run to that
//! count at the mock). The three kinds of run take turns, `$BATCHFLOW_BENCH_ROUNDS` times
//! (at least 2; 1 if quick), and the medians are reported.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batchflow::filter::Filter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value, json};

use crate::mock::{Mock, MockKnobs};
use crate::{Plan, median, verdict};

const SLOTS: usize = 32;
const LATENCY: Duration = Duration::from_millis(25);
const RECORDS: u64 = 10_000;
/// The extract's filter: a third of the answers are `strong`, and nine in ten scores are ≥ 2.
const FILTER: &str = "fit = 'strong' and score >= 2";
const TARGET: f64 = 1.03;
/// The results columns the bench reads: the screen's answer and what the extract's input holds.
const COLUMNS: [&str; 6] = ["custom_id", "status", "name", "fit", "score", "reason"];

pub fn run(plan: &Plan) -> io::Result<()> {
    let records = plan.count(RECORDS);
    let rounds = if plan.scale_down > 1 {
        plan.rounds
    } else {
        plan.rounds.max(2)
    };
    let ideal = SLOTS as f64 / LATENCY.as_secs_f64();
    println!();
    println!(
        "== stages: screen {records} records, then extract where `{FILTER}`; mock of {SLOTS} slots at {} ms (ideal {ideal:.0} req/s), --workers {SLOTS}, {rounds} rounds",
        LATENCY.as_millis()
    );
    let filter = Filter::parse(FILTER).map_err(io::Error::other)?;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    write_people(&dir.join("people.jsonl"), 0..records)?;
    let mock = Mock::start(
        &plan.tools.batchflow,
        &MockKnobs {
            slots: SLOTS,
            latency: LATENCY,
            spread: 0.0,
            max_queue: 512,
        },
    )?;

    let mut passing: Option<u64> = None;
    let (mut staged, mut single, mut two_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // a. Both stages in one run.
        let folder = format!("a-{round}");
        let pipeline = dir.join(format!("{folder}.toml"));
        fs::write(&pipeline, two_stages(mock.url(), &folder))?;
        let before = mock.succeeded()?;
        let wall = timed_run(plan, &pipeline)?;
        let sent = mock.succeeded()? - before;
        let screened = read_passing(&dir.join(&folder).join("screen.parquet"), &filter, None)?;
        let extracted = ok_rows(&dir.join(&folder).join("extract.parquet"))?;
        if extracted != screened || sent != records + screened {
            return Err(io::Error::other(format!(
                "two stages: {screened} screen rows pass, the extract has {extracted} rows and the mock answered {sent} requests"
            )));
        }
        let passed = *passing.get_or_insert(screened);
        if passed != screened {
            return Err(io::Error::other(format!(
                "two stages: {screened} rows passed in round {round}, {passed} before"
            )));
        }
        if round == 0 {
            // b's input: as many records as a sends requests.
            write_people(&dir.join("single.jsonl"), 0..records + passed)?;
        }
        staged.push(wall.as_secs_f64());

        // b. One stage, the same number of requests.
        let folder = format!("b-{round}");
        let pipeline = dir.join(format!("{folder}.toml"));
        let text = one_stage(
            mock.url(),
            "single.jsonl",
            &format!("{folder}.parquet"),
            &screen_request("request"),
        );
        fs::write(&pipeline, text)?;
        let wall = counted_run(plan, &mock, &pipeline, records + passed, "one stage")?;
        single.push(wall.as_secs_f64());

        // c. Two runs: the screen to its end, its passing rows to a file, then the extract.
        let started = Instant::now();
        let screen = dir.join(format!("c-{round}-screen.toml"));
        let text = one_stage(
            mock.url(),
            "people.jsonl",
            &format!("c-{round}-screen.parquet"),
            &screen_request("request"),
        );
        fs::write(&screen, text)?;
        counted_run(plan, &mock, &screen, records, "the screen run")?;
        let handed = format!("c-{round}-passing.jsonl");
        let written = read_passing(
            &dir.join(format!("c-{round}-screen.parquet")),
            &filter,
            Some(&dir.join(&handed)),
        )?;
        if written != passed {
            return Err(io::Error::other(format!(
                "two runs: {written} screen rows pass, {passed} in the two-stage run"
            )));
        }
        let extract = dir.join(format!("c-{round}-extract.toml"));
        let text = one_stage(
            mock.url(),
            &handed,
            &format!("c-{round}-extract.parquet"),
            &extract_request("request"),
        );
        fs::write(&extract, text)?;
        counted_run(plan, &mock, &extract, passed, "the extract run")?;
        two_runs.push(started.elapsed().as_secs_f64());
        println!(
            "  round {}: a. two stages {:.2} s   b. one stage {:.2} s   c. two runs {:.2} s",
            round + 1,
            staged[round],
            single[round],
            two_runs[round]
        );
    }
    let passed = passing.unwrap_or(0);
    let requests = records + passed;
    let (a, b, c) = (
        median(&mut staged),
        median(&mut single),
        median(&mut two_runs),
    );
    println!(
        "  {passed} of {records} records passed the screen ({:.1}%): {requests} requests in every kind of run (ideal {:.2} s)",
        100.0 * passed as f64 / records as f64,
        requests as f64 / ideal
    );
    println!("  a. two stages in one run   {a:7.2} s (median)");
    println!("  b. one stage               {b:7.2} s");
    println!("  c. two runs, one by one    {c:7.2} s");
    println!(
        "  a/b = {:.3}   (target ≤ {TARGET}: {})   c/b = {:.3}",
        a / b,
        verdict(a / b <= TARGET),
        c / b
    );
    Ok(())
}

/// Writes records `{id, name, bio}` for `indices`, one a line.
fn write_people(path: &Path, indices: std::ops::Range<u64>) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    for index in indices {
        let record = json!({
            "id": format!("p{index:06}"),
            "name": format!("Person {index}"),
            "bio": format!("Writes backend services, {} years of Rust.", index % 12),
        });
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The screen's request, under `[table]` (`request`, or `stage` in a pipeline of stages).
fn screen_request(table: &str) -> String {
    format!(
        r#"model = "llama3.2"
prompt = "Screen {{{{name}}}}: {{{{bio}}}}"

[{table}.output.schema]
type = "object"
required = ["score", "fit", "reason"]

[{table}.output.schema.properties]
score = {{ type = "integer", minimum = 1, maximum = 10 }}
fit = {{ type = "string", enum = ["strong", "possible", "weak"] }}
reason = {{ type = "string" }}
"#
    )
}

/// The extract's request: it reads the screen's answer, as a later stage or from a file.
fn extract_request(table: &str) -> String {
    format!(
        r#"model = "llama3.2"
prompt = "Extract the facts of {{{{name}}}}, screened {{{{fit}}}}: {{{{reason}}}}"

[{table}.output.schema]
type = "object"
required = ["current_role", "languages"]

[{table}.output.schema.properties]
current_role = {{ type = "string" }}
languages = {{ type = "array", items = {{ type = "string" }} }}
"#
    )
}

fn backend(url: &str) -> String {
    format!("[backend]\nurl = \"{url}\"\nworkers = {SLOTS}\n")
}

/// A pipeline of the screen and the extract, writing `<folder>/<stage>.parquet`.
fn two_stages(url: &str, folder: &str) -> String {
    format!(
        "[source]\npath = \"people.jsonl\"\nid_column = \"id\"\npassthrough = [\"name\"]\n\n\
         [[stage]]\nname = \"screen\"\n{}\n[[stage]]\nname = \"extract\"\nfrom = \"screen\"\n\
         where = \"{FILTER}\"\n{}\n{}\n[sink]\nparquet = \"{folder}\"\n",
        screen_request("stage"),
        extract_request("stage"),
        backend(url)
    )
}

/// A pipeline of one request over `input`, writing `output`.
fn one_stage(url: &str, input: &str, output: &str, request: &str) -> String {
    format!(
        "[source]\npath = \"{input}\"\nid_column = \"id\"\npassthrough = [\"name\"]\n\n\
         [request]\n{request}\n{}\n[sink]\nparquet = \"{output}\"\n",
        backend(url)
    )
}

/// Runs `batchflow run pipeline`, returning its whole wall time.
fn timed_run(plan: &Plan, pipeline: &Path) -> io::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(&plan.tools.batchflow)
        .arg("run")
        .arg(pipeline)
        .arg("--quiet")
        .env_remove("OLLAMA_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let wall = started.elapsed();
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "batchflow run {} exited {}: {}",
            pipeline.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(wall)
}

/// [`timed_run`], checking that the mock answered `requests` requests meanwhile.
fn counted_run(
    plan: &Plan,
    mock: &Mock,
    pipeline: &Path,
    requests: u64,
    label: &str,
) -> io::Result<Duration> {
    let before = mock.succeeded()?;
    let wall = timed_run(plan, pipeline)?;
    let sent = mock.succeeded()? - before;
    if sent != requests {
        return Err(io::Error::other(format!(
            "{label}: the mock answered {sent} requests, not {requests}"
        )));
    }
    Ok(wall)
}

/// The rows of results file `path` as JSON objects, handed one by one to `each`.
fn for_each_row(
    path: &Path,
    mut each: impl FnMut(Map<String, Value>) -> io::Result<()>,
) -> io::Result<()> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(path)?).map_err(io::Error::other)?;
    // The columns a record is made of (arrow_json cannot write the timestamps).
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| COLUMNS.contains(&field.name().as_str()))
        .map(|(index, _)| index)
        .collect();
    let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(projection)
        .build()
        .map_err(io::Error::other)?;
    for batch in reader {
        let batch = batch.map_err(io::Error::other)?;
        let mut lines = Vec::new();
        {
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut lines);
            writer.write(&batch).map_err(io::Error::other)?;
            writer.finish().map_err(io::Error::other)?;
        }
        for line in lines
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            each(serde_json::from_slice(line)?)?;
        }
    }
    Ok(())
}

fn succeeded(row: &Map<String, Value>) -> bool {
    row.get("status").and_then(Value::as_str) == Some("ok")
}

/// Counts the screen's successful rows in `path` that pass `filter`, and writes each as a
/// record of the extract's input to `out` when given.
fn read_passing(path: &Path, filter: &Filter, out: Option<&Path>) -> io::Result<u64> {
    let mut out = match out {
        Some(out) => Some(BufWriter::new(File::create(out)?)),
        None => None,
    };
    let mut count = 0;
    for_each_row(path, |row| {
        if !succeeded(&row) || !filter.matches(&row) {
            return Ok(());
        }
        count += 1;
        if let Some(out) = out.as_mut() {
            let record = json!({
                "id": row.get("custom_id"),
                "name": row.get("name"),
                "fit": row.get("fit"),
                "score": row.get("score"),
                "reason": row.get("reason"),
            });
            serde_json::to_writer(&mut *out, &record)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    if let Some(mut out) = out {
        out.flush()?;
    }
    Ok(count)
}

/// The successful rows of results file `path`.
fn ok_rows(path: &Path) -> io::Result<u64> {
    let mut count = 0;
    for_each_row(path, |row| {
        count += u64::from(succeeded(&row));
        Ok(())
    })?;
    Ok(count)
}
