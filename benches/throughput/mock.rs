//! The mock server as a child process (`batchflow mock-server`), so that its CPU is neither
//! the bench's nor the measured client's, plus a tiny HTTP/1.1 GET for its `/mock/stats`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::measure;

/// The mock's knobs that the benchmarks vary.
#[derive(Debug, Clone)]
pub struct MockKnobs {
    pub slots: usize,
    pub latency: Duration,
    pub spread: f64,
    pub max_queue: usize,
}

/// A running `batchflow mock-server`; killed when dropped.
pub struct Mock {
    child: Child,
    url: String,
    host_port: String,
}

impl Mock {
    pub fn start(binary: &str, knobs: &MockKnobs) -> io::Result<Mock> {
        let mut child = Command::new(binary)
            .args(["mock-server", "--quiet", "--slots"])
            .arg(knobs.slots.to_string())
            .arg("--latency")
            .arg(format!("{}ms", knobs.latency.as_millis()))
            .arg("--spread")
            .arg(knobs.spread.to_string())
            .arg("--max-queue")
            .arg(knobs.max_queue.to_string())
            .env_remove("OLLAMA_NUM_PARALLEL")
            .env_remove("OLLAMA_MAX_QUEUE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let first_line = child.stdout.take().map(|stdout| {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let url = match first_line {
            Some(Ok(line)) if line.trim().starts_with("http://") => line.trim().to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "the mock server did not print its URL: {other:?}"
                )));
            }
        };
        let host_port = url.trim_start_matches("http://").to_owned();
        Ok(Mock {
            child,
            url,
            host_port,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// CPU the mock has used so far.
    pub fn cpu(&self) -> io::Result<Duration> {
        measure::process_cpu(self.child.id())
    }

    /// Requests answered 200 so far, from `GET /mock/stats`.
    pub fn succeeded(&self) -> io::Result<u64> {
        let mut stream = TcpStream::connect(&self.host_port)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /mock/stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host_port
        )?;
        let mut answer = String::new();
        stream.take(1 << 20).read_to_string(&mut answer)?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or_else(|| io::Error::other("no body in the /mock/stats answer"))?;
        let stats: serde_json::Value = serde_json::from_str(body).map_err(io::Error::other)?;
        stats["succeeded"]
            .as_u64()
            .ok_or_else(|| io::Error::other(format!("no `succeeded` in /mock/stats: {body}")))
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
