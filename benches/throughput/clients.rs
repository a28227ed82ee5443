//! The clients under comparison, each run as a child process against the same mock:
//! batchflow (JSONL or Parquet out), the Python asyncio + aiohttp baseline, and `wrk`.
//! Every run is checked: exit code 0 and one success at the mock per request.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::{self, Usage};
use crate::mock::Mock;

/// Where the batchflow results go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// JSONL on stdout, read and counted by the bench.
    Jsonl,
    /// `--output results.parquet` in the scratch folder.
    Parquet,
    /// `--output results/`, a dataset directory of part files, in the scratch folder.
    Dataset,
}

impl Output {
    pub fn label(self) -> &'static str {
        match self {
            Output::Jsonl => "JSONL -> JSONL",
            Output::Parquet => "JSONL -> Parquet",
            Output::Dataset => "JSONL -> dataset",
        }
    }
}

/// One client run over a whole input.
#[derive(Debug, Clone, Copy)]
pub struct ClientRun {
    pub requests: u64,
    pub usage: Usage,
    /// CPU the mock spent meanwhile.
    pub mock_cpu: Duration,
}

impl ClientRun {
    pub fn per_second(&self) -> f64 {
        self.usage.per_second(self.requests)
    }

    pub fn cpu_per_request(&self) -> Duration {
        self.usage.cpu_per_item(self.requests)
    }
}

/// Paths the runs need.
pub struct Tools {
    pub batchflow: String,
    pub python: String,
    pub baseline_script: PathBuf,
    pub wrk_script: PathBuf,
    /// Longest a single client run may take.
    pub limit: Duration,
}

/// What all `mocks` answered with 200 so far, and the CPU they spent.
fn mocks_so_far(mocks: &[&Mock]) -> io::Result<(u64, Duration)> {
    let mut total = (0, Duration::ZERO);
    for mock in mocks {
        total.0 += mock.succeeded()?;
        total.1 += mock.cpu()?;
    }
    Ok(total)
}

/// Runs `command` (stdout piped and counted, stderr to `log`) to its end against `mocks`, and
/// checks that it succeeded for all `requests`. `stdout_lines`: the result lines expected
/// on stdout, if any.
fn run_checked(
    mut command: Command,
    mocks: &[&Mock],
    requests: u64,
    stdout_lines: Option<u64>,
    log: &Path,
    limit: Duration,
) -> io::Result<ClientRun> {
    let (succeeded_before, mock_cpu_before) = mocks_so_far(mocks)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(log)?);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let counter = child.stdout.take().map(measure::count_lines);
    let usage = measure::wait_measured(child, started, limit)?;
    let lines = match counter {
        Some(counter) => counter
            .join()
            .map_err(|_| io::Error::other("the line counter panicked"))??,
        None => 0,
    };
    let (succeeded_after, mock_cpu_after) = mocks_so_far(mocks)?;
    let mock_cpu = mock_cpu_after.saturating_sub(mock_cpu_before);
    let succeeded = succeeded_after - succeeded_before;
    let stderr_tail = || {
        let text = fs::read_to_string(log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    };
    if usage.exit_code != Some(0) || succeeded != requests {
        return Err(io::Error::other(format!(
            "{command:?} exited with {:?}; the mock answered {succeeded} of {requests} requests with 200; its stderr ends with:\n{}",
            usage.exit_code,
            stderr_tail()
        )));
    }
    if let Some(expected) = stdout_lines.filter(|expected| *expected != lines) {
        return Err(io::Error::other(format!(
            "{command:?} wrote {lines} result lines, not {expected}"
        )));
    }
    Ok(ClientRun {
        requests,
        usage,
        mock_cpu,
    })
}

/// batchflow over `input` (`requests` lines) with `workers` in flight (a count, or `auto`).
pub fn batchflow(
    tools: &Tools,
    mock: &Mock,
    input: &Path,
    requests: u64,
    workers: &str,
    output: Output,
    scratch: &Path,
) -> io::Result<ClientRun> {
    batchflow_on(tools, &[mock], input, requests, workers, output, scratch)
}

/// [`batchflow`] spread over several backends (`workers` in flight on each).
pub fn batchflow_on(
    tools: &Tools,
    mocks: &[&Mock],
    input: &Path,
    requests: u64,
    workers: &str,
    output: Output,
    scratch: &Path,
) -> io::Result<ClientRun> {
    let mut command = Command::new(&tools.batchflow);
    command.arg(input);
    for mock in mocks {
        command.args(["--backend", mock.url()]);
    }
    command
        .args(["--workers", workers])
        .env_remove("OLLAMA_HOST");
    let parquet = scratch.join("results.parquet");
    let dataset = scratch.join("results");
    let _ = fs::remove_file(&parquet);
    let _ = fs::remove_dir_all(&dataset);
    let expected_lines = match output {
        Output::Jsonl => Some(requests),
        Output::Parquet => {
            command.arg("--output").arg(&parquet);
            Some(0)
        }
        Output::Dataset => {
            command
                .arg("--output")
                .arg(format!("{}/", dataset.display()));
            Some(0)
        }
    };
    let run = run_checked(
        command,
        mocks,
        requests,
        expected_lines,
        &scratch.join("batchflow.log"),
        tools.limit,
    );
    let _ = fs::remove_file(&parquet);
    let _ = fs::remove_dir_all(&dataset);
    run
}

/// The Python asyncio + aiohttp baseline over `input` with `concurrency` in flight.
pub fn python(
    tools: &Tools,
    mock: &Mock,
    input: &Path,
    requests: u64,
    concurrency: u32,
    scratch: &Path,
) -> io::Result<ClientRun> {
    let mut command = Command::new(&tools.python);
    command
        .arg(&tools.baseline_script)
        .arg(input)
        .args(["--backend", mock.url(), "--concurrency"])
        .arg(concurrency.to_string());
    run_checked(
        command,
        &[mock],
        requests,
        Some(requests),
        &scratch.join("python.log"),
        tools.limit,
    )
}

/// Whether `program` with `probe` runs and exits 0.
pub fn succeeds(program: &str, probe: &[&str]) -> bool {
    Command::new(program)
        .args(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `program` can be started at all (`wrk --version` exits 1).
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// What `wrk` measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub per_second: f64,
    pub requests: u64,
}

/// `wrk` posting `body` to `/api/chat` from `connections` connections for `duration`.
pub fn wrk(
    tools: &Tools,
    mock: &Mock,
    body: &str,
    connections: u32,
    duration: Duration,
) -> io::Result<WrkRun> {
    let succeeded_before = mock.succeeded()?;
    let output = Command::new("wrk")
        .args(["--threads", "1", "--connections"])
        .arg(connections.to_string())
        .arg("--duration")
        .arg(format!("{}s", duration.as_secs().max(1)))
        .arg("--script")
        .arg(&tools.wrk_script)
        .arg(format!("{}/api/chat", mock.url()))
        .env("WRK_BODY", body)
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let succeeded = mock.succeeded()? - succeeded_before;
    let failed = text.contains("Non-2xx") || text.contains("Socket errors");
    let per_second = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse::<f64>().ok());
    match per_second {
        Some(per_second) if output.status.success() && !failed => Ok(WrkRun {
            per_second,
            requests: succeeded,
        }),
        _ => Err(io::Error::other(format!(
            "wrk failed ({}):\n{text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))),
    }
}
