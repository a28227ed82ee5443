//! Adaptive workers: mocks with P ∈ {1, 4, 8, 32} slots and 50 ms latency, 100 requests per
//! slot, through batchflow with `--workers auto` (the slots unknown to it) beside `--workers P`
//! (the best fixed count: more only queues at the server) against the same mock in the same run.
//! Whole runs are timed, so auto's ramp-up counts against it.

use std::io;
use std::time::Duration;

use crate::clients::{self, Output};
use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const SLOT_COUNTS: [u32; 4] = [1, 4, 8, 32];
const LATENCY: Duration = Duration::from_millis(50);
const REQUESTS_PER_SLOT: u64 = 100;
const TARGET: f64 = 0.95;

pub fn run(plan: &Plan) -> io::Result<()> {
    println!();
    println!(
        "== adaptive workers: P slots unknown to the client, L={}ms, {REQUESTS_PER_SLOT} requests per slot; --workers auto vs --workers P",
        LATENCY.as_millis()
    );
    let scratch = tempfile::tempdir()?;
    for slots in SLOT_COUNTS {
        let requests = plan.count(REQUESTS_PER_SLOT * u64::from(slots)).max(10);
        let input = scratch.path().join("requests.jsonl");
        inputs::write_requests(&input, requests)?;
        let mock = Mock::start(
            &plan.tools.batchflow,
            &MockKnobs {
                slots: slots as usize,
                latency: LATENCY,
                spread: 0.0,
                max_queue: 512,
            },
        )?;
        let mut rates = Vec::new();
        for workers in [slots.to_string(), "auto".to_owned()] {
            let run = clients::batchflow(
                &plan.tools,
                &mock,
                &input,
                requests,
                &workers,
                Output::Jsonl,
                scratch.path(),
            )?;
            rates.push(run.per_second());
        }
        let ratio = rates[1] / rates[0];
        println!(
            "  P={slots:<3} fixed {:8.1} req/s   auto {:8.1} req/s   auto/fixed = {ratio:.3}   (target >= {TARGET}: {})",
            rates[0],
            rates[1],
            verdict(ratio >= TARGET)
        );
    }
    Ok(())
}
