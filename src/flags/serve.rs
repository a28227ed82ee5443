//! Flags of `batchflow serve` and how they become the library's `ServeOptions`: the server's
//! own knobs (address, data directory, clients' key, upload limit) and the few run knobs every
//! batch shares (backends, workers, grace).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use batchflow::options::{RunOptions, Workers};
use batchflow::serve::{DEFAULT_MAX_FILE_BYTES, ServeOptions};
use clap::Args;

use super::{FlagDuration, flag_duration};

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (logged). Loopback by default: another
    /// address needs --api-key-env (or --allow-open).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Where uploaded files, batch records and results are kept (created if missing). A
    /// server started again on it resumes the batches it left unfinished.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Server base URL the batches run against (repeatable, as for a run). Default:
    /// $OLLAMA_HOST, else 127.0.0.1:11434.
    #[arg(short, long, value_name = "URL")]
    pub backend: Vec<String>,

    /// Requests in flight at once per backend, shared by the queued batches (run one at a
    /// time, first in, first out).
    #[arg(short, long, default_value_t = RunOptions::default().workers, value_parser = Workers::parse, value_name = "N|auto")]
    pub workers: Workers,

    /// Name of an environment variable holding the key clients must send as
    /// `Authorization: Bearer KEY`. The key itself is never printed, logged or stored.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,

    /// Uploads larger than this get 413 and are not kept.
    #[arg(long, default_value_t = DEFAULT_MAX_FILE_BYTES, value_name = "BYTES")]
    pub max_file_bytes: u64,

    /// After SIGINT/SIGTERM, how long the running batch's in-flight requests may take; the
    /// batch stays resumable either way.
    #[arg(long, default_value_t = FlagDuration(RunOptions::default().grace), value_parser = flag_duration, value_name = "DURATION")]
    pub grace: FlagDuration,

    /// Checkpoint each batch's results after this many new rows (or 8 MiB of them, or 30
    /// seconds): what a killed server's batch resumes from.
    #[arg(long, default_value_t = RunOptions::default().checkpoint_rows, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_rows: u64,

    /// Listen on a non-loopback address without --api-key-env.
    #[arg(long)]
    pub allow_open: bool,
}

impl ServeArgs {
    /// The server these flags ask for; `env` reads the clients' key.
    pub fn options(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<ServeOptions> {
        let api_key = match &self.api_key_env {
            Some(name) => Some(
                env(name)
                    .filter(|key| !key.is_empty())
                    .with_context(|| format!("--api-key-env {name}: the variable is not set"))?,
            ),
            None => None,
        };
        Ok(ServeOptions {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            run: RunOptions {
                backends: self.backend.clone(),
                workers: self.workers,
                grace: self.grace.0,
                checkpoint_rows: self.checkpoint_rows,
                ..RunOptions::default()
            },
            api_key,
            max_file_bytes: self.max_file_bytes,
            allow_open: self.allow_open,
        })
    }
}
