//! The shape of what `batchflow serve` answers, checked with the `openai` SDK validating every
//! response strictly: lists that page as the SDK's auto-pagination expects (order, limit,
//! `after`, an exact `has_more`, an unknown `after` refused), and output and error files whose
//! every line has OpenAI's shape, whatever the backend answered.

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::support::Mock;

/// An `openai.OpenAI` that fails on any response not of the SDK's declared type.
const STRICT: &str = "strict = openai.OpenAI(base_url=given['url'] + '/v1', api_key=given['key'], \
                      max_retries=0, _strict_response_validation=True)\n";

/// GETs `path` without the SDK; `(status, JSON body)`.
const RAW_GET: &str = r#"
import urllib.request, urllib.error
def raw_get(path):
    request = urllib.request.Request(given['url'] + path,
        headers={'Authorization': 'Bearer ' + given['key']})
    try:
        with urllib.request.urlopen(request) as answer:
            return [answer.status, json.loads(answer.read())]
    except urllib.error.HTTPError as error:
        return [error.code, json.loads(error.read())]
"#;

#[test]
fn lists_page_in_order_to_an_exact_end_and_refuse_an_unknown_cursor() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let script = format!(
        "{STRICT}{RAW_GET}{}",
        r#"
data = args['content'].encode()
files = [strict.files.create(file=(f'f{i}.jsonl', data), purpose='batch').id for i in range(7)]
batches = [strict.batches.create(input_file_id=files[0], endpoint='/v1/chat/completions',
    completion_window='24h').id for _ in range(6)]
def pages(first):
    return [[[item.id for item in page.data], page.has_more] for page in first.iter_pages()]
unknown_file = 'file-' + 'x' * 24
unknown_batch = 'batch_' + 'x' * 24
print(json.dumps({
    'files': files, 'batches': batches,
    'desc': [f.id for f in strict.files.list(purpose='batch', limit=3)],
    'asc': [f.id for f in strict.files.list(purpose='batch', limit=3, order='asc')],
    'file_pages': pages(strict.files.list(purpose='batch', limit=3, order='asc')),
    'batch_pages': pages(strict.batches.list(limit=3)),
    'all_batches': [b.id for b in strict.batches.list(limit=3)],
    'unknown': [raw_get('/v1/batches?after=' + unknown_batch),
        raw_get('/v1/batches?after=nonsense&limit=2'),
        raw_get('/v1/files?after=' + unknown_file),
        raw_get('/v1/files?order=sideways')],
    'outputs_only': raw_get('/v1/files?purpose=batch_output&after=' + files[3]),
}))
"#
    );
    let out = server.python(&script, json!({"content": openai_lines(1)}));
    let files: Vec<Value> = out["files"].as_array().expect("file ids").clone();
    let mut newest_first = files.clone();
    newest_first.reverse();
    // Seven uploads, three a page: every one once, in the asked order (the batches' output
    // files, made meanwhile, have another purpose).
    assert_eq!(out["desc"], json!(newest_first));
    assert_eq!(out["asc"], json!(files));
    assert_eq!(
        out["file_pages"],
        json!([[files[..3], true], [files[3..6], true], [files[6..], false]])
    );
    // Six batches, three a page: the second page says no more, so no empty third is asked.
    let mut batches: Vec<Value> = out["batches"].as_array().expect("batch ids").clone();
    batches.reverse();
    assert_eq!(
        out["batch_pages"],
        json!([[batches[..3], true], [batches[3..], false]])
    );
    assert_eq!(out["all_batches"], json!(batches));
    for (answer, param) in out["unknown"]
        .as_array()
        .expect("answers")
        .iter()
        .zip(["after", "after", "after", "order"])
    {
        assert_eq!(answer[0], 400, "{answer}");
        let error = &answer[1]["error"];
        assert_eq!(error["param"], param, "{answer}");
        assert_eq!(error["type"], "invalid_request_error", "{answer}");
        assert!(error["message"].is_string(), "{answer}");
    }
    // A cursor the purpose filter drops still places the page: the batches' output files are
    // all newer than the uploads.
    assert_eq!(
        out["outputs_only"],
        json!([200, {"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false}])
    );
}

/// A chat line for `/v1/chat/completions` whose prompt is `prompt` (a mock directive, say).
fn chat_line(custom_id: &str, prompt: &str) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]}})
    .to_string()
        + "\n"
}

/// Checks one output or error line against OpenAI's shape; its custom_id.
fn check_line(line: &str, seen: &mut std::collections::HashSet<String>) -> String {
    let line: Value = serde_json::from_str(line).expect("a JSON line");
    let fields: Vec<&String> = line.as_object().expect("an object").keys().collect();
    assert_eq!(fields, ["custom_id", "error", "id", "response"], "{line}");
    let id = line["id"].as_str().expect("an id");
    assert!(id.starts_with("batch_req_") && id.len() > 10, "{line}");
    assert!(seen.insert(id.to_owned()), "{id} on two lines");
    let response = &line["response"];
    if !response.is_null() {
        assert!(response["status_code"].is_u64(), "{line}");
        let request_id = response["request_id"].as_str().expect("a request_id");
        assert!(!request_id.is_empty(), "{line}");
        let body = &response["body"];
        assert!(body.is_object(), "{line}");
        if let Some(own) = body["id"].as_str() {
            assert_eq!(request_id, own, "{line}");
        } else {
            assert!(request_id.starts_with("req_"), "{line}");
        }
    }
    let error = &line["error"];
    assert!(
        error.is_null() || (error["code"].is_string() && error["message"].is_string()),
        "{line}"
    );
    line["custom_id"].as_str().expect("a custom_id").to_owned()
}

#[test]
fn output_and_error_lines_have_openai_shape_whatever_the_backend_did() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    // No retries, so that each fault is the request's last word at once.
    let config = dir.path().join("serve.toml");
    let text = format!(
        "[serve]\ndata_dir = \"data\"\n\n[backend]\nurl = \"{}\"\nretries = 0\n",
        mock.url()
    );
    std::fs::write(&config, text).expect("written");
    let config = config.to_str().expect("a UTF-8 path");
    let server = Server::start(&dir.path().join("data"), &mock, &[config]);
    let mut content = openai_lines(6);
    for (id, prompt) in [
        ("refused", "[mock:status=400]"),
        ("crashed", "[mock:status=500]"),
        ("reset", "[mock:fail=1:reset]"),
        ("html", "[mock:fail=1:html]"),
        ("truncated", "[mock:fail=1:truncated]"),
    ] {
        content.push_str(&chat_line(id, prompt));
    }
    let script = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
batch = wait(batch.id, lambda b: b.status in ('completed', 'failed'))
text = lambda file_id: client.files.content(file_id).text if file_id else ''
print(json.dumps({'batch': batch.model_dump(), 'output': text(batch.output_file_id),
    'errors': text(batch.error_file_id)}))
"#;
    let out = server.python(script, json!({"content": content}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "completed", "{batch}\n{}", server.log());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 11, "completed": 6, "failed": 5})
    );
    let mut seen = std::collections::HashSet::new();
    let output = out["output"].as_str().expect("the output file");
    for line in output.lines() {
        check_line(line, &mut seen);
        let line: Value = serde_json::from_str(line).expect("a JSON line");
        assert!(line["error"].is_null(), "{line}");
        assert_eq!(line["response"]["status_code"], 200, "{line}");
    }
    let errors: std::collections::HashMap<String, Value> = out["errors"]
        .as_str()
        .expect("the error file")
        .lines()
        .map(|line| {
            let id = check_line(line, &mut seen);
            (id, serde_json::from_str(line).expect("a JSON line"))
        })
        .collect();
    assert_eq!(seen.len(), 11, "{output}\n{errors:?}");
    assert_eq!(errors.len(), 5, "{errors:?}");
    for (id, line) in &errors {
        assert!(line["error"]["code"].is_string(), "{line}");
        assert_ne!(line["response"]["body"], "", "{line}");
        if id == "reset" {
            assert!(line["response"].is_null(), "no HTTP answer: {line}");
        } else {
            assert!(line["response"]["body"].is_object(), "{line}");
        }
    }
    assert_eq!(errors["refused"]["response"]["status_code"], 400);
    assert_eq!(errors["crashed"]["response"]["status_code"], 500);
}

#[test]
fn a_cancelled_batch_accounts_for_every_request_it_never_sent() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // 20 ms a request, 4 at a time: 400 requests take two seconds, so the cancel lands mid-run.
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(20),
        ..MockConfig::default()
    });
    let server = Server::start(&dir.path().join("data"), &mock, &["--workers", "4"]);
    let mut content = openai_lines(399);
    content.push_str(&chat_line("refused", "[mock:status=400]"));
    let script = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
wait(batch.id, lambda b: b.request_counts.completed > 0)
client.batches.cancel(batch.id)
batch = wait(batch.id, lambda b: b.status == 'cancelled')
text = lambda file_id: client.files.content(file_id).text if file_id else ''
print(json.dumps({'batch': batch.model_dump(), 'output': text(batch.output_file_id),
    'errors': text(batch.error_file_id)}))
"#;
    let out = server.python(script, json!({"content": content}));
    let batch = &out["batch"];
    assert_eq!(batch["status"], "cancelled", "{batch}\n{}", server.log());
    let counts = &batch["request_counts"];
    let count = |name: &str| counts[name].as_u64().expect("a count");
    assert_eq!(count("total"), 400, "{batch}");
    assert_eq!(count("completed") + count("failed"), 400, "{batch}");
    let mut seen = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    let output = out["output"].as_str().expect("the output file");
    for line in output.lines() {
        assert!(ids.insert(check_line(line, &mut seen)), "{line} twice");
    }
    assert_eq!(output.lines().count() as u64, count("completed"), "{batch}");
    let errors = out["errors"].as_str().expect("the error file");
    let mut cancelled = 0;
    for line in errors.lines() {
        assert!(ids.insert(check_line(line, &mut seen)), "{line} twice");
        let line: Value = serde_json::from_str(line).expect("a JSON line");
        if line["error"]["code"] == "batch_cancelled" {
            assert!(line["response"].is_null(), "never sent: {line}");
            cancelled += 1;
        }
    }
    assert_eq!(errors.lines().count() as u64, count("failed"), "{batch}");
    assert!(cancelled > 0 && cancelled < 400, "{cancelled} never sent");
    // Every request of the input is in one file or the other, once.
    assert_eq!(ids.len(), 400);
}

/// Polls a batch until `until` holds, printing every poll's counts.
const POLL: &str = r#"
polls = []
def poll(batch_id, until):
    deadline = time.time() + 60
    while True:
        batch = client.batches.retrieve(batch_id)
        polls.append([batch.status, batch.request_counts.completed, batch.request_counts.failed])
        if until(batch):
            return batch
        assert time.time() < deadline, batch
        time.sleep(0.02)
"#;

#[test]
fn request_counts_never_fall_across_a_kill_and_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    // 20 ms a request, 4 at a time, a checkpoint every 400 rows: the kill lands mid-batch,
    // before the first checkpoint, and loses every row done, which the restart sends again.
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(20),
        ..MockConfig::default()
    });
    let args = ["--workers", "4", "--checkpoint-rows", "400"];
    let mut first = Server::start(&data, &mock, &args);
    let mut content = openai_lines(600);
    content.push_str(&chat_line("refused", "[mock:status=400]"));
    let script = format!(
        "{POLL}{}",
        r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
poll(batch.id, lambda b: b.request_counts.completed >= 175)
print(json.dumps({'id': batch.id, 'polls': polls}))
"#
    );
    let before = first.python(&script, json!({"content": content}));
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("the server ends");

    // One worker now: the rows sent again come in slower than they did before the kill, so a
    // count made from them alone would be seen to fall.
    let second = Server::start(
        &data,
        &mock,
        &["--workers", "1", "--checkpoint-rows", "400"],
    );
    let script = format!(
        "{POLL}{}",
        r#"
batch = poll(args['id'], lambda b: b.status in ('completed', 'failed'))
print(json.dumps({'polls': polls, 'counts': batch.request_counts.model_dump()}))
"#
    );
    let after = second.python(&script, json!({"id": before["id"]}));
    assert_eq!(
        after["counts"],
        json!({"total": 601, "completed": 600, "failed": 1}),
        "{}",
        second.log()
    );
    let polls: Vec<&Value> = before["polls"]
        .as_array()
        .expect("polls")
        .iter()
        .chain(after["polls"].as_array().expect("polls"))
        .collect();
    for field in [1, 2] {
        let seen: Vec<u64> = polls
            .iter()
            .map(|poll| poll[field].as_u64().expect("a count"))
            .collect();
        assert!(
            seen.windows(2).all(|pair| pair[0] <= pair[1]),
            "counts fell: {polls:?}"
        );
    }
}
