//! `status` and `verify` of a pipeline of stages through the binary against the mock: status
//! of the results folder and of the pipeline file lists each stage under its name, in the order
//! the pipeline runs them, with its rows and, mid-run, its live `run: running` line; verify
//! checks the first stage against the input and the second against the first stage's rows
//! that pass its filter, naming the stage and custom_id of a missing and of an unexpected row.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use batchflow::sink::checkpoint::{Codec, FileState, ResultsWriter, inspect};
use batchflow::sink::fingerprint::Fingerprint;
use serde_json::Value;

use crate::stages::{EXTRACT_PROMPT, FILTER, mock, write_pipeline, write_records};
use crate::support::{batchflow, read_batches, result_rows, wait_until};

fn ids(path: &Path) -> BTreeSet<String> {
    result_rows(path)
        .into_iter()
        .map(|(id, _, _)| id.expect("a custom_id"))
        .collect()
}

/// Runs batchflow with `args` in `dir`: exit code, stdout, stderr.
fn batchflow_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = batchflow()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("batchflow runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The report's section of one stage: from its `stage NAME:` heading to the next heading.
fn section<'a>(report: &'a str, stage: &str) -> &'a str {
    let heading = format!("stage {stage}: ");
    let start = report
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in {report}"));
    let rest = &report[start + heading.len()..];
    let end = rest.find("\nstage ").map_or(rest.len(), |end| end + 1);
    &report[start..start + heading.len() + end]
}

/// Rewrites a results file through batchflow's own writer, with its fingerprint, keeping the
/// rows whose custom_id is not `drop` and adding a copy of its first row as `add`.
fn rewrite(path: &Path, drop: &str, add: Option<&str>) {
    let existing = inspect(path).expect("a results file");
    let fingerprint = Fingerprint::read(existing.metadata.file_metadata().key_value_metadata())
        .expect("a fingerprint");
    let batches = read_batches(path);
    let schema = batches[0].schema();
    let batch = arrow_select::concat::concat_batches(&schema, &batches).expect("one batch");
    let ids = batch
        .column_by_name("custom_id")
        .expect("custom_id")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("strings")
        .clone();
    let keep: BooleanArray = ids.iter().map(|id| Some(id != Some(drop))).collect();
    let mut kept = arrow_select::filter::filter_record_batch(&batch, &keep).expect("filtered");
    if let Some(add) = add {
        let mut columns = batch.slice(0, 1).columns().to_vec();
        let position = schema.index_of("custom_id").expect("custom_id");
        columns[position] = Arc::new(StringArray::from(vec![add]));
        let extra = RecordBatch::try_new(Arc::clone(&schema), columns).expect("a row");
        kept = arrow_select::concat::concat_batches(&schema, &[kept, extra]).expect("one batch");
    }
    let mut writer = ResultsWriter::create(
        path,
        Arc::clone(&schema),
        true,
        Codec::default(),
        fingerprint.key_values(),
    )
    .expect("a writer");
    writer.write_row_group(&kept).expect("written");
    writer.close(FileState::Complete).expect("closed");
}

/// The problems verify printed, as (stage, custom_id, problem).
fn problems(stdout: &str) -> BTreeSet<(String, String, String)> {
    stdout
        .lines()
        .map(|line| {
            let problem: Value = serde_json::from_str(line).expect("a JSON line");
            let text = |key: &str| problem[key].as_str().unwrap_or_default().to_owned();
            (text("stage"), text("custom_id"), text("problem"))
        })
        .collect()
}

#[test]
fn status_lists_each_stage_in_order_and_verify_names_the_stage_and_id_of_a_wrong_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(1);
    write_records(dir.path(), 120);
    let pipeline = write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let (code, _, stderr) = batchflow_in(dir.path(), &["run", "staged.toml", "--quiet"]);
    assert_eq!(code, Some(0), "{stderr}");
    let screen = dir.path().join("results/screen.parquet");
    let extract = dir.path().join("results/extract.parquet");
    let (screen_ids, extract_ids) = (ids(&screen), ids(&extract));
    assert!(
        !extract_ids.is_empty() && extract_ids.len() < screen_ids.len(),
        "the filter passes some rows, not all"
    );

    // The folder: extract reads screen, so it comes after it, whatever the names' order.
    for target in ["results", "staged.toml"] {
        let (code, report, stderr) = batchflow_in(dir.path(), &["status", target]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            report.find("stage screen: ") < report.find("stage extract: "),
            "{report}"
        );
        let (first, second) = (section(&report, "screen"), section(&report, "extract"));
        assert!(
            first.contains("  rows:       120 (ok 120, failed 0, invalid 0)"),
            "{first}"
        );
        assert!(!first.contains("reads:"), "{first}");
        let rows = format!("  rows:       {} (ok {0},", extract_ids.len());
        assert!(second.contains(&rows), "{second}");
        assert!(
            second.contains(&format!("  reads:      screen where {FILTER}\n")),
            "{second}"
        );
        assert!(
            first.contains("  run:        finished") && second.contains("  run:        finished"),
            "{report}"
        );
    }

    let pipeline = pipeline.to_string_lossy().into_owned();
    let verify = ["verify", "results", "--input", pipeline.as_str()];
    let (code, stdout, stderr) = batchflow_in(dir.path(), &verify);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("stage screen: 120 input lines")
            && stderr.contains(&format!(
                "stage extract: {} rows of stage screen passing its filter",
                extract_ids.len()
            )),
        "{stderr}"
    );

    // One extract row deleted: that row is missing from the extract stage.
    let deleted = extract_ids.first().expect("an extract row").clone();
    rewrite(&extract, &deleted, None);
    let (code, stdout, stderr) = batchflow_in(dir.path(), &verify);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        problems(&stdout),
        BTreeSet::from([("extract".into(), deleted.clone(), "missing".into())]),
        "{stdout}"
    );
    assert!(
        stderr.contains("stage extract:") && stderr.contains("1 missing"),
        "{stderr}"
    );

    // A row for a screen row that does not pass the filter: unexpected, named too.
    let failing = screen_ids
        .difference(&extract_ids)
        .next()
        .expect("a row the filter refused")
        .clone();
    rewrite(&extract, "none dropped", Some(&failing));
    let (code, stdout, stderr) = batchflow_in(dir.path(), &verify);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        problems(&stdout),
        BTreeSet::from([
            ("extract".into(), deleted, "missing".into()),
            ("extract".into(), failing, "unexpected".into()),
        ]),
        "{stdout}"
    );
    assert!(
        stderr.contains("every input line has exactly one row") && stderr.contains("1 unexpected"),
        "the screen is still whole: {stderr}"
    );
}

#[test]
fn status_mid_run_shows_each_stage_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = mock(100);
    write_records(dir.path(), 400);
    write_pipeline(dir.path(), &mock.url(), EXTRACT_PROMPT);
    let mut child = batchflow()
        .current_dir(dir.path())
        .args(["run", "staged.toml", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("batchflow starts");
    let running = |report: &str, stage: &str| {
        report.contains(&format!("stage {stage}: "))
            && section(report, stage).contains("  run:        running (pid ")
    };
    let mut report = String::new();
    wait_until("both stages run", || {
        report = batchflow_in(dir.path(), &["status", "staged.toml"]).1;
        (running(&report, "screen") && running(&report, "extract"))
            || child.try_wait().ok().flatten().is_some()
    });
    let ended = child.try_wait().expect("the run's state").is_some();
    child.kill().expect("stopped");
    child.wait().expect("reaped");
    assert!(!ended, "the run ended before both stages were seen running");
    assert!(
        section(&report, "extract").contains(&format!("  reads:      screen where {FILTER}")),
        "{report}"
    );
    assert!(
        section(&report, "screen").contains("  this run:   "),
        "{report}"
    );
}
