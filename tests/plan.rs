//! `batchflow plan` through the binary against the mock: it counts the input exactly, projects
//! the run from a probe of the input's own first requests (kept with `--output`, so the run
//! that follows sends each request once in all), and names what would slow the run, each
//! finding with its fix.

use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::support::{Mock, batchflow, parse_output, result_rows};

/// A chat request line for `/api/chat` with `words` words and Ollama `options`.
fn line(index: usize, words: usize, options: Value) -> String {
    json!({
        "custom_id": format!("req-{index}"),
        "method": "POST",
        "url": "/api/chat",
        "body": {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "word ".repeat(words)}],
            "options": options,
            "keep_alive": "1h",
        },
    })
    .to_string()
}

fn plan_json(args: &[&str]) -> Value {
    let output = batchflow()
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

#[test]
fn plan_counts_projects_and_keeps_its_probe_for_the_run_that_follows() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(50),
        latency_spread: 0.3,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("requests.jsonl");
    let lines: String = (0..400)
        .map(|index| line(index, 5 + index % 20, json!({"num_ctx": 4096})) + "\n")
        .collect();
    std::fs::write(&input, lines).expect("written");
    let kept = dir.path().join("results.parquet");
    let input_arg = input.to_str().expect("a UTF-8 path");
    let kept_arg = kept.to_str().expect("a UTF-8 path");
    let plan = plan_json(&[
        input_arg,
        "--backend",
        &mock.url(),
        "--sample",
        "16",
        "--max-workers",
        "16",
        "--output",
        kept_arg,
    ]);
    assert_eq!(plan["requests"], 400, "{plan}");
    assert_eq!(plan["invalid_lines"], 0);
    let probed = plan["probed"].as_u64().expect("probed");
    let steps = plan["tune"]["steps"].as_array().expect("steps");
    assert_eq!(probed, 16 * steps.len() as u64, "{plan}");
    assert_eq!(mock.server.stats().requests, probed);
    assert!(plan["calibrated"].as_bool().expect("a flag"), "{plan}");
    let recommended = plan["recommended_workers"].as_u64().expect("workers");
    assert!(recommended >= 2, "4 slots: {plan}");
    let (low, wall, high) = (
        plan["wall_low_secs"].as_f64().expect("low"),
        plan["wall_secs"].as_f64().expect("wall"),
        plan["wall_high_secs"].as_f64().expect("high"),
    );
    assert!(0.0 < low && low < wall && wall < high, "{plan}");
    assert!(plan["prompt_tokens"].as_u64().expect("tokens") > 400 * 5);
    // The mock loads its model at the first request, as Ollama does: the one finding.
    let kinds: Vec<&Value> = plan["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|check| &check["kind"])
        .collect();
    assert_eq!(kinds, [&json!("model_not_loaded")], "{plan}");

    // The run resumes past the probe: every request is sent once in all.
    assert_eq!(result_rows(&kept).len() as u64, probed);
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--workers"])
        .arg(recommended.to_string())
        .args(["--output", kept_arg, "--resume", "--quiet"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(mock.server.stats().requests, 400);
    assert_eq!(result_rows(&kept).len(), 400);
}

#[test]
fn plan_names_what_would_slow_the_run_each_with_its_fix() {
    let mock = Mock::start(MockConfig {
        slots: 1,
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("requests.jsonl");
    let mut lines = String::new();
    for index in 0..60 {
        // Lines 41 and 50 hold prompts far longer than their 64-token context; every seventh
        // asks for another context than the rest.
        let (words, context) = match index {
            40 | 49 => (400, 64),
            _ if index % 7 == 3 => (5, 8192),
            _ => (5, 2048),
        };
        lines.push_str(&line(
            index,
            words,
            json!({"num_ctx": context, "temperature": 0}),
        ));
        lines.push('\n');
    }
    std::fs::write(&input, lines).expect("written");
    let plan = plan_json(&[
        input.to_str().expect("a UTF-8 path"),
        "--backend",
        &mock.url(),
        "--sample",
        "8",
        "--max-workers",
        "4",
    ]);
    let checks = plan["checks"].as_array().expect("checks");
    let check = |kind: &str| {
        checks
            .iter()
            .find(|check| check["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {plan}"))
    };
    assert!(
        check("one_slot")["fix"]
            .as_str()
            .is_some_and(|fix| fix.contains("OLLAMA_NUM_PARALLEL"))
    );
    let long = check("prompt_over_context")["message"]
        .as_str()
        .expect("a message");
    assert!(
        long.starts_with("2 requests") && long.contains("lines 41, 50"),
        "{long}"
    );
    let varying = check("load_options_vary")["message"]
        .as_str()
        .expect("a message");
    // Three contexts; temperature is not a load option.
    assert!(varying.contains("3 different load options"), "{varying}");
    assert!(!varying.contains("temperature"), "{varying}");
    assert_eq!(plan["requests"], 60);
}

#[test]
fn plan_takes_records_with_a_prompt_and_refuses_standard_input() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let records = dir.path().join("people.jsonl");
    let lines: String = (0..30)
        .map(|index| format!("{}\n", json!({"name": format!("P{index}"), "bio": "x"})))
        .collect();
    std::fs::write(&records, lines).expect("written");
    let plan = plan_json(&[
        records.to_str().expect("a UTF-8 path"),
        "--prompt",
        "Screen {{name}}: {{bio}}",
        "--model",
        "llama3.2",
        "--mock",
        "--sample",
        "4",
        "--max-workers",
        "2",
    ]);
    assert_eq!(plan["requests"], 30, "{plan}");

    let output = batchflow()
        .args(["plan", "--mock"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give it a file"), "{stderr}");
}
