//! Memory: batchflow's peak RSS (wait4's maxrss) at 10,000, 170,000 and 1,000,000 requests
//! against the zero-latency mock, JSONL, a Parquet file and a dataset directory out. Each input is generated in a
//! scratch folder and deleted once measured.

use std::fs;
use std::io;

use crate::clients::{self, Output};
use crate::{Plan, cost, inputs, verdict};

const SIZES: [u64; 3] = [10_000, 170_000, 1_000_000];
const TARGET_BYTES: u64 = 64 * 1024 * 1024;
const OUTPUTS: [Output; 3] = [Output::Jsonl, Output::Parquet, Output::Dataset];

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(plan: &Plan) -> io::Result<()> {
    println!();
    println!(
        "== memory: peak RSS of batchflow, zero-latency mock, {} in flight",
        plan.workers
    );
    let scratch = tempfile::tempdir()?;
    let mock = cost::fast_mock(plan)?;
    let mut peaks = Vec::new();
    for full in SIZES {
        let requests = plan.count(full);
        let input = scratch.path().join(format!("requests-{requests}.jsonl"));
        inputs::write_requests(&input, requests)?;
        for output in OUTPUTS {
            let run = clients::batchflow(
                &plan.tools,
                &mock,
                &input,
                requests,
                &plan.workers.to_string(),
                output,
                scratch.path(),
            )?;
            println!(
                "{requests:>9} requests  {:<17} peak RSS {:>6.1} MiB   ({:.0} req/s, {:.1}s)",
                output.label(),
                mib(run.usage.max_rss_bytes),
                run.per_second(),
                run.usage.wall.as_secs_f64()
            );
            peaks.push((output, requests, run.usage.max_rss_bytes));
        }
        fs::remove_file(&input)?;
    }
    for output in OUTPUTS {
        let of_output: Vec<(u64, u64)> = peaks
            .iter()
            .filter(|(kind, _, _)| *kind == output)
            .map(|(_, requests, peak)| (*requests, *peak))
            .collect();
        if let (Some(first), Some(last)) = (of_output.first(), of_output.last()) {
            let growth = last.1.saturating_sub(first.1) as f64
                / last.0.saturating_sub(first.0).max(1) as f64;
            println!(
                "{:<17} peak at {} ÷ peak at {} = {:.2}, {growth:.0} bytes more per extra request (target: flat); < {:.0} MiB at {}: {}",
                output.label(),
                last.0,
                first.0,
                last.1 as f64 / first.1 as f64,
                mib(TARGET_BYTES),
                last.0,
                verdict(last.1 < TARGET_BYTES)
            );
        }
    }
    Ok(())
}
