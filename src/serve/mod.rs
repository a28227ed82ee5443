//! `batchflow serve`: the OpenAI Files and Batches API in front of the engine, so that code
//! written against the OpenAI SDK runs its batches on local servers by changing `base_url`.
//!
//! ```text
//!  client ──HTTP /v1──▶ files.rs, batches.rs ──▶ store.rs (--data-dir: files, batch records)
//!                                   │ enqueue
//!                                   ▼
//!                       runner.rs: one batch at a time ──▶ engine::run ──▶ backends
//!                       check.rs (input lines), finalize.rs (output and error files)
//!  scraper ──GET /metrics──▶ metrics.rs (the store's batches, the runner's live counters)
//!  browser ──GET /, /runs/{id}──▶ pages.rs (the batch list, a batch's run dashboard)
//! ```
//!
//! This module owns the server: its options, the router, binding, the bearer-key check and
//! shutdown; `lock.rs` makes it the data directory's only server, `listen.rs` bounds its
//! connections, `webhooks/` announces the batches that end. The flags that fill [`ServeOptions`] are the binary's; the run of a batch is the
//! engine's, configured from [`ServeOptions::run`].

mod batches;
mod check;
mod files;
mod finalize;
mod listen;
mod lock;
mod metrics;
mod pages;
mod runner;
mod stall;
pub mod store;
pub mod webhooks;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::options::RunOptions;
use crate::shutdown::Shutdown;
use listen::ConnectionLimits;
use lock::LockError;
use store::{Store, StoreError};
use webhooks::{Events, WebhookError, WebhookOptions};
use wire::ApiError;

/// Files over this are refused with 413 unless `--max-file-bytes` says otherwise: OpenAI's
/// own limit.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 200 << 20;

/// JSON request bodies (a batch's creation) over this get 413: the largest a client sends,
/// with 16 metadata pairs, is a few kilobytes.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Connections served at once unless `--max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// How long a client may take to send its request headers unless `--header-timeout` says
/// otherwise: an SDK sends them at once; a connection that sends nothing holds a slot.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Everything the server needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The template of every batch's run: backends, workers, timeouts, retries. The server
    /// sets the input, outputs and resume mode of each batch itself.
    pub run: RunOptions,
    /// The bearer key clients must send; `None` lets every client in.
    pub api_key: Option<String>,
    pub max_file_bytes: u64,
    /// Listen on a non-loopback address without a key (refused otherwise).
    pub allow_open: bool,
    /// Connections served at once; more wait to be accepted. Lowered at start-up to fit the
    /// process's open-file limit.
    pub max_connections: usize,
    /// A connection whose request headers take longer than this is closed.
    pub header_timeout: Duration,
    /// Where batch ends are announced; `None` announces nothing.
    pub webhook: Option<WebhookOptions>,
    /// The built-in mock's URL when batches run against it: it answers any model (so batch
    /// files are not checked against a model list) and needs no API key.
    pub mock: Option<String>,
}

/// Why the server could not start or went down.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--data-dir: {0}")]
    Lock(#[from] LockError),
    #[error("--data-dir: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(
        "--listen {0} is reachable from other machines: give clients a key with --api-key-env, or pass --allow-open"
    )]
    OpenWithoutKey(SocketAddr),
    #[error("--webhook-url: {0}")]
    Webhooks(#[from] WebhookError),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    store: Store,
    runner: Arc<runner::Runner>,
    max_file_bytes: u64,
}

/// Serves until `shutdown` stops it: the listener closes, the running batch is drained within
/// the grace period (and stays resumable), and this returns.
pub async fn serve(options: ServeOptions, shutdown: Shutdown) -> Result<(), ServeError> {
    if !options.listen.ip().is_loopback() && options.api_key.is_none() && !options.allow_open {
        return Err(ServeError::OpenWithoutKey(options.listen));
    }
    let data_dir = options.data_dir.clone();
    // The lock comes before anything reads the directory: the sweep of half-written uploads
    // and the recovery of unfinished batches are only right for the directory's one owner.
    let (_lock, store) = tokio::task::spawn_blocking(move || {
        let lock = lock::lock(&data_dir)?;
        Ok::<_, ServeError>((lock, Store::open(&data_dir)?))
    })
    .await
    .map_err(|error| ServeError::Serve(std::io::Error::other(error)))??;
    // Bound before the runner starts, so that a server which cannot listen runs nothing.
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|cause| ServeError::Bind {
            addr: options.listen,
            cause,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    // Before the runner, which announces through it.
    let (events, delivering) = match options.webhook {
        Some(webhook) => {
            let (events, task) =
                webhooks::start(webhook, &options.data_dir, store.clone(), shutdown.clone())
                    .await?;
            (events, Some(task))
        }
        None => (Events::default(), None),
    };
    let (runner, running) = runner::Runner::start(
        store.clone(),
        options.run,
        options.mock,
        events,
        shutdown.clone(),
    );
    let state = AppState {
        store,
        runner,
        max_file_bytes: options.max_file_bytes,
    };
    let limits = ConnectionLimits::new(options.max_connections, options.header_timeout);
    tracing::info!(
        %addr,
        max_connections = limits.max_connections,
        "Serving the OpenAI Batch API."
    );
    let router = router(state, options.api_key.map(Arc::from));
    listen::serve_connections(listener, router, limits, shutdown.stopping()).await;
    if running.await.is_err() {
        tracing::error!("The batch runner panicked.");
    }
    if let Some(delivering) = delivering {
        if delivering.await.is_err() {
            tracing::error!("The webhook delivery task panicked.");
        }
    }
    Ok(())
}

fn router(state: AppState, api_key: Option<Arc<str>>) -> Router {
    let upload_limit = usize::try_from(state.max_file_bytes.saturating_add(files::FORM_OVERHEAD))
        .unwrap_or(usize::MAX);
    let api = Router::new()
        .route(
            "/files",
            post(files::upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(files::list),
        )
        .route("/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/files/{id}/content", get(files::content))
        .route("/batches", post(batches::create).get(batches::list))
        .route("/batches/{id}", get(batches::retrieve))
        .route("/batches/{id}/cancel", post(batches::cancel))
        .fallback(|| async { ApiError::not_found_route() });
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/", get(pages::list))
        .route("/runs/{id}", get(pages::run_page))
        .route("/api/runs/{id}", get(pages::run_api))
        .nest("/v1", api)
        .fallback(|| async { ApiError::not_found_route() })
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(middleware::from_fn_with_state(api_key, authorize))
}

/// Lets a request through when the server has no key, or when it carries
/// `Authorization: Bearer <key>`; else 401.
async fn authorize(State(key): State<Option<Arc<str>>>, request: Request, next: Next) -> Response {
    let Some(key) = key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(given) if same_secret(given, key.as_bytes()) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Compares in time that depends on the lengths only, never on where the bytes differ.
fn same_secret(given: &[u8], key: &[u8]) -> bool {
    let differing = given
        .iter()
        .zip(key.iter().cycle())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    differing == 0 && given.len() == key.len()
}

/// Runs `work` on the store off the runtime's thread (it syncs files); a store failure is
/// logged and answered with 500.
async fn blocking<T: Send + 'static>(
    store: &Store,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!("The data directory failed: {error}.");
            Err(ApiError::internal())
        }
        Err(error) => {
            tracing::error!("A data directory task failed: {error}.");
            Err(ApiError::internal())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cretX", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
