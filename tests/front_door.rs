//! The main command as a new user meets it (issue 23): records straight from the command line
//! with `--prompt`, the pipeline file those flags describe (`--save-pipeline`), and one flag
//! vocabulary: the same run knobs on the main command, on `run FILE` (a flag given wins over
//! the file) and, where they mean something, on `tune` and `validate`, each `--help` listing
//! only what its command uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use batchflow::mock::MockConfig;
use serde_json::json;

use crate::support::{Mock, batchflow, parse_output, read_batches};

/// A string column of every batch, by custom_id.
fn strings_by_id(batches: &[RecordBatch], column: &str) -> BTreeMap<String, Option<String>> {
    let mut values = BTreeMap::new();
    for batch in batches {
        let ids = batch.column_by_name("custom_id").expect("custom_id");
        let ids = ids.as_string::<i32>();
        let column = batch
            .column_by_name(column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", batch.schema()));
        let column = column.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let value = (!column.is_null(row)).then(|| column.value(row).to_owned());
            values.insert(ids.value(row).to_owned(), value);
        }
    }
    values
}

fn candidates(dir: &Path, count: usize) -> std::path::PathBuf {
    let path = dir.join("candidates.jsonl");
    let lines: String = (0..count)
        .map(|index| {
            let record = json!({
                "id": format!("cand-{index}"),
                "name": format!("Person {index}"),
                "bio": format!("{} years of Rust", index % 12),
                "years": index % 12,
            });
            format!("{record}\n")
        })
        .collect();
    std::fs::write(&path, lines).expect("written");
    path
}

fn quick_mock(models: &[&str]) -> Mock {
    Mock::start(MockConfig {
        slots: 8,
        latency: Duration::ZERO,
        models: models.iter().map(|model| (*model).to_owned()).collect(),
        ..MockConfig::default()
    })
}

#[test]
fn records_from_the_command_line_become_typed_columns_and_the_pipeline_they_save_reruns() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = quick_mock(&["llama3.2:latest", "qwen2.5:7b"]);
    let input = candidates(dir.path(), 40);
    let schema = dir.path().join("verdict.json");
    let verdict = json!({
        "type": "object",
        "required": ["score", "fit"],
        "properties": {
            "score": {"type": "integer"},
            "fit": {"type": "string", "enum": ["yes", "no"]},
        },
    });
    std::fs::write(&schema, verdict.to_string()).expect("written");
    let output = batchflow()
        .current_dir(dir.path())
        .arg(&input)
        .args(["--prompt", "Screen {{name}}: {{bio}}"])
        .args(["--system", "Answer in JSON."])
        .arg("--schema")
        .arg(&schema)
        .args(["--id-column", "id", "--passthrough", "name,years"])
        .args(["--model", "qwen2.5:7b", "--backend", &mock.url()])
        .args(["--output", "screened.parquet"])
        .args(["--save-pipeline", "screen.toml", "--quiet"])
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "results go to the Parquet file only");

    let batches = read_batches(&dir.path().join("screened.parquet"));
    let names = strings_by_id(&batches, "name");
    let expected: BTreeMap<String, Option<String>> = (0..40)
        .map(|index| (format!("cand-{index}"), Some(format!("Person {index}"))))
        .collect();
    assert_eq!(names, expected, "one row per record, keyed by --id-column");
    let fits = strings_by_id(&batches, "fit");
    assert!(
        fits.values()
            .all(|fit| matches!(fit.as_deref(), Some("yes" | "no"))),
        "{fits:?}"
    );
    let models = strings_by_id(&batches, "model");
    assert!(
        models
            .values()
            .all(|model| model.as_deref() == Some("qwen2.5:7b"))
    );
    for batch in &batches {
        let scores = batch.column_by_name("score").expect("a score column");
        let scores = scores.as_primitive::<Int64Type>();
        assert_eq!(scores.null_count(), 0, "every score is filled");
        let years = batch.column_by_name("years").expect("passed through");
        assert_eq!(years.as_primitive::<Int64Type>().null_count(), 0);
    }

    // The saved file says the same run, and runs it.
    let saved: toml::Table = std::fs::read_to_string(dir.path().join("screen.toml"))
        .expect("saved")
        .parse()
        .expect("TOML");
    assert_eq!(saved["source"]["id_column"].as_str(), Some("id"));
    assert_eq!(saved["request"]["model"].as_str(), Some("qwen2.5:7b"));
    assert_eq!(saved["request"]["system"].as_str(), Some("Answer in JSON."));
    assert_eq!(
        saved["request"]["output"]["schema"]["required"],
        toml::Value::Array(vec!["score".into(), "fit".into()])
    );
    assert_eq!(saved["sink"]["parquet"].as_str(), Some("screened.parquet"));
    let again = batchflow()
        .current_dir(dir.path())
        .args(["run", "screen.toml", "--output", "again.parquet", "--quiet"])
        .output()
        .expect("runs");
    let again = parse_output(again);
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    assert_eq!(
        strings_by_id(&read_batches(&dir.path().join("again.parquet")), "name"),
        expected
    );
    // And resumes the first results: nothing is left to send.
    let resumed = batchflow()
        .current_dir(dir.path())
        .args(["run", "screen.toml", "--resume", "--stats", "stats.json"])
        .output()
        .expect("runs");
    let resumed = parse_output(resumed);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("40 input lines skipped as done"),
        "{}",
        resumed.stderr
    );
}

#[test]
fn records_without_a_model_or_with_a_flag_that_needs_output_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = candidates(dir.path(), 2);
    let output = batchflow()
        .arg(&input)
        .args(["--prompt", "Hi {{name}}", "--mock"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--prompt needs --model"), "{stderr}");

    let output = batchflow()
        .arg(&input)
        .args(["--resume"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--resume needs --output"), "{stderr}");

    // A template column the records lack is named, before anything is sent.
    let output = batchflow()
        .arg(&input)
        .args(["--prompt", "Hi {{nmae}}", "--model", "llama3.2", "--mock"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nmae"), "{stderr}");
}

#[test]
fn a_dry_run_of_records_shows_the_requests_it_would_send() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = candidates(dir.path(), 5);
    let output = batchflow()
        .arg(&input)
        .args([
            "--prompt",
            "Hi {{name}}",
            "--model",
            "llama3.2",
            "--dry-run",
        ])
        .args(["--backend", "127.0.0.1:9"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Hi Person 0"), "{stdout}");
    assert!(stdout.contains("\"model\": \"llama3.2\""), "{stdout}");
}

/// A pipeline over `records` with its own results file and workers.
fn pipeline(dir: &Path, mock: &Mock) -> std::path::PathBuf {
    candidates(dir, 12);
    let path = dir.join("job.toml");
    let text = format!(
        "[source]\npath = \"candidates.jsonl\"\nid_column = \"id\"\n\n\
         [request]\nmodel = \"llama3.2\"\nprompt = \"Hi {{{{name}}}}\"\n\n\
         [backend]\nurl = \"{}\"\nworkers = 2\n\n[sink]\nparquet = \"from-file.parquet\"\n",
        mock.url()
    );
    std::fs::write(&path, text).expect("written");
    path
}

#[test]
fn run_flags_win_over_the_pipeline_file_and_those_not_given_leave_it_alone() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = quick_mock(&["llama3.2:latest", "qwen2.5:7b"]);
    let file = pipeline(dir.path(), &mock);
    let output = batchflow()
        .arg("run")
        .arg(&file)
        .args(["--workers", "3", "--model", "qwen2.5:7b"])
        .arg("--output")
        .arg(dir.path().join("from-flags.parquet"))
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("workers:  3"), "{}", run.stderr);
    assert!(!dir.path().join("from-file.parquet").exists());
    let batches = read_batches(&dir.path().join("from-flags.parquet"));
    let models = strings_by_id(&batches, "model");
    assert_eq!(models.len(), 12);
    assert!(
        models
            .values()
            .all(|model| model.as_deref() == Some("qwen2.5:7b"))
    );

    // No flag: the file's own values.
    let output = batchflow().arg("run").arg(&file).output().expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("workers:  2"), "{}", run.stderr);
    let models = strings_by_id(
        &read_batches(&dir.path().join("from-file.parquet")),
        "model",
    );
    assert!(
        models
            .values()
            .all(|model| model.as_deref() == Some("llama3.2"))
    );
}

#[test]
fn what_tune_recommends_pastes_onto_run_and_validate_takes_the_mock() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = quick_mock(&["llama3.2:latest"]);
    let file = pipeline(dir.path(), &mock);
    let output = batchflow()
        .arg("tune")
        .arg(&file)
        .args(["--sample", "8", "--max-workers", "4"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let recommended = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Recommended: "))
        .unwrap_or_else(|| panic!("no recommendation in {stdout}"));
    let mut command = batchflow();
    command.arg("run").arg(&file);
    command.args(recommended.split_whitespace());
    let output = command.arg("--dry-run").output().expect("runs");
    assert!(
        output.status.success(),
        "`run FILE {recommended}`: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = batchflow()
        .arg("validate")
        .arg(&file)
        .args(["--mock", "--model", "anything"])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn each_help_lists_only_what_its_command_uses() {
    let help = |args: &[&str]| {
        let output = batchflow().args(args).output().expect("runs");
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // An option's own line: `  --flag <VALUE>` or `  -x, --flag`, not prose naming it.
    let flag = |help: &str, flag: &str| {
        help.lines().any(|line| {
            let line = line.trim_start();
            line.starts_with(&format!("{flag} "))
                || line == flag
                || line.contains(&format!(", {flag} "))
                || line.ends_with(&format!(", {flag}"))
        })
    };
    let main = help(&["--help"]);
    for shown in [
        "--prompt",
        "--schema",
        "--id-column",
        "--workers",
        "--output",
        "--mock",
    ] {
        assert!(flag(&main, shown), "main --help lacks {shown}");
    }
    let run = help(&["run", "--help"]);
    for shown in [
        "--workers",
        "--model",
        "--backend",
        "--output",
        "--mock",
        "--resume",
    ] {
        assert!(flag(&run, shown), "run --help lacks {shown}");
    }
    assert!(!flag(&run, "--prompt"), "the file has the prompt");
    let tune = help(&["tune", "--help"]);
    for shown in [
        "--model",
        "--backend",
        "--mock",
        "--prompt",
        "--max-workers",
    ] {
        assert!(flag(&tune, shown), "tune --help lacks {shown}");
    }
    for hidden in [
        "--resume",
        "--checkpoint-rows",
        "--output",
        "--metrics",
        "--ordered",
    ] {
        assert!(!flag(&tune, hidden), "tune --help lists {hidden}");
    }
    let validate = help(&["validate", "--help"]);
    assert!(flag(&validate, "--mock") && flag(&validate, "--model"));
    assert!(!flag(&validate, "--output") && !flag(&validate, "--workers"));
}

#[test]
fn records_given_as_request_lines_get_one_error_pointing_to_prompt() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = candidates(dir.path(), 50);
    let output = batchflow()
        .arg(&input)
        .arg("--mock")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("batchflow:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error for the whole input: {stderr}");
    for pointer in [
        "line 1 is a record",
        "--prompt",
        "batchflow run PIPELINE.toml",
    ] {
        assert!(errors[0].contains(pointer), "{stderr}");
    }
    assert!(output.stdout.is_empty(), "nothing was sent");

    // Read from a pipe, each line says it, as an error line of its own.
    let records = std::fs::read_to_string(&input).expect("written");
    let run = crate::support::run_stdin(&records, &["--mock", "--quiet"]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert_eq!(run.error_lines().len(), 50);
    assert!(run.error_lines().iter().all(|line| {
        line["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("--prompt"))
    }));
}

#[test]
fn validate_checks_the_backend_a_flag_names_over_the_files() {
    let dir = tempfile::tempdir().expect("a temp dir");
    candidates(dir.path(), 2);
    let file = dir.path().join("dead.toml");
    std::fs::write(
        &file,
        "[source]\npath = \"candidates.jsonl\"\n\n[request]\nmodel = \"llama3.2\"\n\
         prompt = \"Hi {{name}}\"\n\n[backend]\nurl = \"127.0.0.1:9\"\n",
    )
    .expect("written");
    let output = batchflow()
        .arg("validate")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "the file's backend is down");
    let mock = quick_mock(&["llama3.2:latest"]);
    let output = batchflow()
        .arg("validate")
        .arg(&file)
        .args(["--backend", &mock.url()])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
