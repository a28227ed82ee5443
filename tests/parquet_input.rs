//! End-to-end tests of Parquet input: the real binary reads requests from a Parquet file and
//! sends them to the in-process mock server.

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field};
use batchflow::mock::MockConfig;
use support::{
    Mock, Run, batchflow, parse_output, result_rows, strings, text_body_batch, write_parquet,
};

fn fast_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 16,
        latency: Duration::ZERO,
        ..MockConfig::default()
    })
}

fn run(args: &[&str]) -> Run {
    let output = batchflow()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    parse_output(output)
}

fn request_id(index: usize) -> String {
    format!("req-{index}")
}

#[test]
fn a_hundred_thousand_rows_give_a_hundred_thousand_results_with_the_same_ids() {
    const ROWS: usize = 100_000;
    const ROWS_PER_BATCH: usize = 10_000;
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.parquet");
    write_parquet(
        &input,
        (0..ROWS).step_by(ROWS_PER_BATCH).map(|first| {
            let ids: Vec<Option<String>> = (first..first + ROWS_PER_BATCH)
                .map(|index| Some(request_id(index)))
                .collect();
            text_body_batch(&ids)
        }),
    );
    let output = dir.path().join("results.parquet");
    let mock = fast_mock();
    let run = run(&[
        input.to_str().expect("a UTF-8 temp path"),
        "--backend",
        &mock.url(),
        "--workers",
        "16",
        "--output",
        output.to_str().expect("a UTF-8 temp path"),
    ]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let results = result_rows(&output);
    assert_eq!(results.len(), ROWS);
    let ids: HashSet<String> = results
        .iter()
        .map(|(id, _, _)| id.clone().expect("every row has its custom_id"))
        .collect();
    assert_eq!(ids, (0..ROWS).map(request_id).collect::<HashSet<_>>());
    assert!(results.iter().all(|(_, _, code)| code.is_none()));
    assert_eq!(mock.server.stats().succeeded, ROWS as u64);
}

#[test]
fn a_struct_body_is_sent_as_a_json_object() {
    const ROWS: usize = 50;
    let message_fields = vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ];
    let mut messages = ListBuilder::new(StructBuilder::from_fields(message_fields, ROWS));
    for index in 0..ROWS {
        let message = messages.values();
        message
            .field_builder::<StringBuilder>(0)
            .expect("field 0 is role, a string")
            .append_value("user");
        message
            .field_builder::<StringBuilder>(1)
            .expect("field 1 is content, a string")
            .append_value(format!("question {index}"));
        message.append(true);
        messages.append(true);
    }
    let messages: ArrayRef = Arc::new(messages.finish());
    let body = StructArray::from(vec![
        (
            Arc::new(Field::new("model", DataType::Utf8, true)),
            strings((0..ROWS).map(|_| Some("llama3.2"))),
        ),
        (
            Arc::new(Field::new("messages", messages.data_type().clone(), true)),
            messages,
        ),
    ]);
    let ids: Vec<String> = (0..ROWS).map(request_id).collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("chat.parquet");
    write_parquet(
        &input,
        [RecordBatch::try_from_iter([
            ("custom_id", strings(ids.iter().map(|id| Some(id.as_str())))),
            ("method", strings((0..ROWS).map(|_| Some("POST")))),
            ("url", strings((0..ROWS).map(|_| Some("/api/chat")))),
            ("body", Arc::new(body) as ArrayRef),
        ])
        .expect("columns of equal length")],
    );
    let mock = fast_mock();
    let run = run(&[
        input.to_str().expect("a UTF-8 temp path"),
        "--backend",
        &mock.url(),
    ]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let by_id = run.by_id();
    assert_eq!(by_id.len(), ROWS);
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(
            by_id[id]["response"]["body"]["message"]["content"],
            format!("Mock reply from llama3.2: question {index}"),
            "{id}"
        );
    }
}

#[test]
fn binary_id_and_body_columns_are_read_as_text_and_bytes_that_are_not_utf8_are_refused() {
    const ROWS: usize = 20;
    let mut ids: Vec<Vec<u8>> = (0..ROWS)
        .map(|index| request_id(index).into_bytes())
        .collect();
    // Row 8's id is not UTF-8.
    ids[7] = b"req-\xff".to_vec();
    let bodies: Vec<Vec<u8>> = (0..ROWS)
        .map(|index| {
            serde_json::json!({"model": "llama3.2", "prompt": format!("question {index}")})
                .to_string()
                .into_bytes()
        })
        .collect();
    let binary = |values: &[Vec<u8>]| -> ArrayRef {
        Arc::new(BinaryArray::from_iter_values(
            values.iter().map(Vec::as_slice),
        ))
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("bytes.parquet");
    write_parquet(
        &input,
        [RecordBatch::try_from_iter([
            ("custom_id", binary(&ids)),
            ("method", strings((0..ROWS).map(|_| Some("POST")))),
            ("url", strings((0..ROWS).map(|_| Some("/api/generate")))),
            ("body", binary(&bodies)),
        ])
        .expect("columns of equal length")],
    );
    let output = dir.path().join("results.parquet");
    let mock = fast_mock();
    let run = run(&[
        input.to_str().expect("a UTF-8 temp path"),
        "--backend",
        &mock.url(),
        "--output",
        output.to_str().expect("a UTF-8 temp path"),
    ]);
    assert_eq!(run.code(), Some(1), "row 8 is invalid: {}", run.stderr);
    assert!(
        run.stderr
            .contains("row 8: its custom_id column holds bytes that are not UTF-8 text"),
        "{}",
        run.stderr
    );
    let results = result_rows(&output);
    let mut expected: Vec<_> = (0..ROWS)
        .filter(|index| *index != 7)
        .map(|index| (Some(request_id(index)), index as i64 + 1, None))
        .chain([(None, 8, Some("invalid_json".to_owned()))])
        .collect();
    expected.sort();
    assert_eq!(results, expected);
    assert_eq!(mock.server.stats().succeeded, ROWS as u64 - 1);
}

#[test]
fn a_pipelines_binary_record_column_fills_its_template_as_text() {
    const ROWS: usize = 5;
    let dir = tempfile::tempdir().expect("a temp dir");
    let texts: Vec<String> = (0..ROWS).map(|index| format!("hello {index}")).collect();
    write_parquet(
        &dir.path().join("records.parquet"),
        [RecordBatch::try_from_iter([(
            "text",
            Arc::new(BinaryArray::from_iter_values(
                texts.iter().map(String::as_bytes),
            )) as ArrayRef,
        )])
        .expect("one column")],
    );
    let mock = fast_mock();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"records.parquet\"\n\n[request]\nendpoint = \"/api/chat\"\nmodel = \"llama3.2\"\nprompt = \"Say {{{{text}}}}\"\n\n[backend]\nurl = \"{}\"\n",
            mock.url()
        ),
    )
    .expect("a pipeline");
    let run = run(&["run", pipeline.to_str().expect("a UTF-8 temp path")]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let mut replies: Vec<String> = run
        .lines
        .iter()
        .map(|line| {
            let content = &line["response"]["body"]["message"]["content"];
            content.as_str().expect("a reply").to_owned()
        })
        .collect();
    replies.sort();
    let expected: Vec<String> = texts
        .iter()
        .map(|text| format!("Mock reply from llama3.2: Say {text}"))
        .collect();
    assert_eq!(replies, expected);
}

#[test]
fn resuming_sends_only_the_rows_without_results_and_keeps_invalid_rows_once() {
    let ids = |count: usize| -> Vec<Option<String>> {
        (0..count)
            .map(|index| (index != 2).then(|| request_id(index)))
            .collect()
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.parquet");
    let output = dir.path().join("results.parquet");
    let mock = fast_mock();
    let url = mock.url();
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            input.to_str().expect("a UTF-8 temp path"),
            "--backend",
            &url,
            "--output",
            output.to_str().expect("a UTF-8 temp path"),
        ];
        args.extend(extra);
        run(&args)
    };

    write_parquet(&input, [text_body_batch(&ids(300))]);
    let first = run_with(&[]);
    assert_eq!(first.code(), Some(1), "row 3 is invalid: {}", first.stderr);
    write_parquet(&input, [text_body_batch(&ids(400))]);
    let resumed = run_with(&["--resume"]);
    // The exit status describes the results: row 3's kept error row is still there.
    assert_eq!(resumed.code(), Some(1), "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("300 input lines skipped as done"),
        "{}",
        resumed.stderr
    );

    assert_eq!(mock.server.stats().succeeded, 399);
    let results = result_rows(&output);
    assert_eq!(results.len(), 400);
    let invalid: Vec<_> = results.iter().filter(|(id, _, _)| id.is_none()).collect();
    assert_eq!(
        invalid,
        [&(None, 3, Some("invalid_request".to_owned()))],
        "{results:?}"
    );
    let ids: HashSet<&str> = results
        .iter()
        .filter_map(|(id, _, _)| id.as_deref())
        .collect();
    assert_eq!(ids.len(), 399);
}

fn assert_fails_naming(run: &Run, path: &Path, words: &[&str]) {
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let path = path.display().to_string();
    for word in std::iter::once(path.as_str()).chain(words.iter().copied()) {
        assert!(run.stderr.contains(word), "no {word:?} in {}", run.stderr);
    }
}

#[test]
fn a_file_that_is_not_parquet_or_lacks_a_column_fails_before_anything_starts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let output: PathBuf = dir.path().join("results.parquet");
    let mock = fast_mock();
    let run_on = |input: &Path| {
        run(&[
            input.to_str().expect("a UTF-8 temp path"),
            "--backend",
            &mock.url(),
            "--output",
            output.to_str().expect("a UTF-8 temp path"),
        ])
    };

    let not_parquet = dir.path().join("requests.parquet");
    std::fs::write(&not_parquet, "{\"custom_id\":\"a\"}\n").expect("write the input");
    assert_fails_naming(&run_on(&not_parquet), &not_parquet, &["Parquet"]);

    let no_url = dir.path().join("no-url.parquet");
    write_parquet(
        &no_url,
        [RecordBatch::try_from_iter([
            ("custom_id", strings([Some("a")])),
            ("method", strings([Some("POST")])),
            ("body", strings([Some("{}")])),
        ])
        .expect("columns of equal length")],
    );
    assert_fails_naming(
        &run_on(&no_url),
        &no_url,
        &["lacks the column(s) url", "custom_id, method, body"],
    );

    assert!(!output.exists(), "no results file is created");
    assert_eq!(mock.server.stats().succeeded, 0);
}
