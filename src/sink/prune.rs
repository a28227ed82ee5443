//! `--resume --prune`: once a resumed run has read its whole input, drops the results file's
//! rows of lines that input no longer has (edited records, whose content ids changed), and
//! rebuilds the error file from what is left.
//!
//! It runs after the sink has closed the file, so it is one more whole-file rewrite of a
//! closed file, under the file's lock: the rows kept are written beside it and renamed over
//! it. A kill at any moment leaves either the file as the run closed it (and a rewrite file
//! that the next run removes) or the pruned one; a run of `--resume --prune` again finishes
//! the job. Which rows the input still has is the source's to say
//! ([`crate::source::SourceSummary::matched`]); which rows an earlier run wrote, the sink's
//! (they come first, [`super::parquet::PreparedOutput::kept_rows`] of them).

use std::path::Path;

use super::checkpoint::{self, ResultsError};
use super::errors::{self, ErrorsFileError};
use super::fingerprint::Fingerprint;
use super::lock::{self, LockFile};
use super::parquet::{OutputMode, ParquetOutput};
use crate::item::DoneSet;

/// Drops the rows among the first `earlier_rows` of `output`'s file whose key is not in
/// `matched`, then rebuilds the error file at `errors` (its knob and path) from the file.
/// Returns the rows dropped.
pub fn prune(
    output: &ParquetOutput,
    earlier_rows: u64,
    matched: &DoneSet,
    errors: Option<(&str, &Path)>,
) -> Result<u64, ErrorsFileError> {
    let path = &output.path;
    if output.dataset.is_some() {
        return Err(ResultsError::PruneDataset { path: path.clone() }.into());
    }
    let _lock = lock::take(
        &lock::file_lock_path(path),
        &path.display().to_string(),
        LockFile::RemovedAtEnd,
    )?;
    let existing = checkpoint::inspect(path)?;
    let key_values = Fingerprint::read(existing.metadata.file_metadata().key_value_metadata())
        .map(|fingerprint| fingerprint.key_values())
        .unwrap_or_default();
    let dropped = checkpoint::drop_unmatched_rows(
        path,
        &existing,
        output.codec,
        key_values,
        earlier_rows,
        matched,
    )?;
    if let Some((knob, errors_path)) = errors {
        let kept = [(path.clone(), checkpoint::inspect(path)?)];
        let mode = OutputMode::Resume {
            retry_errors: false,
            prune: false,
        };
        errors::open(knob, errors_path, mode, &kept)?;
    }
    Ok(dropped)
}
