//! Readers of the results while a run goes on: a reader opening the file with the parquet
//! crate (as any Parquet reader does: the footer from the file's end) at every moment of a
//! run killed at seeded random instants and resumed, never failing and never seeing fewer rows
//! than before.

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
use batchflow::sink::checkpoint;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::{Mock, batchflow, chat_lines, wait_until, write_input};

/// Every custom_id in the file, read whole from the footer at its end.
fn read_ids(path: &Path) -> Result<Vec<String>, String> {
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
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(3),
        latency_spread: 0.5,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let count = 1200;
    let input = write_input(dir.path(), &chat_lines(count));
    let output = dir.path().join("results.parquet");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (output, stop) = (output.clone(), Arc::clone(&stop));
        std::thread::spawn(move || keep_reading(output, stop))
    };
    let run = |extra: &[&str]| {
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
        let before = checkpoint::inspect(&output).map_or(0, |existing| existing.rows());
        let mut child = run(&[]);
        wait_until("a checkpoint beyond the last kill", || {
            checkpoint::inspect(&output).is_ok_and(|existing| existing.rows() > before)
                || child.try_wait().is_ok_and(|status| status.is_some())
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..80)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let finished = run(&[]).wait().expect("runs");
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
}
