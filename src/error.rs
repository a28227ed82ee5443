//! The one error type where the engine meets the binary, over each layer's own (source, backend,
//! sink, paths, config, mock, metrics), and the process exit codes.
//!
//! Per-request failures are not errors here: they become [`crate::item::Outcome`]s and the batch
//! goes on. [`Error`] is for what stops a whole run (bad configuration, an unreachable backend,
//! unreadable input, unwritable output).

use std::io;
use std::path::PathBuf;

/// What stops a run: each layer's error, and what only the run itself can say. Every message
/// names the file, URL, flag or model involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),

    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),

    #[error("writing results failed: {0}")]
    Output(#[from] crate::sink::SinkError),

    #[error(transparent)]
    Results(#[from] crate::sink::checkpoint::ResultsError),

    #[error(transparent)]
    ErrorsFile(#[from] crate::sink::errors::ErrorsFileError),

    #[error(transparent)]
    Paths(#[from] crate::paths::PathError),

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error(transparent)]
    Mock(#[from] crate::mock::MockError),

    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),

    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),

    #[error(
        "stopped as --on-reload stop asks: {what}; the results so far are kept. Keep one model configuration (--options, --keep-alive, one num_ctx per model), then run again with --resume"
    )]
    ModelUnsettled { what: String },

    #[error("environment variable {name} (named by {knob}) is not set or not valid text")]
    ApiKeyMissing { name: String, knob: String },

    #[error(
        "{knob} {path} already exists; pass --resume to continue it or --overwrite to replace it"
    )]
    OutputExists { knob: String, path: PathBuf },

    #[error("cannot open {knob} {path}: {cause}")]
    OpenOutput {
        knob: String,
        path: PathBuf,
        cause: io::Error,
    },

    #[error("resuming needs {knob}: only a results file records what is done")]
    ResumeWithoutResults { knob: String },

    #[error("interrupted before the first request was sent")]
    Interrupted,

    #[error("{0}")]
    Internal(String),
}

/// Process exit codes, as documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every row of the results is ok.
    Success,
    /// The run finished but some rows of the results (kept ones included) are errors.
    SomeFailed,
    /// Usage, configuration or I/O error.
    Error,
    /// Stopped by SIGINT/SIGTERM.
    Interrupted,
}

impl ExitStatus {
    /// The status of several runs taken as one (a pipeline's stages): the worst of them, an
    /// error before an interruption, as in one run.
    pub fn worst(self, other: ExitStatus) -> ExitStatus {
        let rank = |status: ExitStatus| match status {
            ExitStatus::Success => 0,
            ExitStatus::SomeFailed => 1,
            ExitStatus::Interrupted => 2,
            ExitStatus::Error => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::SomeFailed => 1,
            ExitStatus::Error => 2,
            ExitStatus::Interrupted => 130,
        }
    }
}
