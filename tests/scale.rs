//! Scale-out behaviour through the real binary (behaviour, not speed): `--workers auto` climbs
//! and backs off on 503s, a failing backend is taken out while its requests complete on the
//! other, and shards partition an input exactly.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::stats::StatsSnapshot;
use support::{Mock, batchflow, chat_lines, parse_output, write_input};

#[test]
fn auto_workers_climb_to_the_slots_and_back_off_on_server_busy() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        max_queue: 2,
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(800));
    let stats_path = dir.path().join("stats.json");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--workers",
            "auto",
            "--retry-base",
            "5ms",
            "--retries",
            "10",
            "--stats",
        ])
        .arg(&stats_path)
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 800);
    let stats: StatsSnapshot =
        serde_json::from_slice(&std::fs::read(&stats_path).expect("stats")).expect("JSON");
    assert!(
        (3..=8).contains(&stats.workers),
        "settled on {} workers for 4 slots",
        stats.workers
    );
    assert!(
        mock.server.stats().max_in_slots == 4,
        "it reached every slot"
    );
    let busy = mock.server.stats().busy;
    assert!(busy * 10 < 800, "no sustained stream of 503s: {busy}");
    assert!(
        run.stderr.contains("workers:"),
        "the summary says what it settled on"
    );
}

#[test]
fn a_failing_backend_is_taken_out_and_its_requests_complete_on_the_other() {
    let healthy = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(2),
        ..MockConfig::default()
    });
    let failing = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(2),
        faults: FaultRates {
            server_error: 1.0,
            ..FaultRates::default()
        },
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(400));
    let stats_path = dir.path().join("stats.json");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &healthy.url(),
            "--backend",
            &failing.url(),
            "--workers",
            "4",
        ])
        .args(["--retry-base", "1ms", "--stats"])
        .arg(&stats_path)
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.ok_lines().len(), 400, "every request completed");
    assert!(
        run.stderr.contains("failed 3 times in a row"),
        "{}",
        run.stderr
    );
    let stats: StatsSnapshot =
        serde_json::from_slice(&std::fs::read(&stats_path).expect("stats")).expect("JSON");
    let failing_figures = stats
        .backends
        .iter()
        .find(|b| b.url == failing.url())
        .expect("per-backend figures");
    assert!(failing_figures.ejections >= 1);
    assert!(
        failing.server.stats().requests < 100,
        "the failing backend got little traffic once out"
    );
    assert_eq!(healthy.server.stats().succeeded, 400);
}

#[test]
fn shards_partition_an_input_exactly() {
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(1000));
    let mut union = HashSet::new();
    let mut total = 0;
    for index in 0..3 {
        let output = batchflow()
            .arg(&input)
            .args([
                "--backend",
                &mock.url(),
                "--quiet",
                "--shard",
                &format!("{index}/3"),
            ])
            .output()
            .expect("runs");
        let run = parse_output(output);
        assert_eq!(run.code(), Some(0));
        assert!(run.lines.len() > 200, "a fair share: {}", run.lines.len());
        total += run.lines.len();
        for id in run.by_id().into_keys() {
            assert!(union.insert(id), "pairwise disjoint");
        }
    }
    assert_eq!(total, 1000);
    assert_eq!(union, (0..1000).map(|i| format!("req-{i}")).collect());
    let bad = batchflow().args(["--shard", "3/3"]).output().expect("runs");
    assert_eq!(bad.status.code(), Some(2));
}
