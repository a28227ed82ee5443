//! What `batchflow serve` shows of itself, and how it is configured from a file: `GET /metrics`
//! parsed by `prometheus_client` while one batch runs and another waits, then after both ended;
//! a log line per state change; and a served pipeline file (`[serve]`) that starts the server,
//! with flags winning over it and each kind of pipeline refused by the other's command.

use std::path::Path;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

/// The requests of a batch that stays in progress until it is cancelled: one request the mock
/// holds for 15 s, then `count` answered at once. Nothing here depends on timing: the
/// held request keeps the batch running for as long as the test looks at it.
fn held_batch(count: usize) -> String {
    let held = json!({
        "custom_id": "held",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "[mock:delay=15000]"}]},
    });
    format!("{held}\n{}", openai_lines(count))
}

#[test]
fn metrics_show_the_running_batch_the_queue_and_every_status() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: std::time::Duration::from_millis(5),
        ..MockConfig::default()
    });
    let key = "sk-metrics-9d2e";
    let mut server = Server::start_with(
        &dir.path().join("data"),
        &mock,
        &[
            "--workers",
            "4",
            "--grace",
            "1s",
            "--api-key-env",
            "SERVE_METRICS_KEY",
        ],
        &[("SERVE_METRICS_KEY", key)],
    );
    server.key = key.into();
    let script = r#"
import urllib.request, urllib.error
from prometheus_client.parser import text_string_to_metric_families
def scrape(key):
    request = urllib.request.Request(given['url'] + '/metrics')
    if key:
        request.add_header('Authorization', 'Bearer ' + key)
    with urllib.request.urlopen(request) as answer:
        text = answer.read().decode()
        kind = answer.headers['Content-Type']
    families, samples = {}, []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples += [[s.name, s.labels, s.value] for s in family.samples]
    return {'families': families, 'samples': samples, 'content_type': kind}
try:
    scrape(None)
    unauthorized = None
except urllib.error.HTTPError as error:
    unauthorized = error.code
held = client.files.create(file=('held.jsonl', args['held'].encode()), purpose='batch')
plain = client.files.create(file=('plain.jsonl', args['plain'].encode()), purpose='batch')
first = client.batches.create(input_file_id=held.id, endpoint='/v1/chat/completions', completion_window='24h')
second = client.batches.create(input_file_id=plain.id, endpoint='/v1/chat/completions', completion_window='24h')
polled = wait(first.id, lambda b: b.request_counts.completed >= 40)
mid = scrape(given['key'])
client.batches.cancel(first.id)
wait(first.id, lambda b: b.status == 'cancelled')
done = wait(second.id, lambda b: b.status == 'completed')
end = scrape(given['key'])
print(json.dumps({'unauthorized': unauthorized, 'first': first.id, 'second': second.id,
    'polled': polled.model_dump(), 'mid': mid, 'end': end, 'done': done.model_dump()}))
"#;
    let out = server.python(
        script,
        json!({"held": held_batch(40), "plain": openai_lines(30)}),
    );
    assert_eq!(out["unauthorized"], 401, "the key guards /metrics too");
    let (first, second) = (
        out["first"].as_str().expect("an id"),
        out["second"].as_str().expect("an id"),
    );
    let value = |scrape: &Value, name: &str, labels: Value| -> Option<f64> {
        scrape["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .find(|sample| sample[0] == name && sample[1] == labels)
            .and_then(|sample| sample[2].as_f64())
    };
    let status = |scrape: &Value, status: &str| {
        value(scrape, "batchflow_serve_batches", json!({"status": status}))
    };

    let mid = &out["mid"];
    assert!(
        mid["content_type"]
            .as_str()
            .is_some_and(|kind| kind.starts_with("text/plain; version=0.0.4")),
        "{mid}"
    );
    assert_eq!(mid["families"]["batchflow_serve_batches"], "gauge");
    assert_eq!(status(mid, "in_progress"), Some(1.0), "{mid}");
    assert_eq!(status(mid, "validating"), Some(1.0), "the second waits");
    assert_eq!(status(mid, "completed"), Some(0.0), "{mid}");
    assert_eq!(
        value(mid, "batchflow_serve_queued_batches", json!({})),
        Some(1.0)
    );
    assert_eq!(
        value(
            mid,
            "batchflow_serve_running_batch",
            json!({"batch_id": first})
        ),
        Some(1.0)
    );
    // The running batch's own figures, as `batchflow run --metrics` serves them.
    assert_eq!(mid["families"]["batchflow_requests"], "counter");
    let ok = value(mid, "batchflow_requests_total", json!({"outcome": "ok"}));
    assert_eq!(
        out["polled"]["request_counts"],
        json!({"total": 41, "completed": 40, "failed": 0}),
        "the batch's counts are live"
    );
    assert_eq!(ok, Some(40.0), "the same counters as the batch's: {mid}");
    assert_eq!(
        value(mid, "batchflow_requests_expected", json!({})),
        Some(41.0)
    );
    assert_eq!(
        value(mid, "batchflow_in_flight", json!({})),
        Some(1.0),
        "only the held request is left in flight"
    );

    let end = &out["end"];
    assert_eq!(status(end, "cancelled"), Some(1.0), "{end}");
    assert_eq!(status(end, "completed"), Some(1.0), "{end}");
    assert_eq!(status(end, "in_progress"), Some(0.0), "{end}");
    assert_eq!(
        value(end, "batchflow_serve_queued_batches", json!({})),
        Some(0.0)
    );
    assert!(
        !end["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .any(|sample| sample[0] == "batchflow_serve_running_batch"
                || sample[0] == "batchflow_requests_total"),
        "no batch runs, so no run's figures: {end}"
    );
    assert_eq!(
        out["done"]["request_counts"],
        json!({"total": 30, "completed": 30, "failed": 0})
    );

    // A log line for each change of state, naming the batch.
    let log = server.log();
    let changes = |id: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains(id))
            .filter_map(|line| {
                [
                    "created",
                    "in progress",
                    "cancelling",
                    "finalizing",
                    "closed",
                ]
                .into_iter()
                .find(|change| line.contains(&format!("Batch {change}.")))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        changes(first),
        ["created", "in progress", "cancelling", "closed"],
        "{log}"
    );
    assert_eq!(
        changes(second),
        ["created", "in progress", "finalizing", "closed"],
        "{log}"
    );
    assert!(!log.contains(key), "the key is never logged");
}

/// A served pipeline in `dir`: state kept in `state/` beside it, batches run on `mock`.
fn served_pipeline(dir: &Path, mock: &Mock) -> std::path::PathBuf {
    let path = dir.join("serve.toml");
    let text = format!(
        "[serve]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n\n\
         [backend]\nurl = \"{}\"\nworkers = 2\n\n[sink]\ncheckpoint_rows = 10\n",
        mock.url()
    );
    std::fs::write(&path, text).expect("writes the pipeline");
    path
}

const ONE_BATCH: &str = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
batch = wait(batch.id, lambda b: b.status in ('completed', 'failed'))
print(json.dumps(batch.model_dump()))
"#;

#[test]
fn a_served_pipeline_file_starts_the_server_and_flags_win_over_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let elsewhere = tempfile::tempdir().expect("a working directory");
    let mock = Mock::start(MockConfig::default());
    let file = served_pipeline(dir.path(), &mock);

    // Started from another folder: the data directory is beside the file.
    let mut command = support::batchflow();
    command
        .current_dir(elsewhere.path())
        .arg("serve")
        .arg(&file);
    let server = Server::spawn(command);
    let batch = server.python(ONE_BATCH, json!({"content": openai_lines(25)}));
    assert_eq!(batch["status"], "completed", "{}", server.log());
    assert_eq!(batch["request_counts"]["completed"], 25);
    let id = batch["id"].as_str().expect("an id");
    assert!(dir.path().join("state/index.sqlite").is_file());
    assert!(
        dir.path()
            .join(format!("state/batches/{id}/results"))
            .is_dir()
    );
    drop(server);

    // A flag wins over the file's key: another data directory.
    let other = dir.path().join("other");
    let mut command = support::batchflow();
    command.args(["serve", "--data-dir"]).arg(&other).arg(&file);
    let server = Server::spawn(command);
    let batch = server.python(ONE_BATCH, json!({"content": openai_lines(5)}));
    assert_eq!(batch["status"], "completed", "{}", server.log());
    let id = batch["id"].as_str().expect("an id");
    assert!(other.join(format!("batches/{id}/results")).is_dir());
    assert!(!dir.path().join(format!("state/batches/{id}")).exists());
}

#[test]
fn each_kind_of_pipeline_is_refused_by_the_other_command_and_validated() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let served = served_pipeline(dir.path(), &mock);
    let run_file = dir.path().join("run.toml");
    std::fs::write(
        &run_file,
        "[source]\npath = \"in.jsonl\"\nformat = \"requests\"\n",
    )
    .expect("writes");

    let run = |args: &[&Path]| {
        let mut command = support::batchflow();
        for arg in args {
            command.arg(arg);
        }
        let output = command.output().expect("runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = run(&[Path::new("run"), &served]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("batchflow serve FILE"), "{stderr}");
    let (code, _, stderr) = run(&[Path::new("serve"), &run_file]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no [serve] section"), "{stderr}");

    let (code, stdout, stderr) = run(&[Path::new("validate"), &served]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("is valid: serves the Batch API on 127.0.0.1:0"),
        "{stdout}"
    );

    // A served pipeline that sets a run's keys, or a bad address, is refused naming them.
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(&served).expect("reads");
    std::fs::write(
        &broken,
        text.replace("127.0.0.1:0", "nowhere")
            .replace("[sink]\n", "[sink]\nparquet = \"out/\"\n"),
    )
    .expect("writes");
    let (code, _, stderr) = run(&[Path::new("validate"), &broken]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("parquet") && stderr.contains("line "),
        "{stderr}"
    );
    std::fs::write(&broken, text.replace("127.0.0.1:0", "nowhere")).expect("writes");
    for command in ["validate", "serve"] {
        let (code, _, stderr) = run(&[Path::new(command), &broken]);
        assert_eq!(code, Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("serve.listen") && stderr.contains("\"nowhere\""),
            "{command}: {stderr}"
        );
    }
    assert_eq!(mock.server.stats().requests, 0, "nothing was sent");
}
