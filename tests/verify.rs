//! `batchflow verify` through the real binary: shard runs of one input written into one
//! folder (a file each, or the parts of one `--output DIR/` dataset) prove complete; then a
//! deleted part, a copied part, rows of lines another input lacks, and files that are not
//! results are each named.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::Value;
use support::{Mock, Run, batchflow, chat_lines, parse_output, result_rows, write_input};

const SHARDS: usize = 3;

/// An input line's identity in a problem line: custom_id (if any) and line.
type Owner = (Option<String>, i64);

/// How shard runs share one folder.
#[derive(Clone, Copy)]
enum Layout {
    /// Each its own `--output FOLDER/s<i>.parquet`.
    FilePerShard,
    /// All `--output FOLDER/`: a dataset, each shard writing its own part files.
    Dataset,
}

/// Runs every shard of `input` into `folder`; the results file of each shard.
fn shard_runs(mock: &Mock, input: &Path, folder: &Path, layout: Layout) -> Vec<PathBuf> {
    std::fs::create_dir_all(folder).expect("the folder");
    (0..SHARDS)
        .map(|index| {
            let output = match layout {
                Layout::FilePerShard => folder.join(format!("s{index}.parquet")).into_os_string(),
                Layout::Dataset => format!("{}/", folder.display()).into(),
            };
            let run = parse_output(
                batchflow()
                    .arg(input)
                    .args(["--backend", &mock.url(), "--quiet", "--shard"])
                    .arg(format!("{index}/{SHARDS}"))
                    .arg("--output")
                    .arg(&output)
                    .output()
                    .expect("the shard runs"),
            );
            // 1: the shard holding the invalid line.
            assert!(matches!(run.code(), Some(0 | 1)), "{}", run.stderr);
            match layout {
                Layout::FilePerShard => PathBuf::from(output),
                Layout::Dataset => only_part_of(folder, index),
            }
        })
        .collect()
}

/// The one part file shard `index` wrote into a dataset (a small shard fills no more).
fn only_part_of(dataset: &Path, index: usize) -> PathBuf {
    let prefix = format!("part-{index}-of-{SHARDS}-");
    let parts: Vec<PathBuf> = std::fs::read_dir(dataset)
        .expect("the dataset lists")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| {
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned());
            name.is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".parquet"))
        })
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    parts.into_iter().next().expect("one part")
}

fn verify(results: &Path, input: &Path) -> Run {
    parse_output(
        batchflow()
            .arg("verify")
            .arg(results)
            .arg("--input")
            .arg(input)
            .output()
            .expect("verify runs"),
    )
}

/// The owners of the problem lines of kind `problem`.
fn owners(run: &Run, problem: &str) -> BTreeSet<Owner> {
    run.lines
        .iter()
        .filter(|line| line["problem"] == problem)
        .map(|line| {
            let custom_id = line["custom_id"].as_str().map(str::to_owned);
            (custom_id, line["line"].as_i64().expect("a line number"))
        })
        .collect()
}

/// The owners of the rows of a results file.
fn rows_of(path: &Path) -> BTreeSet<Owner> {
    result_rows(path)
        .into_iter()
        .map(|(custom_id, line, _)| (custom_id, line))
        .collect()
}

/// 300 requests and a line that is not JSON (an invalid line, owed a row of its own).
fn setup() -> (Mock, tempfile::TempDir, PathBuf) {
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &(chat_lines(300) + "not json\n"));
    (mock, dir, input)
}

#[test]
fn shards_into_one_folder_verify_clean_then_a_deleted_and_a_copied_file_are_named() {
    deleted_and_copied(Layout::FilePerShard);
}

#[test]
fn shards_into_one_dataset_verify_clean_then_a_deleted_and_a_copied_part_are_named() {
    deleted_and_copied(Layout::Dataset);
}

fn file_name(path: &Path) -> String {
    let name = path.file_name().expect("a file name");
    name.to_string_lossy().into_owned()
}

fn deleted_and_copied(layout: Layout) {
    let (mock, dir, input) = setup();
    let dataset = dir.path().join("dataset");
    let parts = shard_runs(&mock, &input, &dataset, layout);
    let clean = verify(&dataset, &input);
    assert_eq!(clean.code(), Some(0), "{}", clean.stderr);
    assert_eq!(clean.stdout, "", "no problems");
    assert!(
        clean
            .stderr
            .contains("301 input lines (1 invalid), 301 rows in 3 files: 0 missing"),
        "{}",
        clean.stderr
    );

    let deleted = rows_of(&parts[1]);
    assert!(deleted.len() > 50, "a fair share: {}", deleted.len());
    std::fs::remove_file(&parts[1]).expect("a part deleted");
    let missing = verify(&dataset, &input);
    assert_eq!(missing.code(), Some(1), "{}", missing.stderr);
    assert_eq!(owners(&missing, "missing"), deleted);
    assert_eq!(missing.lines.len(), deleted.len(), "nothing else");
    assert!(
        missing.stderr.contains("NOT complete"),
        "{}",
        missing.stderr
    );

    let copied = rows_of(&parts[0]);
    let copy = dataset.join("z-copy.parquet");
    std::fs::copy(&parts[0], &copy).expect("a part copied");
    let doubled = verify(&dataset, &input);
    assert_eq!(doubled.code(), Some(1), "{}", doubled.stderr);
    assert_eq!(owners(&doubled, "duplicated"), copied);
    assert_eq!(owners(&doubled, "missing"), deleted);
    let both = serde_json::json!([file_name(&parts[0]), file_name(&copy)]);
    for line in doubled
        .lines
        .iter()
        .filter(|line| line["problem"] == "duplicated")
    {
        assert_eq!(line["count"], 2, "{line}");
        assert_eq!(line["files"], both, "{line}");
    }
}

#[test]
fn rows_of_lines_the_input_lacks_are_unexpected() {
    let (mock, dir, input) = setup();
    let results = dir.path().join("results.parquet");
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output"])
        .arg(&results)
        .output()
        .expect("the run");
    assert_eq!(output.status.code(), Some(1), "the invalid line");
    let fewer = dir.path().join("fewer.jsonl");
    std::fs::write(&fewer, chat_lines(290)).expect("a shorter input");
    let checked = verify(&results, &fewer);
    assert_eq!(checked.code(), Some(1), "{}", checked.stderr);
    let expected: BTreeSet<Owner> = (290..300)
        .map(|index| (Some(format!("req-{index}")), index + 1))
        .chain([(None, 301)])
        .collect();
    assert_eq!(owners(&checked, "unexpected"), expected);
    assert_eq!(checked.lines.len(), expected.len(), "nothing else");
    let file = results.display().to_string();
    assert!(
        checked
            .lines
            .iter()
            .all(|line| line["file"] == Value::String(file.clone())),
        "{:?}",
        checked.lines
    );

    let no_input = verify(&results, &dir.path().join("no-input.jsonl"));
    assert_eq!(no_input.code(), Some(2));
    assert!(
        no_input.stderr.contains("no-input.jsonl"),
        "{}",
        no_input.stderr
    );
}

#[test]
fn what_is_not_results_is_an_error_naming_it() {
    let (_mock, dir, input) = setup();
    let not_results = verify(&input, &input);
    assert_eq!(not_results.code(), Some(2));
    assert!(
        not_results.stderr.contains(&format!(
            "{} is not a batchflow results file",
            input.display()
        )),
        "{}",
        not_results.stderr
    );
    assert_eq!(not_results.stdout, "");

    let dataset = dir.path().join("dataset");
    std::fs::create_dir(&dataset).expect("a folder");
    std::fs::write(dataset.join("part-0.parquet"), "PAR1 but not really").expect("a bad part");
    let bad_part = verify(&dataset, &input);
    assert_eq!(bad_part.code(), Some(2));
    // In a dataset it is a problem among others: every line is then missing.
    let damaged = &bad_part.lines[0];
    assert_eq!(
        (&damaged["file"], &damaged["problem"]),
        (&Value::from("part-0.parquet"), &Value::from("damaged")),
    );
    let reason = damaged["reason"].as_str().expect("a reason");
    assert!(
        reason.starts_with("it has no readable Parquet footer"),
        "{reason}"
    );
    assert_eq!(bad_part.lines.len(), 1 + 301, "{}", bad_part.stderr);

    let absent = verify(&dir.path().join("absent"), &input);
    assert_eq!(absent.code(), Some(2));
    assert!(absent.stderr.contains("absent"), "{}", absent.stderr);
}

#[test]
fn a_pipeline_file_gives_the_input_and_its_generated_ids() {
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let records: String = (0..60)
        .map(|index| format!("{{\"text\": \"hello {index}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("records.jsonl"), records).expect("records");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"records.jsonl\"\n\n[request]\nendpoint = \"/api/chat\"\nmodel = \"llama3.2\"\nprompt = \"Say {{{{text}}}}\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\nparquet = \"dataset/s.parquet\"\n",
            mock.url()
        ),
    )
    .expect("a pipeline");
    std::fs::create_dir(dir.path().join("dataset")).expect("the dataset folder");
    for index in 0..2 {
        let run = batchflow()
            .arg("run")
            .arg(&pipeline)
            .args(["--quiet", "--shard", &format!("{index}/2"), "--set"])
            .arg(format!("sink.parquet=\"dataset/s{index}.parquet\""))
            .output()
            .expect("the shard runs");
        assert_eq!(run.status.code(), Some(0), "{run:?}");
    }
    let dataset = dir.path().join("dataset");
    let clean = verify(&dataset, &pipeline);
    assert_eq!(clean.code(), Some(0), "{}", clean.stderr);
    let half = verify(&dataset.join("s0.parquet"), &pipeline);
    assert_eq!(half.code(), Some(1), "{}", half.stderr);
    assert_eq!(
        owners(&half, "missing"),
        rows_of(&dataset.join("s1.parquet"))
    );
}

fn status(results: &Path) -> Run {
    let output = batchflow()
        .arg("status")
        .arg(results)
        .output()
        .expect("status runs");
    Run {
        status: output.status,
        lines: Vec::new(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn an_empty_and_a_garbage_part_are_named_by_status_and_verify_and_the_rest_is_read() {
    let (mock, dir, input) = setup();
    let dataset = dir.path().join("dataset");
    let parts = shard_runs(&mock, &input, &dataset, Layout::Dataset);
    let mut lost = rows_of(&parts[0]);
    lost.extend(rows_of(&parts[2]));
    let kept = rows_of(&parts[1]).len();
    std::fs::write(&parts[0], b"").expect("a part truncated to 0 bytes");
    std::fs::write(&parts[2], [0xA5u8; 4096]).expect("a part overwritten with garbage");
    let (empty, garbage) = (file_name(&parts[0]), file_name(&parts[2]));

    let shown = status(&dataset);
    assert_eq!(shown.code(), Some(2), "{}\n{}", shown.stdout, shown.stderr);
    for expected in [
        format!("{empty}: it is empty (0 bytes)"),
        format!("{garbage}: it is not a Parquet file"),
        "damaged: 2 part(s) cannot be read".to_owned(),
        format!("shard 1/{SHARDS} (1 parts)"),
        format!("rows:       {kept} "),
    ] {
        assert!(
            shown.stdout.contains(&expected),
            "no {expected:?} in {}",
            shown.stdout
        );
    }

    // The same as a file URL, as a run's --output may be given.
    let url = status(Path::new(&format!("file://{}/", dataset.display())));
    assert_eq!(url.code(), Some(2), "{}", url.stderr);
    assert!(
        url.stdout
            .contains(&format!("{empty}: it is empty (0 bytes)")),
        "{}",
        url.stdout
    );

    let checked = verify(&dataset, &input);
    assert_eq!(checked.code(), Some(2), "{}", checked.stderr);
    let damaged: Vec<(String, String)> = checked
        .lines
        .iter()
        .filter(|line| line["problem"] == "damaged")
        .map(|line| {
            let text = |key: &str| line[key].as_str().expect("text").to_owned();
            (text("file"), text("reason"))
        })
        .collect();
    assert_eq!(
        damaged,
        [
            (empty, "it is empty (0 bytes)".to_owned()),
            (garbage, "it is not a Parquet file".to_owned())
        ]
    );
    assert_eq!(owners(&checked, "missing"), lost);
    assert_eq!(checked.lines.len(), lost.len() + 2, "nothing else");
    assert!(
        checked.stderr.contains(&format!(
            "{kept} rows in 3 files (2 damaged, not read): {} missing",
            lost.len()
        )),
        "{}",
        checked.stderr
    );
}

#[test]
fn a_damaged_results_file_is_named_with_why_by_status_and_verify() {
    let (mock, dir, input) = setup();
    let results = dir.path().join("results.parquet");
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output"])
        .arg(&results)
        .output()
        .expect("the run");
    assert_eq!(output.status.code(), Some(1), "the invalid line");
    let bytes = std::fs::read(&results).expect("the results");
    // Its footer torn off, as by a copy cut short.
    std::fs::write(&results, &bytes[..bytes.len() / 2]).expect("truncated");
    let shown = status(&results);
    assert_eq!(shown.code(), Some(2), "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .contains("damaged:    it has no readable Parquet footer"),
        "{}",
        shown.stdout
    );
    let checked = verify(&results, &input);
    assert_eq!(checked.code(), Some(2), "{}", checked.stderr);
    assert!(
        checked.stderr.contains(&format!(
            "{} is not a batchflow results file: it has no readable Parquet footer",
            results.display()
        )),
        "{}",
        checked.stderr
    );
}
