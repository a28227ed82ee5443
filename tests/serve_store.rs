//! `batchflow serve`'s records in its index (`index.sqlite`): a data directory of the earlier
//! layout (one JSON record per batch and per file) moves in on start, with every batch, file,
//! order and unfinished run kept, as the `openai` SDK sees them; and a data directory whose
//! index is gone is refused rather than swept.

use std::fs;
use std::path::Path;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

fn id(prefix: &str, name: &str) -> String {
    format!("{prefix}{name:0>24}")
}

/// A file of the earlier layout: its content and its `meta.json` record.
fn earlier_file(data_dir: &Path, id: &str, purpose: &str, content: &str, order: u64) {
    let dir = data_dir.join("files").join(id);
    fs::create_dir_all(&dir).expect("made");
    fs::write(dir.join("content"), content).expect("written");
    let record = json!({
        "file": {"id": id, "object": "file", "bytes": content.len(), "created_at": 1_700_000_000,
                 "filename": format!("{id}.jsonl"), "purpose": purpose, "status": "processed"},
        "order": order,
    });
    fs::write(dir.join("meta.json"), record.to_string()).expect("written");
}

/// A batch of the earlier layout: `batches/<id>.json`.
fn earlier_batch(data_dir: &Path, batch: Value, order: u64) {
    let id = batch["id"].as_str().expect("an id").to_owned();
    let dir = data_dir.join("batches");
    fs::create_dir_all(&dir).expect("made");
    let record = json!({"batch": batch, "order": order});
    fs::write(dir.join(format!("{id}.json")), record.to_string()).expect("written");
}

fn batch(id: &str, input: &str, status: &str, output: Option<&str>, total: u64) -> Value {
    let ended = matches!(status, "completed").then_some(1_700_000_003);
    json!({
        "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
        "input_file_id": input, "completion_window": "24h", "status": status,
        "output_file_id": output, "error_file_id": null, "created_at": 1_700_000_000,
        "in_progress_at": 1_700_000_001, "expires_at": 4_000_000_000u64,
        "finalizing_at": ended, "completed_at": ended, "failed_at": null, "expired_at": null,
        "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": total, "completed": if ended.is_some() { total } else { 0 }, "failed": 0},
        "metadata": {"from": "the earlier layout"},
    })
}

const LISTED: &str = r#"
strict = openai.OpenAI(base_url=given['url'] + '/v1', api_key=given['key'], max_retries=0,
    _strict_response_validation=True)
resumed = wait(args['resumed'], lambda b: b.status == 'completed')
output = strict.files.content(args['output']).text
print(json.dumps({
    'batches': [b.id for b in strict.batches.list(limit=2)],
    'files': [f.id for f in strict.files.list(order='asc')],
    'old': strict.batches.retrieve(args['old']).model_dump(exclude_unset=True),
    'old_output': output,
    'resumed': resumed.model_dump(),
    'resumed_lines': len(strict.files.content(resumed.output_file_id).text.splitlines()),
}))
"#;

#[test]
fn an_earlier_data_directory_moves_into_the_index_with_its_order_and_unfinished_run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("data");
    let mock = Mock::start(MockConfig::default());
    let input = id("file-", "input");
    let old_output = id("file-", "output");
    let (old, resumed) = (id("batch_", "old"), id("batch_", "resumed"));
    earlier_file(&data_dir, &input, "batch", &openai_lines(3), 10);
    earlier_file(
        &data_dir,
        &old_output,
        "batch_output",
        "{\"done\": 1}\n",
        20,
    );
    earlier_batch(
        &data_dir,
        batch(&old, &input, "completed", Some(&old_output), 3),
        30,
    );
    // Cut short by a stop before it ran: the server resumes it from the index.
    earlier_batch(
        &data_dir,
        batch(&resumed, &input, "in_progress", None, 3),
        40,
    );

    let server = Server::start(&data_dir, &mock, &[]);
    let out = server.python(
        LISTED,
        json!({"resumed": resumed, "old": old, "output": old_output}),
    );
    assert!(
        server
            .log()
            .contains("Moved the data directory's records into index.sqlite")
    );
    assert_eq!(
        out["batches"],
        json!([resumed, old]),
        "newest first, as before"
    );
    let files = out["files"].as_array().expect("file ids");
    assert_eq!(files[..2], [json!(input), json!(old_output)], "{out}");
    assert_eq!(
        out["old"],
        batch(&old, &input, "completed", Some(&old_output), 3)
    );
    assert_eq!(out["old_output"], "{\"done\": 1}\n");
    assert_eq!(out["resumed"]["request_counts"]["completed"], 3, "{out}");
    assert_eq!(out["resumed_lines"], 3);
    assert!(data_dir.join("index.sqlite").is_file());
    assert!(
        !data_dir
            .join("batches")
            .join(format!("{old}.json"))
            .exists()
    );
    assert!(
        !data_dir
            .join("files")
            .join(&input)
            .join("meta.json")
            .exists()
    );
    drop(server);

    // Started again: nothing to move, the same records.
    let server = Server::start(&data_dir, &mock, &[]);
    let again = server.python(
        "print(json.dumps([b.id for b in client.batches.list()]))",
        json!({}),
    );
    assert_eq!(again, json!([resumed, old]));
    assert!(!server.log().contains("Moved the data directory's records"));
}

#[test]
fn a_data_directory_whose_index_is_gone_is_refused_and_its_files_kept() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("data");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&data_dir, &mock, &[]);
    let uploaded = server.python(
        "print(json.dumps(client.files.create(file=('a.jsonl', args['content'].encode()), purpose='batch').id))",
        json!({"content": openai_lines(2)}),
    );
    drop(server);
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = fs::remove_file(data_dir.join(name));
    }
    let uploaded = uploaded.as_str().expect("a file id");
    let output = support::batchflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .args(["--backend", &mock.url()])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(uploaded) && stderr.contains("removed or lost"),
        "{stderr}"
    );
    assert!(
        data_dir
            .join("files")
            .join(uploaded)
            .join("content")
            .is_file()
    );
}
