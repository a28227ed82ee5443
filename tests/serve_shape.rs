//! The shape of what `batchflow serve` answers, checked with the `openai` SDK validating every
//! response strictly: lists that page as the SDK's auto-pagination expects (order, limit,
//! `after`, an exact `has_more`, an unknown `after` refused).

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
