//! Results datasets and inputs on object storage, end to end against a real S3-protocol server
//! (moto, `support::s3`): uploads answered 500 and a server gone and back mid-run are retried
//! with nothing lost; a run killed mid-way resumes from what the store holds, each custom_id
//! once; the input comes from the store too; credentials never reach the logs.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;

use batchflow::mock::MockConfig;
use support::s3::{Front, Moto};
use support::{Mock, batchflow, chat_lines, wait_until};

const SECRET: &str = "not-a-real-secret-4f9c2e";

/// The binary, pointed at `endpoint` with credentials in the standard variables.
fn batchflow_on(endpoint: std::net::SocketAddr) -> Command {
    let mut command = batchflow();
    command
        .env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env("HOME", env!("CARGO_MANIFEST_DIR"));
    command
}

/// About 200 requests a second: a run of hundreds lasts seconds, long enough to be caught
/// mid-way however loaded the machine.
fn slow_mock() -> Mock {
    Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
}

#[test]
fn uploads_answered_500_and_a_server_gone_mid_run_are_retried_and_nothing_is_lost() {
    let moto = Moto::start();
    moto.create_bucket("results");
    let front = Front::start(moto.address, 3);
    let mock = slow_mock();
    let dir = tempfile::tempdir().expect("dir");
    let count = 600;
    let input = support::write_input(dir.path(), &chat_lines(count));
    let mut child = batchflow_on(front.address)
        .arg(&input)
        .args(["--backend", &mock.url(), "--output", "s3://results/run/"])
        .args(["--checkpoint-rows", "20", "--part-row-groups", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_until("uploads through the front", || front.passed_uploads() >= 3);
    front.down();
    let refused = std::net::TcpStream::connect(front.address).is_err();
    assert!(
        child.try_wait().expect("waitable").is_none(),
        "the run is still going while the server is down"
    );
    std::thread::sleep(Duration::from_millis(1500));
    front.up();
    let output = child.wait_with_output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(refused, "connections were refused while down");
    assert!(front.failed_uploads() > 0, "some uploads were answered 500");
    let ids = moto.ids("results", "run/");
    assert_eq!(ids.len(), count, "every custom_id is in the store");
    assert!(ids.values().all(|rows| *rows == 1), "each once");
    assert!(
        !stderr.contains(SECRET),
        "the secret key never reaches the logs"
    );
    let parts = moto.keys("results", "run/");
    assert!(parts.len() >= 5, "parts: {parts:?}");
}

#[test]
fn a_run_killed_mid_way_resumes_from_what_the_store_holds_with_each_id_once() {
    let moto = Moto::start();
    moto.create_bucket("data");
    let mock = slow_mock();
    let count = 800;
    moto.put("data/in/requests.jsonl", chat_lines(count).as_bytes());
    let command = || {
        let mut command = batchflow_on(moto.address);
        command
            .args(["s3://data/in/requests.jsonl", "--backend", &mock.url()])
            .args(["--output", "s3://data/out/", "--resume"])
            .args([
                "--checkpoint-rows",
                "25",
                "--part-row-groups",
                "3",
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let run = || command().spawn().expect("starts");
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..3 {
        let before = moto.stored_bytes("data", "out/");
        let mut child = run();
        wait_until("an upload beyond the last kill", || {
            moto.stored_bytes("data", "out/") > before
                || child.try_wait().is_ok_and(|status| status.is_some())
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..60)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let kept: usize = moto.ids("data", "out/").values().sum();
    assert!(
        kept > 0 && kept < count,
        "killed mid-way: {kept} rows stored"
    );
    // The upload a killed run had in flight may reach the store after the next run read
    // the parts: that run then stops (exit 2) rather than count those rows twice, and the
    // next one finishes.
    for attempt in 0.. {
        let finished = command().stderr(Stdio::piped()).output().expect("runs");
        let stderr = String::from_utf8_lossy(&finished.stderr);
        if finished.status.code() == Some(0) {
            break;
        }
        assert!(
            attempt < 2 && stderr.contains("landed late"),
            "attempt {attempt}: {stderr}"
        );
    }
    let ids = moto.ids("data", "out/");
    assert_eq!(ids.len(), count);
    assert!(ids.values().all(|rows| *rows == 1), "each custom_id once");

    let again = batchflow_on(moto.address)
        .args(["s3://data/in/requests.jsonl", "--backend", &mock.url()])
        .args(["--output", "s3://data/out/"])
        .output()
        .expect("runs");
    assert_eq!(
        again.status.code(),
        Some(2),
        "a new run refuses the stored parts"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("s3://data/out/part-0-of-1-00000.parquet already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
