//! `--metrics`: the real binary serves Prometheus' text format while it runs, scraped over
//! plain HTTP and parsed by a real parser (`prometheus_client`'s, in the test venv); the
//! figures mid-run only rise, those at the end are the stats file's, and an address in use
//! stops the run before it connects to anything.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use batchflow::stats::StatsSnapshot;
use serde::Deserialize;
use support::{Mock, batchflow, chat_lines, run_python, wait_until, write_input};

/// Forces "no GPU" even on a machine that has one.
pub(crate) const NO_NVML: (&str, &str) =
    ("BATCHFLOW_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1");

/// Parses a JSON list of expositions with `prometheus_client` and prints, for each, its
/// families (name → type, name → the label names of its samples) and samples.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
scrapes = []
for text in json.load(sys.stdin):
    families, labels, samples = {}, {}, []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        labels[family.name] = sorted({name for s in family.samples for name in s.labels})
        samples += [[s.name, s.labels, s.value] for s in family.samples]
    scrapes.append({"families": families, "labels": labels, "samples": samples})
json.dump(scrapes, sys.stdout)
"#;

/// One scrape as the parser read it.
#[derive(Debug, Deserialize)]
struct Scrape {
    families: BTreeMap<String, String>,
    labels: BTreeMap<String, Vec<String>>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(sample, found, _)| sample == name && *found == labels)
            .map(|(_, _, value)| *value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:?}", self.samples))
    }

    /// Every sample of `name`, by the value of its one label `label`.
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        self.samples
            .iter()
            .filter(|(sample, _, _)| sample == name)
            .map(|(_, labels, value)| (labels[label].clone(), *value as u64))
            .collect()
    }

    fn requests(&self, outcome: &str) -> u64 {
        self.get("batchflow_requests_total", &[("outcome", outcome)]) as u64
    }

    /// The families as `support::metric_families` writes them. The parser names a counter
    /// family without its `_total`, as OpenMetrics does; the exposition's name has it.
    fn fixture_lines(&self) -> BTreeSet<String> {
        self.families
            .iter()
            .map(|(name, kind)| {
                let suffix = if kind == "counter" { "_total" } else { "" };
                let labels = self.labels[name].join(",");
                format!("{name}{suffix} {kind} {labels}")
                    .trim_end()
                    .to_owned()
            })
            .collect()
    }
}

fn parse(texts: &[String]) -> Vec<Scrape> {
    let input = serde_json::to_vec(texts).expect("JSON");
    serde_json::from_str(&run_python(PARSER, &input)).expect("the parser's JSON")
}

/// `GET /metrics` over plain HTTP/1.1: the body of a 200 answer in the text format.
pub(crate) fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("the endpoint accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!head.contains("chunked"), "a plain body: {head}");
    body.to_owned()
}

/// The child's standard error so far, read on a thread of its own.
pub(crate) fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let collected = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = stderr.read(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..read]);
            sink.lock().expect("the stderr buffer").push_str(&text);
        }
    });
    collected
}

/// The address the run logged, as in `Serving metrics at /metrics. addr=127.0.0.1:PORT`.
pub(crate) fn logged_addr(stderr: &Mutex<String>) -> SocketAddr {
    let mut addr = None;
    wait_until("the run logs its metrics address", || {
        let text = stderr.lock().expect("the stderr buffer");
        addr = text
            .lines()
            .find(|line| line.contains("Serving metrics"))
            .and_then(|line| line.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        addr.is_some()
    });
    addr.expect("found by the wait")
}

pub(crate) fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: kill only sends a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[test]
fn metrics_scraped_mid_run_and_at_the_end_agree_with_the_stats_file() {
    // At once, not after the run, when the venv is missing.
    support::python();
    let mock = Mock::start(MockConfig {
        slots: 4,
        latency: Duration::from_millis(20),
        faults: FaultRates {
            server_error: 0.2,
            ..FaultRates::default()
        },
        seed: 5,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut input = chat_lines(300);
    input.push_str("not json\n");
    let input = write_input(dir.path(), &input);
    let stats_path = dir.path().join("stats.json");
    let stdout = std::fs::File::create(dir.path().join("out.jsonl")).expect("stdout file");
    let mut child = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--workers", "4"])
        .args(["--retries", "1", "--retry-base", "1ms", "--stats"])
        .arg(&stats_path)
        .args(["--metrics", "127.0.0.1:0", "--metrics-linger", "10m"])
        .env(NO_NVML.0, NO_NVML.1)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = collect_stderr(&mut child);
    let addr = logged_addr(&stderr);

    let mut texts = Vec::new();
    wait_until("the endpoint says the run finished", || {
        let text = scrape(addr);
        let finished = text.lines().any(|line| line == "batchflow_run_finished 1");
        texts.push(text);
        finished
    });
    let stats: StatsSnapshot =
        serde_json::from_slice(&std::fs::read(&stats_path).expect("the stats file"))
            .expect("stats JSON");
    // Read after the endpoint said the run finished: the stats file was written before.
    assert!(stats.finished, "the stats file's last write came first");
    texts.push(scrape(addr));
    sigterm(&child);
    wait_until("the linger ends at the signal", || {
        child.try_wait().expect("try_wait").is_some()
    });
    let status = child.wait().expect("the exit status");
    let stderr = stderr.lock().expect("the stderr buffer").clone();
    assert_eq!(status.code(), Some(1), "the run's own status: {stderr}");

    let scrapes = parse(&texts);
    let (last, during) = scrapes.split_last().expect("scrapes");
    let mid_run = during
        .iter()
        .filter(|scrape| {
            let done = scrape.requests("ok") + scrape.requests("failed");
            done > 0 && done < 300
        })
        .count();
    assert!(mid_run > 0, "a scrape while requests were under way");
    for scrape in &scrapes {
        assert_eq!(scrape.families["batchflow_requests"], "counter");
        assert_eq!(
            scrape.families["batchflow_request_duration_seconds"],
            "histogram"
        );
        assert_eq!(scrape.families["batchflow_in_flight"], "gauge");
        assert_eq!(scrape.get("batchflow_worker_limit", &[]), 4.0);
        assert!(scrape.get("batchflow_in_flight", &[]) <= 4.0);
        assert!(
            !scrape
                .families
                .keys()
                .any(|name| name.starts_with("batchflow_gpu_")),
            "no GPU figures without a driver"
        );
    }
    let rising = [
        ("batchflow_requests_total", vec![("outcome", "ok")]),
        ("batchflow_requests_total", vec![("outcome", "failed")]),
        ("batchflow_requests_total", vec![("outcome", "invalid")]),
        ("batchflow_request_duration_seconds_count", vec![]),
        ("batchflow_completion_tokens_total", vec![]),
    ];
    for (name, labels) in &rising {
        let values: Vec<f64> = scrapes.iter().map(|s| s.get(name, labels)).collect();
        assert!(
            values.windows(2).all(|pair| pair[0] <= pair[1]),
            "{name} {labels:?} never goes down: {values:?}"
        );
    }

    assert_eq!(last.get("batchflow_run_finished", &[]), 1.0);
    assert_eq!(last.requests("ok"), stats.succeeded);
    assert_eq!(last.requests("failed"), stats.failed);
    assert_eq!(last.requests("invalid"), stats.invalid);
    assert_eq!(stats.invalid, 1);
    assert!(
        stats.failed > 0 && stats.retries > 0,
        "faults were injected"
    );
    assert_eq!(
        last.get("batchflow_requests_expected", &[]) as u64,
        stats.total.expect("a counted file")
    );
    assert_eq!(
        last.by_label("batchflow_retries_total", "cause"),
        stats.retries_by_cause
    );
    assert_eq!(
        last.by_label("batchflow_errors_total", "code"),
        stats.errors_by_code
    );
    assert_eq!(
        last.get("batchflow_prompt_tokens_total", &[]) as u64,
        stats.prompt_tokens
    );
    assert_eq!(
        last.get("batchflow_completion_tokens_total", &[]) as u64,
        stats.completion_tokens
    );
    assert_eq!(last.get("batchflow_in_flight", &[]) as u64, stats.in_flight);
    assert_eq!(
        last.get("batchflow_worker_limit", &[]) as u64,
        stats.workers
    );
    assert_eq!(
        last.get("batchflow_run_elapsed_seconds", &[]),
        stats.elapsed_secs
    );
    assert_eq!(
        last.get("batchflow_request_duration_seconds_count", &[]) as u64,
        stats.succeeded + stats.failed,
        "every request sent has a latency; the invalid line was never sent"
    );
    assert_eq!(
        last.get(
            "batchflow_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        last.get("batchflow_request_duration_seconds_count", &[])
    );
    let backend = [("backend", mock.url())];
    let backend: Vec<(&str, &str)> = backend.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        last.get("batchflow_backend_attempts_total", &backend) as u64,
        mock.server.stats().requests,
        "every attempt reached the mock"
    );
    assert!(last.value("batchflow_backend_up", &backend).is_some());

    // Every family has the name, type and labels the fixture records, and only the families a
    // run without a GPU driver cannot have are missing: the GPUs' and the server's own.
    let families = support::metric_families();
    let served = last.fixture_lines();
    assert!(
        served.is_subset(&families),
        "{served:#?} not all in {families:#?}"
    );
    let missing: Vec<_> = families.difference(&served).collect();
    assert!(
        missing
            .iter()
            .all(|line| line.starts_with("batchflow_gpu_") || line.starts_with("batchflow_serve_")),
        "a run's family is missing: {missing:?}"
    );
}

#[test]
fn an_address_in_use_is_an_exit_2_error_before_any_request() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken_addr = taken.local_addr().expect("its address");
    // A server that records whether anything connects: nothing may, preflight included.
    let backend = TcpListener::bind("127.0.0.1:0").expect("a backend port");
    backend.set_nonblocking(true).expect("non-blocking");
    let dir = tempfile::tempdir().expect("dir");
    let input = write_input(dir.path(), &chat_lines(3));
    let output = batchflow()
        .arg(&input)
        .arg("--backend")
        .arg(backend.local_addr().expect("its address").to_string())
        .arg("--metrics")
        .arg(taken_addr.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&taken_addr.to_string()), "{stderr}");
    assert!(stderr.contains("metrics"), "{stderr}");
    assert!(output.stdout.is_empty(), "no result line");
    assert_eq!(
        backend.accept().map(|_| ()).map_err(|error| error.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "nothing connected to the backend"
    );
}
