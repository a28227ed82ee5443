//! `batchflow serve` owns its data directory: a second server on it is refused without
//! touching it, and the input file of a batch that has not ended cannot be deleted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

/// Folders in the data directory's files/, sorted.
pub fn stored_files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("files"))
        .expect("the files folder")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_second_server_on_the_data_directory_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let first = Server::start(&data, &mock, &["--workers", "4"]);
    let started = first.python(
        "f = client.files.create(file=('r.jsonl', args['content'].encode()), purpose='batch')\n\
         batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')\n\
         wait(batch.id, lambda b: b.request_counts.completed >= 50)\n\
         print(json.dumps({'id': batch.id}))",
        json!({"content": openai_lines(600)}),
    );
    let batch_id = started["id"].as_str().expect("a batch id").to_owned();
    // An upload in flight: its head and the start of its body sent, the rest held back.
    let mut upload = TcpStream::connect(first.address()).expect("connects");
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"late.jsonl\"\r\n\r\n{}\r\n--XyZ--\r\n";
    let (sent, held) = body.split_at(body.len() - 20);
    write!(
        upload,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n{sent}",
        body.len()
    )
    .expect("sent");
    support::wait_until("the upload is staged", || stored_files(&data).len() == 2);
    let before = stored_files(&data);

    let mut second = support::batchflow()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &mock.url(),
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // A server that is not refused would serve on until killed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().expect("waits").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if second.try_wait().expect("waits").is_none() {
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second server kept running on the first one's data directory");
    }
    let second = second.wait_with_output().expect("its output");
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())) && stderr.contains("in use"),
        "{stderr}"
    );
    assert_eq!(
        stored_files(&data),
        before,
        "the staged upload was left alone"
    );

    // The first server's upload and batch go on as if nothing happened.
    upload.write_all(held.as_bytes()).expect("sent");
    let mut answer = String::new();
    upload.read_to_string(&mut answer).expect("an answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        first.log()
    );
    let out = first.python(
        "batch = wait(args['id'], lambda b: b.status in ('completed', 'failed'))\n\
         lines = client.files.content(batch.output_file_id).text.splitlines() if batch.output_file_id else []\n\
         print(json.dumps({'batch': batch.model_dump(), 'ids': [json.loads(l)['custom_id'] for l in lines]}))",
        json!({"id": batch_id}),
    );
    assert_eq!(out["batch"]["status"], "completed", "{}", first.log());
    let mut ids: Vec<&str> = out["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 600);
}

#[test]
fn the_input_of_a_batch_that_has_not_ended_cannot_be_deleted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let server = Server::start(&dir.path().join("data"), &mock, &["--workers", "4"]);
    let out = server.python(
        "f = client.files.create(file=('r.jsonl', args['content'].encode()), purpose='batch')\n\
         batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')\n\
         wait(batch.id, lambda b: b.status == 'in_progress')\n\
         try:\n    client.files.delete(f.id)\n    status, error = 200, None\n\
         except openai.APIStatusError as e:\n    status, error = e.status_code, e.response.json()['error']\n\
         batch = wait(batch.id, lambda b: b.status in ('completed', 'failed'))\n\
         print(json.dumps({'status': status, 'error': error, 'batch': batch.status,\n\
             'completed': batch.request_counts.completed, 'deleted': client.files.delete(f.id).deleted}))",
        json!({"content": openai_lines(300)}),
    );
    assert_eq!(out["status"], 409, "{out}");
    assert_eq!(out["error"]["type"], "invalid_request_error");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("batch_")),
        "{out}"
    );
    assert_eq!(
        (&out["batch"], &out["completed"]),
        (&json!("completed"), &json!(300))
    );
    // Once the batch has ended, its input may go.
    assert_eq!(out["deleted"], true);
}
