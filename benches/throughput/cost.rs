//! Client cost: a zero-latency mock with unlimited slots on the same cores, 100,000
//! requests through batchflow (JSONL, a Parquet file and a dataset directory out) and through the Python asyncio +
//! aiohttp baseline at the same concurrency. CPU per request is the client process's own
//! user+sys time; the mock's CPU meanwhile is printed beside it, since it shares the cores.
//! The three clients take turns for a few rounds and the medians are compared, so that a
//! burst of load from elsewhere on the machine does not decide a ratio.

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

/// One client's runs, one per round.
struct Client {
    label: &'static str,
    runs: Vec<ClientRun>,
}

impl Client {
    fn median(&self, figure: impl Fn(&ClientRun) -> f64) -> f64 {
        let mut values: Vec<f64> = self.runs.iter().map(figure).collect();
        crate::median(&mut values)
    }

    fn rate(&self) -> f64 {
        self.median(ClientRun::per_second)
    }

    fn cpu_per_request(&self) -> f64 {
        self.median(|run| run.cpu_per_request().as_secs_f64())
    }
}

fn print_run(label: &str, round: usize, run: &ClientRun) {
    println!(
        "{label:<26} #{round}  {:>7.0} req/s  {:>6.1} µs CPU/req  {:>4.2} cores  (mock {:>5.1} µs CPU/req)",
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
        "== client cost: zero-latency mock, unlimited slots, {workers} in flight, {requests} requests, {} rounds (medians compared)",
        plan.rounds
    );
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, requests)?;
    let mock = fast_mock(plan)?;
    let python_ready = clients::succeeds(&plan.tools.python, &["-c", "import aiohttp"]);
    if !python_ready {
        println!(
            "{} has no aiohttp (pip install aiohttp): no baseline ratio",
            plan.tools.python
        );
    }
    const OUTPUTS: [Output; 3] = [Output::Jsonl, Output::Parquet, Output::Dataset];
    let mut ours = OUTPUTS.map(|output| Client {
        label: output.label(),
        runs: Vec::new(),
    });
    let mut python = Client {
        label: "python asyncio+aiohttp",
        runs: Vec::new(),
    };
    for round in 1..=plan.rounds {
        for (client, output) in ours.iter_mut().zip(OUTPUTS) {
            let run = clients::batchflow(
                &plan.tools,
                &mock,
                &input,
                requests,
                &workers.to_string(),
                output,
                scratch.path(),
            )?;
            print_run(&format!("batchflow {}", client.label), round, &run);
            client.runs.push(run);
        }
        if python_ready {
            let run = clients::python(
                &plan.tools,
                &mock,
                &input,
                requests,
                workers,
                scratch.path(),
            )?;
            print_run(python.label, round, &run);
            python.runs.push(run);
        }
    }
    if python_ready {
        println!(
            "{:<26} median {:>7.0} req/s  {:>6.1} µs CPU/req",
            python.label,
            python.rate(),
            python.cpu_per_request() * 1e6
        );
    }
    for client in &ours {
        let rate = client.rate();
        let cpu = client.cpu_per_request();
        println!(
            "batchflow {:<16} median {rate:>7.0} req/s  {:>6.1} µs CPU/req   req/s target >= {TARGET_RATE:.0}: {}",
            client.label,
            cpu * 1e6,
            verdict(rate >= TARGET_RATE)
        );
        if python_ready {
            let ratio = cpu / python.cpu_per_request();
            println!(
                "{:<33} CPU/req batchflow ÷ python = {ratio:.3} (target <= {TARGET_CPU_RATIO}: {});  req/s batchflow ÷ python = {:.2}",
                "",
                verdict(ratio <= TARGET_CPU_RATIO),
                rate / python.rate()
            );
        }
    }
    Ok(())
}
