//! What a person reads when something is off, through the real binary against the mock: one
//! meaning for "failed" and "invalid" in the progress line, the summary and the stats file; an
//! exit status that describes the results, kept rows included; and messages that name the
//! culprit and the next step (a CSV file, no server at the URL, a bad `--set`).

use crate::support;

use std::path::Path;
use std::process::Stdio;

use batchflow::mock::MockConfig;
use batchflow::stats::StatsSnapshot;
use support::{Mock, Run, batchflow, chat_line, parse_output, write_input};

fn run(input: &Path, args: &[&str]) -> Run {
    let output = batchflow()
        .arg(input)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    parse_output(output)
}

/// The URL of a port on 127.0.0.1 that nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_csv_header_as_first_line_says_what_it_is_and_how_to_convert() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), "name,bio,age\nann,likes tea,41\n");
    let run = run(&input, &["--backend", &mock.url()]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let errors = run.error_lines();
    assert_eq!(errors.len(), 2, "{}", run.stdout);
    let first = errors[0]["error"]["message"].as_str().expect("a message");
    assert!(
        first.starts_with(
            "line 1: looks like a CSV header (name,bio,age): batchflow reads JSONL or Parquet; convert it"
        ),
        "{first}"
    );
    assert!(first.contains("duckdb -c"), "{first}");
    assert!(
        run.stderr.contains(first),
        "warned on stderr: {}",
        run.stderr
    );
    // Further lines are not headers: they keep the plain verdict.
    let second = errors[1]["error"]["message"].as_str().expect("a message");
    assert!(second.starts_with("line 2: not valid JSON"), "{second}");
}

#[test]
fn no_server_at_the_url_is_one_line_with_the_ways_out() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &(chat_line("a", "hello") + "\n"));
    let url = closed_port();
    let run = run(&input, &["--backend", &url]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.lines.is_empty(), "{}", run.stdout);
    let stderr = run.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(&format!("batchflow: no server at {url} (")),
        "{stderr}"
    );
    for way_out in ["ollama serve", "--backend URL", "OLLAMA_HOST", "--mock"] {
        assert!(stderr.contains(way_out), "{way_out} in {stderr}");
    }
}

#[test]
fn a_bad_set_value_blames_the_set_not_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_input(dir.path(), &(chat_line("a", "hello") + "\n"));
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nmock = true\nworkers = 4\n",
    )
    .expect("write the pipeline");
    let pipeline = pipeline.to_str().expect("a UTF-8 path");
    for set in ["backend.workers=0", "backend.worker=2"] {
        let output = batchflow()
            .args(["run", pipeline, "--set", set])
            .output()
            .expect("the binary runs");
        let run = parse_output(output);
        assert_eq!(run.code(), Some(2), "{set}: {}", run.stderr);
        let stderr = run.stderr.trim();
        assert!(
            stderr.starts_with(&format!("batchflow: --set {set}: ")),
            "{stderr}"
        );
        assert!(
            !stderr.contains(pipeline),
            "the file is not blamed: {stderr}"
        );
    }
    // The same value written in the file blames the file.
    let text = std::fs::read_to_string(pipeline).expect("the pipeline");
    std::fs::write(pipeline, text.replace("workers = 4", "workers = 0")).expect("rewrite");
    let output = batchflow()
        .args(["run", pipeline])
        .output()
        .expect("the binary runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("batchflow: {pipeline}: backend.workers: ")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_resume_that_completes_a_file_holding_errors_exits_1() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("a temp dir");
    let results = dir.path().join("results.parquet");
    let results = results.to_str().expect("a UTF-8 path");
    let first_part = [
        chat_line("ok-1", "hello"),
        chat_line("bad", "[mock:status=400] refused"),
        "not json".to_owned(),
    ]
    .join("\n")
        + "\n";
    let input = write_input(dir.path(), &first_part);
    let args = ["--backend", &mock.url(), "--output", results];
    let first = run(&input, &args);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);

    // The rest of the input arrives; only the new, good line is sent.
    let whole = first_part + &chat_line("ok-2", "again") + "\n";
    let input = write_input(dir.path(), &whole);
    let mut resume_args = args.to_vec();
    resume_args.push("--resume");
    let resumed = run(&input, &resume_args);
    assert_eq!(
        resumed.code(),
        Some(1),
        "the results hold a failed and an invalid row: {}",
        resumed.stderr
    );
    assert!(
        resumed
            .stderr
            .contains("Resumed: 3 rows kept from earlier runs (1 failed, 1 invalid)"),
        "{}",
        resumed.stderr
    );
    assert!(
        resumed.stderr.contains("(1 ok, 0 failed, 0 invalid)"),
        "this run's own results: {}",
        resumed.stderr
    );

    // `status` counts the file's rows with the same words.
    let status = batchflow()
        .args(["status", results])
        .output()
        .expect("the binary runs");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("rows:       4 (ok 2, failed 1, invalid 1)"),
        "{status}"
    );

    // The same input in one go ends the same way.
    let again = dir.path().join("again.parquet");
    let args = [
        "--backend",
        &mock.url(),
        "--output",
        again.to_str().expect("UTF-8"),
    ];
    assert_eq!(run(&input, &args).code(), Some(1));
}

#[test]
fn progress_summary_and_stats_use_the_same_words_and_numbers() {
    let mock = Mock::start(MockConfig::default());
    let dir = tempfile::tempdir().expect("a temp dir");
    // The slow line keeps the run going for a second after the others have ended, so that
    // progress lines show the final failed and invalid counts.
    let input = [
        chat_line("ok-1", "hello"),
        chat_line("bad", "[mock:status=400] refused"),
        "{\"custom_id\": ".to_owned(),
        chat_line("ok-2", "again"),
        chat_line("slow", "[mock:delay=1000] take your time"),
    ]
    .join("\n")
        + "\n";
    let input = write_input(dir.path(), &input);
    let stats = dir.path().join("stats.json");
    let run = run(
        &input,
        &[
            "--backend",
            &mock.url(),
            "--stats",
            stats.to_str().expect("a UTF-8 path"),
            "--progress-interval",
            "20ms",
        ],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);

    let snapshot: StatsSnapshot =
        serde_json::from_slice(&std::fs::read(&stats).expect("the stats file"))
            .expect("stats JSON");
    assert_eq!(
        (snapshot.succeeded, snapshot.failed, snapshot.invalid),
        (3, 1, 1),
        "{snapshot:?}"
    );
    assert!(
        run.stderr
            .contains("results:  5 (3 ok, 1 failed, 1 invalid)"),
        "the summary: {}",
        run.stderr
    );
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("Progress: "))
        .collect();
    assert!(
        progress
            .iter()
            .any(|line| line.contains(" · 1 failed · 1 invalid · ")),
        "a progress line with the final counts: {progress:?}"
    );
    assert!(
        progress.iter().all(|line| !line.contains("2 failed")),
        "an invalid line is not counted as failed: {progress:?}"
    );
}
