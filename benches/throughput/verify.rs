//! Verify: `batchflow verify` over a dataset of 1,000,000 rows, the parts of four shard runs
//! (each a real run against the zero-latency mock, all with `--output DATASET/`): wall time
//! and peak RSS of the whole process, clean, then with the last shard's parts deleted so that
//! a quarter of the ids are named as missing.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::{self, Usage};
use crate::{Plan, cost, inputs, verdict};

const ROWS: u64 = 1_000_000;
const SHARDS: u64 = 4;
const ROUNDS: usize = 3;
const TARGET: Duration = Duration::from_secs(5);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(plan: &Plan) -> io::Result<()> {
    let rows = plan.count(ROWS);
    println!();
    println!("== verify: `batchflow verify` over {rows} rows of {SHARDS} shards in one dataset");
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, rows)?;
    let dataset = scratch.path().join("dataset");
    fs::create_dir(&dataset)?;
    let mock = cost::fast_mock(plan)?;
    let started = Instant::now();
    for index in 0..SHARDS {
        let status = Command::new(&plan.tools.batchflow)
            .arg(&input)
            .args(["--backend", mock.url(), "--quiet", "--workers"])
            .arg(plan.workers.to_string())
            .arg("--shard")
            .arg(format!("{index}/{SHARDS}"))
            .arg("--output")
            .arg(format!("{}/", dataset.display()))
            .env_remove("OLLAMA_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "shard {index} ended with {status}"
            )));
        }
    }
    println!(
        "dataset built by {SHARDS} shard runs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut clean: Vec<Usage> = Vec::new();
    for _ in 0..ROUNDS {
        clean.push(verify(plan, &dataset, &input, 0, scratch.path())?);
    }
    clean.sort_by_key(|usage| usage.wall);
    let median = clean[ROUNDS / 2];
    println!(
        "clean:        {:.2}s wall (median of {ROUNDS}, {:.2}–{:.2}), {:.2}s CPU, peak RSS {:.1} MiB, {:.2} µs a row",
        median.wall.as_secs_f64(),
        clean[0].wall.as_secs_f64(),
        clean[ROUNDS - 1].wall.as_secs_f64(),
        median.cpu.as_secs_f64(),
        mib(median.max_rss_bytes),
        median.wall.as_secs_f64() * 1e6 / rows as f64
    );
    let files = fs::read_dir(&dataset)?.count();
    let last_shard = format!("part-{}-of-{SHARDS}-", SHARDS - 1);
    let mut deleted_rows = 0;
    for entry in fs::read_dir(&dataset)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        if name.is_some_and(|name| name.starts_with(&last_shard)) {
            deleted_rows += rows_in(&path)?;
            fs::remove_file(&path)?;
        }
    }
    let missing = verify(plan, &dataset, &input, deleted_rows, scratch.path())?;
    println!(
        "parts deleted: {:.2}s wall, peak RSS {:.1} MiB, {deleted_rows} ids named missing ({files} part files before)",
        missing.wall.as_secs_f64(),
        mib(missing.max_rss_bytes)
    );
    println!(
        "target: verify over {rows} rows in under {}s: {}",
        TARGET.as_secs(),
        verdict(median.wall < TARGET)
    );
    Ok(())
}

/// Rows of a results file, from its footer.
fn rows_in(path: &Path) -> io::Result<u64> {
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(File::open(path)?)
        .map_err(io::Error::other)?;
    let rows = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .num_rows();
    u64::try_from(rows).map_err(io::Error::other)
}

/// One `batchflow verify`, checked: exit 0 with no problem line when `problems` is 0, else
/// exit 1 with that many.
fn verify(
    plan: &Plan,
    dataset: &Path,
    input: &Path,
    problems: u64,
    scratch: &Path,
) -> io::Result<Usage> {
    let log = scratch.join("verify.log");
    let mut command = Command::new(&plan.tools.batchflow);
    command
        .arg("verify")
        .arg(dataset)
        .arg("--input")
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log)?);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let counter = child.stdout.take().map(measure::count_lines);
    let usage = measure::wait_measured(child, started, plan.tools.limit)?;
    let lines = match counter {
        Some(counter) => counter
            .join()
            .map_err(|_| io::Error::other("the line counter panicked"))??,
        None => 0,
    };
    let expected_code = if problems == 0 { 0 } else { 1 };
    if usage.exit_code != Some(expected_code) || lines != problems {
        return Err(io::Error::other(format!(
            "verify exited with {:?} after {lines} problem lines (expected {expected_code} and {problems}): {}",
            usage.exit_code,
            fs::read_to_string(&log).unwrap_or_default()
        )));
    }
    Ok(usage)
}
