//! Slot efficiency: a mock with P = 8 slots and latency L = 50 ms (fixed, then ±50%),
//! 4,000 requests through batchflow with `--workers 8`, beside `wrk` at 8 connections
//! posting the same body to the same mock for as long as the ideal run takes.

use std::io;
use std::time::Duration;

use crate::clients::{self, Output};
use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const SLOTS: u32 = 8;
const LATENCY: Duration = Duration::from_millis(50);
const REQUESTS: u64 = 4_000;
const TARGET: f64 = 0.98;

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    let ideal = f64::from(SLOTS) / LATENCY.as_secs_f64();
    let ideal_duration = Duration::from_secs_f64(requests as f64 / ideal);
    println!();
    println!(
        "== slot efficiency: P={SLOTS} slots, L={}ms, --workers {SLOTS}, {requests} requests; ideal P/L = {ideal:.1} req/s",
        LATENCY.as_millis()
    );
    let have_wrk = clients::installed("wrk");
    if !have_wrk {
        println!(
            "wrk not found (apt-get install -y wrk): printing batchflow against the ideal only"
        );
    }
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, requests)?;
    for spread in [0.0, 0.5] {
        let mock = Mock::start(
            &plan.tools.batchflow,
            &MockKnobs {
                slots: SLOTS as usize,
                latency: LATENCY,
                spread,
                max_queue: 512,
            },
        )?;
        let ours = clients::batchflow(
            &plan.tools,
            &mock,
            &input,
            requests,
            &SLOTS.to_string(),
            Output::Jsonl,
            scratch.path(),
        )?;
        let ours_rate = ours.per_second();
        let label = format!("spread ±{:.0}%", spread * 100.0);
        println!(
            "{label:>12}  batchflow {ours_rate:8.1} req/s ({:.2}s wall)   batchflow/ideal {:.3}",
            ours.usage.wall.as_secs_f64(),
            ours_rate / ideal
        );
        if have_wrk {
            let reference = clients::wrk(
                &plan.tools,
                &mock,
                &inputs::wire_body(0),
                SLOTS,
                ideal_duration.max(Duration::from_secs(1)),
            )?;
            let ratio = ours_rate / reference.per_second;
            println!(
                "{:>12}  wrk       {:8.1} req/s ({} requests)     wrk/ideal       {:.3}",
                "",
                reference.per_second,
                reference.requests,
                reference.per_second / ideal
            );
            println!(
                "{:>12}  batchflow/wrk = {ratio:.3}   (target >= {TARGET}: {})",
                "",
                verdict(ratio >= TARGET)
            );
        }
    }
    Ok(())
}
