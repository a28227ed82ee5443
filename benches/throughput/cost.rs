//! Client cost: a zero-latency mock with unlimited slots on the same cores, 100,000
//! requests through batchflow (JSONL and Parquet out) and through the Python asyncio +
//! aiohttp baseline at the same concurrency. CPU per request is the client process's own
//! user+sys time; the mock's CPU meanwhile is printed beside it, since it shares the cores.

use std::io;
use std::time::Duration;

use crate::clients::{self, ClientRun, Output};
use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const REQUESTS: u64 = 100_000;
const TARGET_CPU_RATIO: f64 = 0.2;
const TARGET_RATE: f64 = 20_000.0;

/// The zero-latency mock of `cost` and `memory`.
pub fn fast_mock(plan: &Plan) -> io::Result<Mock> {
    Mock::start(
        &plan.tools.batchflow,
        &MockKnobs {
            slots: 100_000,
            latency: Duration::ZERO,
            spread: 0.0,
            max_queue: 100_000,
        },
    )
}

fn print_row(label: &str, run: &ClientRun) {
    println!(
        "{label:<26} {:>9.0} req/s  {:>7.1} µs CPU/req  {:>5.2} cores  (mock {:>5.1} µs CPU/req)",
        run.per_second(),
        run.cpu_per_request().as_secs_f64() * 1e6,
        run.usage.cpu.as_secs_f64() / run.usage.wall.as_secs_f64(),
        run.mock_cpu.as_secs_f64() * 1e6 / run.requests as f64,
    );
}

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    let workers = plan.workers;
    println!();
    println!(
        "== client cost: zero-latency mock, unlimited slots, {workers} in flight, {requests} requests"
    );
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, requests)?;
    let mock = fast_mock(plan)?;
    let mut ours = Vec::new();
    for output in [Output::Jsonl, Output::Parquet] {
        let run = clients::batchflow(
            &plan.tools,
            &mock,
            &input,
            requests,
            workers,
            output,
            scratch.path(),
        )?;
        print_row(&format!("batchflow {}", output.label()), &run);
        ours.push((output, run));
    }
    let python_ready = clients::succeeds(&plan.tools.python, &["-c", "import aiohttp"]);
    let python = if python_ready {
        let run = clients::python(
            &plan.tools,
            &mock,
            &input,
            requests,
            workers,
            scratch.path(),
        )?;
        print_row("python asyncio+aiohttp", &run);
        Some(run)
    } else {
        println!(
            "{} has no aiohttp (pip install aiohttp): no baseline ratio",
            plan.tools.python
        );
        None
    };
    for (output, run) in &ours {
        let rate = run.per_second();
        println!(
            "{:<26} {rate:>9.0} req/s   (target >= {TARGET_RATE:.0}: {})",
            output.label(),
            verdict(rate >= TARGET_RATE)
        );
        if let Some(python) = &python {
            let ratio =
                run.cpu_per_request().as_secs_f64() / python.cpu_per_request().as_secs_f64();
            println!(
                "{:<26} CPU/req batchflow ÷ python = {ratio:.3}   (target <= {TARGET_CPU_RATIO}: {});  req/s batchflow ÷ python = {:.2}",
                "",
                verdict(ratio <= TARGET_CPU_RATIO),
                rate / python.per_second()
            );
        }
    }
    Ok(())
}
