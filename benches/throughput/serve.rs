//! `batchflow serve` (issue 15): the OpenAI Files and Batches API over the engine, driven as
//! an OpenAI client would drive it, against the same mock as the CLI.
//!
//! - Throughput: 100,000 requests uploaded (`POST /v1/files`, multipart, not timed), then
//!   timed from `POST /v1/batches` to the poll of `GET /v1/batches/{id}` that sees
//!   `completed` (validation, the run and the output file all inside), over the same lines
//!   through the CLI (`--output DIR/`, the whole process timed) with the same `--workers`
//!   against the same mock. The two take turns; medians are compared.
//! - Memory: ten batches of 100,000 lines uploaded and created at once (one runs, nine wait),
//!   against the zero-latency mock; the server's peak RSS from `wait4` after SIGTERM.
//!
//! The server is a child process like the mock; the bench speaks HTTP/1.1 to it over a
//! plain `TcpStream`, one connection per call.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::clients::{self, Output};
use crate::measure::{self, Usage};
use crate::mock::{Mock, MockKnobs};
use crate::{Plan, cost, inputs, verdict};

const REQUESTS: u64 = 100_000;
const BATCHES: usize = 10;
/// The mock that resembles a real server: P slots of latency L, ideal P/L = 3,200 req/s.
const SLOTS: u32 = 64;
const LATENCY: Duration = Duration::from_millis(20);
/// How often a batch is polled: under 0.1% of a ~36 s run.
const POLL: Duration = Duration::from_millis(25);
const ENDPOINT: &str = "/v1/chat/completions";
const TARGET_RATIO: f64 = 0.98;
const TARGET_RSS_BYTES: u64 = 100_000_000;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(plan: &Plan) -> io::Result<()> {
    let requests = plan.count(REQUESTS);
    let scratch = tempfile::tempdir()?;
    let input = scratch.path().join("requests.jsonl");
    write_requests(&input, requests)?;
    println!();
    println!(
        "== serve: {requests} requests through the Batches API over the CLI, mock of P={SLOTS} slots, L={}ms, --workers {SLOTS}; polled every {}ms",
        LATENCY.as_millis(),
        POLL.as_millis()
    );
    let knobs = MockKnobs {
        slots: SLOTS as usize,
        latency: LATENCY,
        spread: 0.0,
        max_queue: 512,
    };
    let mock = Mock::start(&plan.tools.batchflow, &knobs)?;
    let ratio = compare(
        plan,
        &mock,
        SLOTS,
        &input,
        requests,
        scratch.path(),
        "slots",
    )?;
    println!(
        "  serve ÷ CLI = {ratio:.3}   (target >= {TARGET_RATIO}: {})",
        verdict(ratio >= TARGET_RATIO)
    );
    drop(mock);

    println!(
        "-- for information: zero-latency mock, --workers {}",
        plan.workers
    );
    let mock = cost::fast_mock(plan)?;
    let ratio = compare(
        plan,
        &mock,
        plan.workers,
        &input,
        requests,
        scratch.path(),
        "fast",
    )?;
    println!("  serve ÷ CLI = {ratio:.3}   (no target)");
    memory(plan, &mock, &input, requests, scratch.path())
}

/// The CLI and the server taking turns over `input` against `mock`, `plan.rounds` each:
/// the median rate of the server over the CLI's.
fn compare(
    plan: &Plan,
    mock: &Mock,
    workers: u32,
    input: &Path,
    requests: u64,
    scratch: &Path,
    name: &str,
) -> io::Result<f64> {
    let server = Server::start(plan, mock, workers, &scratch.join(name))?;
    let file_id = server.upload(input)?;
    let (mut cli_rates, mut serve_rates) = (Vec::new(), Vec::new());
    for round in 1..=plan.rounds {
        let cli = clients::batchflow(
            &plan.tools,
            mock,
            input,
            requests,
            &workers.to_string(),
            Output::Dataset,
            scratch,
        )?;
        println!(
            "  round {round}  CLI   {:8.1} req/s  {:6.2}s (whole process)",
            cli.per_second(),
            cli.usage.wall.as_secs_f64()
        );
        cli_rates.push(cli.per_second());
        let served = server.run_batch(&file_id, mock, requests, plan.tools.limit)?;
        println!(
            "  round {round}  serve {:8.1} req/s  {:6.2}s (create → completed; polls first saw {})",
            requests as f64 / served.wall.as_secs_f64(),
            served.wall.as_secs_f64(),
            served.phases()
        );
        serve_rates.push(requests as f64 / served.wall.as_secs_f64());
    }
    let usage = server.stop(plan.tools.limit)?;
    let (cli, serve) = (
        crate::median(&mut cli_rates),
        crate::median(&mut serve_rates),
    );
    println!(
        "  median      CLI {cli:.1} req/s, serve {serve:.1} req/s; the server's peak RSS over {} batches {:.1} MiB",
        plan.rounds,
        mib(usage.max_rss_bytes)
    );
    Ok(serve / cli)
}

/// Ten batches at once against `mock`: the server's peak RSS and the time from the first
/// create to the last completed.
fn memory(plan: &Plan, mock: &Mock, input: &Path, requests: u64, scratch: &Path) -> io::Result<()> {
    println!(
        "-- memory: {BATCHES} batches of {requests} requests created at once, zero-latency mock, --workers {}",
        plan.workers
    );
    let server = Server::start(plan, mock, plan.workers, &scratch.join("memory"))?;
    let files = (0..BATCHES)
        .map(|_| server.upload(input))
        .collect::<io::Result<Vec<_>>>()?;
    let before = mock.succeeded()?;
    let started = Instant::now();
    let ids = files
        .iter()
        .map(|file_id| server.create(file_id))
        .collect::<io::Result<Vec<_>>>()?;
    let limit = plan.tools.limit * u32::try_from(BATCHES).unwrap_or(u32::MAX);
    for id in &ids {
        let done = server.wait_completed(id, started, limit)?;
        check_counts(&done.batch, requests)?;
    }
    let wall = started.elapsed();
    let usage = server.stop(plan.tools.limit)?;
    let answered = mock.succeeded()? - before;
    let expected = requests * BATCHES as u64;
    if answered != expected {
        return Err(io::Error::other(format!(
            "the mock answered {answered} of {expected} requests"
        )));
    }
    println!(
        "  {BATCHES} batches completed in {:.1}s ({:.0} req/s); server CPU {:.1}s",
        wall.as_secs_f64(),
        expected as f64 / wall.as_secs_f64(),
        usage.cpu.as_secs_f64()
    );
    println!(
        "  server peak RSS {:.1} MiB   (target < {:.1} MiB, 100 MB: {})",
        mib(usage.max_rss_bytes),
        mib(TARGET_RSS_BYTES),
        verdict(usage.max_rss_bytes < TARGET_RSS_BYTES)
    );
    Ok(())
}

/// Writes `count` request lines for `/v1/chat/completions` (the batch's endpoint, which
/// every line must name) with ids `req-0…` to `path`.
fn write_requests(path: &Path, count: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    for index in 0..count {
        let line = json!({
            "custom_id": format!("req-{index}"),
            "method": "POST",
            "url": ENDPOINT,
            "body": inputs::chat_body(index),
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn check_counts(batch: &Value, requests: u64) -> io::Result<()> {
    let counts = &batch["request_counts"];
    let fine = counts["total"].as_u64() == Some(requests)
        && counts["completed"].as_u64() == Some(requests)
        && counts["failed"].as_u64() == Some(0)
        && batch["output_file_id"].is_string();
    if fine {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "batch {} completed with counts {counts} and output {}, not {requests} ok",
            batch["id"], batch["output_file_id"]
        )))
    }
}

/// A batch seen `completed`, and when the polls first saw each status.
struct Completed {
    batch: Value,
    wall: Duration,
    seen: Vec<(String, Duration)>,
}

impl Completed {
    fn phases(&self) -> String {
        self.seen
            .iter()
            .map(|(status, at)| format!("{status} at {:.2}s", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A running `batchflow serve` with its own data directory; killed when dropped unless
/// stopped.
pub struct Server {
    child: Option<Child>,
    started: Instant,
    addr: String,
    log: PathBuf,
}

impl Server {
    pub fn start(plan: &Plan, mock: &Mock, workers: u32, data_dir: &Path) -> io::Result<Server> {
        fs::create_dir_all(data_dir)?;
        let log = data_dir.with_extension("log");
        let started = Instant::now();
        let child = Command::new(&plan.tools.batchflow)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--backend", mock.url(), "--workers"])
            .arg(workers.to_string())
            .env_remove("OLLAMA_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()?;
        let mut server = Server {
            child: Some(child),
            started,
            addr: String::new(),
            log,
        };
        server.addr = server.bound_address()?;
        Ok(server)
    }

    /// The address the server logs once it listens.
    fn bound_address(&mut self) -> io::Result<String> {
        // A start moves an earlier data directory's records into the index first.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text = fs::read_to_string(&self.log)?;
            let found = text
                .lines()
                .filter(|line| line.contains("Serving the OpenAI Batch API."))
                .find_map(|line| line.split_once("addr=").map(|(_, rest)| rest))
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(addr) = found {
                return Ok(addr.to_owned());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "`batchflow serve` did not say where it listens; its log:\n{}",
                    tail(&text)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then what the whole process cost.
    pub fn stop(mut self, limit: Duration) -> io::Result<Usage> {
        let child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("the server was stopped already"))?;
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // SAFETY: kill(2) on our own child, not reaped yet (it is reaped below).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let usage = measure::wait_measured(child, self.started, limit)?;
        if usage.exit_code != Some(0) {
            return Err(io::Error::other(format!(
                "`batchflow serve` exited with {:?} after SIGTERM; its log:\n{}",
                usage.exit_code,
                tail(&fs::read_to_string(&self.log).unwrap_or_default())
            )));
        }
        Ok(usage)
    }

    /// Uploads `input` with `purpose=batch`: its file id.
    fn upload(&self, input: &Path) -> io::Result<String> {
        const BOUNDARY: &str = "batchflow-bench-boundary-7d1f3c";
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"requests.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let length = head.len() as u64 + fs::metadata(input)?.len() + tail.len() as u64;
        let file = self.call(
            "POST",
            "/v1/files",
            Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
            length,
            |out| {
                out.write_all(head.as_bytes())?;
                io::copy(&mut File::open(input)?, out)?;
                out.write_all(tail.as_bytes())
            },
        )?;
        string_field(&file, "id")
    }

    /// `POST /v1/batches` over `file_id`: the batch's id.
    pub fn create(&self, file_id: &str) -> io::Result<String> {
        let body = json!({
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
        })
        .to_string();
        let batch = self.call(
            "POST",
            "/v1/batches",
            Some("application/json"),
            body.len() as u64,
            |out| out.write_all(body.as_bytes()),
        )?;
        string_field(&batch, "id")
    }

    /// Creates a batch over `file_id` and polls it to `completed`, checking that all
    /// `requests` were answered, by the mock and in the batch's counts.
    fn run_batch(
        &self,
        file_id: &str,
        mock: &Mock,
        requests: u64,
        limit: Duration,
    ) -> io::Result<Completed> {
        let before = mock.succeeded()?;
        let started = Instant::now();
        let id = self.create(file_id)?;
        let done = self.wait_completed(&id, started, limit)?;
        check_counts(&done.batch, requests)?;
        let answered = mock.succeeded()? - before;
        if answered != requests {
            return Err(io::Error::other(format!(
                "batch {id}: the mock answered {answered} of {requests} requests"
            )));
        }
        Ok(done)
    }

    /// Polls batch `id` every [`POLL`] until it is `completed`; times are from `started`.
    fn wait_completed(&self, id: &str, started: Instant, limit: Duration) -> io::Result<Completed> {
        let mut seen: Vec<(String, Duration)> = Vec::new();
        loop {
            let batch = self.call("GET", &format!("/v1/batches/{id}"), None, 0, |_| Ok(()))?;
            let status = string_field(&batch, "status")?;
            let at = started.elapsed();
            if seen.last().is_none_or(|(last, _)| *last != status) {
                seen.push((status.clone(), at));
            }
            match status.as_str() {
                "completed" => {
                    return Ok(Completed {
                        batch,
                        wall: at,
                        seen,
                    });
                }
                "validating" | "in_progress" | "finalizing" => {}
                _ => {
                    return Err(io::Error::other(format!(
                        "batch {id} ended {status}: {}",
                        batch["errors"]
                    )));
                }
            }
            if at > limit {
                return Err(io::Error::other(format!(
                    "batch {id} is still {status} after {limit:?}"
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// One HTTP/1.1 exchange on a fresh connection: the JSON body of a 200 answer.
    /// `write_body` writes exactly `length` bytes.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        length: u64,
        write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Value> {
        let body = self.exchange(method, path, content_type, length, write_body)?;
        serde_json::from_str(&body).map_err(|error| {
            io::Error::other(format!("{method} {path}: not JSON ({error}): {body}"))
        })
    }

    /// One request on a connection of its own: the body of a 200 answer, else an error
    /// holding the answer.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        length: u64,
        write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<String> {
        let stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut out = BufWriter::with_capacity(1 << 16, &stream);
        write!(
            out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        )?;
        if let Some(content_type) = content_type {
            write!(
                out,
                "Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
            )?;
        }
        out.write_all(b"\r\n")?;
        write_body(&mut out)?;
        out.flush()?;
        drop(out);
        let mut answer = Vec::new();
        (&stream).take(16 << 20).read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("{method} {path}: no HTTP answer")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok());
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Err(io::Error::other(format!(
                "{method} {path}: a chunked answer, which this client does not read"
            )));
        }
        if status != Some(200) {
            return Err(io::Error::other(format!("{method} {path}: {head}\n{body}")));
        }
        Ok(body.to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn string_field(object: &Value, name: &str) -> io::Result<String> {
    object[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("no string `{name}` in {object}")))
}

/// The last 2,000 bytes of a log.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(2000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
