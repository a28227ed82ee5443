//! `cargo bench --bench throughput [-- slots|auto|backends|cost|memory|shards|objectstore|verify|serve|servestore|plan|stages|quick ...]`: the benchmarks of
//! issue 6, run against the real release binary and its mock server as child processes,
//! each figure printed as a ratio so that it holds on a noisy machine.
//!
//! - `slots` (slot efficiency): batchflow's requests/s over what `wrk` gets from the same
//!   mock (P slots, latency L) at the same concurrency in the same run, and both over P/L.
//! - `auto` (adaptive workers): requests/s with `--workers auto` over `--workers P` against
//!   mocks of P ∈ {1, 4, 8, 32} slots, whole runs (ramp-up included).
//! - `backends` (several backends): requests/s over two mocks of P slots ÷ over one.
//! - `cost` (client cost): requests/s and CPU per request (the client process's own
//!   user+sys) against a zero-latency mock, batchflow beside `benches/baseline_client.py`.
//! - `memory`: batchflow's peak RSS at 10,000, 170,000 and 1,000,000 requests.
//! - `shards`: four `--shard i/4` runs into one dataset, each on a mock of its own, over one.
//! - `objectstore`: results to `s3://` on moto's server over results to a local dataset.
//! - `verify` (issue 14): `batchflow verify` over the 1,000,000 rows of four shard runs in one
//!   folder, clean and with a part deleted: wall time (target under 5 s) and peak RSS.
//! - `serve` (issue 15): a 100,000-request batch through `batchflow serve`'s Batches API,
//!   create to `completed`, over the CLI with the same workers on the same mock (target
//!   >= 0.98); and the server's peak RSS with ten such batches created at once (< 100 MB).
//! - `plan` (issue 24): plan's projected wall time over the run's own on the mock with varying
//!   latency (and a real server with `$BATCHFLOW_REALSERVER`), target error <= 0.15; plan's own
//!   time on 170,000 lines (under 30 s).
//! - `servestore` (issue 22): list, retrieve, create and a metrics scrape of `batchflow serve`
//!   with 100,000 stored batches (under 10 ms each, under 2× the time at 100).
//! - `stages` (issue 25): a screen of 10,000 records and an extract of the ~30% that pass, as
//!   two stages of one run, over the same number of requests as one stage (target ≤ 1.03), beside
//!   the two runs one after the other.
//!
//! Words after `--` (or `$BATCHFLOW_BENCH`, comma-separated) pick sections; none runs all.
//! `quick` divides every request count by 10 (a smoke test, not a figure to report).
//! `$BATCHFLOW_BENCH_WORKERS` sets the concurrency of `cost`, `memory` and the zero-latency
//! runs of `serve` (default 64);
//! `$BATCHFLOW_BENCH_ROUNDS` the turns each client takes in `cost` and `serve`, and the
//! rounds of `stages` (default 3, 1 if quick; `stages` takes at least 2 unless quick).
//! `$PYTHON` names the interpreter with aiohttp (default `python3`).
//!
//! Module map: `measure` (wait4 rusage of one child), `mock` (the mock as a child),
//! `inputs` (request files), `clients` (batchflow, the Python baseline, wrk), and one
//! file per section.

#![allow(
    clippy::print_stdout,
    reason = "the benchmark report goes to standard output"
)]

mod auto;
mod backends;
mod clients;
mod cost;
mod inputs;
mod measure;
mod memory;
mod mock;
mod objectstore;
mod plan;
mod serve;
mod servestore;
mod shards;
mod slots;
mod stages;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clients::Tools;

/// What this invocation runs, and at what scale.
pub struct Plan {
    pub tools: Tools,
    /// Request counts are divided by this (10 in `quick` mode).
    pub scale_down: u64,
    /// Concurrency of the `cost` and `memory` sections and of `serve`'s zero-latency runs.
    pub workers: u32,
    /// Turns each client takes in the `cost` and `serve` sections; rounds of `stages`.
    pub rounds: usize,
}

impl Plan {
    pub fn count(&self, full: u64) -> u64 {
        (full / self.scale_down).max(1)
    }
}

const SECTIONS: [&str; 12] = [
    "slots",
    "auto",
    "backends",
    "cost",
    "memory",
    "shards",
    "objectstore",
    "verify",
    "serve",
    "servestore",
    "plan",
    "stages",
];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; flags are not section names.
    let mut words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if let Ok(listed) = std::env::var("BATCHFLOW_BENCH") {
        words.extend(listed.split(',').map(|word| word.trim().to_owned()));
    }
    words.retain(|word| !word.is_empty());
    if let Some(unknown) = words
        .iter()
        .find(|word| !SECTIONS.contains(&word.as_str()) && *word != "quick")
    {
        eprintln!("throughput: unknown section {unknown:?}; choose from {SECTIONS:?} and `quick`");
        return ExitCode::FAILURE;
    }
    let quick = words.iter().any(|word| word == "quick");
    words.retain(|word| word != "quick");
    let chosen: Vec<&str> = SECTIONS
        .into_iter()
        .filter(|section| words.is_empty() || words.iter().any(|word| word == section))
        .collect();
    let (workers, rounds) = match (
        positive_from_env("BATCHFLOW_BENCH_WORKERS", 64),
        positive_from_env("BATCHFLOW_BENCH_ROUNDS", if quick { 1 } else { 3 }),
    ) {
        (Ok(workers), Ok(rounds)) => (workers, rounds),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("throughput: {message}");
            return ExitCode::FAILURE;
        }
    };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plan = Plan {
        tools: Tools {
            batchflow: env!("CARGO_BIN_EXE_batchflow").to_owned(),
            python: std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned()),
            baseline_script: manifest.join("benches/baseline_client.py"),
            wrk_script: manifest.join("benches/wrk_post.lua"),
            limit: Duration::from_secs(300),
        },
        scale_down: if quick { 10 } else { 1 },
        workers: u32::try_from(workers).unwrap_or(u32::MAX),
        rounds: usize::try_from(rounds).unwrap_or(1),
    };

    println!("batchflow throughput benchmarks ({})", machine());
    if quick {
        println!("quick mode: request counts divided by 10; not figures to report");
    }
    let mut failed = false;
    for section in chosen {
        let result = match section {
            "slots" => slots::run(&plan),
            "auto" => auto::run(&plan),
            "backends" => backends::run(&plan),
            "cost" => cost::run(&plan),
            "shards" => shards::run(&plan),
            "objectstore" => objectstore::run(&plan),
            "memory" => memory::run(&plan),
            "verify" => verify::run(&plan),
            "serve" => serve::run(&plan),
            "plan" => plan::run(&plan),
            "stages" => stages::run(&plan),
            _ => servestore::run(&plan),
        };
        if let Err(error) = result {
            eprintln!("throughput: section `{section}` failed: {error}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A positive count from environment variable `name`, or `default` when it is not set.
fn positive_from_env(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(count) if (1..=100_000).contains(&count) => Ok(count),
            _ => Err(format!("{name}={text:?} is not a count from 1 to 100000")),
        },
    }
}

/// CPU count and model, for the record.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}")
}

/// The median of `values` (sorted in place); NaN for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

/// `met` or `MISSED`, for a target line.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
