//! `status` and `verify` of results on object storage, through the real binary against a real
//! S3-protocol server (moto, `support::s3`): a dataset written to `s3://…/` is reported and
//! proved complete in place (its input a URL too), then a deleted part's lines are named as
//! missing and an emptied part as damaged; nothing is left in the temporary directory.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use batchflow::mock::MockConfig;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::s3::{Moto, on_store};
use support::{Mock, Run, batchflow, chat_lines, parse_output};

/// The (custom_id, line) of every row of the stored part `key`.
fn rows_of(moto: &Moto, bucket: &str, key: &str) -> BTreeSet<(Option<String>, i64)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(moto.get(bucket, key)))
        .expect("a whole Parquet part")
        .build()
        .expect("a reader");
    let mut rows = BTreeSet::new();
    for batch in reader {
        let batch = batch.expect("readable rows");
        let column = |name| batch.column_by_name(name).expect("a results column");
        let ids = column("custom_id").as_string::<i32>();
        let lines = column("request_line").as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let id = (!ids.is_null(row)).then(|| ids.value(row).to_owned());
            rows.insert((id, lines.value(row)));
        }
    }
    rows
}

fn text_of(output: std::process::Output) -> Run {
    Run {
        status: output.status,
        lines: Vec::new(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn status_and_verify_read_a_dataset_on_object_storage_in_place() {
    let moto = Moto::start();
    moto.create_bucket("data");
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let tmp = tempfile::tempdir().expect("a temporary directory");
    // 300 requests and an invalid line, owed a row of its own.
    moto.put(
        "data/in/requests.jsonl",
        (chat_lines(300) + "not json\n").as_bytes(),
    );
    let input = "s3://data/in/requests.jsonl";
    // The run's own staging is the sink's business: a directory apart.
    let run_tmp = tempfile::tempdir().expect("a temporary directory");
    let run = on_store(moto.address, run_tmp.path())
        .args([
            input,
            "--backend",
            &mock.url(),
            "--output",
            "s3://data/run/",
        ])
        .args([
            "--checkpoint-rows",
            "25",
            "--part-row-groups",
            "3",
            "--quiet",
        ])
        .output()
        .expect("the run");
    assert_eq!(run.status.code(), Some(1), "the invalid line: {run:?}");
    // The shard's lease and generation marker are hidden objects beside its parts.
    let parts: Vec<String> = moto
        .keys("data", "run/")
        .into_iter()
        .filter(|key| key.ends_with(".parquet"))
        .collect();
    assert!(parts.len() >= 3, "several parts: {parts:?}");

    let status = text_of(
        on_store(moto.address, tmp.path())
            .args(["status", "s3://data/run/"])
            .output()
            .expect("status"),
    );
    assert_eq!(status.code(), Some(0), "{}", status.stderr);
    for expected in [
        "s3://data/run/: dataset, 1 shard(s), 301 rows in all".to_owned(),
        format!("shard 0/1 ({} parts)", parts.len()),
        "rows:       301 (ok 300, failed 0, invalid 1)".to_owned(),
        "complete: the run reached the end of its input".to_owned(),
    ] {
        assert!(
            status.stdout.contains(&expected),
            "no {expected:?} in {}",
            status.stdout
        );
    }

    let verify = || {
        parse_output(
            on_store(moto.address, tmp.path())
                .args(["verify", "s3://data/run/", "--input", input])
                .output()
                .expect("verify"),
        )
    };
    let clean = verify();
    assert_eq!(clean.code(), Some(0), "{}", clean.stderr);
    assert_eq!(clean.stdout, "");
    assert!(
        clean.stderr.contains(&format!(
            "301 input lines (1 invalid), 301 rows in {} files: 0 missing",
            parts.len()
        )),
        "{}",
        clean.stderr
    );

    let deleted = &parts[1];
    let lost = rows_of(&moto, "data", deleted);
    assert!(!lost.is_empty());
    moto.delete("data", deleted);
    let missing = verify();
    assert_eq!(missing.code(), Some(1), "{}", missing.stderr);
    let named: BTreeSet<(Option<String>, i64)> = missing
        .lines
        .iter()
        .map(|line| {
            assert_eq!(line["problem"], "missing", "{line}");
            let id = line["custom_id"].as_str().map(str::to_owned);
            (id, line["line"].as_i64().expect("a line number"))
        })
        .collect();
    assert_eq!(named, lost);

    // An emptied part is damaged, named with why; the others are still read.
    let emptied = &parts[0];
    let emptied_name = emptied.trim_start_matches("run/");
    moto.replace("data", emptied, Vec::new());
    let status = text_of(
        on_store(moto.address, tmp.path())
            .args(["status", "s3://data/run/"])
            .output()
            .expect("status"),
    );
    assert_eq!(status.code(), Some(2), "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains(&format!("{emptied_name}: it is empty (0 bytes)")),
        "{}",
        status.stdout
    );
    let damaged = verify();
    assert_eq!(damaged.code(), Some(2), "{}", damaged.stderr);
    assert_eq!(
        damaged.lines[0],
        serde_json::json!({"file": emptied_name, "problem": "damaged", "reason": "it is empty (0 bytes)"})
    );

    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("the temporary directory lists")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "downloads and their folders are removed: {left:?}"
    );
}

#[test]
fn one_results_object_is_read_and_a_damaged_one_and_an_empty_prefix_are_reported() {
    let moto = Moto::start();
    moto.create_bucket("data");
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let input = support::write_input(tmp.path(), &chat_lines(50));
    let results = tmp.path().join("results.parquet");
    let run = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output"])
        .arg(&results)
        .output()
        .expect("the run");
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    moto.replace(
        "data",
        "one/results.parquet",
        std::fs::read(&results).expect("the results"),
    );
    // Only the input is here now; what is read goes to a directory apart.
    let reads = tempfile::tempdir().expect("a temporary directory");
    let status = text_of(
        on_store(moto.address, reads.path())
            .args(["status", "s3://data/one/results.parquet"])
            .output()
            .expect("status"),
    );
    assert_eq!(status.code(), Some(0), "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains("rows:       50 (ok 50, failed 0, invalid 0)"),
        "{}",
        status.stdout
    );
    let verified = parse_output(
        on_store(moto.address, reads.path())
            .args(["verify", "s3://data/one/results.parquet", "--input"])
            .arg(&input)
            .output()
            .expect("verify"),
    );
    assert_eq!(verified.code(), Some(0), "{}", verified.stderr);

    moto.replace(
        "data",
        "old/results.parquet",
        b"not parquet at all".to_vec(),
    );
    let status = text_of(
        on_store(moto.address, reads.path())
            .args(["status", "s3://data/old/results.parquet"])
            .output()
            .expect("status"),
    );
    assert_eq!(status.code(), Some(2), "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains("damaged:    it is not a Parquet file"),
        "{}",
        status.stdout
    );
    let empty = text_of(
        on_store(moto.address, reads.path())
            .args(["status", "s3://data/nothing/"])
            .output()
            .expect("status"),
    );
    assert_eq!(empty.code(), Some(0), "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no part files yet"),
        "{}",
        empty.stdout
    );
    let no_slash = text_of(
        on_store(moto.address, reads.path())
            .args(["status", "s3://data/one"])
            .output()
            .expect("status"),
    );
    assert_eq!(no_slash.code(), Some(2), "{}", no_slash.stderr);
    assert!(
        no_slash
            .stderr
            .contains("s3://data/one: no such object (a dataset's URL ends in /)"),
        "{}",
        no_slash.stderr
    );
    let left = std::fs::read_dir(reads.path()).expect("lists").count();
    assert_eq!(left, 0, "nothing is left where the objects were read");
}
