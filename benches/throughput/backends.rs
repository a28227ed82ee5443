//! Several backends: two mocks of P = 8 slots at L = 50 ms against one, `--workers 8` (per
//! backend), 4,000 requests each way: the two-backend rate over the one-backend rate.

use std::io;
use std::time::Duration;

use crate::clients::{self, Output};
use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const SLOTS: u32 = 8;
const LATENCY: Duration = Duration::from_millis(50);
const REQUESTS: u64 = 4_000;
const TARGET: f64 = 1.9;

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    println!();
    println!(
        "== several backends: mocks of P={SLOTS} slots, L={}ms, --workers {SLOTS} per backend, {requests} requests",
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
    let first = Mock::start(&plan.tools.batchflow, &knobs)?;
    let second = Mock::start(&plan.tools.batchflow, &knobs)?;
    let workers = SLOTS.to_string();
    let mut rates = Vec::new();
    for mocks in [vec![&first], vec![&first, &second]] {
        let run = clients::batchflow_on(
            &plan.tools,
            &mocks,
            &input,
            requests,
            &workers,
            Output::Jsonl,
            scratch.path(),
        )?;
        println!(
            "  {} backend(s)  {:8.1} req/s ({:.2}s wall)",
            mocks.len(),
            run.per_second(),
            run.usage.wall.as_secs_f64()
        );
        rates.push(run.per_second());
    }
    let ratio = rates[1] / rates[0];
    println!(
        "  two ÷ one = {ratio:.2}   (target >= {TARGET}: {})",
        verdict(ratio >= TARGET)
    );
    Ok(())
}
