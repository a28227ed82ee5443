//! Scale-out behaviour through the real binary (behaviour, not speed): `--workers auto` climbs
//! and backs off on 503s, `tune` finds the server's slots from a sample of the real input, a
//! failing backend is taken out while its requests complete on the other, and shards partition
//! an input exactly.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::stats::StatsSnapshot;
use support::{
    Mock, batchflow, chat_lines, parse_output, text_body_batch, write_input, write_parquet,
};

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

/// `tune`'s standard output, the table's worker counts and the recommendation, once it has
/// exited 0.
fn tune_report(output: &std::process::Output) -> (String, Vec<u64>, u64) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let workers = stdout
        .lines()
        .skip(1)
        .map_while(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    let recommended = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Recommended: --workers "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no recommendation in {stdout}"));
    (stdout, workers, recommended)
}

#[test]
fn tune_finds_the_slots_reading_only_its_sample_of_a_parquet_input() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(50),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let ids: Vec<Option<String>> = (0..500).map(|i| Some(format!("row-{i}"))).collect();
    let input = dir.path().join("requests.parquet");
    write_parquet(&input, [text_body_batch(&ids)]);

    let output = batchflow()
        .arg("tune")
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--sample",
            "16",
            "--max-workers",
            "32",
        ])
        .output()
        .expect("runs");
    let (stdout, workers, recommended) = tune_report(&output);
    assert_eq!(workers[..3], [1, 2, 4], "{stdout}");
    assert!(
        workers.len() <= 5,
        "stopped once the rate stopped rising: {stdout}"
    );
    assert!(
        recommended == 4 || recommended == 8,
        "4 slots: recommended {recommended}\n{stdout}"
    );
    assert!(!stdout.contains("OLLAMA_NUM_PARALLEL"), "{stdout}");
    assert_eq!(
        mock.server.stats().requests,
        16 * workers.len() as u64,
        "each step sent the sample's 16 rows and no more"
    );
}

#[test]
fn tune_says_when_the_server_runs_one_request_at_a_time() {
    use std::io::Write;
    use std::process::Stdio;

    // Long enough that the client's own time between requests barely counts.
    let mock = Mock::start(MockConfig {
        slots: 1,
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let mut child = batchflow()
        .args(["tune", "--backend", &mock.url(), "--sample", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(chat_lines(100).as_bytes())
        .expect("the input fits the pipe");
    drop(stdin);
    let output = child.wait_with_output().expect("runs");
    let (stdout, workers, recommended) = tune_report(&output);
    assert!(workers == [1, 2] || workers == [1, 2, 4], "{stdout}");
    assert!(recommended <= 2, "{stdout}");
    assert!(stdout.contains("OLLAMA_NUM_PARALLEL"), "{stdout}");
    assert_eq!(
        mock.server.stats().requests,
        6 * workers.len() as u64,
        "6 of the 100 lines at each step"
    );
}

#[test]
fn tune_reads_a_named_pipe_once() {
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let fifo = dir.path().join("requests.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        // Opening blocks until tune opens the pipe to read it; then the lines go in once.
        std::thread::spawn(move || std::fs::write(&fifo, chat_lines(100)))
    };
    let output = batchflow()
        .arg("tune")
        .arg(&fifo)
        .args(["--backend", &mock.url(), "--sample", "6"])
        .output()
        .expect("runs");
    // tune may close the pipe after its sample, before the writer is done: not a failure.
    let _ = writer.join();
    let (stdout, workers, recommended) = tune_report(&output);
    assert!(workers.len() >= 2, "{stdout}");
    assert!(recommended >= 2, "two slots: {stdout}");
    assert!(!stdout.contains("OLLAMA_NUM_PARALLEL"), "{stdout}");
    assert_eq!(
        mock.server.stats().requests,
        6 * workers.len() as u64,
        "the same 6 lines at each step"
    );
}

#[test]
fn tune_takes_a_pipeline_file_and_shapes_its_records() {
    let pipeline = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/screen.toml");
    let output = batchflow()
        .args([
            "tune",
            pipeline,
            "--mock",
            "--sample",
            "16",
            "--max-workers",
            "8",
        ])
        .output()
        .expect("runs");
    let (stdout, workers, recommended) = tune_report(&output);
    assert_eq!(workers[..3], [1, 2, 4], "{stdout}");
    assert!(
        (4..=8).contains(&recommended),
        "the built-in mock has 8 slots: {stdout}"
    );
    for line in stdout.lines().skip(1).take(workers.len()) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert!(
            columns.len() == 4 && columns[2].ends_with('s') && columns[3] == "0",
            "every record became a request the mock answered (a latency, no failures): {line}"
        );
    }
}

#[test]
fn backends_with_different_models_each_get_the_requests_for_theirs() {
    let serving = |model: &str| {
        Mock::start(MockConfig {
            models: vec![model.to_owned()],
            latency: Duration::from_millis(2),
            ..MockConfig::default()
        })
    };
    let (llama, qwen) = (serving("llama3.2:latest"), serving("qwen3:8b"));
    let lines: String = (0..100)
        .map(|index| {
            let model = if index % 5 < 3 {
                "llama3.2"
            } else {
                "qwen3:8b"
            };
            serde_json::json!({
                "custom_id": format!("req-{index}"),
                "method": "POST",
                "url": "/api/chat",
                "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            })
            .to_string()
                + "\n"
        })
        .collect();
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &lines);
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &llama.url(), "--backend", &qwen.url()])
        .args(["--workers", "4"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.ok_lines().len(), 100, "{}", run.stderr);
    assert_eq!(llama.server.stats().requests, 60, "llama3.2 requests only");
    assert_eq!(qwen.server.stats().requests, 40, "qwen3:8b requests only");
}
