//! A Parquet results file that a reader can open at any instant of a run, and after a crash,
//! and find whole: every row of the last checkpoint, never a torn footer.
//!
//! Parquet puts its footer (the index of every row group) at the end of the file, so a file
//! being appended to in place has no footer while a row group is written. The design:
//!
//! 1. The published file (the path readers open) is never written to. Each checkpoint stages a
//!    new version beside it (`<output>.tmp`): a kernel-side copy of the published file's row
//!    groups, then the new row groups and a footer of all of them; it fsyncs the staging file,
//!    renames it over the published one and fsyncs the folder. A reader holds the old version
//!    or the new one, whole; a crash leaves the last published version and a staging file to
//!    remove.
//! 2. A new file is published at once with no rows, carrying the run's fingerprint.
//! 3. Resume opens the published file and, to append, a new writer re-registers the kept row
//!    groups' column chunks (metadata only: the bytes are copied into the staging file by the
//!    kernel, so the writer discards them instead of writing them) and continues after them.
//! 4. A clean close publishes the final footer with the run's end state.
//!
//! Page indexes and bloom filters are off so that nothing but column chunks lies between the
//! file's magic and the footer; that layout is what re-registration relies on, and it is
//! checked (the re-registered length must equal the data end) before anything is written.
//!
//! The parts: `side_files` (the staging and rewrite files beside the results), `existing` (a
//! file found on disk, checked but not modified), `writer` (appending and checkpointing) and
//! `rows` (whole-file passes: what is done, counts by status, the `--retry-errors` and
//! `--prune` rewrites).

mod existing;
mod rows;
mod side_files;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use parquet::errors::ParquetError;

pub use existing::{ExistingResults, inspect};
pub use rows::{
    StatusCounts, count_statuses, count_unmatched_rows, drop_error_rows, drop_unmatched_rows,
    read_done,
};
pub use side_files::{SIDE_FILES, STAGING_SUFFIX, holds_nothing, remove_leftovers};
pub use writer::{Codec, ResultsWriter};

pub(super) const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

/// Footer key-value entry telling how the run that wrote the file ended.
pub const STATE_KEY: &str = "batchflow.state";

/// How the run that wrote a results file ended, as recorded in its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Checkpointed by a run that was still going (or was killed).
    InProgress,
    /// Closed cleanly after an interrupt or an error: resumable.
    Interrupted,
    /// Closed after the whole input was processed.
    Complete,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::InProgress => "in_progress",
            FileState::Interrupted => "interrupted",
            FileState::Complete => "complete",
        }
    }

    fn parse(text: &str) -> Option<FileState> {
        [
            FileState::InProgress,
            FileState::Interrupted,
            FileState::Complete,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// What can go wrong with a results file. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },

    #[error("{path}: {cause}")]
    Parquet { path: PathBuf, cause: ParquetError },

    #[error("{path} cannot be resumed: {reason}. It was left untouched")]
    Damaged { path: PathBuf, reason: String },

    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),

    #[error(
        "{owner} is being written by another run ({holder}; its lock is {path}): wait for it to end or stop it (two writers would lose or double rows)"
    )]
    Busy {
        path: PathBuf,
        owner: String,
        holder: String,
    },

    #[error(
        "{owner} of {url} was taken over by another run while this one (its writer number {token}) stalled or lost the store: this run publishes nothing more. What it published is kept; the other run goes on, or run again with --resume once it ends"
    )]
    Fenced {
        owner: String,
        url: String,
        token: u64,
    },

    #[error(
        "{dir} holds parts of another shard layout than {owner} ({parts}): a run of {owner} would count their rows again. Pass --overwrite to replace them, or write to another directory"
    )]
    OtherLayout {
        dir: String,
        owner: String,
        parts: String,
    },

    #[error(
        "{url} changed after this run read it: a write of the run it took over from landed late. This run publishes nothing more, so nothing is lost or doubled; run again with --resume"
    )]
    LateWrite { url: String },

    #[error(
        "--prune rewrites results in place, which a dataset on object storage ({url}) does not allow safely: resume it without --prune, or write the edited input's results to a new dataset"
    )]
    PruneRemote { url: String },

    #[error("{path} already exists; pass --resume to continue it or --overwrite to replace it")]
    Exists { path: PathBuf },

    #[error(
        "--output writes Parquet: name the file *.parquet (for JSONL, redirect standard output), not {path}"
    )]
    NotParquet { path: PathBuf },

    #[error(
        "{path} was made with other settings: {changes}. Mixing them in one table would corrupt an analysis: write to a new file, or pass --allow-config-change to resume anyway (the change is recorded in the file)"
    )]
    ConfigChanged { path: PathBuf, changes: String },
}

pub(super) fn io_error(path: &Path) -> impl Fn(io::Error) -> ResultsError + '_ {
    move |cause| ResultsError::Io {
        path: path.to_owned(),
        cause,
    }
}

pub(super) fn parquet_error(path: &Path) -> impl Fn(ParquetError) -> ResultsError + '_ {
    move |cause| ResultsError::Parquet {
        path: path.to_owned(),
        cause,
    }
}
