//! Many shards, one dataset: four `--shard i/4` runs at once, each against a mock of its own
//! (P = 8 slots, L = 50 ms), writing into one dataset directory, over the rate of shard 0/4
//! alone against one mock. Rates come from the mocks' own counts of answered requests.

use std::fs::File;
use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const SHARDS: u64 = 4;
const SLOTS: u32 = 8;
const LATENCY: Duration = Duration::from_millis(50);
const REQUESTS: u64 = 12_000;
const TARGET: f64 = 3.8;

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    println!();
    println!(
        "== shards: {SHARDS} shards into one dataset, each on a mock of P={SLOTS} slots, L={}ms, --workers {SLOTS}, {requests} requests",
        LATENCY.as_millis()
    );
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, requests)?;
    let knobs = MockKnobs {
        slots: SLOTS as usize,
        latency: LATENCY,
        spread: 0.0,
        max_queue: 512,
    };
    let mocks = (0..SHARDS)
        .map(|_| Mock::start(&plan.tools.batchflow, &knobs))
        .collect::<io::Result<Vec<_>>>()?;
    let alone = run_shards(plan, &mocks[..1], &input, scratch.path(), "alone")?;
    let together = run_shards(plan, &mocks, &input, scratch.path(), "together")?;
    println!(
        "  shard 0/{SHARDS} alone   {:8.1} req/s ({} requests, {:.2}s)",
        alone.0 as f64 / alone.1.as_secs_f64(),
        alone.0,
        alone.1.as_secs_f64()
    );
    println!(
        "  {SHARDS} shards at once {:8.1} req/s ({} requests, {:.2}s)",
        together.0 as f64 / together.1.as_secs_f64(),
        together.0,
        together.1.as_secs_f64()
    );
    if together.0 != requests {
        return Err(io::Error::other(format!(
            "the shards answered {} of {requests} requests",
            together.0
        )));
    }
    let ratio =
        (together.0 as f64 / together.1.as_secs_f64()) / (alone.0 as f64 / alone.1.as_secs_f64());
    println!(
        "  {SHARDS} shards ÷ one = {ratio:.2}   (target >= {TARGET}: {})",
        verdict(ratio >= TARGET)
    );
    Ok(())
}

/// Runs shard `i/4` against `mocks[i]` for each mock given, all at once, into a fresh dataset
/// `name/`: the requests the mocks answered, and the wall time until the last shard ended.
fn run_shards(
    plan: &Plan,
    mocks: &[Mock],
    input: &std::path::Path,
    scratch: &std::path::Path,
    name: &str,
) -> io::Result<(u64, Duration)> {
    let dataset = format!("{}/{name}/", scratch.display());
    let before = mocks
        .iter()
        .map(Mock::succeeded)
        .collect::<io::Result<Vec<_>>>()?;
    let started = Instant::now();
    let children = mocks
        .iter()
        .enumerate()
        .map(|(index, mock)| {
            Command::new(&plan.tools.batchflow)
                .arg(input)
                .args(["--backend", mock.url(), "--workers"])
                .arg(SLOTS.to_string())
                .args([
                    "--shard",
                    &format!("{index}/{SHARDS}"),
                    "--output",
                    &dataset,
                ])
                .env_remove("OLLAMA_HOST")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(scratch.join(format!("{name}-{index}.log")))?)
                .spawn()
        })
        .collect::<io::Result<Vec<_>>>()?;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "a shard exited with {status}; see the logs in {}",
                scratch.display()
            )));
        }
    }
    let wall = started.elapsed();
    let mut answered = 0;
    for (mock, before) in mocks.iter().zip(before) {
        answered += mock.succeeded()? - before;
    }
    Ok((answered, wall))
}
