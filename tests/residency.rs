//! Keeping the model loaded (issue 24): the mock loads a model as Ollama does (each change of
//! `num_ctx` reloads it, `/api/ps` can show a CPU/GPU split, a prompt is cut at its context),
//! a run counts and warns about every reload and the time lost to loading, `--options` and
//! `--keep-alive` give every request one configuration, and `--on-reload stop` stops the run,
//! resumable.

use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::support::{Mock, batchflow, parse_output, result_rows, run_stdin};

/// `count` chat lines for `/api/chat` whose `num_ctx` alternates between 2048 and 4096.
fn alternating(count: usize) -> String {
    (0..count)
        .map(|index| {
            let context = if index % 2 == 0 { 2048 } else { 4096 };
            let line = json!({
                "custom_id": format!("req-{index}"),
                "method": "POST",
                "url": "/api/chat",
                "body": {
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": format!("question {index}")}],
                    "options": {"num_ctx": context},
                },
            });
            format!("{line}\n")
        })
        .collect()
}

fn loading_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(5),
        load_delay: Duration::from_millis(100),
        ..MockConfig::default()
    })
}

#[test]
fn each_change_of_num_ctx_reloads_the_model_and_the_run_counts_and_warns() {
    let mock = loading_mock();
    let run = run_stdin(
        &alternating(20),
        &["--backend", &mock.url(), "--workers", "1"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(
        mock.server.stats().loads,
        20,
        "every request loads the model"
    );
    assert!(
        run.stderr.contains("loaded again 19 times mid-run"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--options"), "the warning says the fix");
    // Each load was the mock's 100 ms, seen in the replies' load_duration.
    let loading = run
        .stderr
        .lines()
        .find(|line| line.contains("spent loading the model"))
        .expect("a loading line");
    let seconds: f64 = loading
        .split_whitespace()
        .nth(1)
        .and_then(|text| text.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("{loading}"));
    assert!((1.9..3.0).contains(&seconds), "{loading}");
}

#[test]
fn options_and_keep_alive_give_every_request_one_configuration() {
    let mock = loading_mock();
    let run = run_stdin(
        &alternating(20),
        &[
            "--backend",
            &mock.url(),
            "--workers",
            "1",
            "--options",
            r#"{"num_ctx": 8192}"#,
            "--keep-alive",
            "1h",
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(mock.server.stats().loads, 1, "loaded once, kept");
    assert!(!run.stderr.contains("loaded again"), "{}", run.stderr);

    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, alternating(2)).expect("written");
    let output = batchflow()
        .arg(&input)
        .args(["--dry-run", "--options", r#"{"num_ctx": 8192}"#])
        .args(["--keep-alive", "-1", "--backend", "127.0.0.1:9"])
        .output()
        .expect("runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert_eq!(shown.matches("\"num_ctx\": 8192").count(), 2, "{shown}");
    assert_eq!(shown.matches("\"keep_alive\": -1").count(), 2, "{shown}");
}

#[test]
fn on_reload_stop_ends_the_run_resumable_and_a_settled_resume_finishes_it() {
    let mock = loading_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, alternating(200)).expect("written");
    let results = dir.path().join("results.parquet");
    let run = |extra: &[&str]| {
        parse_output(
            batchflow()
                .arg(&input)
                .args(["--backend", &mock.url(), "--workers", "1", "--output"])
                .arg(&results)
                .args(extra)
                .output()
                .expect("runs"),
        )
    };
    let stopped = run(&["--on-reload", "stop"]);
    assert_eq!(stopped.code(), Some(2), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("stopped as --on-reload stop asks"),
        "{}",
        stopped.stderr
    );
    let kept = result_rows(&results).len();
    assert!(
        0 < kept && kept < 200,
        "stopped early, its rows kept: {kept}"
    );

    let resumed = run(&[
        "--resume",
        "--options",
        r#"{"num_ctx": 4096}"#,
        "--on-reload",
        "stop",
    ]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert_eq!(result_rows(&results).len(), 200);
}

#[test]
fn a_model_split_between_cpu_and_gpu_is_named_by_plan_and_by_the_run() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(5),
        cpu_share: 0.25,
        ..MockConfig::default()
    });
    let run = run_stdin(
        &alternating(4),
        &[
            "--backend",
            &mock.url(),
            "--options",
            r#"{"num_ctx": 2048}"#,
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("split between CPU and GPU (2.4 of 3.3 GiB"),
        "{}",
        run.stderr
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, alternating(40)).expect("written");
    let output = batchflow()
        .arg("plan")
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--sample",
            "4",
            "--max-workers",
            "2",
            "--json",
        ])
        .output()
        .expect("runs");
    let plan: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stderr)));
    let kinds: Vec<&str> = plan["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|check| check["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"cpu_split"), "{plan}");
    assert!(kinds.contains(&"load_options_vary"), "{plan}");
}

#[test]
fn a_prompt_longer_than_its_context_is_counted_cut_as_ollama_does() {
    let mock = Mock::start(MockConfig::default());
    let line = json!({
        "custom_id": "long",
        "method": "POST",
        "url": "/api/chat",
        "body": {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "word ".repeat(500)}],
            "options": {"num_ctx": 64},
        },
    });
    let run = run_stdin(&format!("{line}\n"), &["--backend", &mock.url()]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.lines[0]["response"]["body"]["prompt_eval_count"], 64);
}
