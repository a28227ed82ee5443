//! Unit tests of `verify`: small results files and inputs made here.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::fs;

use super::*;
use crate::item::{Outcome, OutcomeError};
use crate::reply::ReplyFields;
use crate::sink::checkpoint::{Codec, FileState, ResultsWriter};
use crate::sink::results::{ExtraColumns, RowBuilder, schema};

/// A results row: custom_id, input line, error code.
type Row = (Option<&'static str>, u64, Option<ErrorCode>);

/// Writes `rows` as a results file through the run's own writer.
fn write_results(path: &Path, rows: &[Row]) {
    let extras = ExtraColumns::default();
    let schema = schema(false, &extras);
    let mut builder = RowBuilder::new(Arc::clone(&schema), &extras);
    for (custom_id, line, code) in rows {
        let outcome = Outcome {
            line: *line,
            custom_id: custom_id.map(str::to_owned),
            model: None,
            reply: None,
            error: code.map(|code| OutcomeError {
                code,
                message: "test".into(),
            }),
            attempts: 0,
            latency: Duration::ZERO,
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        };
        builder.push(&outcome, &ReplyFields::of(&outcome));
    }
    let mut writer =
        ResultsWriter::create(path, schema, false, Codec::default(), Vec::new()).expect("new");
    writer
        .write_row_group(&builder.finish().expect("a batch"))
        .expect("a row group");
    writer.close(FileState::Complete).expect("closed");
}

/// Lines 1-3 requests a, b, c; line 4 not JSON; line 5 a second `a`.
fn input() -> RunOptions {
    let line = |id: &str| {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/api/chat","body":{{"model":"m"}}}}"#
        )
    };
    let text = [line("a"), line("b"), line("c"), "{oops".into(), line("a")].join("\n");
    RunOptions {
        input: Input::Text(text.into()),
        ..RunOptions::default()
    }
}

/// What a complete run of [`input`] writes.
const COMPLETE: [Row; 5] = [
    (Some("a"), 1, None),
    (Some("b"), 2, Some(ErrorCode::ServerError)),
    (Some("c"), 3, None),
    (None, 4, Some(ErrorCode::InvalidJson)),
    (Some("a"), 5, Some(ErrorCode::DuplicateCustomId)),
];

fn check(results: &Path, options: &RunOptions) -> (Summary, Vec<Problem>) {
    let mut problems = Vec::new();
    let summary = verify(results, options, |problem| {
        problems.push(problem);
        Ok(())
    })
    .expect("verified");
    (summary, problems)
}

#[test]
fn one_row_per_line_is_clean_even_for_invalid_and_repeated_lines() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("results.parquet");
    write_results(&path, &COMPLETE);
    let (summary, problems) = check(&path, &input());
    assert_eq!(problems, []);
    assert!(summary.is_clean());
    assert_eq!((summary.input_lines, summary.invalid_lines), (5, 2));
    assert_eq!((summary.rows, summary.files), (5, 1));
}

#[test]
fn a_dataset_names_missing_duplicated_and_unexpected_rows() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_results(&dir.path().join("p0.parquet"), &COMPLETE[..2]);
    // Line 4 is missing; `c` is there twice; `z` and line 9 belong to no line.
    write_results(
        &dir.path().join("p1.parquet"),
        &[
            COMPLETE[2],
            COMPLETE[4],
            (Some("c"), 3, None),
            (Some("z"), 7, None),
            (None, 9, Some(ErrorCode::InvalidJson)),
        ],
    );
    // Not results files: hidden, staging, other names.
    for ignored in [".p2.parquet", "p3.parquet.tmp", "notes.txt"] {
        fs::write(dir.path().join(ignored), "junk").expect("written");
    }
    let (summary, problems) = check(dir.path(), &input());
    let unexpected = |custom_id: Option<&str>, line| Problem {
        custom_id: custom_id.map(str::to_owned),
        line,
        kind: ProblemKind::Unexpected {
            file: "p1.parquet".into(),
        },
    };
    assert_eq!(
        problems,
        [
            Problem {
                custom_id: None,
                line: 4,
                kind: ProblemKind::Missing
            },
            unexpected(Some("z"), 7),
            unexpected(None, 9),
            Problem {
                custom_id: Some("c".into()),
                line: 3,
                kind: ProblemKind::Duplicated {
                    count: 2,
                    files: vec!["p1.parquet".into(), "p1.parquet".into()]
                }
            },
        ]
    );
    assert_eq!(
        (summary.missing, summary.duplicated, summary.unexpected),
        (1, 1, 2)
    );
    assert_eq!((summary.rows, summary.files), (7, 2));
    assert_eq!(
        problems[3].to_json(),
        r#"{"custom_id":"c","line":3,"problem":"duplicated","count":2,"files":["p1.parquet","p1.parquet"]}"#
    );
    assert_eq!(
        problems[0].to_json(),
        r#"{"custom_id":null,"line":4,"problem":"missing"}"#
    );
}

#[test]
fn the_runs_model_decides_which_lines_were_requests() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("results.parquet");
    write_results(&path, &[(Some("a"), 1, None)]);
    let options = RunOptions {
        input: Input::Text(r#"{"custom_id":"a","method":"POST","url":"/v1/x","body":{}}"#.into()),
        ..RunOptions::default()
    };
    let (summary, _) = check(&path, &options);
    assert_eq!((summary.missing, summary.unexpected), (1, 1));
    let with_model = RunOptions {
        model: Some("m".into()),
        ..options
    };
    assert!(check(&path, &with_model).0.is_clean());
}

#[test]
fn the_merge_finds_missing_duplicated_and_unexpected_keys() {
    let verdicts = compare(&[1, 3, 5, 7, 9], &[0, 0, 3, 5, 5, 5, 9, 10]);
    assert_eq!(
        verdicts,
        Verdicts {
            missing: vec![1, 7],
            duplicated: vec![(5, 3)],
            unexpected: vec![0, 10],
            unexpected_rows: 3,
        }
    );
    assert_eq!(compare(&[], &[]), Verdicts::default());
    assert_eq!(compare(&[2], &[]).missing, [2]);
}

#[test]
fn standard_input_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("results.parquet");
    write_results(&path, &COMPLETE);
    let options = RunOptions {
        input: Input::Stdin,
        ..RunOptions::default()
    };
    let error = verify(&path, &options, |_| Ok(())).expect_err("refused");
    assert!(matches!(error, VerifyError::Stdin), "{error}");
}

#[test]
fn damaged_parts_are_named_and_the_others_still_checked() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_results(&dir.path().join("p0.parquet"), &COMPLETE[..2]);
    write_results(&dir.path().join("p1.parquet"), &COMPLETE[2..]);
    fs::write(dir.path().join("p2.parquet"), b"").expect("an empty part");
    fs::write(dir.path().join("p3.parquet"), [0xAB; 64]).expect("a garbage part");
    // p1's rows become unreadable: its footer is torn off.
    let p1 = dir.path().join("p1.parquet");
    let bytes = fs::read(&p1).expect("read");
    fs::write(&p1, &bytes[..bytes.len() - 20]).expect("torn");
    let (summary, problems) = check(dir.path(), &input());
    let damaged: Vec<(String, String)> = problems
        .iter()
        .filter_map(|problem| match &problem.kind {
            ProblemKind::Damaged { file, reason } => Some((file.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(damaged.len(), 3, "{problems:?}");
    assert_eq!(damaged[0].0, "p1.parquet");
    assert!(damaged[0].1.contains("footer"), "{}", damaged[0].1);
    assert_eq!(
        damaged[1],
        ("p2.parquet".into(), "it is empty (0 bytes)".into())
    );
    assert_eq!(
        damaged[2],
        ("p3.parquet".into(), "it is not a Parquet file".into())
    );
    // p1 held lines 3 to 5.
    let missing: Vec<u64> = problems
        .iter()
        .filter(|problem| problem.kind == ProblemKind::Missing)
        .map(|problem| problem.line)
        .collect();
    assert_eq!(missing, [3, 4, 5]);
    assert_eq!((summary.files, summary.damaged, summary.rows), (4, 3, 2));
    assert!(!summary.is_clean());
    assert_eq!(
        problems[1].to_json(),
        r#"{"file":"p2.parquet","problem":"damaged","reason":"it is empty (0 bytes)"}"#
    );
}

#[test]
fn what_is_not_results_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let text = dir.path().join("results.parquet");
    fs::write(&text, "not parquet at all").expect("written");
    let error = verify(&text, &input(), |_| Ok(())).expect_err("refused");
    assert!(matches!(error, VerifyError::NotResults { .. }), "{error}");
    assert!(error.to_string().contains("results.parquet"), "{error}");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("a folder");
    let error = verify(&empty, &input(), |_| Ok(())).expect_err("refused");
    assert!(
        error.to_string().contains("holds no results files"),
        "{error}"
    );
}

#[test]
fn a_failing_report_stops_the_check() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("results.parquet");
    write_results(&path, &[]);
    let mut calls = 0;
    let error = verify(&path, &input(), |_| {
        calls += 1;
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    })
    .expect_err("stopped");
    assert!(matches!(error, VerifyError::Report(_)), "{error}");
    assert_eq!(calls, 1);
}
