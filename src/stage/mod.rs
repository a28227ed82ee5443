//! The concurrent stage: turns each [`SourceItem`] into exactly one [`Outcome`], keeping up to
//! `workers` HTTP requests in flight.
//!
//! Concurrency design: items are mapped to futures and driven by `buffer_unordered` (or
//! `buffered` for `--ordered`) over a window somewhat wider than `workers`; a permit of the
//! concurrency limit (`limit`: fixed, or adaptive with `--workers auto`) is held only while an
//! HTTP attempt is in flight. So a request sleeping in backoff does not occupy a server slot,
//! the server always sees up to `workers` requests, and
//! the reorder buffer of `--ordered` is bounded by the window.
//!
//! Each request is isolated: any failure, a panic included, becomes that request's outcome and
//! the batch goes on.

pub mod limit;
pub mod retry;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::preflight::ModelCatalog;
use crate::backend::{AttemptFailure, Backend, FailureKind};
use crate::item::{ErrorCode, HttpReply, Outcome, OutcomeError, ReplyBody, Request, SourceItem};
use crate::reply::ReplyFields;
use crate::schema::OutputSchema;
use crate::shutdown::Shutdown;
use crate::stats::RunStats;
use limit::{ConcurrencyLimit, Signal};
use retry::RetryPolicy;

/// Most finished outcomes the stage holds while the sink thread has no room for them. They go
/// over as one batch: under load the writer thread wakes once per batch rather than once per
/// request, and a lone outcome is sent alone, without waiting for company.
pub const OUTCOMES_HELD: usize = 512;

/// How the stage runs.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// HTTP requests in flight at once.
    /// Attempts in flight at once (the starting point when adaptive).
    pub workers: usize,
    /// `--workers auto`: adapt the limit to the backend, up to this many.
    pub adaptive_max: Option<usize>,
    /// Write outcomes in input order instead of completion order.
    pub ordered: bool,
    pub retry: RetryPolicy,
    /// Structured output to check each reply against.
    pub output: Option<OutputCheck>,
    /// A limit shared with other stages of a pipeline, which then draw on one budget of
    /// server slots; `None` makes the stage its own from `workers` and `adaptive_max`.
    pub shared_limit: Option<SharedLimit>,
}

/// A concurrency limit several stages hold at once.
#[derive(Clone)]
pub struct SharedLimit(pub Arc<ConcurrencyLimit>);

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SharedLimit({})", self.0.current())
    }
}

/// Replies must match a schema; a reply that does not is asked for again up to `retries` times.
#[derive(Debug, Clone)]
pub struct OutputCheck {
    pub schema: Arc<OutputSchema>,
    pub retries: u32,
}

impl StageConfig {
    /// The most attempts that can be in flight.
    pub fn most_workers(&self) -> usize {
        self.adaptive_max.unwrap_or(self.workers).max(self.workers)
    }

    /// Requests admitted at once. In ordered mode this bounds the reorder buffer: one slow
    /// request can hold back at most this many finished ones.
    fn window(&self) -> usize {
        if self.ordered {
            self.most_workers() * 16 + 64
        } else {
            self.most_workers() * 2
        }
    }
}

/// How the stage ended.
#[derive(Debug, Default)]
pub struct StageReport {
    /// Every input item was turned into an outcome and handed on.
    pub input_exhausted: bool,
    /// In-flight requests were dropped (second interrupt or grace period over).
    pub aborted: bool,
    /// The sink stopped accepting outcomes (for instance a closed stdout pipe).
    pub sink_closed: bool,
}

/// State shared by every request of a run.
struct StageContext<B> {
    backend: Arc<B>,
    base_url: String,
    catalog: Option<Arc<ModelCatalog>>,
    limit: Arc<ConcurrencyLimit>,
    retry: RetryPolicy,
    output: Option<OutputCheck>,
    stats: Arc<RunStats>,
}

/// Where the stage sends requests.
pub struct Target<B> {
    pub backend: Arc<B>,
    /// For messages.
    pub base_url: String,
    /// The models the server has, when preflight fetched them.
    pub catalog: Option<Arc<ModelCatalog>>,
}

/// Runs the stage until the input ends, the sink closes, or shutdown aborts it.
pub async fn run<B: Backend>(
    target: Target<B>,
    config: StageConfig,
    shutdown: Shutdown,
    stats: Arc<RunStats>,
    items: mpsc::Receiver<SourceItem>,
    outcomes: mpsc::Sender<Vec<Outcome>>,
) -> StageReport {
    let Target {
        backend,
        base_url,
        catalog,
    } = target;
    let limit = match (&config.shared_limit, config.adaptive_max) {
        (Some(shared), _) => Arc::clone(&shared.0),
        (None, Some(max)) => Arc::new(ConcurrencyLimit::adaptive(config.workers, max)),
        (None, None) => Arc::new(ConcurrencyLimit::fixed(config.workers)),
    };
    // Known from the start, not only once the first attempt ends: the figures (the progress
    // line, the stats file, a metrics scrape) must not say 0 meanwhile.
    stats.set_workers(limit.current());
    if let Some(max) = config.adaptive_max {
        stats.set_adaptive_max(max);
    }
    let context = Arc::new(StageContext {
        backend,
        base_url,
        catalog,
        limit,
        retry: config.retry,
        output: config.output.clone(),
        stats,
    });
    let requests = ReceiverStream::new(items)
        .take_until(shutdown.stopping())
        .map(move |item| {
            let context = Arc::clone(&context);
            async move { context.process(item).await }
        });
    let mut results: BoxStream<'static, Outcome> = if config.ordered {
        requests.buffered(config.window()).boxed()
    } else {
        requests.buffer_unordered(config.window()).boxed()
    };
    let mut aborting = pin!(shutdown.aborting());
    let mut report = StageReport::default();
    // Finished outcomes not yet handed to the sink thread.
    let mut held: Vec<Outcome> = Vec::new();
    let mut all_finished = false;
    loop {
        if all_finished && held.is_empty() {
            report.input_exhausted = !shutdown.is_stopping();
            break;
        }
        // Whatever has finished is gathered first; the batch goes over once nothing more is
        // ready and the channel has room. Requests go on being polled while the sink is
        // busy, until OUTCOMES_HELD are waiting.
        tokio::select! {
            biased;
            _ = &mut aborting => {
                if !held.is_empty() {
                    // Finished requests are kept if the writer can still take them.
                    let _ = outcomes.try_send(std::mem::take(&mut held));
                }
                report.aborted = true;
                break;
            }
            next = results.next(), if !all_finished && held.len() < OUTCOMES_HELD => match next {
                Some(outcome) => held.push(outcome),
                None => all_finished = true,
            },
            room = outcomes.reserve(), if !held.is_empty() => match room {
                Ok(permit) => permit.send(std::mem::take(&mut held)),
                Err(_) => {
                    report.sink_closed = true;
                    shutdown.abort();
                    break;
                }
            },
        }
    }
    report
}

impl<B: Backend> StageContext<B> {
    /// One item to one outcome, with a panic contained to this request.
    async fn process(&self, item: SourceItem) -> Outcome {
        let request = match item {
            SourceItem::Invalid(invalid) => return Outcome::from_invalid(invalid),
            SourceItem::Request(request) => request,
        };
        // Kept for the outcome of a panic, which consumes the request mid-flight.
        let fallback = request.clone();
        let started = Instant::now();
        match AssertUnwindSafe(self.execute(request)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let line = fallback.line;
                let error = OutcomeError {
                    code: ErrorCode::InternalError,
                    message: format!(
                        "line {line}: batchflow failed while handling this request ({}); please report it",
                        panic_message(panic.as_ref())
                    ),
                };
                finished(fallback, started, 0, None, Some(error))
            }
        }
    }

    /// One request to its outcome. A model that no backend serves is that line's
    /// `model_not_found`, sent nowhere, and one that a server says it lacks (removed mid-run)
    /// that line's error: the run goes on with the other lines, as OpenAI's and vLLM's batch
    /// runners do. A mistyped `--model`, which every line would fail, is stopped by preflight.
    async fn execute(&self, request: Request) -> Outcome {
        let mut started = Instant::now();
        if let (Some(catalog), Some(model)) = (&self.catalog, &request.model) {
            if !catalog.has(model) {
                let message = catalog.missing(&self.base_url, model).to_string();
                return failed(request, started, 0, ErrorCode::ModelNotFound, message, None);
            }
        }
        let mut attempts = 0;
        let mut invalid_outputs = 0;
        loop {
            attempts += 1;
            let permit = self.limit.acquire().await;
            let attempt_started = Instant::now();
            if attempts == 1 {
                // Latency counts from the first attempt: time queued inside batchflow, waiting
                // for a worker, says nothing about the server.
                started = attempt_started;
            }
            let result = {
                let _in_flight = InFlight::new(&self.stats);
                self.backend.send(&request).await
            };
            let signal = match &result {
                Ok(_) => Signal::Answered(attempt_started.elapsed()),
                Err(failure) => match failure.kind {
                    FailureKind::Status(429 | 503) => Signal::Overloaded,
                    FailureKind::Status(_) | FailureKind::InvalidBody => {
                        Signal::Answered(attempt_started.elapsed())
                    }
                    _ => Signal::Nothing,
                },
            };
            self.limit.release(permit, signal);
            self.stats.set_workers(self.limit.current());
            let failure = match result {
                Ok(reply) => {
                    if let Some(why) = self.output_problem(&reply) {
                        invalid_outputs += 1;
                        if invalid_outputs <= self.output.as_ref().map_or(0, |check| check.retries)
                        {
                            self.stats.retried(ErrorCode::InvalidOutput);
                            continue;
                        }
                        let message = format!(
                            "the reply does not match the output schema: {why} (after {attempts} attempts)"
                        );
                        return failed(
                            request,
                            started,
                            attempts,
                            ErrorCode::InvalidOutput,
                            message,
                            Some(reply),
                        );
                    }
                    return finished(request, started, attempts, Some(reply), None);
                }
                Err(failure) => failure,
            };
            if !failure.kind.is_retryable() || attempts - invalid_outputs > self.retry.max_retries {
                return finish_failed(request, started, attempts, failure);
            }
            self.stats.retried(failure.kind.code());
            tokio::time::sleep(self.retry.delay(attempts, failure.retry_after)).await;
        }
    }

    /// Why a successful reply fails the output schema, if there is a schema and it does.
    fn output_problem(&self, reply: &HttpReply) -> Option<String> {
        let check = self.output.as_ref()?;
        let ReplyBody::Json(json) = &reply.body else {
            return Some("the reply is not JSON".into());
        };
        let fields = ReplyFields::parse(json.get());
        match fields.content() {
            Some(text) => check.schema.check(text).err(),
            None => Some("the reply has no text".into()),
        }
    }
}

/// Counts an attempt as in flight for as long as it lives, however it ends (an abort drops it).
struct InFlight<'a>(&'a RunStats);

impl<'a> InFlight<'a> {
    fn new(stats: &'a RunStats) -> InFlight<'a> {
        stats.attempt_started();
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.attempt_ended();
    }
}

fn finish_failed(
    request: Request,
    started: Instant,
    attempts: u32,
    failure: AttemptFailure,
) -> Outcome {
    let code = failure.kind.code();
    let message = format!("{} (after {attempts} attempts)", failure.message);
    failed(request, started, attempts, code, message, failure.reply)
}

fn failed(
    request: Request,
    started: Instant,
    attempts: u32,
    code: ErrorCode,
    message: String,
    reply: Option<HttpReply>,
) -> Outcome {
    finished(
        request,
        started,
        attempts,
        reply,
        Some(OutcomeError { code, message }),
    )
}

/// The one way a request becomes its outcome.
fn finished(
    request: Request,
    started: Instant,
    attempts: u32,
    reply: Option<HttpReply>,
    error: Option<OutcomeError>,
) -> Outcome {
    Outcome {
        line: request.line,
        custom_id: Some(request.custom_id),
        model: request.model,
        reply,
        error,
        attempts,
        latency: started.elapsed(),
        finished_at: SystemTime::now(),
        passthrough: request.passthrough,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::value::RawValue;

    use super::*;

    /// Answers every request, except that it panics on one: a stand-in for a bug.
    struct PanicsOnBoom;

    impl Backend for PanicsOnBoom {
        async fn send(&self, request: &Request) -> Result<HttpReply, AttemptFailure> {
            assert!(request.custom_id != "boom", "simulated bug");
            Ok(HttpReply {
                status: 200,
                request_id: "req".into(),
                body: ReplyBody::Json(RawValue::from_string("{}".into()).expect("JSON")),
            })
        }
    }

    fn request(custom_id: &str, line: u64) -> SourceItem {
        SourceItem::Request(Request {
            line,
            custom_id: custom_id.into(),
            url: "/api/chat".into(),
            model: None,
            body: Bytes::from_static(b"{}"),
            passthrough: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_panic_becomes_that_requests_error_and_the_batch_goes_on() {
        let (item_sender, items) = mpsc::channel(8);
        let (outcome_sender, mut outcomes) = mpsc::channel(8);
        for (line, id) in ["a", "boom", "c"].into_iter().enumerate() {
            item_sender
                .send(request(id, line as u64 + 1))
                .await
                .expect("send");
        }
        drop(item_sender);
        let config = StageConfig {
            workers: 2,
            adaptive_max: None,
            ordered: true,
            retry: RetryPolicy::default(),
            output: None,
            shared_limit: None,
        };
        let target = Target {
            backend: Arc::new(PanicsOnBoom),
            base_url: "http://test".into(),
            catalog: None,
        };
        let report = run(
            target,
            config,
            Shutdown::new(),
            Arc::new(RunStats::new(std::time::Instant::now())),
            items,
            outcome_sender,
        )
        .await;
        assert!(report.input_exhausted);
        let mut results = Vec::new();
        while let Some(batch) = outcomes.recv().await {
            results.extend(batch);
        }
        let ids: Vec<_> = results
            .iter()
            .map(|o| o.custom_id.clone().unwrap_or_default())
            .collect();
        assert_eq!(ids, ["a", "boom", "c"]);
        assert!(results[0].is_ok() && results[2].is_ok());
        let error = results[1].error.as_ref().expect("boom failed");
        assert_eq!(error.code, ErrorCode::InternalError);
        assert!(error.message.contains("simulated bug"), "{}", error.message);
    }
}
