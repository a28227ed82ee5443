//! Shutdown as data: a [`Shutdown`] handle is passed into the engine, so signals, a fatal error
//! mid-run and tests all stop a run the same way.
//!
//! Two phases. *Stop*: read no more input, let in-flight requests finish, flush. *Abort*: stop
//! waiting for in-flight requests too. The first SIGINT/SIGTERM stops; a second one, or the end of
//! the grace period, aborts. Either way the sinks are flushed and closed by their owner, never
//! from a signal handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Cheap to clone; every clone sees the same state.
#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abort: CancellationToken,
    interrupted: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Read no more input; in-flight requests go on.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Give up on in-flight requests as well.
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Like [`Shutdown::stop`], and the run ends as interrupted (exit 130).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.stop();
    }

    pub fn was_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once stopping has begun.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Resolves once in-flight work is to be dropped.
    pub fn aborting(&self) -> WaitForCancellationFutureOwned {
        self.abort.clone().cancelled_owned()
    }

    /// Turns SIGINT/SIGTERM into stop (first) and abort (second, or after `grace`). Runs until
    /// the process ends; the task holds no resources worth cleaning up.
    pub fn listen_for_signals(&self, grace: Duration) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            if wait_for_signal().await.is_err() {
                tracing::warn!("Cannot listen for Ctrl-C; interrupting will not drain cleanly.");
                return;
            }
            tracing::warn!(
                "Interrupted: reading no more input, finishing in-flight requests for up to {}s; interrupt again to abort now.",
                grace.as_secs()
            );
            shutdown.interrupt();
            tokio::select! {
                _ = wait_for_signal() => tracing::warn!("Interrupted again: aborting in-flight requests."),
                _ = tokio::time::sleep(grace) => tracing::warn!("Grace period over: aborting in-flight requests."),
            }
            shutdown.abort();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
