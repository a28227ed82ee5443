//! An Ollama-compatible mock server for tests, benchmarks, the quick start, and dry runs of a
//! batch without a GPU.
//!
//! It behaves like a real server under load: `slots` requests are served at once (like
//! `OLLAMA_NUM_PARALLEL`), later ones wait in a FIFO queue, and once `max_queue` are waiting
//! new ones get Ollama's 503 "server busy". Latency, spread and faults are knobs; faults are
//! drawn from a seeded RNG or scripted per request (see [`faults`]).

pub mod faults;
pub mod replies;
pub mod structured;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use faults::{Directive, Fault, FaultPlan, FaultRates, parse_directive};
use replies::Endpoint;

/// Why the mock server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("the mock server cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
}

/// Ollama's message when its queue is full (two spaces, as in the original).
pub const SERVER_BUSY_MESSAGE: &str =
    "server busy, please try again.  maximum pending requests exceeded";

/// The mock's knobs.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// Requests served at once (`OLLAMA_NUM_PARALLEL`).
    pub slots: usize,
    /// Requests allowed to wait for a slot before 503 (`OLLAMA_MAX_QUEUE`).
    pub max_queue: usize,
    /// Time a request spends in its slot.
    pub latency: Duration,
    /// Random spread around `latency`: 0.5 means uniform in ±50%.
    pub latency_spread: f64,
    pub faults: FaultRates,
    pub seed: u64,
    /// Sent with every 429.
    pub retry_after: Duration,
    /// How long a hung request hangs.
    pub hang: Duration,
    /// Models the server has, as `name:tag`.
    pub models: Vec<String>,
    /// Answer every model name, not only `models`, and list each one asked for beside them:
    /// the mock stands in for whatever server a batch was written for (`--mock`).
    pub any_model: bool,
    pub embedding_dimensions: usize,
    /// Keep a log of every arrival (for tests of retry timing); grows with the requests.
    pub record_arrivals: bool,
    /// Time a model takes to load, as Ollama spends it on a model's first request and again
    /// whenever a request asks for another `num_ctx` than the model was loaded with: the
    /// request waits it in its slot, and its reply's `load_duration` says it.
    pub load_delay: Duration,
    /// Share of a loaded model held on the CPU, as `/api/ps` tells it (`size_vram` below
    /// `size`): 0 is all in GPU memory.
    pub cpu_share: f64,
}

/// The size `/api/ps` gives every loaded model.
const MODEL_BYTES: u64 = 3_500_000_000;

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            port: 0,
            slots: 4,
            max_queue: 512,
            latency: Duration::from_millis(20),
            latency_spread: 0.0,
            faults: FaultRates::default(),
            seed: 0,
            retry_after: Duration::from_secs(1),
            hang: Duration::from_secs(3600),
            models: vec!["llama3.2:latest".into(), "nomic-embed-text:latest".into()],
            any_model: false,
            embedding_dimensions: 8,
            record_arrivals: false,
            load_delay: Duration::ZERO,
            cpu_share: 0.0,
        }
    }
}

/// Counters, readable while the mock runs (in-process, or as JSON at `GET /mock/stats`).
#[derive(Debug, Default)]
pub struct MockStats {
    pub requests: AtomicU64,
    pub succeeded: AtomicU64,
    pub busy: AtomicU64,
    pub server_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub resets: AtomicU64,
    pub hangs: AtomicU64,
    pub truncated: AtomicU64,
    pub bad_outputs: AtomicU64,
    /// 4xx answers (bad request, unknown model, scripted statuses).
    pub client_errors: AtomicU64,
    pub in_slots: AtomicU64,
    pub max_in_slots: AtomicU64,
    pub waiting: AtomicU64,
    /// Model loads: each model's first request, and each change of its context.
    pub loads: AtomicU64,
}

/// A copy of [`MockStats`] at one moment.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MockCounts {
    pub requests: u64,
    pub succeeded: u64,
    pub busy: u64,
    pub server_errors: u64,
    pub rate_limited: u64,
    pub resets: u64,
    pub hangs: u64,
    pub truncated: u64,
    pub bad_outputs: u64,
    pub client_errors: u64,
    pub max_in_slots: u64,
    #[serde(default)]
    pub loads: u64,
}

impl MockStats {
    pub fn snapshot(&self) -> MockCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        MockCounts {
            requests: read(&self.requests),
            succeeded: read(&self.succeeded),
            busy: read(&self.busy),
            server_errors: read(&self.server_errors),
            rate_limited: read(&self.rate_limited),
            resets: read(&self.resets),
            hangs: read(&self.hangs),
            truncated: read(&self.truncated),
            bad_outputs: read(&self.bad_outputs),
            client_errors: read(&self.client_errors),
            max_in_slots: read(&self.max_in_slots),
            loads: read(&self.loads),
        }
    }
}

/// One request as the mock saw it, when `record_arrivals` is on.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Hash of the request body: equal for retries of one request.
    pub body_key: u64,
    pub at: Instant,
    pub status: u16,
}

struct MockState {
    config: MockConfig,
    slots: Semaphore,
    plan: FaultPlan,
    stats: Arc<MockStats>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Each loaded model with the context it was loaded with.
    loaded: Mutex<BTreeMap<String, u64>>,
    /// With `any_model`, the names asked for that `models` lacks (one entry per name).
    asked: Mutex<BTreeSet<String>>,
}

/// A running mock. Dropping it stops the server.
pub struct MockServer {
    address: SocketAddr,
    stats: Arc<MockStats>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Binds 127.0.0.1 and starts serving on the current tokio runtime.
    pub async fn start(config: MockConfig) -> Result<MockServer, MockError> {
        let bind_address = SocketAddr::from(([127, 0, 0, 1], config.port));
        let listener = tokio::net::TcpListener::bind(bind_address)
            .await
            .map_err(|cause| MockError::Bind {
                addr: bind_address.to_string(),
                cause,
            })?;
        let address = listener.local_addr().map_err(|cause| MockError::Bind {
            addr: bind_address.to_string(),
            cause,
        })?;
        let stats = Arc::new(MockStats::default());
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(MockState {
            slots: Semaphore::new(config.slots.max(1)),
            plan: FaultPlan::new(config.faults, config.seed),
            stats: Arc::clone(&stats),
            arrivals: Arc::clone(&arrivals),
            loaded: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(BTreeSet::new()),
            config,
        });
        let listener = listener.tap_io(|stream| {
            // Small answers must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router(state)).await {
                tracing::error!("Mock server stopped: {error}.");
            }
        });
        Ok(MockServer {
            address,
            stats,
            arrivals,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn stats(&self) -> MockCounts {
        self.stats.snapshot()
    }

    /// Every arrival so far (empty unless `record_arrivals`).
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves until the process ends; for the `mock-server` command.
    pub async fn serve_forever(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(|| async { axum::Json(json!({"version": "0.12.0-mock"})) }))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(running_models))
        .route("/v1/models", get(openai_models))
        .route("/mock/stats", get(|State(state): State<Arc<MockState>>| async move {
            axum::Json(state.stats.snapshot())
        }))
        .route("/api/chat", post(|state, body| infer(state, Endpoint::OllamaChat, body)))
        .route("/api/generate", post(|state, body| infer(state, Endpoint::OllamaGenerate, body)))
        .route("/api/embed", post(|state, body| infer(state, Endpoint::OllamaEmbed, body)))
        .route("/v1/chat/completions", post(|state, body| infer(state, Endpoint::OpenAiChat, body)))
        .route("/v1/embeddings", post(|state, body| infer(state, Endpoint::OpenAiEmbeddings, body)))
        .with_state(state)
}

async fn tags(State(state): State<Arc<MockState>>) -> axum::Json<Value> {
    let models: Vec<Value> = state
        .listed_models()
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "model": name,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": 2_019_393_189u64,
                "digest": format!("{:064x}", key_of(name.as_bytes())),
                "details": {"format": "gguf", "family": "mock", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
            })
        })
        .collect();
    axum::Json(json!({ "models": models }))
}

async fn running_models(State(state): State<Arc<MockState>>) -> axum::Json<Value> {
    let loaded = state
        .loaded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let in_gpu = 1.0 - state.config.cpu_share.clamp(0.0, 1.0);
    let models: Vec<Value> = loaded
        .iter()
        .map(|(name, context)| {
            json!({
                "name": name,
                "model": name,
                "size": MODEL_BYTES,
                "size_vram": (MODEL_BYTES as f64 * in_gpu).round() as u64,
                "context_length": context,
                "expires_at": "2099-01-01T00:00:00Z",
            })
        })
        .collect();
    axum::Json(json!({ "models": models }))
}

async fn openai_models(State(state): State<Arc<MockState>>) -> axum::Json<Value> {
    let data: Vec<Value> = state
        .listed_models()
        .iter()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "library"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

fn key_of(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl MockState {
    /// Whether the mock answers `model`; with `any_model` it does, and remembers the name.
    fn has_model(&self, model: &str) -> bool {
        let tagged = if model.contains(':') {
            model.to_owned()
        } else {
            format!("{model}:latest")
        };
        let known = self
            .config
            .models
            .iter()
            .any(|name| *name == tagged || name == model);
        if !known && self.config.any_model {
            self.asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(model.to_owned());
        }
        known || self.config.any_model
    }

    /// The models `/api/tags` and `/v1/models` list: the configured ones, then those asked for.
    fn listed_models(&self) -> Vec<String> {
        let asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        self.config
            .models
            .iter()
            .chain(asked.iter())
            .cloned()
            .collect()
    }

    /// Notes `call`'s model as loaded with its context; the time the load takes when this
    /// request loads it (the model's first, or a context other than the loaded one's), as
    /// Ollama reloads a model whose `num_ctx` changes.
    fn load(&self, call: &Call) -> Option<Duration> {
        let context = replies::num_ctx(&call.request);
        let previous = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call.model.clone(), context);
        let loads = previous.is_none_or(|loaded| loaded != context);
        if loads {
            self.stats.loads.fetch_add(1, Ordering::SeqCst);
        }
        (loads && !self.config.load_delay.is_zero()).then_some(self.config.load_delay)
    }

    fn latency(&self, directive: Option<Directive>) -> Duration {
        if let Some(Directive::Delay(delay)) = directive {
            return delay;
        }
        let spread = self.config.latency_spread.clamp(0.0, 1.0);
        if spread == 0.0 {
            return self.config.latency;
        }
        let factor = 1.0 + spread * (2.0 * fastrand::f64() - 1.0);
        self.config.latency.mul_f64(factor)
    }

    fn record(&self, body_key: u64, at: Instant, status: u16) {
        if self.config.record_arrivals {
            self.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arrival {
                    body_key,
                    at,
                    status,
                });
        }
    }
}

async fn infer(State(state): State<Arc<MockState>>, endpoint: Endpoint, body: Bytes) -> Response {
    let arrived = Instant::now();
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let mut call = match admit(&state, endpoint, &body, arrived) {
        Ok(call) => call,
        Err(refusal) => return *refusal,
    };
    let permit = {
        stats.waiting.fetch_add(1, Ordering::SeqCst);
        // A client that gives up while queued drops this future here: the guard still counts it out.
        let _waiting = WaitGuard(stats);
        state.slots.acquire().await
    };
    let Ok(_permit) = permit else {
        return call.respond(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        );
    };
    let in_slots = stats.in_slots.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_slots.fetch_max(in_slots, Ordering::SeqCst);
    let _slot = SlotGuard(stats);
    let started = Instant::now();
    call.load = state.load(&call);
    if let Some(load) = call.load {
        tokio::time::sleep(load).await;
    }
    if call.fault == Some(Fault::Hang) {
        stats.hangs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(state.config.hang).await;
    } else {
        tokio::time::sleep(state.latency(call.directive)).await;
    }
    answer(&state, &call, started)
}

/// A request the mock took: what it asked, and what the fault plan has in store for it.
struct Call {
    endpoint: Endpoint,
    arrived: Instant,
    body_key: u64,
    request: Value,
    model: String,
    directive: Option<Directive>,
    fault: Option<Fault>,
    /// The model load this request waited for, if it loaded the model.
    load: Option<Duration>,
}

impl Call {
    /// An error answer in the endpoint's error shape, recorded.
    fn respond(&self, state: &MockState, status: StatusCode, message: &str) -> Response {
        state.record(self.body_key, self.arrived, status.as_u16());
        json_response(status, &replies::error(Some(self.endpoint), message))
    }

    /// A successful reply to `request` (the call's own, or an altered copy).
    fn reply(&self, state: &MockState, request: &Value, started: Instant) -> Value {
        replies::success(
            self.endpoint,
            &self.model,
            request,
            started.elapsed(),
            self.load,
            state.config.embedding_dimensions,
        )
    }
}

/// What is answered before a slot is taken: a body that is not a JSON object or names no
/// model (400), an unknown model (404), a scripted 429, and Ollama's 503 when the queue is full.
fn admit(
    state: &MockState,
    endpoint: Endpoint,
    body: &Bytes,
    arrived: Instant,
) -> Result<Call, Box<Response>> {
    let stats = &state.stats;
    let body_key = key_of(body);
    let refuse = |status: StatusCode, message: &str| {
        state.record(body_key, arrived, status.as_u16());
        json_response(status, &replies::error(Some(endpoint), message))
    };
    let request: Value = match serde_json::from_slice(body) {
        Ok(request @ Value::Object(_)) => request,
        _ => {
            stats.client_errors.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "invalid character in request body: not a JSON object",
            )));
        }
    };
    let Some(model) = request["model"].as_str().map(str::to_owned) else {
        stats.client_errors.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "model is required",
        )));
    };
    if !state.has_model(&model) {
        stats.client_errors.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(refuse(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        )));
    }
    let directive = parse_directive(&replies::prompt_text(endpoint, &request));
    let fault = state.plan.choose(body_key, directive);
    if fault == Some(Fault::Status(429)) {
        stats.rate_limited.fetch_add(1, Ordering::SeqCst);
        state.record(body_key, arrived, 429);
        let retry_after = state.config.retry_after.as_secs_f64().ceil().to_string();
        let body = replies::error(Some(endpoint), "rate limit exceeded, retry later");
        return Err(Box::new(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::RETRY_AFTER, retry_after),
                ],
                body.to_string(),
            )
                .into_response(),
        ));
    }
    // Like Ollama, only requests that must wait for a slot count against the queue.
    if state.slots.available_permits() == 0
        && stats.waiting.load(Ordering::SeqCst) >= state.config.max_queue as u64
    {
        stats.busy.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_BUSY_MESSAGE,
        )));
    }
    Ok(Call {
        endpoint,
        arrived,
        body_key,
        request,
        model,
        directive,
        fault,
        load: None,
    })
}

/// The answer once the call has had its slot: the reply, or the fault it was chosen for.
fn answer(state: &MockState, call: &Call, started: Instant) -> Response {
    let stats = &state.stats;
    let recorded = |status: u16| state.record(call.body_key, call.arrived, status);
    match call.fault {
        Some(Fault::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                stats.server_errors.fetch_add(1, Ordering::SeqCst);
            } else {
                stats.client_errors.fetch_add(1, Ordering::SeqCst);
            }
            call.respond(
                state,
                status,
                &format!("mock fault: HTTP {}", status.as_u16()),
            )
        }
        Some(Fault::Html) => {
            recorded(200);
            let page = "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>";
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        Some(Fault::Redirect) => {
            recorded(302);
            (
                StatusCode::FOUND,
                [(header::LOCATION, "http://other-host.invalid/api/chat")],
                "",
            )
                .into_response()
        }
        Some(Fault::Huge) => {
            recorded(200);
            // 8 MiB in 64 KiB chunks, without a Content-Length, as a streaming proxy sends it.
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = futures::stream::iter(
                (0..128).map(move |_| Ok::<Bytes, std::io::Error>(chunk.clone())),
            );
            Response::new(Body::from_stream(chunks))
        }
        Some(Fault::Slowloris) => {
            recorded(200);
            let trickle = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<Bytes, std::io::Error>(Bytes::from_static(b" ")), ()))
            });
            Response::new(Body::from_stream(trickle))
        }
        Some(Fault::Reset) => {
            stats.resets.fetch_add(1, Ordering::SeqCst);
            recorded(0);
            let broken = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock connection reset",
                ))
            });
            Response::new(Body::from_stream(broken))
        }
        Some(Fault::Truncated) => {
            stats.truncated.fetch_add(1, Ordering::SeqCst);
            recorded(200);
            let reply = call.reply(state, &call.request, started).to_string();
            let cut = reply.len() / 2;
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                reply.as_bytes()[..cut].to_vec(),
            )
                .into_response()
        }
        Some(Fault::BadOutput) => {
            stats.bad_outputs.fetch_add(1, Ordering::SeqCst);
            recorded(200);
            let mut unstructured = call.request.clone();
            if let Value::Object(fields) = &mut unstructured {
                fields.remove("format");
                fields.remove("response_format");
            }
            json_response(StatusCode::OK, &call.reply(state, &unstructured, started))
        }
        Some(Fault::Hang) | None => {
            stats.succeeded.fetch_add(1, Ordering::SeqCst);
            recorded(200);
            json_response(StatusCode::OK, &call.reply(state, &call.request, started))
        }
    }
}

/// Counts a request out of the queue however its wait ends.
struct WaitGuard<'a>(&'a MockStats);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Frees the slot count however the handler ends (a client that disconnects drops it early).
struct SlotGuard<'a>(&'a MockStats);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.in_slots.fetch_sub(1, Ordering::SeqCst);
    }
}
