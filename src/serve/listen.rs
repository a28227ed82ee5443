//! The accept loop: HTTP/1 connections served with two bounds that `axum::serve` does not
//! offer. Request headers must arrive within a timeout (hyper's `header_read_timeout`, which
//! also closes a keep-alive connection idle that long), and at most `max_connections` are
//! served at once: beyond that, new connections wait in the kernel's accept queue until a
//! slot frees. Together they keep clients that connect and send nothing from taking every
//! file descriptor and starving the ones that do send. What a request means is the router's.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// After an accept that failed for want of resources (file descriptors, memory), how long
/// before the next: retrying at once would spin while nothing has changed.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    /// `max_connections` lowered to half the process's open-file limit: the other half stays
    /// for stored files, results and the backends' connections, so that accepting never
    /// runs the process out of descriptors.
    pub fn new(max_connections: usize, header_timeout: Duration) -> ConnectionLimits {
        let fitting = match open_file_limit() {
            Some(limit) => {
                let half = usize::try_from(limit / 2).unwrap_or(usize::MAX);
                if half < max_connections {
                    tracing::info!(
                        open_files = limit,
                        max_connections = half,
                        "Fewer connections than asked for: the open-file limit is low."
                    );
                }
                max_connections.min(half)
            }
            None => max_connections,
        };
        ConnectionLimits {
            max_connections: fitting.max(1),
            header_timeout,
        }
    }
}

/// The soft `RLIMIT_NOFILE`, if the system says.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (read == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Serves `router` on `listener` until `stop` resolves; then accepts no more, lets each
/// connection finish the request it is on, and returns once all are closed.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(stop);
    loop {
        // The slot is taken before the accept, so that a full server leaves new connections
        // in the kernel's queue rather than holding their descriptors.
        let slot = tokio::select! {
            () = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => unreachable!("the semaphore is never closed"),
            },
        };
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!("Cannot accept a connection: {error}.");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small answers go out at once instead of waiting for an acknowledgement.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("A connection ended: {error}.");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An error of the one connection being accepted, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
