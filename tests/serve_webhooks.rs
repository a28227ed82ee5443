//! `batchflow serve --webhook-url`: each batch's end is posted to a receiver in this test, and
//! every delivery is checked with the `openai` SDK's own `client.webhooks.unwrap`, which
//! verifies the Standard Webhooks signature and parses OpenAI's event shape. A refused delivery
//! is retried under the same event id, and one pending when the server is killed is delivered
//! by the next server on the same data directory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

const SECRET: &str = "whsec_dGhlIHRlc3RzIHNpZ25pbmcga2V5";
const SECRET_ENV: &str = "WEBHOOK_TEST_SECRET";

/// One POST the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Delivery {
    /// Lowercase names.
    headers: HashMap<String, String>,
    body: String,
    status: u16,
}

impl Delivery {
    fn id(&self) -> &str {
        self.headers.get("webhook-id").map_or("", String::as_str)
    }
}

/// A webhook receiver on `127.0.0.1:0`: records each request and answers 500 while
/// `refusals` is above zero (counting it down), 200 after.
struct Receiver {
    url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    refusals: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(refusals: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let url = format!(
            "http://{}/hooks",
            listener.local_addr().expect("an address")
        );
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(AtomicUsize::new(refusals));
        let (recorded, refusing) = (Arc::clone(&deliveries), Arc::clone(&refusals));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let refuse = refusing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
                let status = if refuse { 500 } else { 200 };
                if let Some((headers, body)) = answer(stream, status) {
                    recorded.lock().expect("deliveries").push(Delivery {
                        headers,
                        body,
                        status,
                    });
                }
            }
        });
        Receiver {
            url,
            deliveries,
            refusals,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("deliveries").clone()
    }

    fn accepted(&self) -> Vec<Delivery> {
        let all = self.deliveries();
        all.into_iter()
            .filter(|delivery| delivery.status == 200)
            .collect()
    }
}

/// Reads one request from `stream`, records nothing itself, answers `status` and closes.
fn answer(stream: TcpStream, status: u16) -> Option<(HashMap<String, String>, String)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    // Recorded before the answer goes out, so that a test that saw the answer's effect (the
    // outbox emptied) sees the delivery too.
    let recorded = (headers, String::from_utf8(body).ok()?);
    let mut stream = stream;
    stream.write_all(reply.as_bytes()).ok()?;
    Some(recorded)
}

/// Each delivery as the `openai` SDK reads it after checking its signature:
/// `{"id", "type", "batch"}`. Panics (the script fails) if any signature is wrong.
fn unwrapped(deliveries: &[Delivery]) -> Vec<Value> {
    let script = "import json, sys\n\
        from openai import OpenAI\n\
        given = json.loads(sys.stdin.read())\n\
        client = OpenAI(api_key='unused', webhook_secret=given['secret'])\n\
        out = []\n\
        for delivery in given['deliveries']:\n\
        \x20   event = client.webhooks.unwrap(delivery['body'], delivery['headers'])\n\
        \x20   out.append({'id': event.id, 'type': event.type, 'batch': event.data.id})\n\
        print(json.dumps(out))";
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|delivery| json!({"body": delivery.body, "headers": delivery.headers}))
        .collect();
    let input = json!({"secret": SECRET, "deliveries": deliveries}).to_string();
    let output = support::run_python(script, input.as_bytes());
    serde_json::from_str(&output).expect("the script prints JSON")
}

/// Whether the `openai` SDK refuses `delivery` with its body changed: proof that
/// [`unwrapped`] checks the signature rather than only parsing.
fn refused_when_altered(delivery: &Delivery) -> bool {
    let script = "import json, sys, openai\n\
        given = json.loads(sys.stdin.read())\n\
        client = openai.OpenAI(api_key='unused', webhook_secret=given['secret'])\n\
        try:\n\
        \x20   client.webhooks.unwrap(given['body'], given['headers'])\n\
        \x20   print('accepted')\n\
        except openai.InvalidWebhookSignatureError:\n\
        \x20   print('refused')";
    let altered = delivery.body.replacen("\"object\"", "\"object\" ", 1);
    let input = json!({"secret": SECRET, "body": altered, "headers": delivery.headers});
    support::run_python(script, input.to_string().as_bytes()).trim() == "refused"
}

fn start(data: &Path, mock: &Mock, receiver: &Receiver) -> Server {
    Server::start_with(
        data,
        mock,
        &[
            "--workers",
            "4",
            "--webhook-url",
            &receiver.url,
            "--webhook-secret-env",
            SECRET_ENV,
        ],
        &[(SECRET_ENV, SECRET)],
    )
}

/// The events still waiting in the data directory's outbox.
fn outbox(data: &Path) -> usize {
    std::fs::read_dir(data.join("webhooks"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

const CREATE: &str = "f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')\n\
    batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window=args.get('window', '24h'))\n";

/// Runs a batch of `lines` to its end; its id.
fn completed_batch(server: &Server, lines: usize) -> String {
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status == 'completed')\n\
         print(json.dumps({{'id': batch.id}}))"
    );
    let out = server.python(&script, json!({"content": openai_lines(lines)}));
    out["id"].as_str().expect("a batch id").to_owned()
}

#[test]
fn completed_failed_cancelled_and_expired_batches_are_announced_as_openai_signs_them() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let receiver = Receiver::start(0);
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let server = start(&data, &mock, &receiver);
    let completed = completed_batch(&server, 3);
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status == 'failed')\n\
         print(json.dumps({{'id': batch.id}}))"
    );
    let failed = server.python(&script, json!({"content": "this is not JSON\n"}))["id"].clone();
    let script = format!(
        "{CREATE}wait(batch.id, lambda b: b.request_counts.completed > 0)\n\
         client.batches.cancel(batch.id)\n\
         batch = wait(batch.id, lambda b: b.status == 'cancelled')\n\
         print(json.dumps({{'id': batch.id}}))"
    );
    let cancelled = server.python(&script, json!({"content": openai_lines(2000)}))["id"].clone();
    let script = format!(
        "{CREATE}batch = wait(batch.id, lambda b: b.status == 'expired')\n\
         print(json.dumps({{'id': batch.id}}))"
    );
    let expired = server.python(
        &script,
        json!({"content": openai_lines(2000), "window": "2s"}),
    )["id"]
        .clone();
    support::wait_until("four events are delivered and none is pending", || {
        receiver.accepted().len() >= 4 && outbox(&data) == 0
    });
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 4, "{deliveries:#?}\n{}", server.log());
    let mut events: Vec<(String, String)> = unwrapped(&deliveries)
        .iter()
        .map(|event| {
            let kind = event["type"].as_str().expect("a type").to_owned();
            let batch = event["batch"].as_str().expect("a batch id").to_owned();
            (kind, batch)
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            (
                "batch.cancelled".to_owned(),
                cancelled.as_str().expect("an id").to_owned()
            ),
            ("batch.completed".to_owned(), completed),
            (
                "batch.expired".to_owned(),
                expired.as_str().expect("an id").to_owned()
            ),
            (
                "batch.failed".to_owned(),
                failed.as_str().expect("an id").to_owned()
            ),
        ]
    );
    for delivery in &deliveries {
        let body: Value = serde_json::from_str(&delivery.body).expect("a JSON body");
        assert_eq!(body["object"], "event");
        assert_eq!(body["id"], delivery.id());
        assert!(delivery.id().starts_with("evt_"), "{delivery:?}");
    }
    assert!(refused_when_altered(&deliveries[0]));
    assert!(!server.log().contains(SECRET), "{}", server.log());
}

#[test]
fn a_refused_delivery_is_retried_under_the_same_event_id() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let receiver = Receiver::start(1);
    let mock = Mock::start(MockConfig::default());
    let server = start(&data, &mock, &receiver);
    let batch = completed_batch(&server, 3);
    support::wait_until("the event is delivered after a refusal", || {
        !receiver.accepted().is_empty() && outbox(&data) == 0
    });
    let deliveries = receiver.deliveries();
    let statuses: Vec<u16> = deliveries.iter().map(|delivery| delivery.status).collect();
    assert_eq!(statuses, [500, 200], "{deliveries:#?}");
    assert_eq!(deliveries[0].id(), deliveries[1].id());
    assert_eq!(deliveries[0].body, deliveries[1].body);
    let events = unwrapped(&deliveries[1..]);
    assert_eq!(events[0]["type"], "batch.completed");
    assert_eq!(events[0]["batch"], batch.as_str());
    assert!(
        server.log().contains("Webhook delivery failed"),
        "{}",
        server.log()
    );
}

#[test]
fn an_event_pending_when_the_server_is_killed_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    // Refuses until the restart.
    let receiver = Receiver::start(usize::MAX);
    let mock = Mock::start(MockConfig::default());
    let mut first = start(&data, &mock, &receiver);
    let batch = completed_batch(&first, 3);
    support::wait_until("a delivery is refused", || {
        !receiver.deliveries().is_empty()
    });
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("the server ends");
    assert_eq!(outbox(&data), 1, "the event is still pending");
    receiver.refusals.store(0, Ordering::SeqCst);

    let second = start(&data, &mock, &receiver);
    support::wait_until("the pending event is delivered", || {
        !receiver.accepted().is_empty() && outbox(&data) == 0
    });
    let deliveries = receiver.deliveries();
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{deliveries:#?}");
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery.id() == accepted[0].id()),
        "one event, under one id: {deliveries:#?}"
    );
    let events = unwrapped(&accepted);
    assert_eq!(events[0]["type"], "batch.completed");
    assert_eq!(events[0]["batch"], batch.as_str());
    assert!(
        second
            .log()
            .contains("Delivering the pending webhook events."),
        "{}",
        second.log()
    );
}

#[test]
fn webhook_flags_without_their_secret_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let output = support::batchflow()
            .env_remove(SECRET_ENV)
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            !stderr.contains("dGhl"),
            "the secret is not printed: {stderr}"
        );
    };
    let url = ["--webhook-url", "http://127.0.0.1:9/hooks"];
    refused(&url, &[], "--webhook-secret-env");
    let both = [&url[..], &["--webhook-secret-env", SECRET_ENV]].concat();
    refused(
        &both,
        &[],
        &format!("--webhook-secret-env {SECRET_ENV}: the variable is not set"),
    );
    refused(&both, &[(SECRET_ENV, "whsec_dGhl!!")], "not base64");
}
