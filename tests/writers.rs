//! One writer everywhere: a second run of a live results file (new, `--resume`,
//! `--overwrite`) or of a live shard on object storage (another `TMPDIR`, another spelling of
//! the URL) is refused at once naming the first; a writer stalled past its lease is fenced off
//! by the one that took over, and no row is lost or doubled; a store outage is ridden out for
//! `--store-retry-for`, and past it the run stops resumable.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchflow::mock::MockConfig;
use support::s3::{Front, Moto, on_store};
use support::{Mock, batchflow, chat_lines, parse_output, result_rows, wait_until};

/// About 100 requests a second: a run of hundreds is caught mid-way however loaded the machine.
fn slow_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
}

/// The writer number recorded in a shard's lease object.
fn lease_token(moto: &Moto, key: &str) -> Option<u64> {
    if !moto.keys("results", "").iter().any(|found| found == key) {
        return None;
    }
    let record: serde_json::Value =
        serde_json::from_slice(&moto.get("results", key)).expect("the lease is JSON");
    record["token"].as_u64()
}

/// What `batchflow status` prints for `results`.
fn status_of(results: &str) -> String {
    let output = batchflow()
        .args(["status", results])
        .output()
        .expect("runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal}");
}

#[test]
fn a_second_run_on_a_live_results_file_is_refused_naming_it_and_nothing_is_sent_twice() {
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 300;
    let input = support::write_input(dir.path(), &chat_lines(count));
    let results = dir.path().join("r.parquet");
    let results_arg = results.to_str().expect("a UTF-8 path");
    let mut first = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--output", results_arg])
        .args(["--checkpoint-rows", "5", "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_until("the first run's results file", || results.exists());
    for mode in [&["--resume"][..], &["--overwrite"], &[]] {
        let second = parse_output(
            batchflow()
                .arg(&input)
                .args(["--backend", &mock.url(), "--output", results_arg])
                .args(mode)
                .output()
                .expect("runs"),
        );
        assert_eq!(second.code(), Some(2), "{mode:?}: {}", second.stderr);
        assert!(
            second.stderr.contains(&format!(
                "is being written by another run (pid {} on ",
                first.id()
            )),
            "{mode:?}: {}",
            second.stderr
        );
    }
    let status_while = status_of(results_arg);
    let still_running = first.try_wait().expect("waitable").is_none();
    let first_pid = first.id();
    let finished = first.wait().expect("runs");
    assert!(still_running, "the other runs met the first one running");
    assert_eq!(finished.code(), Some(0));
    assert!(
        status_while.contains(&format!("being written by pid {first_pid} on ")),
        "status tells a running writer: {status_while}"
    );
    let status_after = status_of(results_arg);
    assert!(
        !status_after.contains("being written"),
        "a finished run holds nothing: {status_after}"
    );
    let rows = result_rows(&results);
    assert_eq!(rows.len(), count, "each line once");
    let mut ids: Vec<_> = rows.iter().map(|row| row.0.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), count, "no custom_id twice");
    assert_eq!(
        mock.server.stats().succeeded,
        count as u64,
        "no request was sent a second time"
    );
}

#[test]
fn a_second_host_on_a_live_shard_is_refused_under_any_spelling_of_the_url() {
    let moto = Moto::start();
    moto.create_bucket("results");
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let (host_a, host_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&host_a).expect("a TMPDIR");
    std::fs::create_dir(&host_b).expect("a TMPDIR");
    let count = 300;
    let input = support::write_input(dir.path(), &chat_lines(count));
    let mut first = on_store(moto.address, &host_a)
        .arg(&input)
        .args(["--backend", &mock.url(), "--quiet", "--resume"])
        .args(["--output", "s3://results/run/", "--checkpoint-rows", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_until("the first run's lease", || {
        lease_token(&moto, "run/.part-0-of-1.lease").is_some()
    });
    for url in [
        "s3://results/run/",
        "s3a://results/run/",
        "S3://results/run/",
    ] {
        let second = parse_output(
            on_store(moto.address, &host_b)
                .arg(&input)
                .args(["--backend", &mock.url(), "--resume", "--output", url])
                .output()
                .expect("runs"),
        );
        assert_eq!(second.code(), Some(2), "{url}: {}", second.stderr);
        assert!(
            second.stderr.contains(&format!(
                "shard 0/1 is being written by another run (pid {} on ",
                first.id()
            )),
            "{url}: {}",
            second.stderr
        );
    }
    let status = on_store(moto.address, &host_b)
        .args(["status", "s3://results/run/"])
        .output()
        .expect("runs");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let still_running = first.try_wait().expect("waitable").is_none();
    let first_pid = first.id();
    let finished = first.wait().expect("runs");
    assert!(still_running, "the second host met the first one running");
    assert!(
        status.contains(&format!("being written by pid {first_pid} on ")),
        "status reads the lease: {status}"
    );
    assert_eq!(finished.code(), Some(0));
    let ids = moto.ids("results", "run/");
    assert_eq!(ids.len(), count);
    assert!(ids.values().all(|rows| *rows == 1), "each custom_id once");
    assert_eq!(mock.server.stats().succeeded, count as u64);
    let left: Vec<_> = std::fs::read_dir(&host_a)
        .expect("listed")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert!(
        left.is_empty(),
        "nothing of the run stays in its TMPDIR: {left:?}"
    );
}

#[test]
fn a_writer_stalled_past_its_lease_is_fenced_off_and_no_row_is_lost_or_doubled() {
    let moto = Moto::start();
    moto.create_bucket("results");
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let (host_a, host_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&host_a).expect("a TMPDIR");
    std::fs::create_dir(&host_b).expect("a TMPDIR");
    let count = 500;
    let input = support::write_input(dir.path(), &chat_lines(count));
    let run = |tmp: &std::path::Path| {
        let mut command = on_store(moto.address, tmp);
        command
            .arg(&input)
            .args(["--backend", &mock.url(), "--resume"])
            .args(["--output", "s3://results/run/", "--store-lease", "2s"])
            .args(["--checkpoint-rows", "10", "--part-row-groups", "3"]);
        command
    };
    let stalled = run(&host_a)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_until("a few uploads", || {
        moto.stored_bytes("results", "run/") > 10_000
    });
    signal(&stalled, "-STOP");
    // Another host's run is refused while the lease holds, and takes the shard over once the
    // stalled writer has not renewed it for its term.
    let deadline = Instant::now() + Duration::from_secs(60);
    let successor = loop {
        let mut child = run(&host_b)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        wait_until("the successor takes the lease or is refused", || {
            lease_token(&moto, "run/.part-0-of-1.lease") == Some(2)
                || child.try_wait().is_ok_and(|status| status.is_some())
        });
        if lease_token(&moto, "run/.part-0-of-1.lease") == Some(2) {
            break child;
        }
        let refused = parse_output(child.wait_with_output().expect("ran"));
        assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("lease valid until"),
            "{}",
            refused.stderr
        );
        assert!(Instant::now() < deadline, "the lease never expired");
    };
    signal(&stalled, "-CONT");
    let stalled_out = parse_output(stalled.wait_with_output().expect("ran"));
    let successor_out = parse_output(successor.wait_with_output().expect("ran"));
    assert_eq!(stalled_out.code(), Some(2), "{}", stalled_out.stderr);
    assert!(
        stalled_out.stderr.contains("was taken over by another run"),
        "{}",
        stalled_out.stderr
    );
    assert!(
        successor_out.stderr.contains("Taking over shard 0/1")
            && successor_out.stderr.contains("its lease expired"),
        "{}",
        successor_out.stderr
    );
    // The successor finishes the shard, unless the stalled writer's one upload in flight
    // landed first and fenced it off in turn: a further run then finishes it.
    if successor_out.code() != Some(0) {
        assert!(
            successor_out.stderr.contains("landed late")
                || successor_out.stderr.contains("was taken over"),
            "{}",
            successor_out.stderr
        );
        let last = parse_output(run(&host_b).output().expect("runs"));
        assert_eq!(last.code(), Some(0), "{}", last.stderr);
    }
    let ids = moto.ids("results", "run/");
    assert_eq!(ids.len(), count, "no row lost");
    let doubled: Vec<_> = ids.iter().filter(|(_, rows)| **rows > 1).collect();
    assert!(doubled.is_empty(), "rows held twice: {doubled:?}");
}

#[test]
fn a_store_outage_is_ridden_out_for_its_budget_and_past_it_the_run_stops_resumable() {
    let moto = Moto::start();
    moto.create_bucket("results");
    let front = Front::start(moto.address, u64::MAX);
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 400;
    let input = support::write_input(dir.path(), &chat_lines(count));
    let run = |prefix: &str, extra: &[&str]| {
        let mut command = on_store(front.address, dir.path());
        command
            .arg(&input)
            .args(["--backend", &mock.url(), "--quiet", "--resume"])
            .args(["--output", prefix, "--checkpoint-rows", "10"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };

    // Down for 20 s: longer than the 15 tries the store's client used to give up after.
    let child = run("s3://results/long/", &[]).spawn().expect("starts");
    wait_until("uploads through the front", || front.passed_uploads() >= 2);
    front.down();
    std::thread::sleep(Duration::from_secs(20));
    front.up();
    let rode_out = parse_output(child.wait_with_output().expect("ran"));
    assert_eq!(rode_out.code(), Some(0), "{}", rode_out.stderr);
    let ids = moto.ids("results", "long/");
    assert_eq!(ids.len(), count);
    assert!(ids.values().all(|rows| *rows == 1));

    // Past a budget of 2 s the run stops with exit 2 and resumes to the end once the store is
    // back.
    let uploads = front.passed_uploads();
    let child = run("s3://results/short/", &["--store-retry-for", "2s"])
        .spawn()
        .expect("starts");
    wait_until("uploads through the front", || {
        front.passed_uploads() >= uploads + 2
    });
    front.down();
    let stopped = parse_output(child.wait_with_output().expect("ran"));
    front.up();
    assert_eq!(stopped.code(), Some(2), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("s3://results/short/"),
        "names the store: {}",
        stopped.stderr
    );
    let resumed = parse_output(run("s3://results/short/", &[]).output().expect("runs"));
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let ids = moto.ids("results", "short/");
    assert_eq!(ids.len(), count);
    assert!(ids.values().all(|rows| *rows == 1));
}

#[test]
fn on_a_store_an_overwrite_killed_after_it_began_is_finished_by_resume_and_other_layouts_are_refused()
 {
    let moto = Moto::start();
    moto.create_bucket("results");
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 300;
    let worded = |word: &str| -> String {
        (0..count)
            .map(|index| {
                support::chat_line(&format!("req-{index}"), &format!("{word} {index}")) + "\n"
            })
            .collect()
    };
    let (old_input, new_input) = (dir.path().join("old.jsonl"), dir.path().join("new.jsonl"));
    std::fs::write(&old_input, worded("old")).expect("written");
    std::fs::write(&new_input, worded("new")).expect("written");
    let run = |input: &std::path::Path, extra: &[&str]| {
        let mut command = on_store(moto.address, dir.path());
        command
            .arg(input)
            .args([
                "--backend",
                &mock.url(),
                "--quiet",
                "--output",
                "s3://results/run/",
            ])
            .args(["--checkpoint-rows", "10", "--part-row-groups", "2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let old = parse_output(run(&old_input, &[]).output().expect("runs"));
    assert_eq!(old.code(), Some(0), "{}", old.stderr);
    let sharded = parse_output(run(&old_input, &["--shard", "1/2"]).output().expect("runs"));
    assert_eq!(sharded.code(), Some(2), "{}", sharded.stderr);
    assert!(
        sharded
            .stderr
            .contains("holds parts of another shard layout"),
        "{}",
        sharded.stderr
    );
    let marker = "run/.part-0-of-1.generation";
    let old_marker = moto.get("results", marker);
    let mut replacing = run(&new_input, &["--overwrite"]).spawn().expect("starts");
    wait_until("the new generation is recorded in the store", || {
        moto.get("results", marker) != old_marker
    });
    replacing.kill().expect("SIGKILL");
    replacing.wait().expect("reaped");
    let resumed = parse_output(run(&new_input, &["--resume"]).output().expect("runs"));
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    let ids = moto.ids("results", "run/");
    assert_eq!(ids.len(), count);
    assert!(ids.values().all(|rows| *rows == 1), "each custom_id once");
    let contents = moto.column("results", "run/", "content");
    assert_eq!(contents.len(), count);
    for content in contents {
        assert!(
            content.as_deref().is_some_and(|text| text.contains("new")),
            "a row of the old generation survived: {content:?}"
        );
    }
}
