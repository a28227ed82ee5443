//! The batch runner: one task that takes batches first in, first out and runs each through
//! the engine, so queued batches share the server's backends and worker budget instead of
//! competing for them. A batch goes `validating` (its lines checked, `check.rs`) →
//! `in_progress` (the engine, resuming whatever results the batch already has) →
//! `finalizing` (its output and error files, `finalize.rs`) → `completed`; or `failed`; or,
//! when cancelled, `cancelling` → `cancelled` with the results so far. A server that stops
//! mid-batch leaves it `in_progress`; the next start queues it again, and the engine's resume
//! sends only what its results lack, so each custom_id ends up exactly once. A batch whose
//! data directory fails under it (a full disk) stalls: it keeps its state and runs again
//! after a pause (`stall.rs`), first in the queue. Each end is announced to the webhooks
//! (`webhooks/`) as its record is written.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::check;
use super::finalize::{self, RowCounts, Unsent};
use super::stall::{self, StoreFailed};
use super::store::{Store, StoreError};
use super::webhooks::Events;
use super::wire::{Batch, BatchError, BatchErrors, BatchStatus, RequestCounts, unix_now};
use crate::backend::preflight::ModelCatalog;
use crate::engine;
use crate::error::Error;
use crate::metrics::{LiveRun, RunWatch};
use crate::options::{Console, RunOptions};
use crate::shutdown::Shutdown;
use crate::sink::parquet::OutputMode;
use crate::source::Input;

/// How often a running batch's counts are written to its record.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The batch being run, for metrics and cancelling.
struct Current {
    id: String,
    shutdown: Shutdown,
    /// The engine's counters for this run, once it has started sending.
    watch: RunWatch,
}

/// The queue and the batch being run.
pub struct Runner {
    store: Store,
    /// Every batch's run starts from this (backends, workers, timeouts, retries).
    template: RunOptions,
    /// The built-in mock's URL, when batches run against it.
    mock: Option<String>,
    /// Batch ids waiting, oldest first: a few bytes each, as many as there are batches.
    queue: Mutex<VecDeque<String>>,
    wake: Notify,
    current: Mutex<Option<Current>>,
    /// Where batch ends are announced.
    events: Events,
}

/// How a served batch's runs report: to the server's log, warnings and errors only.
const SERVED: Console = Console {
    quiet: true,
    stderr_is_terminal: false,
};

/// How a run ended, for the record.
enum Ending {
    /// The server is stopping: the batch stays as it is, to be resumed.
    Suspended,
    /// Refused before anything was sent (the input, the configuration).
    Failed(Vec<BatchError>),
    /// The engine ran to its end (or to a cancel).
    Ran,
    /// The engine stopped with an error: what ran is kept in the output and error files, the
    /// rest is `batch_failed`, and the batch ends `failed`.
    Broken(Vec<BatchError>),
    /// The batch's completion window closed before it ended: what ran is kept, the rest is
    /// `batch_expired`.
    Expired,
    /// The data directory failed (logged): the batch stays as it is, to be run again.
    Stalled,
}

/// How a batch that ran is closed.
enum Close {
    Ran,
    Expired,
    Broken(Vec<BatchError>),
}

/// How a batch's turn in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Done,
    /// The data directory failed under it; it goes back to the front after a pause.
    Stalled,
}

impl Runner {
    /// Starts the runner's task, which first queues again the batches a previous server left
    /// unfinished, then runs batches until `server` stops.
    pub fn start(
        store: Store,
        template: RunOptions,
        mock: Option<String>,
        events: Events,
        server: Shutdown,
    ) -> (Arc<Runner>, JoinHandle<()>) {
        let runner = Arc::new(Runner {
            store,
            template,
            mock,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            current: Mutex::new(None),
            events,
        });
        let task = tokio::spawn(Arc::clone(&runner).run_queue(server));
        (runner, task)
    }

    async fn run_queue(self: Arc<Runner>, server: Shutdown) {
        match self.unfinished().await {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::info!(batches = ids.len(), "Resuming unfinished batches.");
                }
                for id in ids {
                    self.enqueue(id);
                }
            }
            Err(error) => tracing::error!("Cannot list the unfinished batches: {error}."),
        }
        let mut stalls = 0;
        loop {
            let id = tokio::select! {
                _ = server.stopping() => return,
                id = self.next() => id,
            };
            if self.run_one(&id, &server).await == Turn::Done {
                stalls = 0;
                continue;
            }
            stalls += 1;
            let pause = stall::pause(stalls);
            tracing::warn!(
                batch_id = %id,
                pause_secs = pause.as_secs(),
                "Batch stalled on the data directory; it runs again after a pause."
            );
            // First again, so that it keeps its place; a cancel meanwhile is seen when it runs.
            self.queue().push_front(id);
            tokio::select! {
                _ = server.stopping() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The ids of batches not yet in a final state, oldest first.
    async fn unfinished(&self) -> Result<Vec<String>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.unfinished_batches())
            .await
            .map_err(|error| StoreError::Io {
                path: PathBuf::new(),
                cause: std::io::Error::other(error),
            })?
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a batch at the end of the queue.
    pub fn enqueue(&self, id: String) {
        self.queue().push_back(id);
        self.wake.notify_one();
    }

    async fn next(&self) -> String {
        loop {
            if let Some(id) = self.queue().pop_front() {
                return id;
            }
            // A notification sent while nobody waits is kept for the next wait.
            self.wake.notified().await;
        }
    }

    /// Stops a cancelled batch: the one running drains its in-flight requests; a queued one
    /// moves to the front, to be closed as cancelled at once.
    pub fn cancel(&self, id: &str) {
        if let Some(current) = self.current().as_ref().filter(|current| current.id == id) {
            current.shutdown.stop();
            return;
        }
        let mut queue = self.queue();
        if let Some(position) = queue.iter().position(|queued| queued == id) {
            if let Some(queued) = queue.remove(position) {
                queue.push_front(queued);
            }
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Batches waiting to run.
    pub fn queued(&self) -> usize {
        self.queue().len()
    }

    /// The batch being run, with its engine's counters once it is sending.
    pub fn running(&self) -> Option<(String, Option<LiveRun>)> {
        self.current()
            .as_ref()
            .map(|current| (current.id.clone(), current.watch.live()))
    }

    /// Runs one batch from wherever its record says it stands.
    async fn run_one(&self, id: &str, server: &Shutdown) -> Turn {
        let batch = match self.load(id).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Turn::Done,
            // The record stays as it was, to be read again.
            Err(StoreFailed) => return Turn::Stalled,
        };
        if batch.status.is_terminal() {
            return Turn::Done;
        }
        let ending = match batch.status {
            // Cancelled while queued: nothing ran (or what a previous server ran is kept).
            BatchStatus::Cancelling => Ending::Ran,
            // Its window closed while it waited (or while the server was down).
            _ if batch.expires_at.is_some_and(|at| at <= unix_now()) => Ending::Expired,
            _ => self.run_engine(batch, server).await,
        };
        let closed = match ending {
            Ending::Suspended => {
                tracing::info!(batch_id = %id, "Batch suspended; it resumes at the next start.");
                Ok(())
            }
            Ending::Stalled => Err(StoreFailed),
            Ending::Failed(errors) => self.fail(id, errors).await,
            Ending::Ran => self.finish(id, Close::Ran).await,
            Ending::Expired => self.finish(id, Close::Expired).await,
            Ending::Broken(errors) => self.finish(id, Close::Broken(errors)).await,
        };
        match closed {
            Ok(()) => Turn::Done,
            Err(StoreFailed) => Turn::Stalled,
        }
    }

    /// The batch's record; `Ok(None)` if there is no such batch, or none that can be read
    /// (logged). `Err` only when the disk failed, which a later try may not.
    async fn load(&self, id: &str) -> Result<Option<Batch>, StoreFailed> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        let loaded = tokio::task::spawn_blocking(move || store.batch(&owned)).await;
        stall::settle(id, "read", loaded).map(Option::flatten)
    }

    /// Changes the batch's record off the runtime; `Ok(None)` if there is no such batch, or
    /// none that can be read (logged). `Err` only when the disk failed (logged); the record
    /// then stays as it was.
    async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Batch) + Send + 'static,
    ) -> Result<Option<Batch>, StoreFailed> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        let updated = tokio::task::spawn_blocking(move || store.update_batch(&owned, change)).await;
        stall::settle(id, "update", updated)
            .map(|updated| updated.flatten().map(|(batch, ())| batch))
    }

    /// What the backends serve, for validation; `None` when they cannot be asked now (the
    /// run's own preflight then says why), preflight is off, or the backend is the built-in
    /// mock, which answers any model.
    async fn models(&self) -> Option<Arc<ModelCatalog>> {
        if self.mock.is_some() {
            return None;
        }
        let config = self
            .template
            .resolve(SERVED, None, |name| std::env::var(name).ok())
            .ok()?;
        match engine::models(&config).await {
            Ok(models) => models,
            Err(error) => {
                tracing::warn!("Cannot list the backends' models to validate a batch: {error}.");
                None
            }
        }
    }

    /// Validates (the first time) and runs the batch through the engine.
    async fn run_engine(&self, batch: Batch, server: &Shutdown) -> Ending {
        let id = batch.id.clone();
        let expires_at = batch.expires_at;
        let Some(input) = self.store.content_path(&batch.input_file_id) else {
            return Ending::Failed(vec![problem("invalid_file", "the input file is gone")]);
        };
        if batch.status == BatchStatus::Validating {
            let (path, endpoint) = (input.clone(), batch.endpoint.clone());
            let max_line = self.template.max_line_bytes;
            let models = self.models().await;
            let checked = tokio::task::spawn_blocking(move || {
                check::check_input(&path, &endpoint, max_line, models.as_deref())
            })
            .await;
            let total = match checked {
                Ok(Ok(Ok(total))) => total,
                Ok(Ok(Err(problems))) => return Ending::Failed(problems),
                Ok(Err(error)) => {
                    return Ending::Failed(vec![problem(
                        "invalid_file",
                        &format!("cannot read the input file: {error}"),
                    )]);
                }
                Err(error) => {
                    return Ending::Failed(vec![problem("internal_error", &error.to_string())]);
                }
            };
            let started = self
                .update(&id, move |batch| {
                    if batch.status == BatchStatus::Validating {
                        batch.status = BatchStatus::InProgress;
                        batch.in_progress_at = Some(unix_now());
                        batch.request_counts.total = total;
                    }
                })
                .await;
            match started.map(|batch| batch.map(|batch| batch.status)) {
                Ok(Some(BatchStatus::InProgress)) => {
                    tracing::info!(batch_id = %id, requests = total, "Batch in progress.");
                }
                Ok(_) => return Ending::Ran,
                Err(StoreFailed) => return Ending::Stalled,
            }
        }
        self.engine(&id, input, expires_at, server).await
    }

    /// The engine's run of the batch, resuming its results, stopped at `expires_at`.
    async fn engine(
        &self,
        id: &str,
        input: PathBuf,
        expires_at: Option<u64>,
        server: &Shutdown,
    ) -> Ending {
        let dir = match self.store.batch_dir(id) {
            Ok(dir) => dir,
            Err(error) => {
                tracing::error!(batch_id = %id, "Cannot make the batch's folder: {error}.");
                return Ending::Stalled;
            }
        };
        let results = dir.join("results/");
        let counted = results.clone();
        let kept = tokio::task::spawn_blocking(move || finalize::count_rows(&counted))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let options = RunOptions {
            input: Input::File(input),
            results: Some(results),
            stats_file: Some(dir.join("stats.json")),
            // The server says how each batch goes (GET /v1/batches/{id}).
            live_status: false,
            // Finalizing writes the error file from the results, in OpenAI's line shape, so
            // the engine keeps none of its own.
            errors_file: None,
            existing: OutputMode::Resume {
                retry_errors: false,
                prune: false,
            },
            ..self.template.clone()
        };
        let env = |name: &str| std::env::var(name).ok();
        let mut config = match options.resolve(SERVED, self.mock.clone(), env) {
            Ok(config) => config,
            Err(error) => {
                return Ending::Failed(vec![problem("invalid_config", &error.to_string())]);
            }
        };
        let watch = RunWatch::new();
        config.watch = Some(watch.clone());
        let shutdown = Shutdown::new();
        shutdown.set_grace(config.grace);
        *self.current() = Some(Current {
            id: id.to_owned(),
            shutdown: shutdown.clone(),
            watch: watch.clone(),
        });
        // A cancel that came before the batch was current found nothing to stop.
        if self
            .load(id)
            .await
            .is_ok_and(|batch| batch.is_some_and(|batch| batch.status == BatchStatus::Cancelling))
        {
            shutdown.stop();
        }
        let follow = tokio::spawn(follow_server(server.clone(), shutdown.clone()));
        let run = engine::run(config, None, shutdown.clone());
        tokio::pin!(run);
        // At the end of its completion window the batch stops as a cancel stops it: in-flight
        // requests drain, the rest are `batch_expired`. (Without a window the branch below is
        // never polled.)
        let window = tokio::time::sleep(Duration::from_secs(
            expires_at.map_or(0, |at| at.saturating_sub(unix_now())),
        ));
        tokio::pin!(window);
        let mut expired = false;
        // The counts clients see are the record's, written here every second, never the
        // engine's live counters: what a poll showed is then on disk, and a server killed and
        // started again never shows less.
        let mut every = tokio::time::interval(COUNTS_EVERY);
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = every.tick() => self.record_counts(id, &watch, kept),
                _ = &mut window, if expires_at.is_some() && !expired => {
                    expired = true;
                    tracing::info!(batch_id = %id, "The batch's completion window closed: stopping it.");
                    shutdown.stop();
                }
            }
        };
        follow.abort();
        // The run's last counts go into the record, so that a poll while finalizing sees them.
        if let Some(last) = watch.live().map(|live| live.snapshot(Instant::now())) {
            // Counts only: a failure (logged) leaves the last ones written, which finalizing
            // corrects.
            let _ = self
                .update(id, move |batch| {
                    kept.add_run(&last, &mut batch.request_counts)
                })
                .await;
        }
        *self.current() = None;
        if server.is_stopping() {
            return Ending::Suspended;
        }
        let fatal = match outcome {
            Ok(report) => report.fatal,
            // A cancel before the first request: nothing was sent.
            Err(Error::Interrupted) => None,
            Err(error) => Some(error),
        };
        match fatal {
            None if expired => Ending::Expired,
            None => Ending::Ran,
            Some(fatal) if stall::engine_stalled(&fatal) => {
                tracing::error!(batch_id = %id, "Writing the batch's results failed: {fatal}.");
                Ending::Stalled
            }
            Some(fatal) => Ending::Broken(vec![problem("engine_error", &fatal.to_string())]),
        }
    }

    /// Raises the record's counts to the run's, off the runtime and without waiting for the
    /// write, so that the run is never held up by it. Only a running batch's counts change:
    /// a write that lands late finds the batch closed and leaves its final counts alone.
    fn record_counts(&self, id: &str, watch: &RunWatch, kept: RowCounts) {
        let Some(last) = watch.live().map(|live| live.snapshot(Instant::now())) else {
            return;
        };
        let (store, owned) = (self.store.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            let raised = store.update_batch(&owned, |batch| {
                if matches!(
                    batch.status,
                    BatchStatus::InProgress | BatchStatus::Cancelling
                ) {
                    kept.add_run(&last, &mut batch.request_counts);
                }
            });
            if let Err(error) = raised {
                // The next second's write tries again; finalizing writes the true counts.
                tracing::warn!(batch_id = %owned, "Cannot record the batch's counts: {error}.");
            }
        });
    }

    async fn fail(&self, id: &str, errors: Vec<BatchError>) -> Result<(), StoreFailed> {
        let reason = errors
            .first()
            .map_or(String::new(), |error| error.message.clone());
        let close = self.update(id, move |batch| {
            batch.status = BatchStatus::Failed;
            batch.failed_at = Some(unix_now());
            batch.errors = Some(BatchErrors::new(errors));
        });
        self.events.announce(id, BatchStatus::Failed, close).await?;
        tracing::warn!(batch_id = %id, reason, "Batch failed.");
        Ok(())
    }

    /// Writes the output and error files and closes the batch: cancelled if it was being
    /// cancelled, else as `close` says.
    async fn finish(&self, id: &str, close: Close) -> Result<(), StoreFailed> {
        let finalizing = self
            .update(id, |batch| {
                if batch.status == BatchStatus::InProgress {
                    batch.status = BatchStatus::Finalizing;
                    batch.finalizing_at = Some(unix_now());
                }
            })
            .await?;
        let Some(batch) = finalizing else {
            return Ok(());
        };
        if batch.status == BatchStatus::Finalizing {
            tracing::info!(batch_id = %id, "Batch finalizing.");
        }
        let cancelled = batch.status == BatchStatus::Cancelling;
        let (unsent, errors) = match close {
            _ if cancelled => (Some(Unsent::Cancelled), None),
            Close::Ran => (None, None),
            Close::Expired => (Some(Unsent::Expired), None),
            Close::Broken(errors) => (Some(Unsent::Failed), Some(errors)),
        };
        let reason = errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|error| error.message.clone());
        let (store, owned) = (self.store.clone(), id.to_owned());
        let files =
            tokio::task::spawn_blocking(move || finalize::result_files(&store, &owned, unsent))
                .await;
        let (output, error_file, counts) = match files {
            Ok(Ok(files)) => files,
            Ok(Err(error)) if stall::finalize_stalled(&error) => {
                tracing::error!(batch_id = %id, "Cannot write the batch's files: {error}.");
                return Err(StoreFailed);
            }
            Ok(Err(error)) => {
                return self
                    .fail(id, vec![problem("internal_error", &error.to_string())])
                    .await;
            }
            Err(error) => {
                return self
                    .fail(id, vec![problem("internal_error", &error.to_string())])
                    .await;
            }
        };
        let ending = match unsent {
            Some(Unsent::Cancelled) => BatchStatus::Cancelled,
            Some(Unsent::Expired) => BatchStatus::Expired,
            Some(Unsent::Failed) => BatchStatus::Failed,
            None => BatchStatus::Completed,
        };
        let close = self.update(id, move |batch| {
            batch.output_file_id = output;
            batch.error_file_id = error_file;
            if let Some(errors) = errors {
                batch.errors = Some(BatchErrors::new(errors));
            }
            batch.request_counts = RequestCounts {
                total: batch.request_counts.total.max(counts.ok + counts.errors),
                completed: counts.ok,
                failed: counts.errors,
            };
            batch.status = ending;
            match ending {
                BatchStatus::Cancelled => batch.cancelled_at = Some(unix_now()),
                BatchStatus::Expired => batch.expired_at = Some(unix_now()),
                BatchStatus::Failed => batch.failed_at = Some(unix_now()),
                _ => batch.completed_at = Some(unix_now()),
            }
        });
        let closed = self.events.announce(id, ending, close).await?;
        if let Some(batch) = closed {
            tracing::info!(
                batch_id = %id,
                status = ?batch.status,
                completed = counts.ok,
                failed = counts.errors,
                reason,
                "Batch closed."
            );
        }
        Ok(())
    }
}

/// Passes the server's stop and abort on to a batch's run.
async fn follow_server(server: Shutdown, batch: Shutdown) {
    server.stopping().await;
    batch.stop();
    server.aborting().await;
    batch.abort();
}

fn problem(code: &str, message: &str) -> BatchError {
    BatchError {
        code: code.to_owned(),
        message: message.to_owned(),
        param: None,
        line: None,
    }
}
