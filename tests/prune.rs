//! `--resume --prune`: a resumed run over an edited input drops the rows of lines the input no
//! longer has, through the real binary against the mock: records edited in a pipeline, the
//! summary and stats that count them, the refusals, and SIGKILL at any moment of a pruning run.

use crate::support;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::sink::checkpoint;
use serde_json::Value;
use support::{Mock, Run, batchflow, chat_line, parse_output, result_rows};

fn fast_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 8,
        latency: Duration::ZERO,
        ..MockConfig::default()
    })
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `count` records `{"name": "candidate N"}`, the first `edited` of them changed.
fn records(count: usize, edited: usize) -> String {
    (0..count)
        .map(|index| {
            let name = if index < edited {
                format!("candidate {index}, edited")
            } else {
                format!("candidate {index}")
            };
            format!("{{\"name\": \"{name}\"}}\n")
        })
        .collect()
}

/// A records pipeline over `records.jsonl` in `dir`, into `results.parquet`.
fn records_pipeline(dir: &Path, mock: &Mock) -> PathBuf {
    let pipeline = dir.join("pipe.toml");
    let text = format!(
        "[source]\npath = \"records.jsonl\"\n\n[request]\nmodel = \"llama3.2\"\nprompt = \"Rate {{{{name}}}}\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\nparquet = \"results.parquet\"\nerrors = \"errors.jsonl\"\n",
        mock.url()
    );
    fs::write(&pipeline, text).expect("write the pipeline");
    pipeline
}

fn run_pipeline(pipeline: &Path, extra: &[&str]) -> Run {
    let output = batchflow()
        .args(["run", utf8(pipeline)])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    parse_output(output)
}

/// Each row's request line, sorted: one per current input line when nothing is stale.
fn lines_of(results: &Path) -> Vec<i64> {
    let mut lines: Vec<i64> = result_rows(results)
        .into_iter()
        .map(|(_, line, _)| line)
        .collect();
    lines.sort_unstable();
    lines
}

#[test]
fn edited_records_resumed_with_prune_leave_one_row_per_current_line() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let results = dir.path().join("results.parquet");
    let stats_path = dir.path().join("stats.json");
    let pipeline = records_pipeline(dir.path(), &mock);
    fs::write(dir.path().join("records.jsonl"), records(30, 0)).expect("write records");
    let first = run_pipeline(&pipeline, &["--quiet"]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let before: HashSet<String> = result_rows(&results)
        .into_iter()
        .filter_map(|(id, _, _)| id)
        .collect();

    fs::write(dir.path().join("records.jsonl"), records(30, 10)).expect("edit records");
    // Without --prune the stale rows stay, and the run says how to drop them.
    let plain = run_pipeline(&pipeline, &["--resume"]);
    assert_eq!(plain.code(), Some(0), "{}", plain.stderr);
    assert_eq!(lines_of(&results).len(), 40);
    assert!(
        plain.stderr.contains("--resume --prune"),
        "{}",
        plain.stderr
    );

    let pruned = run_pipeline(
        &pipeline,
        &["--resume", "--prune", "--stats", utf8(&stats_path)],
    );
    assert_eq!(pruned.code(), Some(0), "{}", pruned.stderr);
    assert_eq!(lines_of(&results), (1..=30).collect::<Vec<i64>>());
    let after: HashSet<String> = result_rows(&results)
        .into_iter()
        .filter_map(|(id, _, _)| id)
        .collect();
    assert_eq!(after.len(), 30);
    assert_eq!(
        before.intersection(&after).count(),
        20,
        "the unedited rows stay"
    );
    assert!(
        pruned
            .stderr
            .contains("pruned:   10 rows no longer in the input"),
        "{}",
        pruned.stderr
    );
    let stats: Value =
        serde_json::from_slice(&fs::read(&stats_path).expect("stats")).expect("stats JSON");
    assert_eq!(stats["pruned"], 10);
    assert_eq!(stats["done"], 0, "nothing was sent again");
    assert_eq!(
        checkpoint::inspect(&results).expect("readable").state(),
        Some(checkpoint::FileState::Complete)
    );

    // Pruning again finds nothing to drop.
    let again = run_pipeline(&pipeline, &["--resume", "--prune", "--quiet"]);
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    assert_eq!(lines_of(&results), (1..=30).collect::<Vec<i64>>());
}

#[test]
fn prune_drops_stale_error_rows_from_the_error_file_too() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    let results = dir.path().join("results.parquet");
    let errors = dir.path().join("errors.jsonl");
    let write = |ids: &[&str]| {
        let text: String = ids
            .iter()
            .map(|id| chat_line(id, &format!("{id} [mock:fail=9:404]")) + "\n")
            .collect();
        fs::write(&input, text).expect("write input");
    };
    let run = |extra: &[&str]| {
        parse_output(
            batchflow()
                .arg(&input)
                .args(["--backend", &mock.url(), "--quiet", "--output"])
                .arg(&results)
                .args(["--errors", utf8(&errors)])
                .args(extra)
                .stdin(Stdio::null())
                .output()
                .expect("runs"),
        )
    };
    write(&["a", "b", "c"]);
    assert_eq!(run(&[]).code(), Some(1));
    write(&["a", "c"]);
    let pruned = run(&["--resume", "--prune"]);
    // The rows kept are errors, and the exit status describes the results at the end.
    assert_eq!(pruned.code(), Some(1), "{}", pruned.stderr);
    let ids: BTreeSet<String> = fs::read_to_string(&errors)
        .expect("errors")
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("JSON");
            value["custom_id"].as_str().expect("an id").to_owned()
        })
        .collect();
    assert_eq!(ids, BTreeSet::from(["a".to_owned(), "c".to_owned()]));
    assert_eq!(result_rows(&results).len(), 2);
}

#[test]
fn prune_needs_resume_and_is_refused_for_a_dataset_on_object_storage() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = support::write_input(dir.path(), &support::chat_lines(3));
    let output = |args: &[&str]| {
        parse_output(
            batchflow()
                .arg(&input)
                .args(["--backend", &mock.url(), "--quiet"])
                .args(args)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                // Nothing listens there: the refusal comes before any request to the store.
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .stdin(Stdio::null())
                .output()
                .expect("runs"),
        )
    };
    let file = dir.path().join("r.parquet");
    let alone = output(&["--output", utf8(&file), "--prune"]);
    assert_eq!(alone.code(), Some(2), "{}", alone.stderr);
    assert!(alone.stderr.contains("--resume"), "{}", alone.stderr);
    assert!(!file.exists());

    let remote = output(&["--output", "s3://bucket/run/", "--resume", "--prune"]);
    assert_eq!(remote.code(), Some(2), "{}", remote.stderr);
    assert!(
        remote
            .stderr
            .contains("dataset on object storage (s3://bucket/run/)"),
        "{}",
        remote.stderr
    );
}

/// Every row of every part of a dataset directory.
fn dataset_rows(dir: &Path) -> Vec<support::ResultRow> {
    let mut rows = Vec::new();
    for entry in fs::read_dir(dir).expect("list").flatten() {
        if entry.file_name().to_string_lossy().ends_with(".parquet") {
            rows.extend(result_rows(&entry.path()));
        }
    }
    rows
}

#[test]
fn a_local_dataset_is_pruned_part_by_part() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    let set = dir.path().join("set");
    let write = |ids: &[String]| {
        let text: String = ids.iter().map(|id| chat_line(id, id) + "\n").collect();
        fs::write(&input, text).expect("write input");
    };
    let run = |extra: &[&str]| {
        parse_output(
            batchflow()
                .arg(&input)
                .args(["--backend", &mock.url(), "--quiet", "--ordered"])
                .args(["--output", &format!("{}/", set.display())])
                .args(["--checkpoint-rows", "10", "--part-row-groups", "2"])
                .args(extra)
                .stdin(Stdio::null())
                .output()
                .expect("runs"),
        )
    };
    let old: Vec<String> = (0..60).map(|index| format!("req-{index}")).collect();
    write(&old);
    assert_eq!(run(&[]).code(), Some(0));
    let parts = fs::read_dir(&set).expect("list").count();
    assert!(parts >= 3, "{parts} files: the rows span several parts");
    // Every third request edited: stale rows in every part.
    let current: Vec<String> = (0..60)
        .map(|index| match index % 3 {
            0 => format!("edited-{index}"),
            _ => format!("req-{index}"),
        })
        .collect();
    write(&current);
    let pruned = run(&["--resume", "--prune"]);
    assert_eq!(pruned.code(), Some(0), "{}", pruned.stderr);
    let rows = dataset_rows(&set);
    let ids: BTreeSet<String> = rows.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(rows.len(), 60, "one row per current line");
    assert_eq!(ids, current.into_iter().collect::<BTreeSet<_>>());
    let status = batchflow()
        .args(["status", utf8(&set)])
        .output()
        .expect("status runs");
    let report = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{report}");
    assert!(report.contains("60 rows in all"), "{report}");
    // The rewritten parts are still the shard's generation: a plain resume keeps them all.
    let again = run(&["--resume"]);
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    assert_eq!(dataset_rows(&set).len(), 60);
}

fn start(mock: &Mock, input: &Path, results: &Path, extra: &[&str]) -> Child {
    batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--quiet", "--output"])
        .arg(results)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts")
}

/// [`start`] with its log on stderr, to be read by [`wait_for_pruning`].
fn start_logging(mock: &Mock, input: &Path, results: &Path, extra: &[&str]) -> Child {
    batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--output"])
        .arg(results)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts")
}

/// Reads the run's log until it says it is pruning; false when the run ended without pruning
/// (an earlier kill may have left nothing to prune).
fn wait_for_pruning(child: &mut Child) -> bool {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("Pruning the rows of"));
    // The rest of the log is drained on a thread, so that a full pipe cannot stall the run.
    std::thread::spawn(move || lines.for_each(drop));
    found
}

#[test]
fn sigkill_at_any_moment_of_a_pruning_run_loses_no_kept_row() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    let results = dir.path().join("results.parquet");
    let write = |ids: &[String]| {
        let text: String = ids
            .iter()
            .map(|id| chat_line(id, &format!("about {id}")) + "\n")
            .collect();
        fs::write(&input, text).expect("write input");
    };
    let old: Vec<String> = (0..3000).map(|index| format!("req-{index}")).collect();
    write(&old);
    let first = start(&mock, &input, &results, &[])
        .wait_with_output()
        .expect("runs");
    assert_eq!(first.status.code(), Some(0));
    // A third of the lines gone, a few new: the resumed run sends little, so that the kills
    // land in its reading and pruning as much as in its sending.
    let unedited: Vec<String> = old.into_iter().skip(1000).collect();
    let current: Vec<String> = (0..200)
        .map(|index| format!("new-{index}"))
        .chain(unedited.iter().cloned())
        .collect();
    write(&current);
    let unedited: HashSet<String> = unedited.into_iter().collect();
    let flags = ["--resume", "--prune", "--checkpoint-rows", "50"];
    let mut rng = fastrand::Rng::with_seed(20261203);
    let mut pruning = 0;
    for kill in 0..16 {
        let mut child = start_logging(&mock, &input, &results, &flags);
        if kill % 2 == 0 {
            // Anywhere in the run: start, reading, sending, checkpoints, pruning.
            std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        } else if wait_for_pruning(&mut child) {
            // Within the rewrite, which takes a few milliseconds.
            pruning += 1;
            std::thread::sleep(Duration::from_micros(rng.u64(0..20_000)));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        checkpoint::inspect(&results).unwrap_or_else(|error| panic!("kill {kill} left {error}"));
        let present: HashSet<String> = result_rows(&results)
            .into_iter()
            .filter_map(|(id, _, _)| id)
            .collect();
        assert!(
            unedited.is_subset(&present),
            "kill {kill} lost {} kept rows",
            unedited.difference(&present).count()
        );
    }
    assert!(pruning > 0, "some kills were aimed at the pruning");
    let finished = start(&mock, &input, &results, &flags)
        .wait_with_output()
        .expect("runs");
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let rows = result_rows(&results);
    let present: BTreeSet<String> = rows.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(rows.len(), current.len(), "one row per current line");
    assert_eq!(present, current.into_iter().collect::<BTreeSet<_>>());
    let leftovers: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".parquet.") && !name.ends_with(".parquet.live.json"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
}
