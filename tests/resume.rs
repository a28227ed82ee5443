//! Crash safety and resume of the Parquet results file, through the real binary: SIGKILL at
//! seeded random moments, torn tails, --retry-errors, graceful SIGINT, and refusing to touch an
//! existing file.

use crate::support;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use batchflow::mock::MockConfig;
use batchflow::paths::with_suffix;
use batchflow::sink::checkpoint::{self, STAGING_SUFFIX};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::{Mock, Run, batchflow, chat_line, chat_lines, parse_output, write_input};

/// Every value of a string column, read back with the parquet crate as an analyst's tool would
/// (no batchflow code involved).
fn string_column(path: &Path, name: &str) -> Vec<Option<String>> {
    let file = File::open(path).expect("results file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a readable Parquet file")
        .build()
        .expect("reader");
    let mut values = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let column = batch
            .column_by_name(name)
            .expect("column")
            .as_string::<i32>()
            .clone();
        values.extend(
            (0..column.len()).map(|row| column.is_valid(row).then(|| column.value(row).to_owned())),
        );
    }
    values
}

/// custom_id → status, asserting each id appears once.
fn statuses(path: &Path) -> HashMap<String, String> {
    let ids = string_column(path, "custom_id");
    let statuses = string_column(path, "status");
    let mut map = HashMap::new();
    for (id, status) in ids.into_iter().zip(statuses) {
        let id = id.expect("custom_id");
        let previous = map.insert(id.clone(), status.expect("status"));
        assert!(previous.is_none(), "{id} has two rows");
    }
    map
}

fn start(input: &Path, output: &Path, mock: &Mock, extra: &[&str]) -> Child {
    batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--output"])
        .arg(output)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts")
}

/// A whole run of [`start`], to its exit.
fn run_to_end(input: &Path, output: &Path, mock: &Mock, extra: &[&str]) -> Run {
    parse_output(
        start(input, output, mock, extra)
            .wait_with_output()
            .expect("runs"),
    )
}

/// Waits (bounded) until the results file holds more durable rows than `than`, so a kill that
/// follows lands mid-run however slow the machine is. Polls the file; no fixed sleep.
fn wait_for_progress(child: &mut Child, output: &Path, than: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let progressed = checkpoint::inspect(output).is_ok_and(|existing| existing.rows() > than);
        if progressed || child.try_wait().is_ok_and(|status| status.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no checkpoint beyond {than} rows within 60 s");
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_each_custom_id_exactly_once() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(4),
        latency_spread: 0.5,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let count = 6000;
    let input = write_input(dir.path(), &chat_lines(count));
    let output = dir.path().join("results.parquet");
    let mut rng = fastrand::Rng::with_seed(20261126);
    let mut durable = 0;
    for kill in 0..24 {
        let mut child = start(
            &input,
            &output,
            &mock,
            &["--resume", "--checkpoint-rows", "7", "--quiet"],
        );
        if kill % 2 == 0 {
            wait_for_progress(&mut child, &output, durable);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
        child.kill().expect("SIGKILL");
        let output_status = child.wait_with_output().expect("reaped");
        assert!(
            output_status.status.code().is_none() || output_status.status.code() == Some(0),
            "kill {kill}: {}",
            String::from_utf8_lossy(&output_status.stderr)
        );
        if !output.exists() {
            continue;
        }
        let existing =
            checkpoint::inspect(&output).unwrap_or_else(|error| panic!("kill {kill} left {error}"));
        assert!(
            existing.rows() >= durable,
            "kill {kill}: durable rows went from {durable} to {}",
            existing.rows()
        );
        durable = existing.rows();
    }
    assert!(
        durable > 0 && durable < count as u64,
        "the kills landed mid-run ({durable} rows)"
    );
    let finish = run_to_end(&input, &output, &mock, &["--resume"]);
    assert_eq!(finish.code(), Some(0), "{}", finish.stderr);
    let statuses = statuses(&output);
    assert_eq!(statuses.len(), count);
    for index in 0..count {
        assert_eq!(
            statuses.get(&format!("req-{index}")).map(String::as_str),
            Some("ok")
        );
    }
    assert!(
        !with_suffix(&output, STAGING_SUFFIX).exists(),
        "a clean close leaves no staging file"
    );
    assert_eq!(
        checkpoint::inspect(&output).expect("whole").state(),
        Some(checkpoint::FileState::Complete)
    );
}

#[test]
fn a_torn_staging_file_after_a_kill_is_discarded_and_a_cut_into_the_published_file_is_refused() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(3),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let count = 1500;
    let input = write_input(dir.path(), &chat_lines(count));
    let output = dir.path().join("results.parquet");
    let staging = with_suffix(&output, STAGING_SUFFIX);
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..6 {
        let before = checkpoint::inspect(&output).map_or(0, |existing| existing.rows());
        let mut child = start(
            &input,
            &output,
            &mock,
            &["--resume", "--checkpoint-rows", "50", "--quiet"],
        );
        wait_for_progress(&mut child, &output, before);
        std::thread::sleep(Duration::from_millis(rng.u64(0..100)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let published = sha(&output);
        let existing = checkpoint::inspect(&output).expect("whole after a kill");
        // A kill or a power cut leaves the next checkpoint's staging file cut at a random
        // byte, or ending in garbage: the published file never depends on it.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&staging)
            .expect("open");
        let length = file.metadata().expect("len").len();
        if round % 2 == 0 {
            file.set_len(rng.u64(0..=length)).expect("truncate");
        } else {
            use std::io::Write;
            (&file).write_all(&[0xAB; 977]).expect("garbage");
        }
        assert_eq!(sha(&output), published, "the kill left the published file");
        assert!(existing.rows() >= before, "rows never go down");
    }
    let existing = checkpoint::inspect(&output).expect("still resumable");
    assert!(existing.rows() > 0);

    // Cutting into checkpointed data cannot be recovered: refused, and the file is untouched.
    let damaged = dir.path().join("damaged.parquet");
    std::fs::copy(&output, &damaged).expect("copy");
    File::options()
        .write(true)
        .open(&damaged)
        .expect("open")
        .set_len(existing.data_end / 2)
        .expect("cut");
    let before = sha(&damaged);
    let refused = run_to_end(&input, &damaged, &mock, &["--resume"]);
    assert_eq!(refused.code(), Some(2));
    let stderr = refused.stderr;
    assert!(
        stderr.contains("cannot be resumed") && stderr.contains("damaged.parquet"),
        "{stderr}"
    );
    assert_eq!(sha(&damaged), before, "a damaged file is never overwritten");

    let finish = run_to_end(&input, &output, &mock, &["--resume"]);
    assert_eq!(finish.code(), Some(0), "{}", finish.stderr);
    assert_eq!(statuses(&output).len(), count);
    assert!(
        !staging.exists(),
        "the resume removed the torn staging file"
    );
}

#[test]
fn retry_errors_resends_failed_requests_and_keeps_only_their_new_rows() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut lines: Vec<String> = (0..40)
        .map(|index| chat_line(&format!("ok-{index}"), "fine"))
        .collect();
    for index in 0..5 {
        // Fails all 4 attempts of the first run, succeeds on the fifth.
        lines.push(chat_line(
            &format!("flaky-{index}"),
            &format!("[mock:fail=4:500] flaky {index}"),
        ));
    }
    let input = write_input(dir.path(), &(lines.join("\n") + "\n"));
    let output = dir.path().join("results.parquet");
    let args = ["--retries", "3", "--retry-base", "1ms"];
    let first = run_to_end(&input, &output, &mock, &args);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let before = statuses(&output);
    assert_eq!(
        before.values().filter(|status| *status == "error").count(),
        5
    );

    let plain_resume = run_to_end(&input, &output, &mock, &["--resume"]);
    // The exit status describes the results, kept error rows included.
    assert_eq!(plain_resume.code(), Some(1), "{}", plain_resume.stderr);
    assert_eq!(statuses(&output), before, "--resume alone keeps error rows");

    let mut retry_args = args.to_vec();
    retry_args.extend(["--resume", "--retry-errors"]);
    let retried = run_to_end(&input, &output, &mock, &retry_args);
    assert_eq!(retried.code(), Some(0), "{}", retried.stderr);
    let after = statuses(&output);
    assert_eq!(after.len(), 45, "one row per custom_id");
    assert!(after.values().all(|status| status == "ok"), "{after:?}");
}

#[test]
fn sigint_closes_a_readable_file_with_every_finished_row() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(400));
    let output = dir.path().join("results.parquet");
    let mut child = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--jsonl", "--output"])
        .arg(&output)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("a first result");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let rest: Vec<String> = std::io::BufRead::lines(stdout)
        .map(|line| line.expect("line"))
        .collect();
    let finished = child.wait_with_output().expect("exits");
    assert_eq!(finished.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(stderr.contains("--resume"), "tells how to resume: {stderr}");
    let rows = statuses(&output);
    assert_eq!(
        rows.len(),
        rest.len() + 1,
        "every finished row is in the file"
    );
    assert!(rows.len() < 400);
    assert_eq!(
        checkpoint::inspect(&output).expect("whole").state(),
        Some(checkpoint::FileState::Interrupted),
        "closed, not just checkpointed"
    );
    let status = batchflow()
        .arg("status")
        .arg(&output)
        .output()
        .expect("status");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        report.contains("interrupted") && report.contains(&format!("rows:       {}", rows.len())),
        "{report}"
    );
}

#[test]
fn an_existing_output_is_never_touched_without_resume_or_overwrite() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(20));
    let output = dir.path().join("results.parquet");
    let first = run_to_end(&input, &output, &mock, &[]);
    assert_eq!(first.code(), Some(0));
    let before = sha(&output);
    let again = run_to_end(&input, &output, &mock, &[]);
    assert_eq!(again.code(), Some(2));
    let stderr = again.stderr;
    assert!(
        stderr.contains("--resume") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(sha(&output), before, "unchanged");
    let requests_before = mock.server.stats().requests;
    let overwritten = run_to_end(&input, &output, &mock, &["--overwrite"]);
    assert_eq!(overwritten.code(), Some(0));
    assert_eq!(mock.server.stats().requests, requests_before + 20);
    assert_eq!(statuses(&output).len(), 20);
}

#[test]
fn resuming_with_a_different_input_is_reported() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("dir");
    let output = dir.path().join("results.parquet");
    let first_input = write_input(dir.path(), &chat_lines(10));
    let first = run_to_end(&first_input, &output, &mock, &[]);
    assert_eq!(first.code(), Some(0));
    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        (0..5)
            .map(|i| chat_line(&format!("new-{i}"), "x") + "\n")
            .collect::<String>(),
    )
    .expect("write");
    let resumed = run_to_end(&other, &output, &mock, &["--resume"]);
    assert_eq!(resumed.code(), Some(0));
    let stderr = resumed.stderr;
    assert!(stderr.contains("not in this input: 10"), "{stderr}");
}

#[test]
fn a_closed_stdout_still_closes_the_results_file() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(5000));
    let output = dir.path().join("results.parquet");
    let mut child = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--jsonl", "--quiet", "--output"])
        .arg(&output)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("a line");
    drop(stdout);
    child.wait().expect("exits");
    assert!(
        !with_suffix(&output, STAGING_SUFFIX).exists(),
        "closed, not left at a checkpoint"
    );
    let existing = checkpoint::inspect(&output).expect("readable");
    assert_eq!(existing.state(), Some(checkpoint::FileState::Interrupted));
    assert_eq!(statuses(&output).len() as u64, existing.rows());
}

#[test]
fn long_replies_cut_row_groups_by_size_before_the_row_count() {
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    // The mock echoes a prompt's first words: twelve words of 20,000 bytes make a reply of
    // about 240 KB, kept twice (content and raw response), so 8 MiB of buffered rows is reached
    // after some 17 rows, long before the default 10,000.
    let word = "w".repeat(20_000);
    let prompt = [word.as_str(); 12].join(" ");
    let lines: String = (0..120)
        .map(|index| chat_line(&format!("long-{index}"), &prompt) + "\n")
        .collect();
    let input = write_input(dir.path(), &lines);
    let output = dir.path().join("results.parquet");
    let run = run_to_end(&input, &output, &mock, &["--quiet", "--workers", "4"]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let file = File::open(&output).expect("results file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("readable");
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|group| group.num_rows())
        .collect();
    assert_eq!(groups.iter().sum::<i64>(), 120, "{groups:?}");
    assert!(groups.len() >= 5, "cut by size: {groups:?}");
    assert!(groups.iter().all(|&rows| rows <= 40), "{groups:?}");
    assert_eq!(statuses(&output).len(), 120);
}
