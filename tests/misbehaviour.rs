//! Servers that misbehave, through the real binary: each misbehaviour becomes that request's
//! recorded error, never a crash; and a soak with every fault at once loses nothing, repeats
//! nothing, and retries without a storm.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use support::{Mock, batchflow, chat_line, chat_lines, parse_output, write_input};

#[test]
fn each_misbehaviour_is_that_requests_error() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        record_arrivals: true,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let lines = [
        chat_line("html", "[mock:fail=99:html] a"),
        chat_line("redirect", "[mock:fail=99:redirect] b"),
        chat_line("huge", "[mock:fail=99:huge] c"),
        chat_line("slowloris", "[mock:fail=99:slowloris] d"),
        chat_line("fine", "e"),
    ];
    let input = write_input(dir.path(), &(lines.join("\n") + "\n"));
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--timeout",
            "1s",
            "--retries",
            "1",
            "--retry-base",
            "1ms",
        ])
        .args([
            "--max-response-bytes",
            "1000000",
            "--api-key-env",
            "MISBEHAVIOUR_KEY",
        ])
        .env("MISBEHAVIOUR_KEY", "sk-misbehaviour-test")
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let by_id = run.by_id();
    let code = |id: &str| {
        by_id[id]["error"]["code"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    assert_eq!(code("html"), "invalid_response");
    assert_eq!(
        by_id["html"]["response"]["body"],
        "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    );
    assert_eq!(code("redirect"), "client_error");
    assert_eq!(by_id["redirect"]["response"]["status_code"], 302);
    assert_eq!(code("huge"), "invalid_response");
    assert!(
        by_id["huge"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-response-bytes"))
    );
    assert_eq!(code("slowloris"), "request_timeout");
    assert!(by_id["fine"]["error"].is_null());
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    for arrival in mock.server.arrivals() {
        *attempts.entry(arrival.body_key).or_default() += 1;
    }
    let redirect_attempts = mock
        .server
        .arrivals()
        .iter()
        .filter(|a| a.status == 302)
        .count();
    assert_eq!(
        redirect_attempts, 1,
        "a redirect is neither followed nor retried"
    );
    assert!(
        !run.stdout.contains("sk-misbehaviour-test")
            && !run.stderr.contains("sk-misbehaviour-test")
    );
}

#[test]
fn a_soak_with_every_fault_loses_nothing_repeats_nothing_and_does_not_storm() {
    let mock = Mock::start(MockConfig {
        slots: 16,
        max_queue: 8,
        latency: Duration::from_millis(2),
        latency_spread: 1.0,
        faults: FaultRates {
            server_error: 0.05,
            rate_limited: 0.01,
            reset: 0.02,
            hang: 0.0005,
            truncated: 0.02,
            bad_output: 0.0,
        },
        seed: 99,
        retry_after: Duration::from_secs(1),
        hang: Duration::from_secs(30),
        record_arrivals: true,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let count = 20_000;
    let input = write_input(dir.path(), &chat_lines(count));
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--workers",
            "32",
            "--timeout",
            "1s",
        ])
        .args(["--retries", "4", "--retry-base", "20ms", "--quiet"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert!(matches!(run.code(), Some(0 | 1)), "{}", run.stderr);
    let by_id = run.by_id();
    assert_eq!(by_id.len(), count, "one result per request, none twice");
    let stats = mock.server.stats();
    assert!(
        stats.busy > 0 && stats.rate_limited > 0 && stats.resets > 0 && stats.truncated > 0,
        "{stats:?}"
    );
    assert!(stats.hangs > 0, "{stats:?}");
    assert_eq!(
        run.ok_lines().len() as u64,
        stats.succeeded,
        "every success served is written, once"
    );

    let mut by_request: HashMap<u64, Vec<_>> = HashMap::new();
    for arrival in mock.server.arrivals() {
        by_request
            .entry(arrival.body_key)
            .or_default()
            .push(arrival);
    }
    let total_attempts: usize = by_request.values().map(Vec::len).sum();
    assert!(
        total_attempts < count * 13 / 10,
        "{total_attempts} attempts for {count} requests"
    );
    for attempts in by_request.values_mut() {
        assert!(attempts.len() <= 5, "at most 1 + --retries attempts");
        attempts.sort_by_key(|arrival| arrival.at);
        for pair in attempts.windows(2) {
            if pair[0].status == 429 {
                assert!(
                    pair[1].at - pair[0].at >= Duration::from_secs(1),
                    "Retry-After honoured"
                );
            }
        }
    }
}

/// Request lines naming `model`, with ids `{prefix}-N`.
fn lines_for_model(count: usize, prefix: &str, model: &str) -> Vec<String> {
    (0..count)
        .map(|index| {
            serde_json::json!({
                "custom_id": format!("{prefix}-{index}"),
                "method": "POST",
                "url": "/api/chat",
                "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            })
            .to_string()
        })
        .collect()
}

#[test]
fn a_line_naming_a_model_no_backend_serves_is_that_lines_error_and_the_run_goes_on() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut lines = lines_for_model(900, "good", "llama3.2");
    // Every tenth line names a model the server does not have.
    for (index, line) in lines_for_model(100, "typo", "llama9")
        .into_iter()
        .enumerate()
    {
        lines.insert(index * 10 + 5, line);
    }
    let input = write_input(dir.path(), &(lines.join("\n") + "\n"));
    // With preflight the catalog turns such a line away before it is sent; without it the
    // server's own 404 does, mid-run, as for a model removed while the batch runs.
    for preflight in [true, false] {
        let before = mock.server.stats();
        let mut command = batchflow();
        command
            .arg(&input)
            .args(["--backend", &mock.url(), "--workers", "8"]);
        if !preflight {
            command.arg("--no-preflight");
        }
        let run = parse_output(command.output().expect("runs"));
        assert_eq!(run.code(), Some(1), "preflight {preflight}: {}", run.stderr);
        let by_id = run.by_id();
        assert_eq!(by_id.len(), 1000, "every line answered");
        let errors = run.error_lines();
        assert_eq!(errors.len(), 100, "preflight {preflight}");
        for line in errors {
            assert!(
                line["custom_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("typo-")),
                "{line}"
            );
            assert_eq!(line["error"]["code"], "model_not_found", "{line}");
        }
        let after = mock.server.stats();
        let sent = after.requests - before.requests;
        if preflight {
            assert_eq!(sent, 900, "the typo lines were sent nowhere");
        } else {
            assert_eq!(sent, 1000, "each line sent once, none retried");
        }
    }
}
