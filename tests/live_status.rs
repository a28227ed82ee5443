//! The live-status file beside a run's results, as `batchflow status` reads it from another
//! terminal: a running run with its pid, progress and ETA; one killed, stopped; one that ended,
//! finished or interrupted; none with --no-live-status; never a part of a dataset.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::Value;

use crate::support::{self, Mock, batchflow, chat_lines, parse_output, wait_until, write_input};

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Starts a run of `input` into `output` against `mock`, stdout discarded.
fn start(mock: &Mock, input: &Path, output: &str, extra: &[&str]) -> Child {
    batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--quiet", "--output", output])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts")
}

/// `batchflow status RESULTS`'s report.
fn status(results: &str) -> String {
    let output = batchflow()
        .args(["status", results])
        .output()
        .expect("status runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value after `label` on the report's line that starts with it.
fn line_of<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
}

/// The figures of a `this run:` line: done, total and the percent shown.
fn progress(report: &str) -> Option<(u64, u64, f64)> {
    let figures = line_of(report, "this run:")?;
    let (fraction, rest) = figures.split_once(' ')?;
    let (done, total) = fraction.split_once('/')?;
    let percent = rest.strip_prefix('(')?.split_once("%)")?.0;
    Some((
        done.parse().ok()?,
        total.parse().ok()?,
        percent.parse().ok()?,
    ))
}

fn live_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.live.json"))
}

fn read_live(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("the live-status file")).expect("JSON")
}

#[test]
fn status_follows_a_running_run_and_says_stopped_once_it_is_killed() {
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(40),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(400));
    let results = dir.path().join("results.parquet");
    let mut child = start(
        &mock,
        &input,
        utf8(&results),
        &["--workers", "2", "--checkpoint-rows", "5"],
    );
    let pid = child.id();
    let mut report = String::new();
    wait_until("status sees the run going, with some results done", || {
        report = status(utf8(&results));
        line_of(&report, "run:").is_some_and(|run| run.starts_with("running"))
            && progress(&report).is_some_and(|(done, _, _)| done > 0)
    });
    let run = line_of(&report, "run:").expect("a run line");
    assert!(
        run.starts_with(&format!("running (pid {pid} on ")),
        "{report}"
    );
    let (done, total, percent) = progress(&report).expect("figures");
    assert_eq!(total, 400, "{report}");
    assert!(
        (percent - done as f64 * 100.0 / total as f64).abs() < 0.051,
        "{done}/{total} is not {percent}%: {report}"
    );
    assert!(
        line_of(&report, "this run:").is_some_and(|figures| figures.contains("/s")),
        "a rate: {report}"
    );
    assert!(
        line_of(&report, "state:").is_some_and(|state| state.contains(&format!("pid {pid} "))),
        "the writer lock names the same process: {report}"
    );
    let live = read_live(&live_file(dir.path(), "results.parquet"));
    assert_eq!(live["state"], "running");
    assert_eq!(live["pid"], pid);

    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let report = status(utf8(&results));
    let run = line_of(&report, "run:").expect("a run line");
    assert!(
        run.starts_with(&format!("stopped (pid {pid} on ")) && run.contains("last seen"),
        "{report}"
    );
    assert!(
        line_of(&report, "this run:").is_some_and(|figures| !figures.contains("ETA")),
        "a stopped run has no ETA: {report}"
    );
}

#[test]
fn a_run_that_ends_is_finished_or_interrupted_and_no_live_status_writes_none() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(40));
    let results = dir.path().join("results.parquet");
    let child = start(&mock, &input, utf8(&results), &[]);
    let pid = child.id();
    let ended = parse_output(child.wait_with_output().expect("runs"));
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let report = status(utf8(&results));
    let run = line_of(&report, "run:").expect("a run line");
    assert!(run.starts_with("finished at "), "{report}");
    assert!(run.contains(&format!("(pid {pid} on ")), "{report}");
    assert_eq!(progress(&report), Some((40, 40, 100.0)), "{report}");
    let live = read_live(&live_file(dir.path(), "results.parquet"));
    assert_eq!(live["state"], "finished");
    assert_eq!(live["done"], 40);
    assert_eq!(live["eta_secs"], Value::Null);

    // A run stopped by SIGINT closes its results and says so.
    let slow = Mock::start(MockConfig {
        slots: 1,
        latency: Duration::from_millis(50),
        ..MockConfig::default()
    });
    let long = dir.path().join("long.jsonl");
    std::fs::write(&long, chat_lines(400)).expect("write input");
    let stopped = dir.path().join("stopped.parquet");
    let child = start(&slow, &long, utf8(&stopped), &["--workers", "1"]);
    wait_until("the run's first result", || {
        progress(&status(utf8(&stopped))).is_some_and(|(done, _, _)| done > 0)
    });
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: signals the child this test started, which it has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let interrupted = parse_output(child.wait_with_output().expect("runs"));
    assert_eq!(interrupted.code(), Some(130), "{}", interrupted.stderr);
    let report = status(utf8(&stopped));
    assert!(
        line_of(&report, "run:").is_some_and(|run| run.starts_with("interrupted at ")),
        "{report}"
    );

    let quiet = dir.path().join("quiet.parquet");
    let child = start(&mock, &input, utf8(&quiet), &["--no-live-status"]);
    let ended = parse_output(child.wait_with_output().expect("runs"));
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(!live_file(dir.path(), "quiet.parquet").exists());
    let report = status(utf8(&quiet));
    assert_eq!(line_of(&report, "run:"), None, "{report}");
    assert!(report.contains("rows:       40 (ok 40"), "{report}");
}

#[test]
fn a_datasets_live_status_file_is_no_part_for_status_or_verify() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(40));
    let set = format!("{}/", dir.path().join("set").display());
    let child = start(&mock, &input, &set, &["--checkpoint-rows", "10"]);
    let ended = parse_output(child.wait_with_output().expect("runs"));
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let live = dir.path().join("set/.part-0-of-1.live.json");
    assert_eq!(read_live(&live)["state"], "finished");

    let report = status(&set);
    assert!(report.contains("1 shard(s), 40 rows in all"), "{report}");
    assert!(!report.contains("damaged"), "{report}");
    assert!(
        line_of(&report, "run:").is_some_and(|run| run.starts_with("finished at ")),
        "{report}"
    );
    let verified = support::parse_output(
        batchflow()
            .args(["verify", &set, "--input", utf8(&input)])
            .output()
            .expect("verify runs"),
    );
    assert_eq!(
        verified.code(),
        Some(0),
        "{}\n{}",
        verified.stdout,
        verified.stderr
    );
    assert!(
        !verified.stdout.contains("live.json") && !verified.stderr.contains("live.json"),
        "{}\n{}",
        verified.stdout,
        verified.stderr
    );

    // Resumed, the dataset still counts its 40 rows, and the file says the new run's end.
    let child = start(&mock, &input, &set, &["--resume"]);
    let resumed = parse_output(child.wait_with_output().expect("runs"));
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let report = status(&set);
    assert!(report.contains("1 shard(s), 40 rows in all"), "{report}");
    assert!(
        line_of(&report, "run:").is_some_and(|run| run.starts_with("finished at ")),
        "{report}"
    );
    assert!(
        line_of(&report, "this run:").is_some_and(|figures| figures.starts_with("0")),
        "nothing left to send: {report}"
    );
}
