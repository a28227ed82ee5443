//! `batchflow serve` with many stored batches (issue 22, item 8): the time of each request
//! that used to read every record, with 100 and with 100,000 batches stored (and as many
//! output files), against targets of under 10 ms each and under 2× the time at 100.
//!
//! The data directory is written in the layout of earlier versions (one JSON record per
//! batch and per file), so the server's start also migrates it into its index; that start is
//! timed for the record. Every stored batch has ended (so the runner has nothing to resume)
//! and has an output file. Then, one connection per call, each measured from connect to the
//! last byte: `GET /v1/batches?limit=20`, the same after a cursor half-way down the list,
//! `GET /v1/batches/{id}` of ids spread over the list, `GET /v1/files?limit=20`,
//! `GET /metrics`, and `POST /v1/batches` (each create runs a one-line batch on the
//! zero-latency mock, as the server would).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::mock::{Mock, MockKnobs};
use crate::serve::Server;
use crate::{Plan, median, verdict};

const SCALES: [u64; 2] = [100, 100_000];
/// Calls of each kind at each scale.
const CALLS: usize = 200;
const TARGET_MS: f64 = 10.0;
const TARGET_GROWTH: f64 = 2.0;
const INPUT_ID: &str = "file-benchinput00000000000000";
const STATUSES: [&str; 4] = ["completed", "completed", "failed", "cancelled"];

pub fn run(plan: &Plan) -> io::Result<()> {
    println!();
    println!(
        "== servestore: request times with {} and {} stored batches (as many output files), {CALLS} calls each, median and p90",
        SCALES[0],
        plan.count(SCALES[1])
    );
    let knobs = MockKnobs {
        slots: 4,
        latency: Duration::ZERO,
        spread: 0.0,
        max_queue: 512,
    };
    let mock = Mock::start(&plan.tools.batchflow, &knobs)?;
    let scratch = tempfile::tempdir()?;
    let mut figures = Vec::new();
    for scale in [SCALES[0], plan.count(SCALES[1])] {
        let data_dir = scratch.path().join(format!("data-{scale}"));
        let written = Instant::now();
        let ids = write_earlier_layout(&data_dir, scale)?;
        let writing = written.elapsed();
        let started = Instant::now();
        let server = Server::start(plan, &mock, 4, &data_dir)?;
        println!(
            "  {scale} batches: records written in {:.1} s, server up (migration included) in {:.2} s",
            writing.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        let times = measure(&server, &ids)?;
        server.stop(Duration::from_secs(120))?;
        figures.push((scale, times));
    }
    report(&figures);
    Ok(())
}

/// Median and 90th percentile of each kind of call, in milliseconds.
struct Times(Vec<(&'static str, f64, f64)>);

fn measure(server: &Server, ids: &[String]) -> io::Result<Times> {
    let middle = &ids[ids.len() / 2];
    let stride = (ids.len() / CALLS).max(1);
    let mut kinds: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut time = |kind: &'static str, call: &mut dyn FnMut(usize) -> io::Result<()>| {
        let mut samples = Vec::with_capacity(CALLS);
        for turn in 0..CALLS {
            let started = Instant::now();
            call(turn)?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        kinds.push((kind, samples));
        Ok::<(), io::Error>(())
    };
    let get = |path: &str| server.exchange("GET", path, None, 0, |_| Ok(())).map(drop);
    time("list batches", &mut |_| get("/v1/batches?limit=20"))?;
    time("list batches after a cursor", &mut |_| {
        get(&format!("/v1/batches?limit=20&after={middle}"))
    })?;
    time("retrieve a batch", &mut |turn| {
        get(&format!("/v1/batches/{}", ids[(turn * stride) % ids.len()]))
    })?;
    time("list files", &mut |_| get("/v1/files?limit=20"))?;
    time("metrics scrape", &mut |_| get("/metrics"))?;
    time("create a batch", &mut |_| server.create(INPUT_ID).map(drop))?;
    Ok(Times(
        kinds
            .into_iter()
            .map(|(kind, mut samples)| {
                samples.sort_by(f64::total_cmp);
                let p90 = samples[samples.len() * 9 / 10];
                (kind, median(&mut samples), p90)
            })
            .collect(),
    ))
}

fn report(figures: &[(u64, Times)]) {
    let [(small, small_times), (large, large_times)] = figures else {
        return;
    };
    println!(
        "  {:<30} {:>16} {:>16} {:>8}",
        "call (median / p90 ms)",
        format!("{small}"),
        format!("{large}"),
        "growth"
    );
    for ((kind, small_median, small_p90), (_, large_median, large_p90)) in
        small_times.0.iter().zip(&large_times.0)
    {
        let growth = large_median / small_median;
        println!(
            "  {kind:<30} {:>16} {:>16} {growth:>8.2}   (under {TARGET_MS} ms and {TARGET_GROWTH}×: {})",
            format!("{small_median:.2} / {small_p90:.2}"),
            format!("{large_median:.2} / {large_p90:.2}"),
            verdict(*large_median < TARGET_MS && growth < TARGET_GROWTH)
        );
    }
}

/// A data directory as earlier versions left it: `count` ended batches over one input, each
/// with its output file, one JSON record each. The batch ids, oldest first.
fn write_earlier_layout(dir: &Path, count: u64) -> io::Result<Vec<String>> {
    let files = dir.join("files");
    let batches = dir.join("batches");
    fs::create_dir_all(&batches)?;
    let line = json!({
        "custom_id": "only",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]},
    });
    write_file_record(&files, INPUT_ID, "batch", &format!("{line}\n"), 1)?;
    let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for number in 0..count {
        let id = format!("batch_{number:024}");
        let output = format!("file-{number:024}");
        let order = 2 + 2 * number;
        write_file_record(&files, &output, "batch_output", "{}\n", order)?;
        let status = STATUSES[usize::try_from(number).unwrap_or(0) % STATUSES.len()];
        let batch = json!({
            "id": id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": null,
            "input_file_id": INPUT_ID,
            "completion_window": "24h",
            "status": status,
            "output_file_id": output,
            "error_file_id": null,
            "created_at": 1_700_000_000,
            "in_progress_at": 1_700_000_001,
            "expires_at": 1_700_086_400,
            "finalizing_at": 1_700_000_002,
            "completed_at": (status == "completed").then_some(1_700_000_003),
            "failed_at": (status == "failed").then_some(1_700_000_003),
            "expired_at": null,
            "cancelling_at": (status == "cancelled").then_some(1_700_000_002),
            "cancelled_at": (status == "cancelled").then_some(1_700_000_003),
            "request_counts": {"total": 1, "completed": 1, "failed": 0},
            "metadata": {"number": number.to_string()},
        });
        write_record(
            &batches.join(format!("{id}.json")),
            &json!({"batch": batch, "order": order + 1}),
        )?;
        ids.push(id);
    }
    Ok(ids)
}

fn write_file_record(
    files: &Path,
    id: &str,
    purpose: &str,
    content: &str,
    order: u64,
) -> io::Result<()> {
    let dir = files.join(id);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("content"), content)?;
    let file = json!({
        "id": id,
        "object": "file",
        "bytes": content.len(),
        "created_at": 1_700_000_000,
        "filename": format!("{id}.jsonl"),
        "purpose": purpose,
        "status": "processed",
    });
    write_record(
        &dir.join("meta.json"),
        &json!({"file": file, "order": order}),
    )
}

fn write_record(path: &Path, record: &Value) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    serde_json::to_writer(&mut out, record)?;
    out.flush()
}
