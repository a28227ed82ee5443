//! End-to-end tests of the core pipeline: the real binary against the in-process mock server.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Seek};
use std::process::Stdio;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use serde_json::{Value, json};
use support::{Mock, batchflow, chat_line, chat_lines, run_file, run_stdin};

fn fast_mock(slots: usize) -> MockConfig {
    MockConfig {
        slots,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    }
}

#[test]
fn two_thousand_requests_give_two_thousand_lines_with_the_mocks_content() {
    let mock = Mock::start(fast_mock(8));
    let run = run_stdin(
        &chat_lines(2000),
        &["--backend", &mock.url(), "--workers", "8"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 2000);
    let by_id = run.by_id();
    let expected: HashSet<String> = (0..2000).map(|index| format!("req-{index}")).collect();
    assert_eq!(by_id.keys().cloned().collect::<HashSet<_>>(), expected);
    for (id, line) in &by_id {
        let index = id.trim_start_matches("req-");
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(
            line["response"]["body"]["message"]["content"],
            format!("Mock reply from llama3.2: question {index}")
        );
        assert!(
            line["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("batch_req_"))
        );
    }
    let stats = mock.server.stats();
    assert_eq!(stats.succeeded, 2000);
    assert!(stats.max_in_slots <= 8, "{stats:?}");
    assert_eq!(stats.busy, 0);
}

#[test]
fn injected_faults_still_give_one_line_per_input_and_only_exhausted_requests_fail() {
    let mock = Mock::start(MockConfig {
        faults: FaultRates {
            server_error: 0.2,
            reset: 0.05,
            ..FaultRates::default()
        },
        seed: 7,
        ..fast_mock(8)
    });
    let run = run_stdin(
        &chat_lines(2000),
        &[
            "--backend",
            &mock.url(),
            "--retries",
            "3",
            "--retry-base",
            "1ms",
            "--retry-max",
            "5ms",
        ],
    );
    let by_id = run.by_id();
    assert_eq!(by_id.len(), 2000, "one line per input");
    let stats = mock.server.stats();
    assert!(
        stats.server_errors > 300 && stats.resets > 50,
        "faults were injected: {stats:?}"
    );
    assert_eq!(
        run.ok_lines().len() as u64,
        stats.succeeded,
        "every success served is written once"
    );
    assert_eq!(
        stats.requests,
        stats.succeeded + stats.server_errors + stats.resets
    );
    let failures = run.error_lines();
    for line in &failures {
        let code = line["error"]["code"].as_str().expect("code");
        assert!(
            code == "server_error" || code == "connection_error",
            "{line}"
        );
        let message = line["error"]["message"].as_str().expect("message");
        assert!(message.ends_with("(after 4 attempts)"), "{message}");
    }
    let expected_code = if failures.is_empty() { 0 } else { 1 };
    assert_eq!(run.code(), Some(expected_code), "{}", run.stderr);
}

#[test]
fn retry_after_is_honoured_and_other_4xx_are_not_retried() {
    let mock = Mock::start(MockConfig {
        retry_after: Duration::from_secs(1),
        record_arrivals: true,
        ..fast_mock(4)
    });
    let input = [
        chat_line("limited-1", "[mock:fail=1:429] one"),
        chat_line("limited-2", "[mock:fail=1:429] two"),
        chat_line("bad-request", "[mock:status=400] three"),
        chat_line("not-found", "[mock:status=404] four"),
        chat_line("fine", "five"),
    ]
    .join("\n");
    let run = run_stdin(&input, &["--backend", &mock.url(), "--retry-base", "1ms"]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let by_id = run.by_id();
    for id in ["limited-1", "limited-2", "fine"] {
        assert!(by_id[id]["error"].is_null(), "{id}: {}", by_id[id]);
    }
    assert_eq!(by_id["bad-request"]["response"]["status_code"], 400);
    assert_eq!(by_id["bad-request"]["error"]["code"], "client_error");
    assert_eq!(by_id["not-found"]["response"]["status_code"], 404);

    let mut arrivals: HashMap<u64, Vec<_>> = HashMap::new();
    for arrival in mock.server.arrivals() {
        arrivals.entry(arrival.body_key).or_default().push(arrival);
    }
    let mut limited = 0;
    for attempts in arrivals.values_mut() {
        attempts.sort_by_key(|arrival| arrival.at);
        match attempts[0].status {
            429 => {
                limited += 1;
                assert_eq!(attempts.len(), 2, "one retry after the 429");
                let waited = attempts[1].at - attempts[0].at;
                assert!(
                    waited >= Duration::from_secs(1),
                    "retried after {waited:?}, before Retry-After"
                );
            }
            400 | 404 => assert_eq!(attempts.len(), 1, "a {} is not retried", attempts[0].status),
            _ => assert_eq!(attempts.len(), 1),
        }
    }
    assert_eq!(limited, 2);
}

#[test]
fn invalid_lines_get_error_lines_naming_them_and_the_rest_is_processed() {
    let mock = Mock::start(fast_mock(4));
    let mut lines: Vec<String> = (0..10)
        .map(|index| chat_line(&format!("ok-{index}"), "hi"))
        .collect();
    lines.insert(3, "{this is not json".into());
    lines.insert(
        6,
        json!({"method": "POST", "url": "/api/chat", "body": {"model": "llama3.2"}}).to_string(),
    );
    lines.insert(8, chat_line("ok-1", "duplicate"));
    lines.insert(9, String::new());
    let input = lines.join("\r\n") + "\r\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let run = run_file(dir.path(), &input, &["--backend", &mock.url()]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(
        run.lines.len(),
        13,
        "blank line skipped, every other line answered"
    );
    assert_eq!(run.ok_lines().len(), 10);
    let errors = run.error_lines();
    let messages: Vec<(&str, &str)> = errors
        .iter()
        .map(|line| {
            (
                line["error"]["code"].as_str().expect("code"),
                line["error"]["message"].as_str().expect("message"),
            )
        })
        .collect();
    let find = |code: &str| {
        messages
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("no {code} in {messages:?}"))
    };
    assert!(
        find("invalid_json").starts_with("line 4: not valid JSON"),
        "{messages:?}"
    );
    assert_eq!(find("invalid_request"), "line 7: missing custom_id");
    assert!(
        find("duplicate_custom_id").starts_with("line 9: custom_id \"ok-1\""),
        "{messages:?}"
    );
    for line in ["line 4", "line 7", "line 9"] {
        assert!(
            run.stderr.contains(line),
            "stderr names {line}: {}",
            run.stderr
        );
    }
    assert_eq!(mock.server.stats().requests, 10);
}

#[test]
fn an_unreachable_backend_exits_2_without_reading_input() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = support::write_input(dir.path(), &chat_lines(5));
    let mut input = std::fs::File::open(&path).expect("open input");
    let stdin = input
        .try_clone()
        .expect("share the file offset with the child");
    let output = batchflow()
        .args(["--backend", &format!("127.0.0.1:{port}")])
        .stdin(stdin)
        .output()
        .expect("runs");
    let run = support::parse_output(output);
    assert_eq!(run.code(), Some(2));
    assert!(run.lines.is_empty());
    let stderr = run.stderr.trim();
    assert!(
        stderr.contains(&format!("no server at http://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    assert_eq!(
        input.stream_position().expect("offset"),
        0,
        "stdin was not read"
    );
}

#[test]
fn an_unknown_model_is_refused_before_reading_with_the_models_listed() {
    let mock = Mock::start(fast_mock(2));
    let run = run_stdin(
        &chat_lines(3),
        &["--backend", &mock.url(), "--model", "qwen3:8b"],
    );
    assert_eq!(run.code(), Some(2));
    assert!(
        run.stderr.contains("no model \"qwen3:8b\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("llama3.2:latest, nomic-embed-text:latest"),
        "{}",
        run.stderr
    );
    assert_eq!(mock.server.stats().requests, 0);
}

#[test]
fn a_model_rejected_mid_run_is_each_lines_error_and_the_run_goes_on() {
    let mock = Mock::start(fast_mock(2));
    let input: String = (0..500)
        .map(|index| {
            json!({"custom_id": format!("r{index}"), "method": "POST", "url": "/api/generate",
                   "body": {"model": "gone", "prompt": "x"}})
            .to_string()
                + "\n"
        })
        .collect();
    let run = run_stdin(
        &input,
        &["--backend", &mock.url(), "--no-preflight", "--workers", "2"],
    );
    // Issue 22: as OpenAI's and vLLM's batch runners do, the line fails, not the run.
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(run.lines.len(), 500, "every line answered");
    for line in &run.lines {
        assert_eq!(line["error"]["code"], "model_not_found", "{line}");
        assert!(
            line["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("\"gone\"")),
            "{line}"
        );
    }
}

#[test]
fn sigint_mid_run_drains_in_flight_requests_and_exits_130() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = support::write_input(dir.path(), &chat_lines(200));
    let mut child = batchflow()
        .arg(&path)
        .args(["--backend", &mock.url(), "--workers", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("a first result line");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut lines = vec![first];
    for line in stdout.lines() {
        lines.push(line.expect("line") + "\n");
    }
    let output = child.wait_with_output().expect("exits");
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in &lines {
        assert!(line.ends_with('\n'), "whole lines only");
        let value: Value = serde_json::from_str(line).expect("every line is JSON");
        assert!(
            value["error"].is_null(),
            "in-flight requests completed: {value}"
        );
    }
    assert!(lines.len() < 200, "stopped reading early");
    let stats = mock.server.stats();
    assert_eq!(
        stats.requests,
        lines.len() as u64,
        "every request sent was finished and written"
    );
}

#[test]
fn ordered_output_follows_input_and_default_follows_completion() {
    let mock = Mock::start(fast_mock(4));
    let mut input = chat_line("slow", "[mock:delay=1000] first") + "\n";
    input.push_str(&chat_lines(30));
    let ids = |run: &support::Run| -> Vec<String> {
        run.lines
            .iter()
            .map(|line| line["custom_id"].as_str().expect("id").to_owned())
            .collect()
    };
    let unordered = run_stdin(&input, &["--backend", &mock.url(), "--workers", "4"]);
    assert_eq!(unordered.code(), Some(0));
    assert_ne!(
        ids(&unordered)[0],
        "slow",
        "the slow first request does not hold back the rest"
    );
    let ordered = run_stdin(
        &input,
        &["--backend", &mock.url(), "--workers", "4", "--ordered"],
    );
    assert_eq!(ordered.code(), Some(0));
    let expected: Vec<String> = std::iter::once("slow".to_owned())
        .chain((0..30).map(|i| format!("req-{i}")))
        .collect();
    assert_eq!(ids(&ordered), expected);
}

#[test]
fn every_endpoint_kind_works() {
    let mock = Mock::start(fast_mock(4));
    let run = run_file(
        tempfile::tempdir().expect("dir").path(),
        batchflow::DEMO_BATCH,
        &["--backend", &mock.url()],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let by_id = run.by_id();
    assert_eq!(by_id.len(), 16);
    let body = |id: &str| by_id[id]["response"]["body"].clone();
    assert!(
        body("chat-1")["message"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Mock reply"))
    );
    assert!(
        body("generate-7")["response"]
            .as_str()
            .is_some_and(|c| c.starts_with("Mock reply"))
    );
    assert_eq!(
        body("embed-10")["embeddings"][0].as_array().map(Vec::len),
        Some(8)
    );
    assert!(
        body("openai-13")["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Mock reply"))
    );
    assert_eq!(
        body("openai-embed-16")["data"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn results_stream_out_before_the_input_ends() {
    let mock = Mock::start(fast_mock(2));
    let mut child = batchflow()
        .args(["--backend", &mock.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut stdin = child.stdin.take().expect("stdin");
    use std::io::Write;
    writeln!(stdin, "{}", chat_line("early", "hello")).expect("write");
    stdin.flush().expect("flush");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("a result while stdin is still open");
    let value: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(value["custom_id"], "early");
    drop(stdin);
    assert_eq!(child.wait().expect("exits").code(), Some(0));
}

#[test]
fn a_closed_stdout_pipe_ends_the_run_quietly() {
    let mock = Mock::start(fast_mock(4));
    let dir = tempfile::tempdir().expect("dir");
    let path = support::write_input(dir.path(), &chat_lines(5000));
    let mut child = batchflow()
        .arg(&path)
        .args(["--backend", &mock.url(), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("one line");
    drop(stdout);
    let output = child.wait_with_output().expect("exits");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "nothing to complain about"
    );
    assert!(mock.server.stats().requests < 5000, "stopped sending");
}

#[test]
fn a_second_sigint_aborts_in_flight_requests_at_once() {
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_secs(600),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = support::write_input(dir.path(), &chat_lines(10));
    let mut child = batchflow()
        .arg(&path)
        .args(["--backend", &mock.url(), "--workers", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    support::wait_until("two requests in flight", || {
        mock.server.stats().requests >= 2
    });
    let interrupt = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    interrupt(child.id());
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("Interrupted:") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "no interrupt message"
        );
    }
    interrupt(child.id());
    let output = child.wait_with_output().expect("exits");
    assert_eq!(output.status.code(), Some(130));
    assert!(output.stdout.is_empty(), "nothing had finished");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert!(rest.contains("aborting"), "{rest}");
}
