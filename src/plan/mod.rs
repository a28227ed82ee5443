//! `batchflow plan`: what a run of this input will cost on this server, before it starts. The
//! probe of `tune` measures throughput at rising concurrency on the input's first requests
//! (kept as results when the run's `--output` is given); one pass over the whole input counts
//! it exactly and sizes each prompt, in tokens calibrated on the probe (the server's own
//! counts over the probed bodies' bytes); and the checks say, each with its fix, what would
//! make the run slower than the probe: a server serving one request at a time, a model split
//! between CPU and GPU, prompts longer than their context (Ollama cuts them silently), one
//! model asked with several load options (each change reloads it), `keep_alive` unset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::backend::http::HttpBackend;
use crate::backend::preflight::{DEFAULT_NUM_CTX, latest_tagged};
use crate::error::Error;
use crate::gpu::{self, RunningModel};
use crate::item::SourceItem;
use crate::options::{Console, RunOptions};
use crate::shutdown::Shutdown;
use crate::source;
use crate::tune::{self, Probe, TuneReport};

pub mod stages;

pub use stages::{LaterStage, LaterStages, StageProjection};

/// Ollama unloads a model this long after its last request when `keep_alive` is unset.
const DEFAULT_KEEP_ALIVE_SECS: f64 = 300.0;
/// Options that make Ollama load a model anew when they change between requests.
const LOAD_OPTIONS: [&str; 8] = [
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "use_mmap",
    "use_mlock",
    "low_vram",
];
/// Line numbers named per finding.
const FIRST_LINES: usize = 5;

/// One finding, with what to do about it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// A stable name for scripts: `one_slot`, `cpu_split`, `prompt_over_context`,
    /// `load_options_vary`, `keep_alive_unset`, `model_not_loaded`.
    pub kind: &'static str,
    pub message: String,
    pub fix: String,
}

/// What `plan` found and projects.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub input: String,
    /// Requests in the input (of its shard), and lines that cannot become one.
    pub requests: u64,
    pub invalid_lines: u64,
    /// Requests the probe sent, and the results file that keeps them (the next run resumes
    /// past them), if any.
    pub probed: u64,
    pub kept_in: Option<PathBuf>,
    /// Estimated over the whole input.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Whether prompt tokens come from the server's counts on the probe (else ~4 bytes each).
    pub calibrated: bool,
    pub recommended_workers: usize,
    pub requests_per_sec: f64,
    pub prompt_tokens_per_sec: f64,
    pub completion_tokens_per_sec: f64,
    /// The requests left after the probe at the recommended workers, with a low–high range.
    pub wall_secs: f64,
    pub wall_low_secs: f64,
    pub wall_high_secs: f64,
    /// The stages that read the first one's rows, for a pipeline of stages; `wall_secs` is
    /// then the first stage's, and `total_wall_secs` every stage's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageProjection>,
    pub total_wall_secs: f64,
    /// The probe's steps and recommendation.
    pub tune: TuneReport,
    pub checks: Vec<Check>,
}

/// Probes the server with `options`' input, scans that input, and projects the run; for a
/// pipeline of stages, `options` are its first stage's and `later` the stages that read it.
pub async fn plan(
    options: &RunOptions,
    probe: &Probe,
    later: Option<&LaterStages>,
    console: Console,
    backend_override: Option<String>,
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<PlanReport, Error> {
    // The later stages are projected from the probe's rows: kept in a scratch file when the
    // run's own results do not keep them.
    let scratch = match (later, &probe.keep) {
        (Some(_), None) => Some(
            crate::storage::Staging::create("plan", &options.input.name()).map_err(|error| {
                Error::Internal(format!(
                    "cannot make a scratch folder for the probe: {error}"
                ))
            })?,
        ),
        _ => None,
    };
    let probed_into = scratch
        .as_ref()
        .map(|scratch| scratch.path().join("probe.parquet"))
        .or_else(|| probe.keep.clone());
    let probing = Probe {
        keep: probed_into.clone(),
        ..probe.clone()
    };
    let config = options.resolve(console, backend_override.clone(), env)?;
    let backends: Vec<HttpBackend> = config
        .backends
        .iter()
        .map(|backend| HttpBackend::new(backend.clone()))
        .collect::<Result<_, _>>()?;
    let loaded_before = running(&backends).await;
    let tune = tune::tune(options, &probing, console, backend_override, env).await?;
    let loaded_after = running(&backends).await;
    let probed: u64 = tune.steps.iter().map(|step| step.requests).sum();
    let prompt_counted: u64 = tune.steps.iter().map(|step| step.prompt_tokens).sum();
    let completion_counted: u64 = tune.steps.iter().map(|step| step.completion_tokens).sum();
    let scan = scan(&config, probed, prompt_counted).await?;

    let per_request_completion = completion_counted as f64 / probed.max(1) as f64;
    let step = tune
        .steps
        .iter()
        .find(|step| step.workers == tune.recommended);
    let rate = step.map_or(0.0, |step| step.requests_per_sec);
    let kept = probe.keep.is_some();
    let remaining = match kept {
        true => scan.requests.saturating_sub(probed),
        false => scan.requests,
    };
    // The run pays its own start (checking the backend, opening its results) once.
    let wall_secs = match rate > 0.0 {
        true => tune.start_secs + remaining as f64 / rate,
        false => f64::INFINITY,
    };
    let spread = step.map_or(0.5, |step| spread(step, probe.sample));
    let prompt_per_request = scan.prompt_tokens as f64 / scan.requests.max(1) as f64;
    let mut checks = scan.checks;
    checks.extend(server_checks(
        &tune,
        &loaded_before,
        &loaded_after,
        &scan.models,
    ));
    if scan.keep_alive_unset > 0 && scan.ollama && wall_secs > DEFAULT_KEEP_ALIVE_SECS {
        checks.push(Check {
            kind: "keep_alive_unset",
            message: format!(
                "{} requests set no keep_alive: Ollama unloads a model 5 minutes after its last request, and this run lasts about {}; any pause longer than that (a restart, a resume) pays the load again",
                scan.keep_alive_unset,
                duration(wall_secs)
            ),
            fix: "set keep_alive on every request, e.g. \"1h\" (request.keep_alive in a pipeline file, body.keep_alive in request lines)".into(),
        });
    }
    let stages = match (&probed_into, later) {
        (Some(results), Some(later)) => {
            let results = results.clone();
            let later = later.clone();
            let requests = scan.requests;
            tokio::task::spawn_blocking(move || stages::project(&results, requests, rate, &later))
                .await
                .map_err(|error| Error::Internal(format!("the plan's reader failed: {error}")))??
        }
        _ => Vec::new(),
    };
    drop(scratch);
    let total_wall_secs = wall_secs + stages.iter().map(|stage| stage.wall_secs).sum::<f64>();
    Ok(PlanReport {
        input: options.input.name(),
        requests: scan.requests,
        invalid_lines: scan.invalid,
        probed,
        kept_in: probe.keep.clone(),
        prompt_tokens: scan.prompt_tokens,
        completion_tokens: (per_request_completion * scan.requests as f64).round() as u64,
        calibrated: scan.calibrated,
        recommended_workers: tune.recommended,
        requests_per_sec: rate,
        prompt_tokens_per_sec: rate * prompt_per_request,
        completion_tokens_per_sec: rate * per_request_completion,
        wall_secs,
        wall_low_secs: wall_secs * (1.0 - spread),
        wall_high_secs: wall_secs * (1.0 + spread),
        stages,
        total_wall_secs,
        tune,
        checks,
    })
}

/// The relative uncertainty of a rate measured on `sample` requests: the latencies' spread
/// (from p50 and p90, as for a normal law) over the square root of the requests, at least 5%,
/// at most 50%.
fn spread(step: &tune::TuneStep, sample: usize) -> f64 {
    let variation = match (step.p50_latency_ms, step.p90_latency_ms) {
        (Some(p50), Some(p90)) if p50 > 0.0 => ((p90 - p50) / (1.2816 * p50)).max(0.0),
        _ => 0.5,
    };
    (2.0 * variation / (sample.max(1) as f64).sqrt()).clamp(0.05, 0.5)
}

async fn running(backends: &[HttpBackend]) -> Vec<RunningModel> {
    let mut models = Vec::new();
    for backend in backends {
        models.extend(gpu::running_models(backend).await);
    }
    models
}

/// What one pass over the input found.
struct Scan {
    requests: u64,
    invalid: u64,
    prompt_tokens: u64,
    calibrated: bool,
    /// The models the requests name, by name.
    models: BTreeMap<String, ModelUse>,
    keep_alive_unset: u64,
    /// Some request goes to Ollama's own API (`/api/…`), where options and keep_alive apply.
    ollama: bool,
    checks: Vec<Check>,
}

/// How the requests use one model: each set of load options, with its requests and first
/// line.
#[derive(Default)]
struct ModelUse {
    load_options: BTreeMap<String, (u64, u64)>,
}

/// The parts of a body that plan reads.
#[derive(serde::Deserialize)]
struct BodyView {
    #[serde(default)]
    options: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    keep_alive: Option<serde_json::Value>,
}

/// Reads the whole input once. The first `probed` requests are the probe's (it sends the
/// input's first requests), so their bytes calibrate tokens per byte against
/// `prompt_counted`, the server's count for them; every request's prompt is then estimated and
/// checked against its context as it passes.
async fn scan(
    config: &crate::engine::RunConfig,
    probed: u64,
    prompt_counted: u64,
) -> Result<Scan, Error> {
    let mut options = config.source.clone();
    options.limit = None;
    options.done = None;
    options.log_invalid = false;
    let opened = source::open_for(config.input.clone(), &options)?;
    let (sender, mut items) = tokio::sync::mpsc::channel(1024);
    let reader = source::spawn(opened, options, sender, Shutdown::new())?;
    let mut scan = Scan {
        requests: 0,
        invalid: 0,
        prompt_tokens: 0,
        calibrated: false,
        models: BTreeMap::new(),
        keep_alive_unset: 0,
        ollama: false,
        checks: Vec::new(),
    };
    // (line, bytes, context) of the probed requests until tokens per byte are known.
    let mut waiting: Vec<(u64, u64, u64)> = Vec::new();
    let mut probe_bytes = 0u64;
    let mut per_byte: Option<f64> = None;
    let mut over: (u64, Vec<u64>) = (0, Vec::new());
    while let Some(item) = items.recv().await {
        let request = match item {
            SourceItem::Request(request) => request,
            SourceItem::Invalid(_) => {
                scan.invalid += 1;
                continue;
            }
        };
        scan.requests += 1;
        let bytes = request.body.len() as u64;
        let body: Option<BodyView> = serde_json::from_slice(&request.body).ok();
        let ollama = request.url.starts_with("/api/");
        scan.ollama |= ollama;
        let load: BTreeMap<&str, &serde_json::Value> = body
            .as_ref()
            .and_then(|body| body.options.as_ref())
            .map(|options| {
                options
                    .iter()
                    .filter(|(key, _)| LOAD_OPTIONS.contains(&key.as_str()))
                    .map(|(key, value)| (key.as_str(), value))
                    .collect()
            })
            .unwrap_or_default();
        let context = load
            .get("num_ctx")
            .and_then(|value| value.as_u64())
            .unwrap_or(DEFAULT_NUM_CTX);
        if ollama && body.as_ref().is_some_and(|body| body.keep_alive.is_none()) {
            scan.keep_alive_unset += 1;
        }
        if let Some(model) = &request.model {
            let signature = serde_json::to_string(&load).unwrap_or_default();
            let entry = scan
                .models
                .entry(model.clone())
                .or_default()
                .load_options
                .entry(signature)
                .or_insert((0, request.line));
            entry.0 += 1;
        }
        if scan.requests <= probed {
            probe_bytes += bytes;
            waiting.push((request.line, bytes, context));
            if scan.requests == probed {
                per_byte = calibration(prompt_counted, probe_bytes);
                for (line, bytes, context) in waiting.drain(..) {
                    measure(&mut scan, &mut over, per_byte, line, bytes, context);
                }
            }
            continue;
        }
        measure(&mut scan, &mut over, per_byte, request.line, bytes, context);
    }
    // Fewer requests than the probe sent (another shard's, say): calibrate on those there are.
    if !waiting.is_empty() {
        per_byte = calibration(prompt_counted, probe_bytes);
        for (line, bytes, context) in waiting.drain(..) {
            measure(&mut scan, &mut over, per_byte, line, bytes, context);
        }
    }
    match reader.join() {
        Ok(summary) => {
            summary?;
        }
        Err(_) => return Err(Error::Internal("the input reader panicked".into())),
    }
    scan.calibrated = per_byte.is_some();
    if over.0 > 0 {
        scan.checks.push(Check {
            kind: "prompt_over_context",
            message: format!(
                "{} requests have a prompt of more tokens than their context (num_ctx, {DEFAULT_NUM_CTX} when unset), first at lines {}: Ollama cuts such a prompt without an error",
                over.0,
                lines(&over.1)
            ),
            fix: "raise num_ctx for them (request options), or shorten their prompts".into(),
        });
    }
    for (model, used) in &scan.models {
        if used.load_options.len() > 1 {
            let variants: Vec<String> = used
                .load_options
                .iter()
                .map(|(signature, (count, first))| {
                    format!("{signature} on {count} (first line {first})")
                })
                .collect();
            scan.checks.push(Check {
                kind: "load_options_vary",
                message: format!(
                    "{model} is asked with {} different load options ({}): each change reloads the model, seconds each",
                    used.load_options.len(),
                    variants.join("; ")
                ),
                fix: "give every request of a model the same num_ctx and other load options"
                    .into(),
            });
        }
    }
    Ok(scan)
}

/// Tokens per byte of body, from the server's count over the probe's bodies.
fn calibration(prompt_counted: u64, probe_bytes: u64) -> Option<f64> {
    (prompt_counted > 0 && probe_bytes > 0).then(|| prompt_counted as f64 / probe_bytes as f64)
}

/// Adds one request's estimated prompt, and notes it when it exceeds its context.
fn measure(
    scan: &mut Scan,
    over: &mut (u64, Vec<u64>),
    per_byte: Option<f64>,
    line: u64,
    bytes: u64,
    context: u64,
) {
    // Without the server's counts, about 4 bytes a token, as for English text.
    let tokens = (bytes as f64 * per_byte.unwrap_or(0.25)).round() as u64;
    scan.prompt_tokens += tokens;
    if tokens > context {
        over.0 += 1;
        if over.1.len() < FIRST_LINES {
            over.1.push(line);
        }
    }
}

/// The probe's findings about the server itself.
fn server_checks(
    tune: &TuneReport,
    before: &[RunningModel],
    after: &[RunningModel],
    models: &BTreeMap<String, ModelUse>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    if tune.flat_from_one {
        checks.push(Check {
            kind: "one_slot",
            message: "throughput is flat from 1 worker: the server runs one request at a time, so more workers only queue".into(),
            fix: "for Ollama, restart it with OLLAMA_NUM_PARALLEL=4 (or more, as GPU memory allows), then plan again".into(),
        });
    }
    let named = |loaded: &RunningModel, model: &str| {
        loaded.name == model || latest_tagged(model).is_some_and(|tagged| loaded.name == tagged)
    };
    for model in models.keys() {
        // A backend that answers no /api/ps (not Ollama) tells nothing either way.
        let answered = !before.is_empty() || !after.is_empty();
        if answered && !before.iter().any(|loaded| named(loaded, model)) {
            checks.push(Check {
                kind: "model_not_loaded",
                message: format!("{model} was not loaded before the probe: the probe's first requests paid its load, and a run started after it unloads pays it again"),
                fix: "start the run while the model is loaded (the probe loaded it), or set keep_alive".into(),
            });
        }
        if let Some(loaded) = after.iter().find(|loaded| named(loaded, model)) {
            // All on the CPU (no GPU, size_vram 0) is a CPU server, not a split.
            if loaded.size_vram > 0 && loaded.size_vram < loaded.size {
                checks.push(Check {
                    kind: "cpu_split",
                    message: format!(
                        "{model} is split between CPU and GPU: {:.1} of {:.1} GiB in GPU memory, and the rest runs several times slower",
                        gib(loaded.size_vram),
                        gib(loaded.size)
                    ),
                    fix: "use a smaller model or quantization, a smaller num_ctx, or fewer parallel slots (OLLAMA_NUM_PARALLEL), so that it fits in GPU memory".into(),
                });
            }
        }
    }
    checks
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

fn lines(lines: &[u64]) -> String {
    lines
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `2h 05m`, `12m 30s`, `45s`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "unknown (the probe finished no request)".into();
    }
    let total = seconds.round() as u64;
    let (hours, minutes, secs) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, _) => format!("{minutes}m {secs:02}s"),
        _ => format!("{hours}h {minutes:02}m"),
    }
}

impl PlanReport {
    /// The plan as text: the probe's table, the figures, then each check with its fix.
    pub fn render(&self) -> String {
        let mut text = self.tune.render();
        let _ = writeln!(text, "\nPlan for {}", self.input);
        let _ = writeln!(
            text,
            "  requests:     {} ({} invalid lines)",
            self.requests, self.invalid_lines
        );
        let basis = match self.calibrated {
            true => format!(
                "calibrated on the server's counts for {} probe requests",
                self.probed
            ),
            false => "about 4 bytes a token: the server counted no tokens".into(),
        };
        let _ = writeln!(
            text,
            "  prompt:       ~{} tokens ({:.0} a request; {basis})",
            self.prompt_tokens,
            self.prompt_tokens as f64 / self.requests.max(1) as f64
        );
        let _ = writeln!(
            text,
            "  completion:   ~{} tokens ({:.0} a request)",
            self.completion_tokens,
            self.completion_tokens as f64 / self.requests.max(1) as f64
        );
        let _ = writeln!(
            text,
            "  throughput:   {:.1} requests/s at --workers {}; {:.0} prompt and {:.0} completion tokens/s",
            self.requests_per_sec,
            self.recommended_workers,
            self.prompt_tokens_per_sec,
            self.completion_tokens_per_sec
        );
        let _ = writeln!(
            text,
            "  wall time:    {} ({} to {})",
            duration(self.wall_secs),
            duration(self.wall_low_secs),
            duration(self.wall_high_secs)
        );
        if !self.stages.is_empty() {
            for stage in &self.stages {
                let _ = writeln!(
                    text,
                    "  stage {}:  reads {}: {} of the probe's {} answers pass ({:.0}%), so ~{} requests, ~{} at the probe's rate (its own requests are not probed)",
                    stage.name,
                    stage.reads,
                    stage.probe_passing,
                    stage.probe_answers,
                    100.0 * stage.probe_passing as f64 / stage.probe_answers.max(1) as f64,
                    stage.requests,
                    duration(stage.wall_secs)
                );
            }
            let _ = writeln!(
                text,
                "  all stages:   ~{} (the stages share the workers, so their times add up)",
                duration(self.total_wall_secs)
            );
        }
        match &self.kept_in {
            Some(path) => {
                let _ = writeln!(
                    text,
                    "  probe:        {} requests answered, kept in {}: run with --resume to continue past them",
                    self.probed,
                    path.display()
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "  probe:        {} requests answered, not kept (give --output to keep them)",
                    self.probed
                );
            }
        }
        if self.checks.is_empty() {
            text.push_str("Checks: none failed.\n");
        } else {
            text.push_str("Checks:\n");
            for check in &self.checks {
                let _ = writeln!(text, "  ! {}\n    fix: {}", check.message, check.fix);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(7500.0), "2h 05m");
        assert!(duration(f64::INFINITY).starts_with("unknown"));
    }

    #[test]
    fn the_range_widens_with_the_latencies_spread_and_narrows_with_the_sample() {
        let step = |p50, p90| tune::TuneStep {
            workers: 4,
            requests_per_sec: 10.0,
            p50_latency_ms: Some(p50),
            p90_latency_ms: Some(p90),
            failed: 0,
            requests: 64,
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        assert_eq!(spread(&step(100.0, 100.0), 64), 0.05);
        let wide = spread(&step(100.0, 300.0), 64);
        assert!(wide > 0.3 && wide <= 0.5, "{wide}");
        assert!(spread(&step(100.0, 300.0), 1024) < wide);
    }
}
