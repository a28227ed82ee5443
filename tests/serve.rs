//! `batchflow serve` driven by the official `openai` Python SDK (tests/requirements.txt), the
//! real binary in front of the in-process mock: the Files API, then batches from create to
//! completed with their output and error files, listed page by page.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::support::{self, Mock};

/// A running `batchflow serve`, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, read from its log line.
    pub url: String,
    log: Arc<Mutex<String>>,
    /// The bearer key the scripts send.
    pub key: String,
}

impl Server {
    pub fn start(data_dir: &Path, mock: &Mock, args: &[&str]) -> Server {
        Server::start_with(data_dir, mock, args, &[])
    }

    /// Starts it with `env` set.
    pub fn start_with(data_dir: &Path, mock: &Mock, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = support::batchflow();
        command
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--backend", &mock.url()])
            .args(args);
        Server::spawn(command)
    }

    /// Starts `command` (a `batchflow serve` with its arguments) and waits until it serves.
    pub fn spawn(mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut line = String::new();
        let url = loop {
            line.clear();
            let read = stderr.read_line(&mut line).expect("reads the log");
            assert!(
                read > 0,
                "the server ended before serving: {}",
                log.lock().expect("log")
            );
            log.lock().expect("log").push_str(&line);
            if line.contains("Serving the OpenAI Batch API.") {
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
                    .expect("the line names its address");
                break format!("http://{}", strip_ansi(addr));
            }
        };
        let rest = Arc::clone(&log);
        // Line by line, so that the log so far can be read while the server runs.
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|read| read > 0) {
                rest.lock().expect("log").push_str(&line);
                line.clear();
            }
        });
        Server {
            child,
            url,
            log,
            key: "unused".into(),
        }
    }

    /// Runs `script` with `client` (an `openai.OpenAI` on this server, sending [`Server::key`]),
    /// `wait(batch_id, until)` (polls until `until(batch)` holds) and `args` (JSON) in scope;
    /// what it prints, as JSON.
    pub fn python(&self, script: &str, args: Value) -> Value {
        let prelude = "import json, sys, time, openai\n\
            given = json.loads(sys.stdin.read())\n\
            client = openai.OpenAI(base_url=given['url'] + '/v1', api_key=given['key'], max_retries=0)\n\
            args = given['args']\n\
            def wait(batch_id, until):\n\
            \x20   deadline = time.time() + 60\n\
            \x20   while True:\n\
            \x20       batch = client.batches.retrieve(batch_id)\n\
            \x20       if until(batch):\n\
            \x20           return batch\n\
            \x20       assert time.time() < deadline, batch\n\
            \x20       time.sleep(0.05)\n";
        let input = json!({"url": self.url, "key": self.key, "args": args}).to_string();
        let output = support::run_python(&format!("{prelude}{script}"), input.as_bytes());
        serde_json::from_str(&output).unwrap_or_else(|error| {
            panic!(
                "the script printed {output:?}: {error}; server log:\n{}",
                self.log()
            )
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Its `host:port`, for raw connections.
    pub fn address(&self) -> String {
        self.url
            .strip_prefix("http://")
            .expect("an http URL")
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(character) = chars.next() {
        if character == '\u{1b}' {
            for skipped in chars.by_ref() {
                if skipped.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(character);
        }
    }
    out
}

/// `count` chat lines for `/v1/chat/completions` with ids `req-0…`.
pub fn openai_lines(count: usize) -> String {
    (0..count)
        .map(|index| {
            json!({
                "custom_id": format!("req-{index}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "llama3.2", "messages": [{"role": "user", "content": format!("question {index}")}]},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn the_files_api_stores_lists_serves_and_deletes_uploads() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let content = openai_lines(3);
    let script = r#"
data = args['content'].encode()
f = client.files.create(file=('requests.jsonl', data), purpose='batch')
listed = [x.id for x in client.files.list()]
got = client.files.retrieve(f.id)
body = client.files.content(f.id).read()
try:
    client.files.retrieve('file-' + 'x' * 24)
    missing = None
except openai.NotFoundError as error:
    missing = {'status': error.status_code, 'body': error.response.json()}
try:
    client.files.create(file=('x.jsonl', data), purpose='fine-tune')
    refused = None
except openai.BadRequestError as error:
    refused = error.response.json()
deleted = client.files.delete(f.id)
try:
    client.files.content(f.id)
    gone = None
except openai.NotFoundError as error:
    gone = error.status_code
print(json.dumps({'file': f.model_dump(), 'listed': listed, 'got': got.model_dump(),
    'same': body == data, 'missing': missing, 'refused': refused,
    'deleted': deleted.model_dump(), 'gone': gone, 'after': [x.id for x in client.files.list()]}))
"#;
    let out = server.python(script, json!({"content": content}));
    let file = &out["file"];
    let id = file["id"].as_str().expect("an id");
    assert!(id.starts_with("file-") && id.len() >= 29, "{id}");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "requests.jsonl");
    assert_eq!(file["object"], "file");
    assert!(
        file["created_at"]
            .as_u64()
            .is_some_and(|at| at > 1_700_000_000)
    );
    assert_eq!(out["listed"], json!([id]));
    assert_eq!(&out["got"], file);
    assert_eq!(out["same"], true);
    assert_eq!(out["missing"]["status"], 404);
    let error = &out["missing"]["body"]["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("No such File")),
        "{error}"
    );
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{error}"
    );
    assert_eq!(out["refused"]["error"]["param"], "purpose");
    assert_eq!(
        out["deleted"],
        json!({"id": id, "object": "file", "deleted": true})
    );
    assert_eq!(out["gone"], 404);
    assert_eq!(out["after"], json!([]));
    // Nothing of the refused upload or the deleted file is left on disk.
    let files = std::fs::read_dir(dir.path().join("data/files")).expect("the files folder");
    assert_eq!(files.count(), 0);
}

#[test]
fn a_batch_runs_to_completed_with_output_and_error_files() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(10),
        ..MockConfig::default()
    });
    let server = Server::start(&dir.path().join("data"), &mock, &["--workers", "4"]);
    let mut content = openai_lines(300);
    // Two requests the mock answers 400 (never retried): they end in the error file.
    for index in 0..2 {
        content.push_str(
            &(json!({
                "custom_id": format!("bad-{index}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "[mock:status=400]"}]},
            })
            .to_string()
                + "\n"),
        );
    }
    let script = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions',
    completion_window='24h', metadata={'run': 'test'})
first = batch.model_dump()
seen = []
deadline = time.time() + 60
while batch.status not in ('completed', 'failed', 'cancelled', 'expired'):
    assert time.time() < deadline, batch
    time.sleep(0.05)
    batch = client.batches.retrieve(batch.id)
    seen.append([batch.status, batch.request_counts.completed, batch.request_counts.failed])
def text(file_id):
    return client.files.content(file_id).text if file_id else None
print(json.dumps({'first': first, 'last': batch.model_dump(), 'seen': seen,
    'output': text(batch.output_file_id), 'errors': text(batch.error_file_id),
    'output_file': batch.output_file_id and client.files.retrieve(batch.output_file_id).model_dump()}))
"#;
    let out = server.python(script, json!({"content": content}));
    let first = &out["first"];
    assert_eq!(first["status"], "validating");
    assert_eq!(first["object"], "batch");
    assert!(
        first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("batch_"))
    );
    assert_eq!(first["metadata"], json!({"run": "test"}));
    let last = &out["last"];
    assert_eq!(last["status"], "completed", "{last}\n{}", server.log());
    assert_eq!(
        last["request_counts"],
        json!({"total": 302, "completed": 300, "failed": 2})
    );
    for stamp in [
        "created_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expires_at",
    ] {
        assert!(last[stamp].as_u64().is_some(), "{stamp}: {last}");
    }
    assert_eq!(out["output_file"]["purpose"], "batch_output");
    // The counts rise as the batch runs, never past the total.
    let seen = out["seen"].as_array().expect("polls");
    let done: Vec<u64> = seen
        .iter()
        .map(|poll| poll[1].as_u64().unwrap_or(0) + poll[2].as_u64().unwrap_or(0))
        .collect();
    assert!(done.windows(2).all(|pair| pair[0] <= pair[1]), "{seen:?}");
    assert!(done.iter().all(|&done| done <= 302), "{seen:?}");

    let mut ids = std::collections::HashMap::new();
    for (text, ok) in [(&out["output"], true), (&out["errors"], false)] {
        for line in text.as_str().expect("text").lines() {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            let id = line["custom_id"].as_str().expect("a custom_id").to_owned();
            assert!(
                line["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("batch_req_"))
            );
            if ok {
                assert_eq!(line["response"]["status_code"], 200, "{line}");
                assert!(line["error"].is_null());
                let content = &line["response"]["body"]["choices"][0]["message"]["content"];
                assert!(
                    content
                        .as_str()
                        .is_some_and(|text| text.contains("question")),
                    "{line}"
                );
            } else {
                assert!(id.starts_with("bad-"), "{line}");
                assert!(line["error"]["code"].is_string(), "{line}");
            }
            assert!(ids.insert(id.clone(), ok).is_none(), "{id} twice");
        }
    }
    assert_eq!(ids.len(), 302);
    assert_eq!(ids.values().filter(|ok| !**ok).count(), 2);
}

#[test]
fn batches_are_listed_newest_first_page_by_page() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let script = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
made = [client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions',
    completion_window='24h').id for _ in range(5)]
page = client.batches.list(limit=2)
second = client.batches.list(limit=2, after=page.data[-1].id)
every = [b.id for b in client.batches.list(limit=2)]
try:
    client.batches.retrieve('batch_' + 'x' * 24)
    missing = None
except openai.NotFoundError as error:
    missing = error.status_code
print(json.dumps({'made': made, 'page': [b.id for b in page.data], 'more': page.has_more,
    'second': [b.id for b in second.data], 'every': every, 'missing': missing}))
"#;
    let out = server.python(script, json!({"content": openai_lines(2)}));
    let mut newest_first: Vec<Value> = out["made"].as_array().expect("ids").clone();
    newest_first.reverse();
    assert_eq!(out["page"], json!(newest_first[..2]));
    assert_eq!(out["more"], true);
    assert_eq!(out["second"], json!(newest_first[2..4]));
    assert_eq!(out["every"], json!(newest_first));
    assert_eq!(out["missing"], 404);
}
