//! `batchflow serve` when things go wrong, through the `openai` SDK: bad input files, a cancel
//! mid-batch, a SIGKILL mid-batch (or mid-cancel) and a restart, the bearer key, uploads over the limit, and
//! a non-loopback address without a key.

use std::collections::HashMap;
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

/// The lines of a downloaded output or error file by custom_id; each id must appear once.
fn by_id(text: &Value) -> HashMap<String, Value> {
    let mut lines = HashMap::new();
    for line in text.as_str().unwrap_or_default().lines() {
        let line: Value = serde_json::from_str(line).expect("a JSON line");
        let id = line["custom_id"].as_str().expect("a custom_id").to_owned();
        assert!(lines.insert(id.clone(), line).is_none(), "{id} twice");
    }
    lines
}

/// A slow mock: 4 slots, 20 ms a request, so that a batch of a thousand takes seconds.
fn slow_mock() -> Mock {
    Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
}

const CREATE: &str = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint=args.get('endpoint', '/v1/chat/completions'),
    completion_window=args.get('window', '24h'))
"#;

const DOWNLOAD: &str = r#"
def text(file_id):
    return client.files.content(file_id).text if file_id else None
print(json.dumps({'batch': batch.model_dump(), 'output': text(batch.output_file_id),
    'errors': text(batch.error_file_id), 'extra': globals().get('extra')}))
"#;

#[test]
fn a_bad_input_file_fails_the_batch_with_its_lines_named() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let mut content = openai_lines(3);
    content.push_str("this is not JSON\n");
    content.push_str(&openai_lines(1)); // req-0 again: a duplicate custom_id
    content.push_str(
        &(json!({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "nomic-embed-text", "input": "x"}})
        .to_string()
            + "\n"),
    );
    content.push_str(
        "{\"custom_id\": \"m\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\"}\n",
    );
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status in ('failed', 'completed'))\n{DOWNLOAD}"
    );
    let out = server.python(&script, json!({"content": content}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].as_u64().is_some());
    assert!(batch["output_file_id"].is_null());
    let errors = batch["errors"]["data"].as_array().expect("errors.data");
    let lines: Vec<&Value> = errors.iter().map(|error| &error["line"]).collect();
    assert_eq!(
        lines,
        [&json!(4), &json!(5), &json!(6), &json!(7)],
        "{errors:?}"
    );
    // OpenAI's codes, each with the JSON path of the field at fault.
    let codes: Vec<(&Value, &Value)> = errors
        .iter()
        .map(|error| (&error["code"], &error["param"]))
        .collect();
    assert_eq!(
        codes,
        [
            (&json!("invalid_json_line"), &Value::Null),
            (&json!("duplicate_custom_id"), &json!("custom_id")),
            (&json!("invalid_url"), &json!("url")),
            (&json!("missing_required_parameter"), &json!("body")),
        ],
        "{errors:?}"
    );
    assert!(errors.iter().all(|error| error["message"].is_string()));
    // Nothing was sent.
    assert_eq!(mock.server.stats().requests, 0);
}

/// vLLM's `run_batch` test inputs: a good line, a model that does not exist, a bad url, and
/// `"stream": "True"`.
const VLLM_FIXTURES: &str = r#"{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "llama3.2", "messages": [{"role": "system", "content": "You are a helpful assistant."},{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}
{"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "NonExistModel", "messages": [{"role": "system", "content": "You are an unhelpful assistant."},{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}
{"custom_id": "request-3", "method": "POST", "url": "/bad_url", "body": {"model": "llama3.2", "messages": [{"role": "system", "content": "You are an unhelpful assistant."},{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}
{"custom_id": "request-4", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "llama3.2", "stream": "True", "max_tokens": 2, "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is the capital of France?"}]}}
"#;

#[test]
fn vllms_fixtures_fail_validation_with_openais_codes_and_nothing_is_sent() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status in ('failed', 'completed'))\n{DOWNLOAD}"
    );
    let out = server.python(&script, json!({"content": VLLM_FIXTURES}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "failed", "{batch}");
    let errors = batch["errors"]["data"].as_array().expect("errors.data");
    let found: Vec<(&Value, &Value, &Value)> = errors
        .iter()
        .map(|error| (&error["line"], &error["code"], &error["param"]))
        .collect();
    assert_eq!(
        found,
        [
            (&json!(2), &json!("model_not_found"), &json!("body.model")),
            (&json!(3), &json!("invalid_url"), &json!("url")),
            (
                &json!(4),
                &json!("streaming_unsupported"),
                &json!("body.stream")
            ),
        ],
        "{errors:?}"
    );
    assert_eq!(mock.server.stats().requests, 0, "nothing was sent");
}

#[test]
fn a_cancelled_batch_ends_cancelled_with_its_partial_results() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = slow_mock();
    let server = Server::start(&dir.path().join("data"), &mock, &["--workers", "4"]);
    let script = format!(
        "{CREATE}wait(batch.id, lambda b: b.request_counts.completed > 0)\n\
         cancelling = client.batches.cancel(batch.id)\n\
         assert cancelling.status == 'cancelling', cancelling\n\
         batch = wait(batch.id, lambda b: b.status == 'cancelled')\n\
         try:\n    client.batches.cancel(batch.id)\n    extra = None\n\
         except openai.ConflictError as error:\n    extra = error.status_code\n{DOWNLOAD}"
    );
    let out = server.python(&script, json!({"content": openai_lines(2000)}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "cancelled", "{batch}\n{}", server.log());
    assert!(batch["cancelling_at"].as_u64().is_some() && batch["cancelled_at"].as_u64().is_some());
    let output = by_id(&out["output"]);
    let completed = batch["request_counts"]["completed"]
        .as_u64()
        .expect("a count");
    assert!(completed > 0 && completed < 2000, "{batch}");
    assert_eq!(output.len() as u64, completed);
    // A cancelled batch cannot be cancelled again.
    assert_eq!(out["extra"], 409);
}

#[test]
fn a_batch_past_its_completion_window_expires_with_its_finished_lines_kept() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = slow_mock();
    let server = Server::start(&dir.path().join("data"), &mock, &["--workers", "4"]);
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status in ('expired', 'completed', 'failed'))\n{DOWNLOAD}"
    );
    let total = 2000;
    let out = server.python(
        &script,
        json!({"content": openai_lines(total), "window": "3s"}),
    );
    let batch = &out["batch"];
    assert_eq!(batch["status"], "expired", "{batch}\n{}", server.log());
    assert!(batch["expired_at"].as_u64() >= batch["expires_at"].as_u64());
    let counts = &batch["request_counts"];
    let (completed, failed) = (
        counts["completed"].as_u64().expect("a count"),
        counts["failed"].as_u64().expect("a count"),
    );
    assert_eq!(counts["total"], total, "{batch}");
    assert_eq!(completed + failed, total as u64, "{batch}");
    assert!(completed > 0 && failed > 0, "{batch}");
    let output = by_id(&out["output"]);
    let errors = by_id(&out["errors"]);
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, failed);
    for line in errors.values() {
        assert_eq!(line["error"]["code"], "batch_expired", "{line}");
        assert!(line["response"].is_null(), "{line}");
    }
    assert!(
        output.keys().all(|id| !errors.contains_key(id)),
        "each custom_id in one file"
    );
}

#[test]
fn a_killed_server_resumes_its_batch_to_each_custom_id_exactly_once() {
    stop_mid_batch_and_resume(Stop::Kill);
}

#[test]
fn sigterm_drains_the_running_batch_and_a_restart_finishes_it() {
    stop_mid_batch_and_resume(Stop::Terminate);
}

enum Stop {
    Kill,
    Terminate,
}

/// Stops the server mid-batch (SIGKILL, or SIGTERM and its drain), starts another on the same
/// data directory, and checks that the batch completes with each custom_id once.
fn stop_mid_batch_and_resume(stop: Stop) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let mock = slow_mock();
    let args = ["--workers", "4", "--checkpoint-rows", "50"];
    let mut first = Server::start(&data, &mock, &args);
    let mut content = openai_lines(1000);
    content.push_str(
        &(json!({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "[mock:status=400]"}]}})
        .to_string()
            + "\n"),
    );
    let script = format!(
        "{CREATE}wait(batch.id, lambda b: b.request_counts.completed >= 200)\n\
         print(json.dumps({{'id': batch.id}}))"
    );
    let started = first.python(&script, json!({"content": content}));
    let id = started["id"].as_str().expect("a batch id").to_owned();
    match stop {
        Stop::Kill => first.child.kill().expect("SIGKILL"),
        Stop::Terminate => {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &first.child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success());
        }
    }
    let status = first.child.wait().expect("the server ends");
    if let Stop::Terminate = stop {
        assert!(status.success(), "{status:?}\n{}", first.log());
        support::wait_until("the suspension is logged", || {
            first.log().contains("Batch suspended")
        });
    }
    let sent_before = mock.server.stats().requests;
    assert!(sent_before < 1001, "the batch ended before the kill");

    let second = Server::start(&data, &mock, &args);
    let script = format!(
        "batch = wait(args['id'], lambda b: b.status in ('completed', 'failed'))\n{DOWNLOAD}"
    );
    let out = second.python(&script, json!({"id": id}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "completed", "{batch}\n{}", second.log());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 1001, "completed": 1000, "failed": 1})
    );
    let output = by_id(&out["output"]);
    let errors = by_id(&out["errors"]);
    assert_eq!(output.len(), 1000);
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["bad"]);
    assert!(output.keys().all(|id| !errors.contains_key(id)));
    // The second server sent only what the first one's checkpoints lacked.
    let resent = mock.server.stats().requests - sent_before;
    assert!(resent < 1001, "{resent} requests sent again");
    assert!(
        second.log().contains("Resuming unfinished batches."),
        "{}",
        second.log()
    );
}

#[test]
fn a_cancel_cut_by_a_kill_closes_with_files_that_match_the_counts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let mock = slow_mock();
    let args = ["--workers", "4", "--checkpoint-rows", "100"];
    let mut first = Server::start(&data, &mock, &args);
    // Every other request fails; one, early on, holds its slot for a minute, so that the
    // cancel's drain is still waiting for it when the server is killed.
    let content: String = (0..400)
        .map(|index| {
            let prompt = match index {
                20 => "[mock:delay=60000]".to_owned(),
                _ if index % 2 == 0 => "[mock:status=400]".to_owned(),
                _ => format!("question {index}"),
            };
            json!({"custom_id": format!("req-{index}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]}})
            .to_string()
                + "\n"
        })
        .collect();
    let script = format!(
        "{CREATE}wait(batch.id, lambda b: b.request_counts.completed + b.request_counts.failed >= 250)\n\
         cancelling = client.batches.cancel(batch.id)\n\
         print(json.dumps({{'id': batch.id, 'status': cancelling.status}}))"
    );
    let started = first.python(&script, json!({"content": content}));
    assert_eq!(started["status"], "cancelling");
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("the server ends");

    let second = Server::start(&data, &mock, &args);
    let script = format!(
        "batch = wait(args['id'], lambda b: b.status in ('cancelled', 'failed'))\n{DOWNLOAD}"
    );
    let out = second.python(&script, json!({"id": started["id"]}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "cancelled", "{batch}\n{}", second.log());
    let output = by_id(&out["output"]);
    let errors = by_id(&out["errors"]);
    let counts = &batch["request_counts"];
    assert_eq!(counts["completed"], output.len() as u64, "{batch}");
    assert_eq!(counts["failed"], errors.len() as u64, "{batch}");
    assert!(!errors.is_empty() && !output.is_empty(), "{batch}");
    assert!(output.keys().all(|id| !errors.contains_key(id)));
    assert_eq!(
        counts["completed"]
            .as_u64()
            .zip(counts["failed"].as_u64())
            .map(|(a, b)| a + b),
        Some(400),
        "{batch}"
    );
    for (id, line) in &errors {
        if line["error"]["code"] == "batch_cancelled" {
            continue;
        }
        let index: usize = id.trim_start_matches("req-").parse().expect("an index");
        assert!(
            index.is_multiple_of(2) && index != 20,
            "{id} is not a failing request"
        );
    }
}

#[test]
fn with_a_key_every_request_needs_it_and_it_is_never_logged() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let key = "sk-test-4f1c9e";
    let mut server = Server::start_with(
        &dir.path().join("data"),
        &mock,
        &["--api-key-env", "SERVE_TEST_KEY"],
        &[("SERVE_TEST_KEY", key)],
    );
    let script = "try:\n    client.files.list()\n    status = 200\n\
                  except openai.AuthenticationError as error:\n    status = error.status_code\n\
                  print(json.dumps({'status': status}))";
    server.key = "wrong".into();
    assert_eq!(server.python(script, json!({}))["status"], 401);
    server.key = key.into();
    assert_eq!(server.python(script, json!({}))["status"], 200);
    // No Authorization header at all.
    let out = support::run_python(
        "import sys, urllib.request, urllib.error\n\
         try:\n    urllib.request.urlopen(sys.stdin.read() + '/v1/batches')\n    print(200)\n\
         except urllib.error.HTTPError as error:\n    print(error.code)",
        server.url.as_bytes(),
    );
    assert_eq!(out.trim(), "401");
    assert!(!server.log().contains(key));
}

#[test]
fn an_upload_over_the_limit_gets_413_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let data = dir.path().join("data");
    let server = Server::start(&data, &mock, &["--max-file-bytes", "1000"]);
    let script = "try:\n    client.files.create(file=('big.jsonl', args['content'].encode()), purpose='batch')\n    status = 200\n\
                  except openai.APIStatusError as error:\n    status = error.status_code\n    body = error.response.json()\n\
                  small = client.files.create(file=('small.jsonl', b'{}'), purpose='batch')\n\
                  print(json.dumps({'status': status, 'body': body, 'listed': [f.id for f in client.files.list()], 'small': small.id}))";
    let out = server.python(script, json!({"content": openai_lines(50)}));
    assert_eq!(out["status"], 413);
    assert_eq!(out["body"]["error"]["type"], "invalid_request_error");
    assert_eq!(out["listed"], json!([out["small"]]));
    let folders = std::fs::read_dir(data.join("files")).expect("the files folder");
    assert_eq!(folders.count(), 1, "only the small file is stored");
}

#[test]
fn a_non_loopback_address_without_a_key_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = support::batchflow()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--api-key-env"), "{stderr}");
}
