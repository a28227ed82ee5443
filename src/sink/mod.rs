//! Sinks: where outcomes go. All sinks of a run live on one writer thread fed by a bounded
//! channel, so slow output (a full pipe, a slow disk, Parquet encoding) pushes back on the stage
//! instead of piling up in memory, and never blocks the async runtime.
//!
//! The writer thread flushes whenever the channel runs dry, so each finished line reaches the
//! reader promptly without a write system call per line under load.

pub mod jsonl;

use std::io;
use std::thread;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::record::Outcome;

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (`| head`): not a failure of the run.
    #[error("the output was closed by its reader")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
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
    fn write(&mut self, outcome: &Outcome) -> Result<(), SinkError>;
    /// Make everything written so far visible to readers.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The run is over: flush and close.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// Counts of what the sinks have written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub succeeded: u64,
    /// Requests that were sent but failed in the end.
    pub failed: u64,
    /// Input lines that could not become requests.
    pub invalid: u64,
}

impl Tally {
    fn count(&mut self, outcome: &Outcome) {
        match &outcome.error {
            None => self.succeeded += 1,
            Some(error) if error.code.is_invalid_input() => self.invalid += 1,
            Some(_) => self.failed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.invalid
    }
}

/// How the writer thread ended.
#[derive(Debug)]
pub struct SinkReport {
    pub tally: Tally,
    /// The output's reader went away before the end.
    pub closed: bool,
    pub error: Option<io::Error>,
}

/// Starts the writer thread. It ends when every sender of `outcomes` is dropped, or at the
/// first write error (then dropping the receiver tells the stage to stop).
pub fn spawn(
    mut sinks: Vec<Box<dyn Sink>>,
    mut outcomes: mpsc::Receiver<Outcome>,
) -> Result<thread::JoinHandle<SinkReport>, Error> {
    thread::Builder::new()
        .name("batchflow-sink".into())
        .spawn(move || {
            let mut tally = Tally::default();
            let result = (|| {
                while let Some(outcome) = outcomes.blocking_recv() {
                    for sink in sinks.iter_mut() {
                        sink.write(&outcome)?;
                    }
                    tally.count(&outcome);
                    if outcomes.is_empty() {
                        for sink in sinks.iter_mut() {
                            sink.flush()?;
                        }
                    }
                }
                for sink in sinks.iter_mut() {
                    sink.finish()?;
                }
                Ok(())
            })();
            let (closed, error) = match result {
                Ok(()) => (false, None),
                Err(SinkError::Closed) => (true, None),
                Err(SinkError::Io(error)) => (false, Some(error)),
            };
            SinkReport {
                tally,
                closed,
                error,
            }
        })
        .map_err(|error| Error::Internal(format!("cannot start the output thread: {error}")))
}
