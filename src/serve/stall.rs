//! When the data directory fails under a batch (a full disk, an I/O error), the failure is
//! the server's, not the batch's: the batch keeps its results and runs again after a pause,
//! resuming them, as a CLI run resumes after ENOSPC. This module says which failures those
//! are and how long to pause; the runner does the waiting.

use std::io;
use std::time::Duration;

use parquet::errors::ParquetError;

use super::finalize::FinalizeError;
use super::store::StoreError;
use crate::error::Error;
use crate::sink::SinkError;
use crate::sink::checkpoint::ResultsError;

/// The first pause after a stall; each further one doubles, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Long enough not to spin on a disk that stays full, short enough that a batch goes on soon
/// after space is freed.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The pause before the `stalls`-th attempt in a row (1 for the first stall).
pub fn pause(stalls: u32) -> Duration {
    let doublings = stalls.saturating_sub(1).min(16);
    FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE)
}

/// The store failed on the disk; the failure is logged where it happened.
pub struct StoreFailed;

/// A store call's result as the runner acts on it: a disk failure is a stall; a record that
/// cannot be read as one (or a panicked call) would fail the same way at every try, so it is
/// logged and treated as no record, rather than holding the queue's head for ever.
pub fn settle<T>(
    id: &str,
    doing: &str,
    result: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<Option<T>, StoreFailed> {
    match result {
        Ok(Ok(value)) => Ok(Some(value)),
        Ok(Err(error)) => {
            tracing::error!(batch_id = %id, "Cannot {doing} the batch: {error}.");
            if store_failed(&error) {
                Err(StoreFailed)
            } else {
                Ok(None)
            }
        }
        Err(error) => {
            tracing::error!(batch_id = %id, "Cannot {doing} the batch: {error}.");
            Ok(None)
        }
    }
}

/// Whether the engine stopped because writing the batch's results failed.
pub fn engine_stalled(error: &Error) -> bool {
    match error {
        Error::Output(error) => sink_failed(error),
        Error::Results(error) => results_failed(error),
        Error::OpenOutput { .. } => true,
        _ => false,
    }
}

/// Whether making the batch's result files failed on the disk rather than on its data.
pub fn finalize_stalled(error: &FinalizeError) -> bool {
    match error {
        FinalizeError::Results(error) => results_failed(error),
        FinalizeError::Store(error) => store_failed(error),
    }
}

/// Whether a store error is the disk's (not a record that cannot be read as one).
pub fn store_failed(error: &StoreError) -> bool {
    matches!(error, StoreError::Io { .. })
}

fn sink_failed(error: &SinkError) -> bool {
    match error {
        SinkError::Io(_) | SinkError::Thread(_) => true,
        SinkError::Results(error) => results_failed(error),
        SinkError::Closed => false,
    }
}

fn results_failed(error: &ResultsError) -> bool {
    match error {
        ResultsError::Io { .. } => true,
        // The Parquet writer passes its file's write errors on wrapped.
        ResultsError::Parquet {
            cause: ParquetError::External(inner),
            ..
        } => inner.is::<io::Error>(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn pauses_double_up_to_their_cap() {
        let pauses: Vec<u64> = (1..=8).map(|stalls| pause(stalls).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(pause(u32::MAX), MAX_PAUSE);
    }

    #[test]
    fn a_full_disk_stalls_and_a_damaged_dataset_does_not() {
        let full = || io::Error::from_raw_os_error(libc::ENOSPC);
        let path = PathBuf::from("part-0.parquet");
        assert!(engine_stalled(&Error::Output(SinkError::Io(full()))));
        assert!(engine_stalled(&Error::Results(ResultsError::Parquet {
            path: path.clone(),
            cause: ParquetError::External(Box::new(full())),
        })));
        assert!(!engine_stalled(&Error::Results(ResultsError::Damaged {
            path,
            reason: "no footer".into(),
        })));
        assert!(!engine_stalled(&Error::Interrupted));
    }
}
