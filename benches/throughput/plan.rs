//! `batchflow plan` (issue 24): how far its projection lands from the run it projects, and how
//! long it takes on a large input.
//!
//! - Accuracy: `plan` (its probe not kept) on 4,000 request lines, then the run itself with the
//!   `--workers` plan recommends, its whole process timed; the error is
//!   `|projected − actual| / actual` (target ≤ 0.15). Against the mock with 8 slots whose
//!   latency varies per request (50 ms ± 50%), and against a real server when
//!   `$BATCHFLOW_REALSERVER` names its Ollama-API address (`../shared/realserver/start.sh`:
//!   llama.cpp's llama-server behind its Ollama shim; 600 lines there, its pace being slower).
//! - Speed: `plan` on 170,000 lines against the mock with 4 slots at about 100 requests/s (40 ms
//!   each), timed whole (target under 30 s).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const TARGET_ERROR: f64 = 0.15;
const TARGET_PLAN_SECS: f64 = 30.0;

pub fn run(plan: &Plan) -> std::io::Result<()> {
    let scratch = tempfile::tempdir()?;
    println!();
    println!("== plan: projected wall time over the run's own, and plan's time on a large input");
    let varying = MockKnobs {
        slots: 8,
        latency: Duration::from_millis(50),
        spread: 0.5,
        max_queue: 512,
    };
    let mock = Mock::start(&plan.tools.batchflow, &varying)?;
    let requests = plan.count(4_000);
    accuracy(
        plan,
        mock.url(),
        &[],
        requests,
        scratch.path(),
        "mock, 8 slots, 50 ms ± 50%",
    )?;
    drop(mock);
    if let Ok(address) = std::env::var("BATCHFLOW_REALSERVER") {
        // The kit serves one model under its own name.
        accuracy(
            plan,
            &address,
            &["--model", "tiny-random-llama"],
            plan.count(600),
            scratch.path(),
            "real llama-server (realserver kit)",
        )?;
    } else {
        println!("  (BATCHFLOW_REALSERVER unset: the real-server row is skipped)");
    }

    let paced = MockKnobs {
        slots: 4,
        latency: Duration::from_millis(40),
        spread: 0.0,
        max_queue: 512,
    };
    let mock = Mock::start(&plan.tools.batchflow, &paced)?;
    let lines = plan.count(170_000);
    let input = scratch.path().join("large.jsonl");
    inputs::write_requests(&input, lines)?;
    let started = Instant::now();
    let report = plan_json(plan, mock.url(), &[], &input)?;
    let seconds = started.elapsed().as_secs_f64();
    let counted = report["requests"].as_u64().unwrap_or(0);
    println!(
        "  plan on {lines} lines, mock of 4 slots at ~100 req/s: {seconds:.1} s (counted {counted}, projected {:.0} s)   (target under {TARGET_PLAN_SECS} s: {})",
        report["wall_secs"].as_f64().unwrap_or(f64::NAN),
        verdict(seconds < TARGET_PLAN_SECS && counted == lines)
    );
    Ok(())
}

/// Plans `requests` lines against `backend`, runs them with the recommended workers, and
/// prints how far the projection was from the run.
fn accuracy(
    plan: &Plan,
    backend: &str,
    flags: &[&str],
    requests: u64,
    scratch: &Path,
    label: &str,
) -> std::io::Result<()> {
    let input = scratch.join(format!("accuracy-{requests}.jsonl"));
    inputs::write_requests(&input, requests)?;
    let report = plan_json(plan, backend, flags, &input)?;
    let projected = report["wall_secs"]
        .as_f64()
        .ok_or_else(|| std::io::Error::other(format!("no projection in {report}")))?;
    let (low, high) = (
        report["wall_low_secs"].as_f64().unwrap_or(f64::NAN),
        report["wall_high_secs"].as_f64().unwrap_or(f64::NAN),
    );
    let workers = report["recommended_workers"].as_u64().unwrap_or(1);
    let started = Instant::now();
    let status = Command::new(&plan.tools.batchflow)
        .arg(&input)
        .args([
            "--backend",
            backend,
            "--workers",
            &workers.to_string(),
            "--quiet",
        ])
        .args(flags)
        .args(["--output"])
        .arg(scratch.join(format!("run-{requests}.parquet")))
        .args(["--overwrite"])
        .env_remove("OLLAMA_HOST")
        .status()?;
    let actual = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "the run of {requests} requests exited {status}"
        )));
    }
    let error = (projected - actual).abs() / actual;
    println!(
        "  {label}: {requests} requests at --workers {workers}: projected {projected:.1} s ({low:.1}–{high:.1}), actual {actual:.1} s, error {error:.3}   (target ≤ {TARGET_ERROR}: {})",
        verdict(error <= TARGET_ERROR)
    );
    Ok(())
}

fn plan_json(plan: &Plan, backend: &str, flags: &[&str], input: &Path) -> std::io::Result<Value> {
    let output = Command::new(&plan.tools.batchflow)
        .arg("plan")
        .arg(input)
        .args(["--backend", backend, "--json", "--quiet"])
        .args(flags)
        .env_remove("OLLAMA_HOST")
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "plan exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(std::io::Error::other)
}
