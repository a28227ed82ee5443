//! Observability through the real binary: the stats file agrees with the output, progress is
//! logged to stderr when it is not a terminal (stdout stays pure JSONL), and a machine without
//! an NVIDIA driver runs and says "GPU n/a".

use crate::support;

use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::stats::StatsSnapshot;
use support::{Mock, batchflow, chat_lines, parse_output, write_input};

/// Forces "no GPU" even on a machine that has one.
const NO_NVML: (&str, &str) = ("BATCHFLOW_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1");

#[test]
fn the_stats_file_counts_what_the_output_holds() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        faults: FaultRates {
            server_error: 0.3,
            reset: 0.05,
            ..FaultRates::default()
        },
        seed: 11,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut input = chat_lines(1500);
    input.push_str("not json\n");
    let input = write_input(dir.path(), &input);
    let stats_path = dir.path().join("stats.json");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--retries",
            "1",
            "--retry-base",
            "1ms",
            "--stats",
        ])
        .arg(&stats_path)
        .env(NO_NVML.0, NO_NVML.1)
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let stats: StatsSnapshot =
        serde_json::from_slice(&std::fs::read(&stats_path).expect("stats file"))
            .expect("stats JSON");
    let errors = run.error_lines();
    let invalid = errors
        .iter()
        .filter(|line| line["error"]["code"] == "invalid_json")
        .count() as u64;
    assert!(stats.finished);
    assert_eq!(stats.total, Some(1501));
    assert_eq!(stats.done, run.lines.len() as u64);
    assert_eq!(stats.succeeded, run.ok_lines().len() as u64);
    assert_eq!(stats.invalid, invalid);
    assert_eq!(stats.failed, errors.len() as u64 - invalid);
    assert!(stats.failed > 0, "some requests failed both attempts");
    assert_eq!(
        stats.errors_by_code.values().sum::<u64>(),
        errors.len() as u64
    );
    let mock_stats = mock.server.stats();
    assert_eq!(
        stats.retries,
        mock_stats.requests - 1500,
        "every attempt after a first is a retry"
    );
    assert_eq!(stats.retries, stats.retries_by_cause.values().sum::<u64>());
    assert_eq!(stats.in_flight, 0);
    assert!(stats.completion_tokens > 0 && stats.latency_ms.p50.is_some());
    assert_eq!(stats.gpus, None);
}

#[test]
fn off_a_terminal_progress_is_logged_to_stderr_and_stdout_stays_jsonl() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(100));
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--workers",
            "4",
            "--progress-interval",
            "0.5",
        ])
        .env(NO_NVML.0, NO_NVML.1)
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(
        run.lines.len(),
        100,
        "stdout holds the results and nothing else"
    );
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("Progress: "))
        .collect();
    assert!(
        progress.len() >= 2,
        "periodic progress lines: {}",
        run.stderr
    );
    assert!(
        progress
            .iter()
            .all(|line| line.contains("/100 ") && line.contains("in flight")),
        "{progress:?}"
    );
    assert!(run.stderr.contains("Summary"), "{}", run.stderr);
}

#[test]
fn without_an_nvidia_driver_the_run_works_and_says_gpu_na() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("dir");
    let input = std::fs::File::open(write_input(dir.path(), &chat_lines(5))).expect("input");
    let output = batchflow()
        .arg("--backend")
        .arg(mock.url())
        .env(NO_NVML.0, NO_NVML.1)
        .stdin(input)
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 5);
    assert!(run.stderr.contains("GPU:      n/a"), "{}", run.stderr);
    assert!(
        run.stderr.contains("GPU: n/a"),
        "said once at the start: {}",
        run.stderr
    );
}

#[test]
fn quiet_prints_no_progress_and_no_summary() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(5));
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0));
    assert_eq!(run.stderr, "");
}
