//! Pipeline files through the real binary: every example validates and a broken copy of each
//! fails naming its problem; records with a template and an output schema become typed columns;
//! the same job as flags and as TOML gives the same rows.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::DataType;
use batchflow::engine;
use batchflow::error::ExitStatus;
use batchflow::mock::MockConfig;
use batchflow::options::{Console, RunOptions, Workers};
use batchflow::shutdown::Shutdown;
use batchflow::source::Input;
use support::{
    Mock, batchflow, chat_lines, parse_output, pipelines_dir, read_batches, write_parquet,
};

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(pipelines_dir())
        .expect("pipelines/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "toml")
        })
        .collect();
    files.sort();
    files
}

struct Validation {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn validate(path: &Path) -> Validation {
    let output = batchflow()
        .args(["validate", "--offline"])
        .arg(path)
        .output()
        .expect("runs");
    Validation {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn every_example_validates_and_a_broken_copy_of_each_names_its_problem() {
    let files = examples();
    assert!(files.len() >= 4, "{files:?}");
    let dir = tempfile::tempdir().expect("dir");
    let absolute = format!("path = \"{}/", pipelines_dir().display());
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let run = validate(&file);
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
        assert!(run.stdout.contains("is valid"), "{name}: {}", run.stdout);

        let text = std::fs::read_to_string(&file)
            .expect("read")
            .replace("path = \"", &absolute);
        let broken = |label: &str, text: String| {
            let path = dir.path().join(format!("{label}-{name}"));
            std::fs::write(&path, text).expect("write");
            validate(&path)
        };
        let unknown = broken(
            "unknown",
            text.replace("[backend]\n", "[backend]\nworker_count = 3\n"),
        );
        assert_eq!(unknown.code, Some(2), "{name}");
        assert!(
            unknown.stderr.contains("worker_count") && unknown.stderr.contains("line "),
            "{name}: {}",
            unknown.stderr
        );

        let bad_type = broken(
            "type",
            text.replace("[backend]\n", "[backend]\nretries = \"many\"\n"),
        );
        assert_eq!(bad_type.code, Some(2), "{name}");
        assert!(
            bad_type.stderr.contains("retries"),
            "{name}: {}",
            bad_type.stderr
        );

        let commented = broken(
            "comment",
            format!("# needs ${{BATCHFLOW_TEST_UNSET}} one day\n{text}"),
        );
        assert_eq!(commented.code, Some(0), "{name}: {}", commented.stderr);
        let unset = broken(
            "unset",
            text.replace(
                "[backend]\n",
                "[backend]\napi_key_env = \"${BATCHFLOW_TEST_UNSET}\"\n",
            ),
        );
        assert_eq!(unset.code, Some(2), "{name}");
        assert!(
            unset.stderr.contains("BATCHFLOW_TEST_UNSET is not set")
                && unset.stderr.contains("line "),
            "{name}: {}",
            unset.stderr
        );

        if text.contains("prompt = ") {
            let missing = broken("column", text.replacen("{{", "{{no_such_column}} {{", 1));
            assert_eq!(missing.code, Some(2), "{name}");
            assert!(
                missing.stderr.contains("\"no_such_column\""),
                "{name}: {}",
                missing.stderr
            );
        }
    }
}

#[test]
fn the_quickstart_pipeline_runs_against_the_built_in_mock() {
    let output = batchflow()
        .args(["run", "--quiet"])
        .arg(pipelines_dir().join("quickstart.toml"))
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 16);
}

fn write_candidates(path: &Path, count: usize) {
    let ids: Vec<String> = (0..count).map(|i| format!("cand-{i}")).collect();
    let names: Vec<String> = (0..count).map(|i| format!("Person {i}")).collect();
    let summaries: Vec<String> = (0..count)
        .map(|i| {
            if i % 100 == 7 {
                format!("[mock:fail=9:schema] candidate {i}")
            } else {
                format!("candidate {i} knows Rust")
            }
        })
        .collect();
    let years = Int64Array::from_iter_values((0..count).map(|i| (i % 30) as i64));
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(StringArray::from(ids))),
        ("name", Arc::new(StringArray::from(names))),
        ("years", Arc::new(years)),
        ("summary", Arc::new(StringArray::from(summaries))),
    ];
    write_parquet(path, [RecordBatch::try_from_iter(columns).expect("batch")]);
}

#[test]
fn records_with_a_template_and_an_output_schema_become_typed_columns() {
    let mock = Mock::start(MockConfig {
        slots: 16,
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    write_candidates(&dir.path().join("candidates.parquet"), 5000);
    let pipeline = dir.path().join("screen.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[source]
path = "candidates.parquet"
id_column = "id"
passthrough = ["name", "years"]

[request]
model = "llama3.2"
prompt = "Rate {{{{name}}}}: {{{{summary}}}}"

[request.output]
retries = 1
schema = {{ type = "object", required = ["score", "fit"], properties = {{ score = {{ type = "integer" }}, fit = {{ type = "string", enum = ["yes", "no"] }}, skills = {{ type = "array", items = {{ type = "string" }} }}, confidence = {{ type = "number" }}, remote = {{ type = "boolean" }} }} }}

[backend]
url = "{}"
workers = 16

[sink]
parquet = "results.parquet"
"#,
            mock.url()
        ),
    )
    .expect("write pipeline");
    let output = batchflow()
        .arg("run")
        .arg(&pipeline)
        .arg("--quiet")
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(
        run.code(),
        Some(1),
        "some replies break the schema: {}",
        run.stderr
    );

    let batches = read_batches(&dir.path().join("results.parquet"));
    let schema = batches[0].schema();
    let type_of = |name: &str| {
        schema
            .field_with_name(name)
            .expect(name)
            .data_type()
            .clone()
    };
    assert_eq!(type_of("score"), DataType::Int64);
    assert_eq!(type_of("fit"), DataType::Utf8);
    assert!(
        matches!(type_of("skills"), DataType::List(item) if item.data_type() == &DataType::Utf8)
    );
    assert_eq!(type_of("confidence"), DataType::Float64);
    assert_eq!(type_of("remote"), DataType::Boolean);
    assert_eq!(type_of("name"), DataType::Utf8);
    assert_eq!(type_of("years"), DataType::Int64);

    let mut rows = BTreeMap::new();
    for batch in &batches {
        let ids = batch
            .column_by_name("custom_id")
            .expect("id")
            .as_string::<i32>()
            .clone();
        let names = batch
            .column_by_name("name")
            .expect("name")
            .as_string::<i32>()
            .clone();
        let years = batch
            .column_by_name("years")
            .expect("years")
            .as_primitive::<Int64Type>()
            .clone();
        let scores = batch
            .column_by_name("score")
            .expect("score")
            .as_primitive::<Int64Type>()
            .clone();
        let fits = batch
            .column_by_name("fit")
            .expect("fit")
            .as_string::<i32>()
            .clone();
        let codes = batch
            .column_by_name("error_code")
            .expect("code")
            .as_string::<i32>()
            .clone();
        for row in 0..batch.num_rows() {
            let index: usize = ids
                .value(row)
                .trim_start_matches("cand-")
                .parse()
                .expect("index");
            assert_eq!(names.value(row), format!("Person {index}"), "passthrough");
            assert_eq!(years.value(row), (index % 30) as i64);
            if index % 100 == 7 {
                assert_eq!(codes.value(row), "invalid_output", "row {index}");
                assert!(scores.is_null(row));
            } else {
                assert!(codes.is_null(row), "row {index}: {}", codes.value(row));
                assert!((0..10).contains(&scores.value(row)));
                assert!(["yes", "no"].contains(&fits.value(row)));
            }
            assert!(rows.insert(index, ()).is_none(), "one row per record");
        }
    }
    assert_eq!(rows.len(), 5000);
    assert_eq!(
        mock.server.stats().bad_outputs,
        50 * 2,
        "each bad reply was retried once"
    );
}

#[test]
fn the_same_job_as_flags_and_as_toml_gives_the_same_rows() {
    let mock = Mock::start(MockConfig {
        latency: Duration::ZERO,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = support::write_input(dir.path(), &chat_lines(300));
    let flags = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--model",
            "llama3.2",
            "--workers",
            "4",
            "--quiet",
            "--output",
        ])
        .arg(dir.path().join("flags.parquet"))
        .output()
        .expect("runs");
    assert_eq!(flags.status.code(), Some(0));
    let pipeline = dir.path().join("job.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[request]\nmodel = \"llama3.2\"\n\n[backend]\nurl = \"{}\"\nworkers = 4\n\n[sink]\nparquet = \"toml.parquet\"\n",
            mock.url()
        ),
    )
    .expect("write");
    let toml = batchflow()
        .arg("run")
        .arg(&pipeline)
        .arg("--quiet")
        .output()
        .expect("runs");
    assert_eq!(
        toml.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&toml.stderr)
    );
    let rows = |name: &str| {
        let mut rows = BTreeMap::new();
        for batch in read_batches(&dir.path().join(name)) {
            let column = |field: &str| batch.column_by_name(field).expect(field).clone();
            let (ids, statuses, contents, models) = (
                column("custom_id"),
                column("status"),
                column("content"),
                column("model"),
            );
            for row in 0..batch.num_rows() {
                let text = |array: &ArrayRef| array.as_string::<i32>().value(row).to_owned();
                rows.insert(
                    text(&ids),
                    (text(&statuses), text(&contents), text(&models)),
                );
            }
        }
        rows
    };
    let from_flags = rows("flags.parquet");
    assert_eq!(from_flags.len(), 300);
    assert_eq!(from_flags, rows("toml.parquet"));

    // The same run built in code, through the library alone.
    let options = RunOptions {
        input: Input::File(input.clone()),
        model: Some("llama3.2".into()),
        backends: vec![mock.url()],
        workers: Workers::Fixed(4),
        results: Some(dir.path().join("code.parquet")),
        ..RunOptions::default()
    };
    let console = Console {
        quiet: true,
        stderr_is_terminal: false,
    };
    let config = options.resolve(console, None, |_| None).expect("resolves");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime
        .block_on(engine::run(config, None, Shutdown::new()))
        .expect("runs");
    assert_eq!(report.exit_status(), ExitStatus::Success);
    assert_eq!(from_flags, rows("code.parquet"));
}
