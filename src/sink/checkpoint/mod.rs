//! A Parquet results file that is a valid, readable Parquet file after every checkpoint and can
//! be resumed after a crash at any instant.
//!
//! Parquet puts its footer (the index of every row group) at the end of the file and the
//! parquet crate cannot reopen a file for appending. The design:
//!
//! 1. Each checkpoint writes the buffered rows as one row group, then a footer describing every
//!    row group so far at the data end, and fsyncs. Readers (DuckDB, Polars, pyarrow) can open
//!    the file while the run goes on.
//! 2. Then a small sidecar marker (`<output>.checkpoint`: data end, row count, footer bytes) is
//!    replaced atomically (write, fsync, rename, fsync the folder). The marker is what makes a
//!    checkpoint durable: the next row group overwrites the old footer, so after a crash the
//!    marker's footer is the truth.
//! 3. Resume truncates the file to the marker's data end and puts its footer back. To append
//!    in place, a new writer re-registers the kept row groups' column chunks (metadata only: the
//!    bytes are already at exactly the offsets the writer computes, so it discards them instead
//!    of writing them) and then continues after them.
//! 4. A clean close writes the final footer and removes the marker.
//!
//! Page indexes and bloom filters are off so that nothing but column chunks lies between the
//! file's magic and the footer; that layout is what re-registration relies on, and it is
//! checked (the re-registered length must equal the data end) before anything is written.
//!
//! The parts: `marker` (the sidecar marker and the other files beside the results), `existing`
//! (a file found on disk, checked but not modified), `writer` (appending and checkpointing) and
//! `rows` (whole-file passes: what is done, counts by status, the `--retry-errors` rewrite).

mod existing;
mod marker;
mod rows;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use parquet::errors::ParquetError;

pub use existing::{ExistingResults, inspect};
pub use marker::{SIDE_FILES, holds_nothing, marker_path, remove_leftovers};
pub use rows::{StatusCounts, count_statuses, drop_error_rows, read_done};
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
