//! Object storage: the same input and mock (P = 32 slots, L = 20 ms, `--workers 32`), results
//! into a local dataset directory and into `s3://` on moto's S3 server (the tests' venv:
//! `.venv/bin/moto_server`, or beside `$BATCHFLOW_TEST_PYTHON`), the remote rate over the
//! local one. Default checkpoints, so each part is uploaded at every checkpoint as in real use.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mock::{Mock, MockKnobs};
use crate::{Plan, inputs, verdict};

const SLOTS: u32 = 32;
const LATENCY: Duration = Duration::from_millis(20);
const REQUESTS: u64 = 30_000;
const TARGET: f64 = 0.9;

/// moto's server, killed when dropped.
struct Moto {
    child: Child,
    address: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    std::env::var_os("BATCHFLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .and_then(|python| python.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin"))
        .join("moto_server")
}

fn start_moto() -> io::Result<Moto> {
    let mut child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("moto's stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        match lines.next() {
            Some(line) => {
                if let Some(rest) = line?.split("http://").nth(1) {
                    break rest.trim().to_owned();
                }
            }
            None => return Err(io::Error::other("moto_server printed no address")),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let mut stream = TcpStream::connect(&address)?;
    write!(
        stream,
        "PUT /bench HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("creating the bucket: {answer}")));
    }
    Ok(Moto { child, address })
}

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    println!();
    println!(
        "== object storage: mock of P={SLOTS} slots, L={}ms, --workers {SLOTS}, {requests} requests, local dataset vs s3:// on moto",
        LATENCY.as_millis()
    );
    if !moto_server().exists() {
        println!(
            "  {} is missing (run .ci/run once): skipped",
            moto_server().display()
        );
        return Ok(());
    }
    let moto = start_moto()?;
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    inputs::write_requests(&input, requests)?;
    let mock = Mock::start(
        &plan.tools.batchflow,
        &MockKnobs {
            slots: SLOTS as usize,
            latency: LATENCY,
            spread: 0.0,
            max_queue: 512,
        },
    )?;
    let local = format!("{}/local/", scratch.path().display());
    let mut rates = Vec::new();
    for (label, output) in [("local", local.as_str()), ("s3://", "s3://bench/results/")] {
        let before = mock.succeeded()?;
        let started = Instant::now();
        let status = Command::new(&plan.tools.batchflow)
            .arg(&input)
            .args(["--backend", mock.url(), "--workers"])
            .arg(SLOTS.to_string())
            .args(["--output", output])
            .env_remove("OLLAMA_HOST")
            .env("AWS_ENDPOINT_URL", format!("http://{}", moto.address))
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(scratch.path().join("objectstore.log"))?)
            .status()?;
        let wall = started.elapsed();
        let answered = mock.succeeded()? - before;
        if !status.success() || answered != requests {
            return Err(io::Error::other(format!(
                "{label}: exited with {status}, {answered} of {requests} answered"
            )));
        }
        let rate = requests as f64 / wall.as_secs_f64();
        println!("  {label:<6} {rate:8.1} req/s ({:.2}s)", wall.as_secs_f64());
        rates.push(rate);
    }
    let ratio = rates[1] / rates[0];
    println!(
        "  s3:// ÷ local = {ratio:.3}   (target >= {TARGET}: {})",
        verdict(ratio >= TARGET)
    );
    Ok(())
}
