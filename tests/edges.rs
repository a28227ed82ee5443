//! Nothing lost at the edges, through the real binary: outputs that clash with inputs or with
//! each other, outputs that are not files, signals during start-up, kills in a run's first
//! instants and during `--retry-errors`, links kept, derived ids, the run fingerprint, and the
//! error file.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use batchflow::mock::MockConfig;
use batchflow::sink::checkpoint;
use serde_json::Value;
use support::{
    Mock, Run, batchflow, chat_line, chat_lines, parse_output, result_rows, text_body_batch,
    wait_until, write_input, write_parquet,
};

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

/// Runs the binary quietly against `mock` with `args`.
fn run(mock: &Mock, args: &[&str]) -> Run {
    let output = batchflow()
        .args(args)
        .args(["--backend", &mock.url(), "--quiet"])
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    parse_output(output)
}

/// Every entry of `dir`: a file's bytes, a link's target, a FIFO or folder by kind.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut entries = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("list the dir") {
        let path = entry.expect("an entry").path();
        let metadata = fs::symlink_metadata(&path).expect("metadata");
        let content = if metadata.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("a link");
            format!("link to {}", target.display()).into_bytes()
        } else if metadata.is_file() {
            fs::read(&path).expect("read")
        } else {
            format!("{:?}", metadata.file_type()).into_bytes()
        };
        entries.insert(path, content);
    }
    entries
}

/// Waits for `child` to exit, at most `limit` (a hang is the failure these tests look for).
fn wait_at_most(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return parse_output(child.wait_with_output().expect("output"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let run = parse_output(child.wait_with_output().expect("output"));
    panic!("still running after {limit:?}: {}", run.stderr);
}

/// Waits (bounded) until process `pid` catches SIGTERM (`SigCgt` in its /proc status): before
/// that, in the instants between exec and batchflow's first steps, the kernel's default action
/// would kill it.
fn wait_until_it_catches_sigterm(pid: u32) {
    let catches = || {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
    };
    wait_until("the child catches SIGTERM", catches);
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: kill only sends a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn mkfifo(path: &Path) {
    let text = std::ffi::CString::new(utf8(path)).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(text.as_ptr(), 0o600) }, 0);
}

/// The custom_ids of the error rows of a results file, sorted.
fn error_row_ids(results: &Path) -> Vec<Option<String>> {
    let mut ids: Vec<Option<String>> = result_rows(results)
        .into_iter()
        .filter(|(_, _, code)| code.is_some())
        .map(|(id, _, _)| id)
        .collect();
    ids.sort();
    ids
}

/// The custom_ids of the lines of a JSONL file (every line must have an error), sorted.
fn error_file_ids(path: &Path) -> Vec<Option<String>> {
    let mut ids: Vec<Option<String>> = fs::read_to_string(path)
        .expect("the error file")
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            assert!(line["error"]["code"].is_string(), "an error line: {line}");
            line["custom_id"].as_str().map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

fn assert_each_id_once(results: &Path, count: usize) {
    let rows = result_rows(results);
    let ids: Vec<String> = rows.iter().filter_map(|(id, _, _)| id.clone()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no custom_id twice");
    assert_eq!(ids.len(), count, "every custom_id once");
}

/// Outputs given beside the input (flag, path), and what their refusal says.
type Clash = (Vec<(&'static str, PathBuf)>, &'static str);

#[test]
fn outputs_that_name_an_input_or_each_other_are_refused_and_every_file_is_unchanged() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = |name: &str| dir.path().join(name);
    let ids: Vec<Option<String>> = (0..20).map(|index| Some(format!("row-{index}"))).collect();
    write_parquet(&path("input.parquet"), [text_body_batch(&ids)]);
    let first = run(
        &mock,
        &[
            utf8(&path("input.parquet")),
            "--output",
            utf8(&path("results.parquet")),
            "--stats",
            utf8(&path("stats.json")),
        ],
    );
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    std::os::unix::fs::symlink("input.parquet", path("in-soft.parquet")).expect("symlink");
    fs::hard_link(path("input.parquet"), path("in-hard.parquet")).expect("hard link");
    std::os::unix::fs::symlink("results.parquet", path("res-soft.parquet")).expect("symlink");
    fs::hard_link(path("results.parquet"), path("res-hard.parquet")).expect("hard link");
    let requests = mock.server.stats().requests;
    let before = snapshot(dir.path());

    let (input, results, stats) = (
        path("input.parquet"),
        path("results.parquet"),
        path("stats.json"),
    );
    let clashes: Vec<Clash> = vec![
        (vec![("--output", input.clone())], "--output and INPUT"),
        (
            vec![("--output", path("in-soft.parquet"))],
            "--output and INPUT",
        ),
        (
            vec![("--output", path("in-hard.parquet"))],
            "--output and INPUT",
        ),
        (
            vec![("--output", results.clone()), ("--stats", results.clone())],
            "--stats and --output",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--stats", path("res-soft.parquet")),
            ],
            "--stats and --output",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--stats", path("res-hard.parquet")),
            ],
            "--stats and --output",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--stats", path("in-hard.parquet")),
            ],
            "--stats and INPUT",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--errors", path("in-soft.parquet")),
            ],
            "--errors and INPUT",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--errors", path("res-hard.parquet")),
            ],
            "--errors and --output",
        ),
        (
            vec![
                ("--output", results.clone()),
                ("--stats", stats.clone()),
                ("--errors", stats.clone()),
            ],
            "--errors and --stats",
        ),
        (vec![("--errors", input.clone())], "--errors and INPUT"),
    ];
    let modes: [&[&str]; 4] = [
        &[],
        &["--overwrite"],
        &["--resume"],
        &["--resume", "--retry-errors"],
    ];
    for (outputs, says) in &clashes {
        for mode in modes {
            let has_output = outputs.iter().any(|(flag, _)| *flag == "--output");
            if mode.first() == Some(&"--resume") && !has_output {
                continue;
            }
            let mut args = vec![utf8(&input)];
            for (flag, value) in outputs {
                args.extend([*flag, utf8(value)]);
            }
            args.extend(mode);
            let refused = run(&mock, &args);
            assert_eq!(refused.code(), Some(2), "{args:?}: {}", refused.stderr);
            assert!(
                refused.stderr.contains(says),
                "{args:?}: {}",
                refused.stderr
            );
            assert_eq!(
                refused.stderr.trim().lines().count(),
                1,
                "{}",
                refused.stderr
            );
            assert_eq!(snapshot(dir.path()), before, "{args:?} changed a file");
        }
    }
    assert_eq!(mock.server.stats().requests, requests, "nothing was sent");
}

#[test]
fn standard_output_appended_to_the_input_and_a_pipeline_writing_itself_are_refused() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(5));
    let before = fs::read(&input).expect("read");
    let appending = fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("open for appending");
    let output = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet"])
        .stdin(Stdio::null())
        .stdout(appending)
        .output()
        .expect("runs");
    let refused = parse_output(output);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("standard output and INPUT"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read(&input).expect("read"), before);

    let results = dir.path().join("results.parquet");
    let into_results = fs::File::create(&results).expect("create");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--jsonl",
            "--overwrite",
            "--output",
        ])
        .arg(&results)
        .stdin(Stdio::null())
        .stdout(into_results)
        .output()
        .expect("runs");
    let refused = parse_output(output);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--output and standard output"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read(&results).expect("read"), b"");

    let pipeline = dir.path().join("pipe.toml");
    let text = format!(
        "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\nstats = \"pipe.toml\"\n",
        mock.url()
    );
    fs::write(&pipeline, &text).expect("write the pipeline");
    let output = batchflow()
        .args(["run", utf8(&pipeline), "--quiet"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let refused = parse_output(output);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("sink.stats and the pipeline file"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read_to_string(&pipeline).expect("read"), text);
    assert_eq!(mock.server.stats().requests, 0);
}

#[test]
fn fifos_directories_and_missing_folders_as_outputs_fail_at_once() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(5));
    let fifo = dir.path().join("fifo.parquet");
    mkfifo(&fifo);
    let folder = dir.path().join("folder.parquet");
    fs::create_dir(&folder).expect("mkdir");
    let missing = dir.path().join("missing/file.parquet");
    let results = dir.path().join("results.parquet");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--output", utf8(&fifo), "--resume"], "FIFO"),
        (vec!["--output", utf8(&fifo), "--overwrite"], "FIFO"),
        (vec!["--output", utf8(&folder)], "a directory"),
        (vec!["--stats", utf8(&fifo)], "FIFO"),
        (vec!["--stats", utf8(&folder)], "a directory"),
        (vec!["--stats", utf8(&missing)], "does not exist"),
        (vec!["--errors", utf8(&fifo)], "FIFO"),
        (vec!["--errors", utf8(&folder)], "a directory"),
        (vec!["--errors", utf8(&missing)], "does not exist"),
        (
            vec!["--output", utf8(&results), "--stats", utf8(&missing)],
            "does not exist",
        ),
    ];
    for (flags, says) in cases {
        let child = batchflow()
            .arg(&input)
            .args(["--backend", &mock.url(), "--quiet"])
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let refused = wait_at_most(child, Duration::from_secs(20));
        assert_eq!(refused.code(), Some(2), "{flags:?}: {}", refused.stderr);
        let knob = if says == "does not exist" {
            flags[flags.len() - 2]
        } else {
            flags[0]
        };
        assert!(refused.stderr.contains(knob), "{}", refused.stderr);
        assert!(
            refused.stderr.contains(says),
            "{flags:?}: {}",
            refused.stderr
        );
        assert!(!results.exists(), "{flags:?} created the results file");
    }
    assert!(!dir.path().join("missing").exists());
    assert_eq!(mock.server.stats().requests, 0, "nothing was sent");
}

#[test]
fn sigterm_while_preflight_hangs_on_a_silent_server_exits_130() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (accepted, connected) = mpsc::channel();
    // Accepts and never answers; the connections stay open until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            let _ = accepted.send(());
        }
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(3));
    let results = dir.path().join("results.parquet");
    let child = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &url,
            "--grace",
            "5s",
            "--output",
            utf8(&results),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    connected
        .recv_timeout(Duration::from_secs(30))
        .expect("preflight connects");
    sigterm(&child);
    let stopped = wait_at_most(child, Duration::from_secs(20));
    assert_eq!(stopped.code(), Some(130), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("before the first request"),
        "{}",
        stopped.stderr
    );
    assert!(!results.exists(), "preflight comes before the results file");
}

/// Whether a thread of process `pid` waits in the kernel for a FIFO's other end.
fn blocked_on_a_fifo(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let mut wchan = String::new();
        fs::File::open(task.path().join("wchan"))
            .and_then(|mut file| file.read_to_string(&mut wchan))
            .is_ok_and(|_| wchan.contains("partner") || wchan.contains("fifo"))
    })
}

#[test]
fn sigterm_while_opening_a_fifo_input_that_has_no_writer_exits_130() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let fifo = dir.path().join("input.jsonl");
    mkfifo(&fifo);
    let child = batchflow()
        .arg(&fifo)
        .args(["--backend", &mock.url(), "--grace", "5s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_until("blocked opening the FIFO", || blocked_on_a_fifo(child.id()));
    sigterm(&child);
    let stopped = wait_at_most(child, Duration::from_secs(20));
    assert_eq!(stopped.code(), Some(130), "{}", stopped.stderr);
    assert_eq!(mock.server.stats().requests, 0);
}

/// Starts the binary on `input` with `--output results` and `extra`, stdout discarded.
fn start(mock: &Mock, input: &Path, results: &Path, extra: &[&str]) -> Child {
    batchflow()
        .arg(input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--output",
            utf8(results),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts")
}

fn run_to_end(mock: &Mock, input: &Path, results: &Path, extra: &[&str]) -> Run {
    parse_output(
        start(mock, input, results, extra)
            .wait_with_output()
            .expect("runs"),
    )
}

/// Files beside the results that a clean end must not leave (the live-status file, which says
/// how the run ended, stays).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".parquet.") || name.ends_with(".tmp"))
        .filter(|name| !name.ends_with(".parquet.live.json"))
        .collect()
}

#[test]
fn a_run_killed_in_its_first_100_ms_is_continued_by_the_same_command_with_resume() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let count = 300;
    let mut rng = fastrand::Rng::with_seed(20261202);
    for kill in 0..16 {
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = write_input(dir.path(), &chat_lines(count));
        let results = dir.path().join("results.parquet");
        let flags = ["--checkpoint-rows", "25"];
        let mut child = start(&mock, &input, &results, &flags);
        std::thread::sleep(Duration::from_millis(rng.u64(0..100)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let resumed = run_to_end(
            &mock,
            &input,
            &results,
            &["--checkpoint-rows", "25", "--resume"],
        );
        assert_eq!(resumed.code(), Some(0), "kill {kill}: {}", resumed.stderr);
        assert_each_id_once(&results, count);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "kill {kill}");
    }
}

#[test]
fn empty_and_magic_only_results_files_are_started_again_in_place_on_resume() {
    let mock = fast_mock();
    for content in [&b""[..], b"PAR1"] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = write_input(dir.path(), &chat_lines(40));
        let results = dir.path().join("results.parquet");
        fs::write(&results, content).expect("write");
        let refused = run_to_end(&mock, &input, &results, &[]);
        assert_eq!(refused.code(), Some(2), "without --resume it is refused");
        let status = batchflow()
            .args(["status", utf8(&results)])
            .output()
            .expect("runs");
        assert_eq!(status.status.code(), Some(0));
        let status = String::from_utf8(status.stdout).expect("UTF-8");
        assert!(status.contains("holds no rows"), "{status}");
        let resumed = run_to_end(&mock, &input, &results, &["--resume"]);
        assert_eq!(resumed.code(), Some(0), "{content:?}: {}", resumed.stderr);
        assert_each_id_once(&results, 40);
    }
}

/// `count` chat lines; every `every`-th one fails with 404 on its first attempt only.
fn lines_failing_once(count: usize, every: usize) -> String {
    (0..count)
        .map(|index| {
            let prompt = if index % every == 0 {
                format!("question {index} [mock:fail=1:404]")
            } else {
                format!("question {index}")
            };
            chat_line(&format!("req-{index}"), &prompt) + "\n"
        })
        .collect()
}

#[test]
fn a_run_killed_during_retry_errors_is_continued_the_same_way_and_leaves_no_rewrite() {
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let count = 2000;
    let input = write_input(dir.path(), &lines_failing_once(count, 2));
    let results = dir.path().join("results.parquet");
    let first = run_to_end(&mock, &input, &results, &["--checkpoint-rows", "100"]);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    assert_eq!(error_row_ids(&results).len(), count / 2);
    let retry = ["--resume", "--retry-errors", "--checkpoint-rows", "100"];
    let mut rng = fastrand::Rng::with_seed(7);
    for kill in 0..10 {
        let mut child = start(&mock, &input, &results, &retry);
        std::thread::sleep(Duration::from_millis(rng.u64(0..80)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        assert!(
            checkpoint::inspect(&results).is_ok()
                || checkpoint::holds_nothing(&results).is_ok_and(|nothing| nothing),
            "kill {kill} left a file that cannot be resumed"
        );
    }
    let finished = run_to_end(&mock, &input, &results, &retry);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr);
    assert_each_id_once(&results, count);
    assert!(error_row_ids(&results).is_empty());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn rewrites_and_stats_through_links_keep_the_links() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &lines_failing_once(60, 3));
    let real = dir.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    fs::write(real.join("results.parquet"), b"").expect("an empty target");
    let link = dir.path().join("results.parquet");
    std::os::unix::fs::symlink("real/results.parquet", &link).expect("symlink");
    fs::write(real.join("stats.json"), b"{}").expect("write");
    let stats_link = dir.path().join("stats.json");
    std::os::unix::fs::symlink("real/stats.json", &stats_link).expect("symlink");

    let stats = ["--stats", utf8(&stats_link)];
    let first = run_to_end(&mock, &input, &link, &[&["--resume"][..], &stats].concat());
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let retried = run_to_end(
        &mock,
        &input,
        &link,
        &[&["--resume", "--retry-errors"][..], &stats].concat(),
    );
    assert_eq!(retried.code(), Some(0), "{}", retried.stderr);
    for path in [&link, &stats_link] {
        assert!(
            fs::symlink_metadata(path)
                .expect("there")
                .file_type()
                .is_symlink(),
            "{} is still a link",
            path.display()
        );
    }
    assert_each_id_once(&real.join("results.parquet"), 60);
    let stats: Value =
        serde_json::from_slice(&fs::read(real.join("stats.json")).expect("read")).expect("JSON");
    assert_eq!(stats["finished"], true);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    assert_eq!(leftovers(&real), Vec::<String>::new());
}

/// A records pipeline over `records.jsonl` in `dir`, against `mock`, into `results.parquet`.
fn records_pipeline(dir: &Path, mock: &Mock, extra: &str) -> PathBuf {
    let pipeline = dir.join("pipe.toml");
    let text = format!(
        "[source]\npath = \"records.jsonl\"\n\n[request]\nmodel = \"llama3.2\"\nprompt = \"Rate {{{{name}}}}\"\n\n[backend]\nurl = \"{}\"\n{extra}\n[sink]\nparquet = \"results.parquet\"\n",
        mock.url()
    );
    fs::write(&pipeline, text).expect("write the pipeline");
    pipeline
}

fn run_pipeline(pipeline: &Path, extra: &[&str]) -> Run {
    let output = batchflow()
        .args(["run", utf8(pipeline), "--quiet"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    parse_output(output)
}

#[test]
fn derived_custom_ids_are_the_pinned_golden_values() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    fs::write(
        dir.path().join("records.jsonl"),
        "{\"name\":\"Ada\",\"city\":\"Zürich\",\"crab\":\"🦀\",\"empty\":\"\"}\n{\"x\":1.5,\"y\":1.0,\"z\":-2.5e-3, \"name\": null}\n",
    )
    .expect("write records");
    let pipeline = records_pipeline(dir.path(), &mock, "");
    let finished = run_pipeline(&pipeline, &[]);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr);
    let ids: Vec<Option<String>> = result_rows(&dir.path().join("results.parquet"))
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    // Pinned in src/source/template.rs; `"name": null` counts as absent.
    assert_eq!(
        ids,
        vec![
            Some("rec-13bc72316a17b10a".to_owned()),
            Some("rec-dea844f45b21615b".to_owned())
        ]
    );
}

#[test]
fn resuming_with_another_model_template_or_options_is_refused_unless_allowed_and_recorded() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let records: String = (0..30)
        .map(|index| format!("{{\"name\": \"candidate {index}\"}}\n"))
        .collect();
    fs::write(dir.path().join("records.jsonl"), records).expect("write records");
    let pipeline = records_pipeline(dir.path(), &mock, "preflight = false\n");
    let results = dir.path().join("results.parquet");
    let first = run_pipeline(&pipeline, &[]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let same = run_pipeline(&pipeline, &["--resume"]);
    assert_eq!(
        same.code(),
        Some(0),
        "the same settings resume: {}",
        same.stderr
    );
    let before = fs::read(&results).expect("read");
    for (set, says) in [
        (
            "request.model=qwen3:8b",
            "model was llama3.2 and is now qwen3:8b",
        ),
        ("request.prompt=Score {{name}}", "template changed"),
        ("request.options.temperature=0.5", "options was"),
        ("request.system=Be brief", "system changed"),
    ] {
        let refused = run_pipeline(&pipeline, &["--resume", "--set", set]);
        assert_eq!(refused.code(), Some(2), "{set}: {}", refused.stderr);
        assert!(refused.stderr.contains(says), "{set}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("--allow-config-change"),
            "{}",
            refused.stderr
        );
        assert_eq!(
            fs::read(&results).expect("read"),
            before,
            "{set} changed the file"
        );
    }
    let allowed = run_pipeline(
        &pipeline,
        &[
            "--resume",
            "--allow-config-change",
            "--set",
            "request.prompt=Score {{name}}",
        ],
    );
    assert_eq!(allowed.code(), Some(0), "{}", allowed.stderr);
    let status = batchflow()
        .args(["status", utf8(&results)])
        .output()
        .expect("runs");
    let status = String::from_utf8(status.stdout).expect("UTF-8");
    for says in [
        "model: llama3.2",
        "endpoint: /api/chat",
        "version: ",
        "template_hash: ",
        "config_changes: ",
        "template changed",
        "input: ",
    ] {
        assert!(status.contains(says), "no {says:?} in {status}");
    }

    // The flag mode records `--model` the same way.
    let input = write_input(dir.path(), &chat_lines(10));
    let flagged = dir.path().join("flagged.parquet");
    let first = run_to_end(&mock, &input, &flagged, &["--model", "llama3.2"]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let refused = run_to_end(
        &mock,
        &input,
        &flagged,
        &["--resume", "--model", "nomic-embed-text"],
    );
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("model was llama3.2"),
        "{}",
        refused.stderr
    );
}

/// `count` chat lines: every 7th answers 404, every 11th is not JSON.
fn lines_with_errors(count: usize) -> String {
    (0..count)
        .map(|index| {
            if index % 11 == 5 {
                return "{not json\n".to_owned();
            }
            let prompt = if index % 7 == 0 {
                format!("question {index} [mock:status=404]")
            } else {
                format!("question {index}")
            };
            chat_line(&format!("req-{index}"), &prompt) + "\n"
        })
        .collect()
}

#[test]
fn the_error_file_holds_exactly_the_error_rows_after_a_kill_and_a_resume_too() {
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(3),
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let count = 400;
    let input = write_input(dir.path(), &lines_with_errors(count));
    let results = dir.path().join("results.parquet");
    let errors = dir.path().join("errors.jsonl");
    let flags = ["--checkpoint-rows", "20", "--errors", utf8(&errors)];
    let mut child = start(&mock, &input, &results, &flags);
    wait_until("a checkpoint beyond 40 rows", || {
        checkpoint::inspect(&results).is_ok_and(|existing| existing.rows() > 40)
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let resumed = run_to_end(
        &mock,
        &input,
        &results,
        &[&flags[..], &["--resume"]].concat(),
    );
    assert_eq!(resumed.code(), Some(1), "{}", resumed.stderr);
    assert_eq!(result_rows(&results).len(), count);
    let from_file = error_file_ids(&errors);
    assert_eq!(from_file, error_row_ids(&results));
    let invalid = (0..count).filter(|index| index % 11 == 5).count();
    let failed = (0..count)
        .filter(|index| index % 11 != 5 && index % 7 == 0)
        .count();
    assert_eq!(from_file.len(), invalid + failed);
    assert_eq!(from_file.iter().filter(|id| id.is_none()).count(), invalid);

    // Beside JSONL on standard output, without a results file.
    let errors = dir.path().join("stdout-errors.jsonl");
    let output = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--errors",
            utf8(&errors),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let streamed = parse_output(output);
    assert_eq!(streamed.code(), Some(1), "{}", streamed.stderr);
    let mut stdout_errors: Vec<Option<String>> = streamed
        .error_lines()
        .iter()
        .map(|line| line["custom_id"].as_str().map(str::to_owned))
        .collect();
    stdout_errors.sort();
    assert_eq!(error_file_ids(&errors), stdout_errors);
    assert_eq!(stdout_errors.len(), invalid + failed);
    let again = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--errors",
            utf8(&errors),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing error file needs --overwrite"
    );
    let replaced = batchflow()
        .arg(&input)
        .args([
            "--backend",
            &mock.url(),
            "--quiet",
            "--overwrite",
            "--errors",
            utf8(&errors),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(replaced.status.code(), Some(1));
    assert_eq!(error_file_ids(&errors).len(), invalid + failed);

    // An existing error file is refused before a new results file is created.
    let fresh = dir.path().join("fresh.parquet");
    let refused = run_to_end(&mock, &input, &fresh, &["--errors", utf8(&errors)]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("--errors"), "{}", refused.stderr);
    assert!(!fresh.exists(), "no results file is left behind");
}

#[test]
fn a_pipelines_jsonl_file_is_new_replaced_with_overwrite_and_appended_to_on_resume() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(10));
    let pipeline = dir.path().join("pipe.toml");
    fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\njsonl = \"out.jsonl\"\nparquet = \"results.parquet\"\n",
            mock.url()
        ),
    )
    .expect("write the pipeline");
    let jsonl = dir.path().join("out.jsonl");
    let ids = |path: &Path| -> Vec<String> {
        let mut ids: Vec<String> = fs::read_to_string(path)
            .expect("the JSONL file")
            .lines()
            .map(|line| {
                let line: Value = serde_json::from_str(line).expect("JSON");
                line["custom_id"].as_str().expect("an id").to_owned()
            })
            .collect();
        ids.sort();
        ids
    };
    let first = run_pipeline(&pipeline, &[]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    assert_eq!(ids(&jsonl).len(), 10);
    let written = fs::read(&jsonl).expect("read");

    let refused = run_pipeline(&pipeline, &[]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert_eq!(fs::read(&jsonl).expect("read"), written, "left as it was");
    fs::remove_file(dir.path().join("results.parquet")).expect("remove the results");
    let refused = run_pipeline(&pipeline, &[]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("sink.jsonl"), "{}", refused.stderr);
    assert!(
        !dir.path().join("results.parquet").exists(),
        "no results file is left behind"
    );
    let replaced = run_pipeline(&pipeline, &["--overwrite"]);
    assert_eq!(replaced.code(), Some(0), "{}", replaced.stderr);
    assert_eq!(ids(&jsonl).len(), 10, "replaced, not appended");

    fs::write(&input, chat_lines(15)).expect("a longer input");
    let resumed = run_pipeline(&pipeline, &["--resume"]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let mut expected: Vec<String> = (0..15).map(|index| format!("req-{index}")).collect();
    expected.sort();
    assert_eq!(ids(&jsonl), expected, "the five new results appended");
}

#[test]
fn standard_input_redirected_from_a_file_is_an_input_no_output_may_name() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(5));
    let before = fs::read(&input).expect("read");
    let results = dir.path().join("results.parquet");
    let cases: [(&[&str], bool, &str); 3] = [
        (
            &["--stats", utf8(&input)],
            false,
            "--stats and standard input",
        ),
        (
            &["--errors", utf8(&input), "--overwrite"],
            false,
            "--errors and standard input",
        ),
        (&[], true, "standard output and standard input"),
    ];
    for (flags, stdout_to_input, says) in cases {
        let stdout = match stdout_to_input {
            true => Stdio::from(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&input)
                    .expect("open"),
            ),
            false => Stdio::piped(),
        };
        let mut command = batchflow();
        command
            .args(["--backend", &mock.url(), "--quiet"])
            .args(flags)
            .stdin(fs::File::open(&input).expect("open the input"))
            .stdout(stdout);
        if !stdout_to_input {
            command.args(["--output", utf8(&results)]);
        }
        let refused = parse_output(command.output().expect("runs"));
        assert_eq!(refused.code(), Some(2), "{flags:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(says),
            "{flags:?}: {}",
            refused.stderr
        );
        assert_eq!(fs::read(&input).expect("read"), before, "{flags:?}");
        assert!(!results.exists());
    }
    assert_eq!(mock.server.stats().requests, 0);
}

#[test]
fn sigterm_at_any_moment_of_a_retry_errors_start_closes_the_file_with_nothing_left_beside_it() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let count = 20_000;
    let input = write_input(dir.path(), &lines_failing_once(count, 2));
    let results = dir.path().join("results.parquet");
    let first = run_to_end(&mock, &input, &results, &["--checkpoint-rows", "1000"]);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let retry = ["--resume", "--retry-errors", "--checkpoint-rows", "1000"];
    let mut rng = fastrand::Rng::with_seed(11);
    for stop in 0..8 {
        let child = start(&mock, &input, &results, &retry);
        wait_until_it_catches_sigterm(child.id());
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        sigterm(&child);
        let stopped = wait_at_most(child, Duration::from_secs(60));
        assert!(
            matches!(stopped.code(), Some(130 | 0 | 1)),
            "stop {stop}: {:?} {}",
            stopped.code(),
            stopped.stderr
        );
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "stop {stop}");
        let status = batchflow()
            .args(["status", utf8(&results)])
            .output()
            .expect("runs");
        assert_eq!(status.status.code(), Some(0), "stop {stop}: the file opens");
    }
    let finished = run_to_end(&mock, &input, &results, &retry);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr);
    assert_each_id_once(&results, count);
}

#[test]
fn a_jsonl_fifo_is_opened_before_the_results_file_is_made_and_dev_null_needs_no_flag() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    write_input(dir.path(), &chat_lines(5));
    let fifo = dir.path().join("out.jsonl");
    mkfifo(&fifo);
    let pipeline = |jsonl: &Path| {
        let path = dir.path().join("pipe.toml");
        fs::write(
            &path,
            format!(
                "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\njsonl = \"{}\"\nparquet = \"results.parquet\"\n",
                mock.url(),
                utf8(jsonl)
            ),
        )
        .expect("write the pipeline");
        path
    };
    let child = batchflow()
        .args(["run", utf8(&pipeline(&fifo)), "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_until("blocked opening the FIFO", || blocked_on_a_fifo(child.id()));
    sigterm(&child);
    let stopped = wait_at_most(child, Duration::from_secs(20));
    assert_eq!(stopped.code(), Some(130), "{}", stopped.stderr);
    assert!(
        !dir.path().join("results.parquet").exists(),
        "nothing was made"
    );

    let finished = run_pipeline(&pipeline(Path::new("/dev/null")), &[]);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr);
}

#[test]
fn resuming_needs_a_results_file_and_keeping_raw_responses_or_not_is_no_config_change() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &chat_lines(20));
    let pipeline = dir.path().join("pipe.toml");
    fs::write(
        &pipeline,
        format!(
            "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nurl = \"{}\"\n\n[sink]\njsonl = \"out.jsonl\"\n",
            mock.url()
        ),
    )
    .expect("write the pipeline");
    let refused = run_pipeline(&pipeline, &["--resume"]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("resuming needs sink.parquet"),
        "{}",
        refused.stderr
    );
    assert_eq!(mock.server.stats().requests, 0);

    let results = dir.path().join("results.parquet");
    let first = run_to_end(&mock, &input, &results, &[]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let resumed = run_to_end(&mock, &input, &results, &["--resume", "--no-raw"]);
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
}

#[test]
fn a_rewrite_removes_only_its_own_side_files() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = write_input(dir.path(), &lines_failing_once(30, 3));
    let results = dir.path().join("results.parquet");
    let first = run_to_end(&mock, &input, &results, &[]);
    assert_eq!(first.code(), Some(1), "{}", first.stderr);
    let precious = [
        dir.path().join("results.parquet.rewrite.rewrite"),
        dir.path().join("results.parquet.tmp.tmp"),
    ];
    for path in &precious {
        fs::write(path, "precious").expect("write");
    }
    let retried = run_to_end(&mock, &input, &results, &["--resume", "--retry-errors"]);
    assert_eq!(retried.code(), Some(0), "{}", retried.stderr);
    for path in &precious {
        assert_eq!(fs::read_to_string(path).expect("still there"), "precious");
    }
}

/// Rewrites a results file as a batchflow without fingerprints wrote it: the same rows and
/// layout, and no `batchflow.*` entry but the state.
fn strip_the_fingerprint(path: &Path) {
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).expect("open"))
        .expect("Parquet");
    let schema = reader.schema().clone();
    let batches: Vec<_> = reader
        .build()
        .expect("a reader")
        .map(|batch| batch.expect("a batch"))
        .collect();
    let properties = WriterProperties::builder()
        .set_offset_index_disabled(true)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "batchflow.state".to_owned(),
            "complete".to_owned(),
        )]))
        .build();
    let file = fs::File::create(path).expect("create");
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).expect("a writer");
    for batch in &batches {
        writer.write(batch).expect("write");
    }
    writer.close().expect("close");
}

#[test]
fn a_file_from_before_fingerprints_with_derived_ids_is_not_resumed_without_leave() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    let records: String = (0..12)
        .map(|index| format!("{{\"name\": \"candidate {index}\"}}\n"))
        .collect();
    fs::write(dir.path().join("records.jsonl"), records).expect("write records");
    let pipeline = records_pipeline(dir.path(), &mock, "");
    let results = dir.path().join("results.parquet");
    let first = run_pipeline(&pipeline, &[]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    strip_the_fingerprint(&results);
    let before = fs::read(&results).expect("read");
    let refused = run_pipeline(&pipeline, &["--resume"]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("id_scheme was not recorded"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read(&results).expect("read"), before);
    let allowed = run_pipeline(&pipeline, &["--resume", "--allow-config-change"]);
    assert_eq!(allowed.code(), Some(0), "{}", allowed.stderr);
}

#[test]
fn under_a_pipeline_messages_name_the_toml_key_not_the_flag() {
    let mock = fast_mock();
    let dir = tempfile::tempdir().expect("a temp dir");
    fs::write(
        dir.path().join("input.jsonl"),
        "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/api/chat\",\"body\":{\"messages\":[]}}\n",
    )
    .expect("write");
    let pipeline = dir.path().join("pipe.toml");
    let write = |extra: &str| {
        fs::write(
            &pipeline,
            format!(
                "[source]\npath = \"input.jsonl\"\nformat = \"requests\"\n\n[backend]\nurl = \"{}\"\n{extra}",
                mock.url()
            ),
        )
        .expect("write the pipeline");
    };
    write("");
    let run = run_pipeline(&pipeline, &[]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let line = &run.lines[0];
    let message = line["error"]["message"].as_str().expect("a message");
    assert!(message.contains("give request.model"), "{message}");
    assert!(!message.contains("--model"), "{message}");

    write("api_key_env = \"BATCHFLOW_TEST_UNSET_KEY\"\n");
    let refused = run_pipeline(&pipeline, &[]);
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("named by backend.api_key_env"),
        "{}",
        refused.stderr
    );
}
