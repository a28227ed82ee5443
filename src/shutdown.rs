//! Shutdown as data: a [`Shutdown`] handle is passed into the engine, so signals, a fatal error
//! mid-run and tests all stop a run the same way.
//!
//! Two phases. *Stop*: read no more input, let in-flight requests finish, flush. *Abort*: stop
//! waiting for in-flight requests too. The first SIGINT/SIGTERM stops; a second one, or the end of
//! the grace period, aborts. Either way the sinks are flushed and closed by their owner, never
//! from a signal handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Cheap to clone; every clone sees the same state.
#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abort: CancellationToken,
    interrupted: Arc<AtomicBool>,
    /// How long in-flight requests may finish after a signal, in milliseconds; 0 until
    /// [`Shutdown::set_grace`] (then [`DEFAULT_GRACE`] applies).
    grace_millis: Arc<AtomicU64>,
    /// The run is over: a signal now only ends what the caller does after it (a metrics
    /// endpoint lingering for a last scrape), with nothing in flight to drain.
    ended: Arc<AtomicBool>,
}

/// The grace period before a run has said its own (`--grace`'s default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

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

    /// Sets the grace period a signal grants in-flight requests, once the run's settings are
    /// known (signals are listened for before that).
    pub fn set_grace(&self, grace: Duration) {
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX).max(1);
        self.grace_millis.store(millis, Ordering::SeqCst);
    }

    /// Says the run is over, so that a signal is no longer announced as draining requests.
    pub fn run_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    fn grace(&self) -> Duration {
        match self.grace_millis.load(Ordering::SeqCst) {
            0 => DEFAULT_GRACE,
            millis => Duration::from_millis(millis),
        }
    }

    /// Turns SIGINT/SIGTERM into stop (first) and abort (second, or after the grace period).
    /// The handlers are installed before this returns, so a signal that arrives at any later
    /// instant, while start-up is still blocked included, is seen; the caller should call it
    /// first thing. Must be called within a tokio runtime. The task runs until the process
    /// ends; it holds no resources worth cleaning up.
    pub fn listen_for_signals(&self) {
        let shutdown = self.clone();
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::warn!(
                    "Cannot listen for Ctrl-C ({error}); interrupting will not drain cleanly."
                );
                return;
            }
        };
        tokio::spawn(async move {
            signals.next().await;
            if shutdown.ended.load(Ordering::SeqCst) {
                tracing::info!("Interrupted after the run: stopping.");
                shutdown.interrupt();
                return;
            }
            let grace = shutdown.grace();
            tracing::warn!(
                "Interrupted: reading no more input, finishing in-flight requests for up to {}s; interrupt again to abort now.",
                grace.as_secs()
            );
            shutdown.interrupt();
            tokio::select! {
                _ = signals.next() => tracing::warn!("Interrupted again: aborting in-flight requests."),
                _ = tokio::time::sleep(grace) => tracing::warn!("Grace period over: aborting in-flight requests."),
            }
            shutdown.abort();
        });
    }
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
