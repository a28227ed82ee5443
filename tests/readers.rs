//! Readers of the results while a run goes on: a reader opening the file (or every
//! `*.parquet` of a dataset directory, as `read_parquet('dir/*.parquet')` does) with the
//! parquet crate (as any Parquet reader does: the footer from the file's end) at every moment
//! of a run killed at seeded random instants and resumed, never failing and never seeing fewer
//! rows than before.

use crate::support;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::cast::AsArray;
use batchflow::mock::MockConfig;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::{Mock, batchflow, chat_lines, wait_until, write_input};

/// Every custom_id in the file, or in every `*.parquet` file of the directory.
fn read_ids(path: &Path) -> Result<Vec<String>, String> {
    if !path.is_dir() {
        return read_file_ids(path);
    }
    let mut ids = Vec::new();
    let listing = std::fs::read_dir(path).map_err(|error| format!("list: {error}"))?;
    for entry in listing {
        let entry = entry.map_err(|error| format!("list: {error}"))?;
        if entry.file_name().to_string_lossy().ends_with(".parquet") {
            ids.extend(read_file_ids(&entry.path())?);
        }
    }
    Ok(ids)
}

/// Every custom_id in the file, read whole from the footer at its end.
fn read_file_ids(path: &Path) -> Result<Vec<String>, String> {
    let file = File::open(path).map_err(|error| format!("open: {error}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| format!("footer: {error}"))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["custom_id"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|error| format!("reader: {error}"))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| format!("rows: {error}"))?;
        let column = batch.column(0).as_string::<i32>();
        ids.extend(column.iter().flatten().map(str::to_owned));
    }
    Ok(ids)
}

struct Reads {
    opened: u64,
    failures: Vec<String>,
    last_rows: usize,
}

/// Reads `path` over and over until `stop`: counts, failures, and row counts going down.
fn keep_reading(path: PathBuf, stop: Arc<AtomicBool>) -> Reads {
    let mut reads = Reads {
        opened: 0,
        failures: Vec::new(),
        last_rows: 0,
    };
    let mut seen = false;
    while !stop.load(Ordering::Relaxed) {
        match read_ids(&path) {
            Ok(ids) => {
                seen = true;
                reads.opened += 1;
                if ids.len() < reads.last_rows {
                    reads.failures.push(format!(
                        "rows went down from {} to {}",
                        reads.last_rows,
                        ids.len()
                    ));
                }
                reads.last_rows = ids.len();
            }
            Err(error) if !seen && error.contains("No such file") => {}
            Err(error) => reads.failures.push(error),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    reads
}

#[test]
fn a_reader_never_sees_a_torn_file_during_a_run_or_after_a_kill() {
    read_through_kills(|dir| dir.join("results.parquet"), &[]);
}

#[test]
fn a_reader_of_a_dataset_never_sees_a_torn_part_during_a_run_or_after_a_kill() {
    let parts = read_through_kills(
        |dir| PathBuf::from(format!("{}/dataset/", dir.display())),
        &["--part-row-groups", "3"],
    );
    assert!(parts.len() > 4, "parts: {parts:?}");
    assert!(
        parts.iter().all(|name| name.ends_with(".parquet")),
        "no staging file is left: {parts:?}"
    );
}

/// Runs 1200 requests into `output(dir)`, killed four times at seeded instants and resumed,
/// while a reader keeps reading the results; returns the names of the files at the end.
fn read_through_kills(output: impl Fn(&Path) -> PathBuf, extra: &[&str]) -> Vec<String> {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(3),
        latency_spread: 0.5,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let count = 1200;
    let input = write_input(dir.path(), &chat_lines(count));
    let output = output(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (output, stop) = (output.clone(), Arc::clone(&stop));
        std::thread::spawn(move || keep_reading(output, stop))
    };
    let run = || {
        batchflow()
            .arg(&input)
            .args(["--backend", &mock.url(), "--output"])
            .arg(&output)
            .args(["--checkpoint-rows", "20", "--quiet", "--resume"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts")
    };
    let mut rng = fastrand::Rng::with_seed(14);
    for _ in 0..4 {
        let before = read_ids(&output).map_or(0, |ids| ids.len());
        let mut child = run();
        wait_until("a checkpoint beyond the last kill", || {
            read_ids(&output).is_ok_and(|ids| ids.len() > before)
                || child.try_wait().is_ok_and(|status| status.is_some())
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..80)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let finished = run().wait().expect("runs");
    assert_eq!(finished.code(), Some(0));
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader ran");
    assert!(
        reads.failures.is_empty(),
        "{} of {} reads failed: {:?}",
        reads.failures.len(),
        reads.opened + reads.failures.len() as u64,
        &reads.failures[..reads.failures.len().min(5)]
    );
    assert!(reads.opened >= 100, "only {} reads", reads.opened);
    let ids = read_ids(&output).expect("whole at the end");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), count);
    assert_eq!(unique.len(), count, "each custom_id once");
    let folder = if output.is_dir() {
        output.clone()
    } else {
        dir.path().to_owned()
    };
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .expect("listed")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with("part-") || !output.is_dir())
        .collect();
    names.sort();
    names
}
