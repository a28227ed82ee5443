//! The engine's error type and the process exit codes it maps to.
//!
//! Per-request failures are not errors here: they become [`crate::record::Outcome`]s and the batch
//! goes on. [`Error`] is for what stops a whole run (bad configuration, an unreachable backend,
//! unreadable input, unwritable output).

use std::io;
use std::path::PathBuf;

/// What stops a run. Every message names the file, URL, flag or model involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open input {path}: {cause}")]
    OpenInput { path: PathBuf, cause: io::Error },

    #[error("reading input {name} failed after line or row {line}: {cause}")]
    ReadInput {
        name: String,
        line: u64,
        cause: io::Error,
    },

    #[error("invalid backend URL {value:?}: {reason}")]
    BackendUrl { value: String, reason: String },

    #[error("cannot reach the backend at {url}: {cause}")]
    BackendUnreachable { url: String, cause: String },

    #[error(
        "the server at {url} answered neither as Ollama nor as an OpenAI-compatible API: {detail}"
    )]
    BackendUnrecognised { url: String, detail: String },

    #[error("the backend at {url} has no model {model:?}; it has: {available}")]
    ModelMissing {
        url: String,
        model: String,
        available: String,
    },

    #[error("the backend at {url} says model {model:?} does not exist: {message}")]
    ModelRejected {
        url: String,
        model: String,
        message: String,
    },

    #[error("environment variable {name} (named by --api-key-env) is not set or not valid text")]
    ApiKeyMissing { name: String },

    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),

    #[error("writing results failed: {0}")]
    Output(#[from] crate::sink::SinkError),

    #[error(transparent)]
    Results(#[from] crate::sink::checkpoint::ResultsError),

    #[error(
        "--output writes Parquet: name the file *.parquet (for JSONL, redirect standard output), not {path}"
    )]
    OutputNotParquet { path: PathBuf },

    #[error("the mock server cannot listen on {addr}: {cause}")]
    MockBind { addr: String, cause: io::Error },

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error("{0}")]
    Internal(String),

    #[error("interrupted before the first request was sent")]
    Interrupted,

    #[error(transparent)]
    Paths(#[from] crate::paths::PathError),

    #[error(transparent)]
    ErrorsFile(#[from] crate::sink::errors::ErrorsFileError),

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

    #[error("cannot read input {path} as Parquet: {reason}")]
    ParquetInput { path: PathBuf, reason: String },

    #[error(
        "input {path} lacks the column(s) {missing} that every request needs; its columns are: {found}"
    )]
    ParquetColumns {
        path: PathBuf,
        missing: String,
        found: String,
    },

    #[error("input {path}: column {column} cannot be read as JSON: {reason}")]
    ParquetColumnType {
        path: PathBuf,
        column: String,
        reason: String,
    },
}

/// Process exit codes, as documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every request succeeded.
    Success,
    /// The run finished but some requests failed or some lines were invalid.
    SomeFailed,
    /// Usage, configuration or I/O error.
    Error,
    /// Stopped by SIGINT/SIGTERM.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::SomeFailed => 1,
            ExitStatus::Error => 2,
            ExitStatus::Interrupted => 130,
        }
    }
}
