//! Sinks: where outcomes go. All sinks of a run live on one writer thread fed by a bounded
//! channel, so slow output (a full pipe, a slow disk, Parquet encoding) pushes back on the stage
//! instead of piling up in memory, and never blocks the async runtime.
//!
//! The writer thread lets each sink flush when the channel runs dry, so each finished line reaches the
//! reader promptly without a write system call per line under load. While idle it still wakes
//! for a sink's deadline (a time-based checkpoint, a delayed flush).

pub mod checkpoint;
pub mod dataset;
pub mod errors;
pub mod fingerprint;
pub mod generation;
pub mod jsonl;
pub mod lock;
pub mod mode;
pub mod parquet;
pub mod prune;
pub mod remote;
pub mod results;

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::item::Outcome;
use crate::reply::ReplyFields;
use crate::stats::RunStats;

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (`| head`): not a failure of the run.
    #[error("the output was closed by its reader")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Results(#[from] checkpoint::ResultsError),
    #[error("cannot start the output thread: {0}")]
    Thread(io::Error),
}

impl SinkError {
    /// Sorts an I/O error: a broken pipe means the reader is done, anything else is a failure.
    pub fn from_write(error: io::Error) -> SinkError {
        if error.kind() == io::ErrorKind::BrokenPipe {
            SinkError::Closed
        } else {
            SinkError::Io(error)
        }
    }
}

/// A destination for outcomes.
pub trait Sink: Send {
    /// Writes one outcome; `reply` is what [`ReplyFields::of`] read from it, parsed once for
    /// every sink.
    fn write(&mut self, outcome: &Outcome, reply: &ReplyFields) -> Result<(), SinkError>;
    /// No outcome is waiting: make everything written so far visible to readers, if that is
    /// cheap.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// When this sink wants [`Sink::on_deadline`] called even if no outcome arrives.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn on_deadline(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// The run is over: flush and close.
    fn finish(&mut self) -> Result<(), SinkError>;
    /// Another sink failed and the run stops: close what can be closed, marked unfinished.
    fn abandon(&mut self) -> Result<(), SinkError> {
        self.finish()
    }
}

/// How the writer thread ended.
#[derive(Debug)]
pub struct SinkReport {
    /// The output's reader went away before the end.
    pub closed: bool,
    pub error: Option<SinkError>,
}

/// Starts the writer thread. It ends when every sender of `outcomes` is dropped, or at the
/// first write error (then dropping the receiver tells the stage to stop). `runtime` serves
/// the timed waits for sink deadlines.
pub fn spawn(
    mut sinks: Vec<Box<dyn Sink>>,
    mut outcomes: mpsc::Receiver<Vec<Outcome>>,
    runtime: tokio::runtime::Handle,
    stats: Arc<RunStats>,
) -> Result<thread::JoinHandle<SinkReport>, SinkError> {
    thread::Builder::new()
        .name("batchflow-sink".into())
        .spawn(move || {
            let result = write_all(&mut sinks, &mut outcomes, &runtime, &stats);
            if let Err((failed, _)) = &result {
                // The run stops with the failed sink; the others still close properly.
                for (index, sink) in sinks.iter_mut().enumerate() {
                    if index != *failed {
                        if let Err(error) = sink.abandon() {
                            tracing::warn!(
                                "Cannot close an output after another one failed: {error}."
                            );
                        }
                    }
                }
            }
            let (closed, error) = match result {
                Ok(()) => (false, None),
                Err((_, SinkError::Closed)) => (true, None),
                Err((_, error)) => (false, Some(error)),
            };
            SinkReport { closed, error }
        })
        .map_err(SinkError::Thread)
}

fn write_all(
    sinks: &mut [Box<dyn Sink>],
    outcomes: &mut mpsc::Receiver<Vec<Outcome>>,
    runtime: &tokio::runtime::Handle,
    stats: &RunStats,
) -> Result<(), (usize, SinkError)> {
    loop {
        let batch = match outcomes.try_recv() {
            Ok(batch) => batch,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                for (index, sink) in sinks.iter_mut().enumerate() {
                    sink.flush().map_err(|error| (index, error))?;
                }
                let deadline = sinks.iter().filter_map(|sink| sink.deadline()).min();
                let next = match deadline {
                    None => outcomes.blocking_recv(),
                    Some(deadline) => {
                        let wait = async {
                            tokio::time::timeout_at(deadline.into(), outcomes.recv()).await
                        };
                        match runtime.block_on(wait) {
                            Ok(next) => next,
                            Err(_) => {
                                let now = Instant::now();
                                for (index, sink) in sinks.iter_mut().enumerate() {
                                    if sink.deadline().is_some_and(|due| due <= now) {
                                        sink.on_deadline().map_err(|error| (index, error))?;
                                    }
                                }
                                continue;
                            }
                        }
                    }
                };
                match next {
                    Some(batch) => batch,
                    None => break,
                }
            }
        };
        for outcome in &batch {
            let reply = ReplyFields::of(outcome);
            for (index, sink) in sinks.iter_mut().enumerate() {
                sink.write(outcome, &reply)
                    .map_err(|error| (index, error))?;
            }
            stats.finished(outcome, &reply);
        }
    }
    for (index, sink) in sinks.iter_mut().enumerate() {
        sink.finish().map_err(|error| (index, error))?;
    }
    Ok(())
}
