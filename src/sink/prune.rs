//! `--resume --prune`: once a resumed run has read its whole input, drops the rows of lines
//! that input no longer has (edited records, whose content ids changed) from the results file,
//! or from each of the shard's parts of a local dataset, and rebuilds the error file from what
//! is left.
//!
//! It runs after the sink has closed its file, under the same lock: each file that holds a
//! stale row is rewritten beside itself and renamed over itself, one at a time. A kill at any
//! moment leaves each file either as the run closed it (with a rewrite file that the next run
//! removes) or pruned; no kept row is lost, and `--resume --prune` again finishes the job. A
//! dataset on object storage is refused before the run starts
//! ([`ResultsError::PruneRemote`]): its parts are uploaded objects, not files renamed in place.
//!
//! Which rows are stale is the done set's and the source's to say: the keys an earlier run
//! finished ([`crate::item::DoneSet`]) that this input did not have again
//! ([`crate::source::SourceSummary::matched`]).

use std::path::{Path, PathBuf};

use super::checkpoint::{self, ResultsError};
use super::dataset;
use super::errors::{self, ErrorsFileError};
use super::lock::{self, LockFile};
use super::parquet::{OutputMode, ParquetOutput};
use crate::item::DoneSet;

/// Drops the stale rows of `output`'s file or shard (see [`checkpoint::drop_unmatched_rows`]),
/// then rebuilds the error file at `errors` (its knob and path) from them. Returns the rows
/// dropped.
pub fn prune(
    output: &ParquetOutput,
    done: &DoneSet,
    matched: &DoneSet,
    errors: Option<(&str, &Path)>,
) -> Result<u64, ErrorsFileError> {
    if let Some(remote) = &output.remote {
        return Err(ResultsError::PruneRemote {
            url: remote.url().to_owned(),
        }
        .into());
    }
    let path = &output.path;
    let (_lock, files) = match output.dataset {
        Some(owner) => {
            let lock = dataset::lock(path, owner, LockFile::Kept)?;
            let parts = dataset::list_parts(path, owner)?;
            let files: Vec<PathBuf> = parts.into_iter().map(|part| part.path).collect();
            (lock, files)
        }
        None => {
            let lock = lock::take(
                &lock::file_lock_path(path),
                &path.display().to_string(),
                LockFile::RemovedAtEnd,
            )?;
            (lock, vec![path.clone()])
        }
    };
    tracing::info!(
        "Pruning the rows of {} whose lines the input no longer has.",
        path.display()
    );
    let mut dropped = 0;
    let mut kept = Vec::new();
    for file in files {
        if checkpoint::holds_nothing(&file)? {
            continue;
        }
        let mut existing = checkpoint::inspect(&file)?;
        if checkpoint::count_unmatched_rows(&file, &existing, done, matched)? > 0 {
            dropped +=
                checkpoint::drop_unmatched_rows(&file, &existing, output.codec, done, matched)?;
            existing = checkpoint::inspect(&file)?;
        }
        kept.push((file, existing));
    }
    if let Some((knob, errors_path)) = errors {
        let mode = OutputMode::Resume {
            retry_errors: false,
            prune: false,
        };
        errors::open(knob, errors_path, mode, &kept)?;
    }
    Ok(dropped)
}
