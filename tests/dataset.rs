//! Results datasets (`--output DIR/`): part files sealed as they fill, shards sharing one
//! directory without touching each other's parts, resume and `--retry-errors` across parts, the
//! error file rebuilt from every part, and the paths a dataset refuses.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchflow::mock::MockConfig;
use support::{
    Mock, ResultRow, batchflow, chat_line, chat_lines, parse_output, result_rows, write_input,
};

/// `dir/name/`, spelled with its trailing slash.
fn dataset_path(dir: &Path, name: &str) -> PathBuf {
    PathBuf::from(format!("{}/{name}/", dir.display()))
}

/// The names a reader listing the dataset sees: all but hidden files (the shards' lock files).
fn part_names(dataset: &Path) -> Vec<String> {
    let mut names: Vec<String> = all_names(dataset)
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn all_names(dataset: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dataset)
        .expect("the dataset exists")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every row of every part, read with the parquet crate alone.
fn dataset_rows(dataset: &Path) -> Vec<ResultRow> {
    let mut rows: Vec<ResultRow> = part_names(dataset)
        .iter()
        .filter(|name| name.ends_with(".parquet"))
        .flat_map(|name| result_rows(&dataset.join(name)))
        .collect();
    rows.sort();
    rows
}

fn run(input: &Path, mock: &Mock, args: &[&str]) -> support::Run {
    let output = batchflow()
        .arg(input)
        .args(["--backend", &mock.url(), "--quiet"])
        .args(args)
        .output()
        .expect("runs");
    parse_output(output)
}

fn fast_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    })
}

#[test]
fn shards_write_their_own_parts_into_one_dataset_and_each_id_lands_once() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 300;
    let input = write_input(dir.path(), &chat_lines(count));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    for shard in ["0/3", "1/3", "2/3"] {
        let args = [
            "--output",
            output,
            "--shard",
            shard,
            "--checkpoint-rows",
            "10",
            "--part-row-groups",
            "3",
        ];
        let done = run(&input, &mock, &args);
        assert_eq!(done.code(), Some(0), "{}", done.stderr);
    }
    let names = part_names(&dataset);
    for shard in ["0-of-3", "1-of-3", "2-of-3"] {
        let parts = names
            .iter()
            .filter(|name| name.starts_with(&format!("part-{shard}-")))
            .count();
        assert!(
            parts >= 3,
            "shard {shard} sealed parts as they filled: {names:?}"
        );
    }
    assert!(
        names.iter().all(|name| name.ends_with(".parquet")),
        "nothing but parts: {names:?}"
    );
    let hidden: Vec<String> = all_names(&dataset)
        .into_iter()
        .filter(|name| name.starts_with('.'))
        .collect();
    assert_eq!(
        hidden,
        [
            ".part-0-of-3.generation",
            ".part-0-of-3.live.json",
            ".part-0-of-3.lock",
            ".part-1-of-3.generation",
            ".part-1-of-3.live.json",
            ".part-1-of-3.lock",
            ".part-2-of-3.generation",
            ".part-2-of-3.live.json",
            ".part-2-of-3.lock"
        ],
        "beside the parts, only each shard's hidden generation marker, live-status file and lock file"
    );
    let rows = dataset_rows(&dataset);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (id, _, error) in &rows {
        assert_eq!(error, &None);
        *seen.entry(id.clone().expect("an id")).or_default() += 1;
    }
    assert_eq!(rows.len(), count);
    assert_eq!(
        seen.len(),
        count,
        "each custom_id once across shards and parts"
    );

    let status = batchflow()
        .args(["status"])
        .arg(&dataset)
        .output()
        .expect("status runs");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(report.contains("3 shard(s), 300 rows in all"), "{report}");
    assert_eq!(
        report.matches("complete: the run reached").count(),
        3,
        "{report}"
    );
}

#[test]
fn a_new_run_refuses_its_shards_parts_and_overwrite_replaces_only_them() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(40));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    for shard in ["0/2", "1/2"] {
        let done = run(&input, &mock, &["--output", output, "--shard", shard]);
        assert_eq!(done.code(), Some(0), "{}", done.stderr);
    }
    let before = part_names(&dataset);
    let other_shard = std::fs::read(dataset.join("part-1-of-2-00000.parquet")).expect("a part");

    let again = run(&input, &mock, &["--output", output, "--shard", "0/2"]);
    assert_eq!(again.code(), Some(2));
    assert!(
        again
            .stderr
            .contains("part-0-of-2-00000.parquet already exists")
            && again.stderr.contains("--resume"),
        "{}",
        again.stderr
    );
    assert_eq!(part_names(&dataset), before, "a refusal changes nothing");

    let replaced = run(
        &input,
        &mock,
        &["--output", output, "--shard", "0/2", "--overwrite"],
    );
    assert_eq!(replaced.code(), Some(0), "{}", replaced.stderr);
    assert_eq!(
        std::fs::read(dataset.join("part-1-of-2-00000.parquet")).expect("a part"),
        other_shard,
        "the other shard's part is untouched"
    );
    assert_eq!(dataset_rows(&dataset).len(), 40);
}

#[test]
fn retry_errors_redoes_failed_rows_in_every_part_and_the_error_file_holds_the_rest() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let mut lines: Vec<String> = Vec::new();
    for index in 0..60 {
        // Every sixth request fails all attempts of the first run, then succeeds; every
        // fifteenth always fails.
        let prompt = if index % 15 == 0 {
            format!("[mock:status=500] broken {index}")
        } else if index % 6 == 0 {
            format!("[mock:fail=2:500] flaky {index}")
        } else {
            format!("fine {index}")
        };
        lines.push(chat_line(&format!("id-{index}"), &prompt));
    }
    let input = write_input(dir.path(), &(lines.join("\n") + "\n"));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let errors = dir.path().join("errors.jsonl");
    let errors_arg = errors.to_str().expect("a UTF-8 path");
    let common = [
        "--output",
        output,
        "--errors",
        errors_arg,
        "--checkpoint-rows",
        "5",
        "--part-row-groups",
        "2",
        "--retries",
        "1",
        "--retry-base",
        "1ms",
        "--workers",
        "1",
    ];
    let first = run(&input, &mock, &common);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let failed = |rows: &[ResultRow]| rows.iter().filter(|row| row.2.is_some()).count();
    let rows = dataset_rows(&dataset);
    assert_eq!(rows.len(), 60);
    // Ids 0, 15, 30, 45 always fail; 6, 12, 18, 24, 36, 42, 48, 54 fail twice.
    assert_eq!(failed(&rows), 12);
    let parts = part_names(&dataset).len();
    assert!(parts >= 5, "{parts} parts");

    let mut retry = common.to_vec();
    retry.extend(["--resume", "--retry-errors"]);
    let retried = run(&input, &mock, &retry);
    assert_eq!(retried.code(), Some(1), "{}", retried.stderr);
    let rows = dataset_rows(&dataset);
    assert_eq!(rows.len(), 60, "one row per custom_id");
    assert_eq!(failed(&rows), 4, "only the always-failing ones");

    let plain = run(&input, &mock, &[&common[..], &["--resume"]].concat());
    // Nothing is sent, but the results still hold the always-failing rows.
    assert_eq!(plain.code(), Some(1), "{}", plain.stderr);
    let error_lines: Vec<String> = std::fs::read_to_string(&errors)
        .expect("the error file")
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            value["custom_id"].as_str().expect("an id").to_owned()
        })
        .collect();
    let mut error_ids = error_lines.clone();
    error_ids.sort();
    assert_eq!(
        error_ids,
        ["id-0", "id-15", "id-30", "id-45"],
        "rebuilt from every part's error rows"
    );
}

#[test]
fn a_dataset_refuses_an_input_inside_it_and_a_file_in_its_place() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let dataset = dataset_path(dir.path(), "results");
    std::fs::create_dir(&dataset).expect("a folder");
    let input = write_input(&dataset, &chat_lines(5));
    let inside = run(
        &input,
        &mock,
        &["--output", dataset.to_str().expect("a UTF-8 path")],
    );
    assert_eq!(inside.code(), Some(2));
    assert!(
        inside.stderr.contains("lies inside the dataset directory"),
        "{}",
        inside.stderr
    );
    assert_eq!(
        part_names(&dataset).len(),
        1,
        "nothing written beside the input"
    );

    let file = dir.path().join("plain");
    std::fs::write(&file, b"keep me").expect("a file");
    let outside = write_input(dir.path(), &chat_lines(5));
    let clash = run(
        &outside,
        &mock,
        &["--output", &format!("{}/", file.display())],
    );
    assert_eq!(clash.code(), Some(2));
    assert!(clash.stderr.contains("not a directory"), "{}", clash.stderr);
    assert_eq!(std::fs::read(&file).expect("kept"), b"keep me");
}

#[test]
fn a_pipeline_files_sink_may_name_a_dataset_beside_it() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    write_input(dir.path(), &chat_lines(30));
    let pipeline = dir.path().join("job.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[request]\nmodel = \"llama3.2\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\nparquet = \"results/\"\ncheckpoint_rows = 10\n",
            mock.url()
        ),
    )
    .expect("written");
    let output = batchflow()
        .arg("run")
        .arg(&pipeline)
        .arg("--quiet")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs");
    let run = parse_output(output);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let dataset = dir.path().join("results");
    assert_eq!(part_names(&dataset), ["part-0-of-1-00000.parquet"]);
    assert_eq!(dataset_rows(&dataset).len(), 30);
}

#[test]
fn a_second_run_of_a_shard_that_is_being_written_is_refused_and_touches_nothing() {
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(400));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let mut first = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output", output])
        .args(["--checkpoint-rows", "5", "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    support::wait_until("the first run's first checkpoint", || {
        dataset.join("part-0-of-1-00000.parquet").exists()
    });
    let second = run(&input, &mock, &["--output", output, "--resume"]);
    let still_running = first.try_wait().expect("waitable").is_none();
    let first_pid = first.id();
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    assert!(still_running, "the second run met the first one running");
    assert_eq!(second.code(), Some(2), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "shard 0/1 is being written by another run (pid {first_pid} on "
        )),
        "{}",
        second.stderr
    );
    let resumed = run(&input, &mock, &["--output", output, "--resume"]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let rows = dataset_rows(&dataset);
    assert_eq!(rows.len(), 400, "a kill frees the lock; each id once");
}

#[test]
fn retry_errors_modifies_no_part_when_a_later_one_was_made_with_other_settings() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let lines = |count: usize| -> String {
        (0..count)
            .map(|index| {
                let prompt = if index % 4 == 0 {
                    format!("[mock:status=500] broken {index}")
                } else {
                    format!("fine {index}")
                };
                chat_line(&format!("id-{index}"), &prompt) + "\n"
            })
            .collect()
    };
    let input = write_input(dir.path(), &lines(40));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let common = [
        "--output",
        output,
        "--checkpoint-rows",
        "5",
        "--part-row-groups",
        "2",
        "--retries",
        "0",
        "--workers",
        "1",
    ];
    let first = run(&input, &mock, &common);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let before: Vec<(String, Vec<u8>)> = part_names(&dataset)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dataset.join(&name)).expect("a part");
            (name, bytes)
        })
        .collect();
    assert!(before.len() >= 4, "{before:?}");

    // More lines, under another model, allowed: the new rows go to a part of their own.
    let input = write_input(dir.path(), &lines(50));
    let other = [
        &common[..],
        &[
            "--resume",
            "--allow-config-change",
            "--model",
            "nomic-embed-text",
        ],
    ]
    .concat();
    let changed = run(&input, &mock, &other);
    assert_eq!(changed.code(), Some(1), "{}", changed.stderr);
    assert!(part_names(&dataset).len() > before.len());

    let retry = [&common[..], &["--resume", "--retry-errors"]].concat();
    let refused = run(&input, &mock, &retry);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("made with other settings"),
        "{}",
        refused.stderr
    );
    for (name, bytes) in before {
        assert_eq!(
            std::fs::read(dataset.join(&name)).expect("a part"),
            bytes,
            "{name} kept its error rows: no part is modified before all are checked"
        );
    }
}

/// custom_id → the `content` of each of its rows, over every part of a dataset.
fn contents_by_id(dataset: &Path) -> HashMap<String, Vec<String>> {
    use arrow_array::cast::AsArray;
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for name in part_names(dataset) {
        let file = std::fs::File::open(dataset.join(&name)).expect("a part");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|error| panic!("{name} is Parquet: {error}"))
            .build()
            .expect("a reader");
        for batch in reader {
            let batch = batch.expect("readable rows");
            let ids = batch
                .column_by_name("custom_id")
                .expect("ids")
                .as_string::<i32>()
                .clone();
            let contents = batch
                .column_by_name("content")
                .expect("content")
                .as_string::<i32>()
                .clone();
            for (id, content) in ids.iter().zip(contents.iter()) {
                found
                    .entry(id.expect("an id").to_owned())
                    .or_default()
                    .push(content.unwrap_or_default().to_owned());
            }
        }
    }
    found
}

/// `count` chat lines with ids `req-0…` and prompts `{word} N`.
fn worded_lines(count: usize, word: &str) -> String {
    (0..count)
        .map(|index| chat_line(&format!("req-{index}"), &format!("{word} {index}")) + "\n")
        .collect()
}

#[test]
fn an_overwrite_killed_after_it_began_leaves_nothing_that_resume_takes_for_done() {
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(5),
        ..MockConfig::default()
    });
    let count = 600;
    let mut rng = fastrand::Rng::with_seed(20261203);
    for kill in 0..4 {
        let dir = tempfile::tempdir().expect("dir");
        let dataset = dataset_path(dir.path(), "results");
        let output = dataset.to_str().expect("a UTF-8 path");
        let old_input = dir.path().join("old.jsonl");
        std::fs::write(&old_input, worded_lines(count, "old")).expect("written");
        let old = run(
            &old_input,
            &mock,
            &[
                "--output",
                output,
                "--checkpoint-rows",
                "20",
                "--part-row-groups",
                "2",
            ],
        );
        assert_eq!(old.code(), Some(0), "{}", old.stderr);
        let marker = dataset.join(".part-0-of-1.generation");
        let old_marker = std::fs::read(&marker).expect("the first run's generation");
        let new_input = dir.path().join("new.jsonl");
        std::fs::write(&new_input, worded_lines(count, "new")).expect("written");
        let command = |mode: &str| {
            let mut command = batchflow();
            command
                .arg(&new_input)
                .args([
                    "--backend",
                    &mock.url(),
                    "--quiet",
                    "--output",
                    output,
                    mode,
                ])
                .args(["--checkpoint-rows", "20", "--part-row-groups", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            command
        };
        let mut replacing = command("--overwrite").spawn().expect("starts");
        support::wait_until("the new generation is recorded", || {
            std::fs::read(&marker).is_ok_and(|now| now != old_marker)
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
        replacing.kill().expect("SIGKILL");
        replacing.wait().expect("reaped");
        let resumed = command("--resume").output().expect("runs");
        assert_eq!(
            resumed.status.code(),
            Some(0),
            "kill {kill}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let found = contents_by_id(&dataset);
        assert_eq!(found.len(), count, "kill {kill}: every id");
        for (id, contents) in &found {
            assert_eq!(contents.len(), 1, "kill {kill}: {id} once: {contents:?}");
            assert!(
                contents[0].contains("new"),
                "kill {kill}: {id} is a row of the new generation: {contents:?}"
            );
        }
    }
}

#[test]
fn a_shard_layout_other_than_the_datasets_is_refused_unless_overwriting() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 200;
    let input = write_input(dir.path(), &chat_lines(count));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let whole = run(&input, &mock, &["--output", output]);
    assert_eq!(whole.code(), Some(0), "{}", whole.stderr);
    for shard in ["0/2", "1/2"] {
        for mode in [&[][..], &["--resume"]] {
            let refused = run(
                &input,
                &mock,
                &[&["--output", output, "--shard", shard], mode].concat(),
            );
            assert_eq!(
                refused.code(),
                Some(2),
                "{shard} {mode:?}: {}",
                refused.stderr
            );
            assert!(
                refused
                    .stderr
                    .contains("holds parts of another shard layout")
                    && refused.stderr.contains("part-0-of-1-00000.parquet"),
                "{}",
                refused.stderr
            );
        }
    }
    assert_eq!(
        dataset_rows(&dataset).len(),
        count,
        "the refusals touched nothing"
    );
    let first = run(
        &input,
        &mock,
        &["--output", output, "--shard", "0/2", "--overwrite"],
    );
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let second = run(&input, &mock, &["--output", output, "--shard", "1/2"]);
    assert_eq!(second.code(), Some(0), "{}", second.stderr);
    let rows = dataset_rows(&dataset);
    assert_eq!(
        rows.len(),
        count,
        "each id once: {:?}",
        part_names(&dataset)
    );
    assert!(
        part_names(&dataset)
            .iter()
            .all(|name| name.contains("-of-2-"))
    );
}

#[test]
fn resume_sends_the_rows_of_a_damaged_or_empty_part_again_and_readers_work_again() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 300;
    let input = write_input(dir.path(), &chat_lines(count));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let args = [
        "--output",
        output,
        "--checkpoint-rows",
        "20",
        "--part-row-groups",
        "2",
    ];
    let first = run(&input, &mock, &args);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let names = part_names(&dataset);
    assert!(names.len() >= 4, "{names:?}");
    let (emptied, garbled) = (dataset.join(&names[0]), dataset.join(&names[1]));
    std::fs::write(&emptied, b"").expect("truncated");
    std::fs::write(&garbled, b"PAR1 this is no Parquet file at all PAR1").expect("garbled");
    let resumed = run(&input, &mock, &[&args[..], &["--resume"]].concat());
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert!(
        resumed
            .stderr
            .contains(&format!("{} is damaged", garbled.display())),
        "{}",
        resumed.stderr
    );
    // Every part a glob reader sees is whole Parquet again, and holds each id once.
    let rows = dataset_rows(&dataset);
    assert_eq!(rows.len(), count, "{:?}", part_names(&dataset));
    let mut ids: Vec<_> = rows.iter().map(|row| row.0.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), count);
    assert!(!emptied.exists(), "the empty part is gone");
    assert!(
        dataset.join(format!("{}.damaged", names[1])).exists(),
        "the damaged part is kept aside"
    );
}

#[test]
fn status_verify_and_resume_name_a_part_of_a_replaced_generation_and_another_layout() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 120;
    let input = write_input(dir.path(), &chat_lines(count));
    let dataset = dataset_path(dir.path(), "results");
    let output = dataset.to_str().expect("a UTF-8 path");
    let input_arg = input.to_str().expect("a UTF-8 path");
    let first = run(&input, &mock, &["--output", output]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let old_part = std::fs::read(dataset.join("part-0-of-1-00000.parquet")).expect("a part");
    let replaced = run(&input, &mock, &["--output", output, "--overwrite"]);
    assert_eq!(replaced.code(), Some(0), "{}", replaced.stderr);
    // A part of the replaced generation, as an overwrite killed before removing it leaves.
    let stale = dataset.join("part-0-of-1-00099.parquet");
    std::fs::write(&stale, &old_part).expect("written");
    let verify = |results: &str| {
        parse_output(
            batchflow()
                .args(["verify", results, "--input", input_arg])
                .output()
                .expect("runs"),
        )
    };
    let checked = verify(output);
    assert_ne!(checked.code(), Some(0), "{}", checked.stderr);
    let named = checked
        .lines
        .iter()
        .find(|line| line["file"] == "part-0-of-1-00099.parquet")
        .unwrap_or_else(|| panic!("the stale part is named: {:?}", checked.lines));
    assert!(
        named["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("which --overwrite replaced")),
        "{named}"
    );
    let status = batchflow().args(["status", output]).output().expect("runs");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        report.contains("part-0-of-1-00099.parquet: a part of generation"),
        "{report}"
    );
    let resumed = run(&input, &mock, &["--output", output, "--resume"]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert!(!stale.exists(), "resume removed the stale part");
    assert_eq!(verify(output).code(), Some(0), "clean again");

    // Parts of another layout, copied in beside the dataset's.
    let other = dataset_path(dir.path(), "other");
    let other_run = run(
        &input,
        &mock,
        &["--output", other.to_str().expect("UTF-8"), "--shard", "1/2"],
    );
    assert_eq!(other_run.code(), Some(0), "{}", other_run.stderr);
    for name in part_names(&other) {
        std::fs::copy(other.join(&name), dataset.join(&name)).expect("copied");
    }
    let mixed = verify(output);
    assert_eq!(mixed.code(), Some(1), "{}", mixed.stderr);
    let layouts: Vec<_> = mixed
        .lines
        .iter()
        .filter(|line| line["problem"] == "other_layout")
        .map(|line| line["file"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(layouts, part_names(&other), "each part of the other layout");
}
