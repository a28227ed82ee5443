//! Flags of `batchflow serve` and how they become the library's `ServeOptions`: the server's
//! own knobs (address, data directory, clients' key, upload limit, connection bounds, webhooks) and the few run knobs every
//! batch shares (backends, workers, grace, checkpoints), laid over a served pipeline file's
//! when one is given (the command line wins).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use batchflow::config::ServePipeline;
use batchflow::options::{RunOptions, Workers};
use batchflow::serve::webhooks::{Secret, WebhookOptions};
use batchflow::serve::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_FILE_BYTES,
    ServeOptions,
};
use clap::Args;

use super::{FlagDuration, flag_duration};

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A served pipeline file: TOML with a [serve] section (listen, data_dir, api_key_env,
    /// max_file_bytes, allow_open, grace, webhook_url, webhook_secret_env), the [backend] every
    /// batch runs against, and [sink] checkpoint_rows/checkpoint_secs. Flags given here win
    /// over the file.
    #[arg(value_name = "PIPELINE.toml")]
    pub file: Option<PathBuf>,

    /// Override a value of the file, e.g. `--set serve.listen=127.0.0.1:9000` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE", requires = "file")]
    pub set: Vec<String>,

    /// Address to listen on (default 127.0.0.1:8080); port 0 picks a free one (logged).
    /// Loopback by default: another address needs --api-key-env (or --allow-open).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Where uploaded files, batch records and results are kept (created if missing). A
    /// server started again on it resumes the batches it left unfinished. Required unless the
    /// pipeline file gives serve.data_dir.
    #[arg(long, value_name = "DIR", required_unless_present = "file")]
    pub data_dir: Option<PathBuf>,

    /// Server base URL the batches run against (repeatable, as for a run). Default: the
    /// file's [backend], else $OLLAMA_HOST, else 127.0.0.1:11434.
    #[arg(short, long, value_name = "URL")]
    pub backend: Vec<String>,

    /// Run the batches against the built-in mock server: try the API without Ollama.
    #[arg(long, conflicts_with = "backend")]
    pub mock: bool,

    /// Requests in flight at once per backend (default 8), shared by the queued batches (run
    /// one at a time, first in, first out).
    #[arg(short, long, value_parser = Workers::parse, value_name = "N|auto")]
    pub workers: Option<Workers>,

    /// Name of an environment variable holding the key clients must send as
    /// `Authorization: Bearer KEY`. The key itself is never printed, logged or stored.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,

    /// Name of an environment variable holding the bearer key sent to the backends (an
    /// OpenAI-compatible server that wants one), as a run's --api-key-env.
    #[arg(long, value_name = "VAR")]
    pub backend_api_key_env: Option<String>,

    /// Uploads larger than this get 413 and are not kept (default 200 MiB).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: Option<u64>,

    /// After SIGINT/SIGTERM, how long the running batch's in-flight requests may take
    /// (default 30s); the batch stays resumable either way.
    #[arg(long, value_parser = flag_duration, value_name = "DURATION")]
    pub grace: Option<FlagDuration>,

    /// Checkpoint each batch's results after this many new rows (default 10000; or 8 MiB of
    /// them, or 30 seconds): what a killed server's batch resumes from.
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_rows: Option<u64>,

    /// Listen on a non-loopback address without --api-key-env.
    #[arg(long)]
    pub allow_open: bool,

    /// Connections served at once (default 512, and at most half the open-file limit); more
    /// wait to be accepted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// A connection whose request headers take longer than this, or that sits idle this
    /// long between requests, is closed (default 10s).
    #[arg(long, value_parser = flag_duration, value_name = "DURATION")]
    pub header_timeout: Option<FlagDuration>,

    /// Post each batch's end (batch.completed, batch.failed, batch.expired, batch.cancelled)
    /// to this URL as an OpenAI webhook event, signed with --webhook-secret-env's secret;
    /// retried with backoff until answered 2xx, across restarts.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<url::Url>,

    /// Name of an environment variable holding the webhooks' signing secret, `whsec_<base64>`
    /// as OpenAI gives it. The secret itself is never printed, logged or stored.
    #[arg(long, value_name = "VAR")]
    pub webhook_secret_env: Option<String>,
}

impl ServeArgs {
    /// The run knobs every batch shares: defaults, then the file's, then these flags.
    pub fn run_options(&self, file: Option<&ServePipeline>) -> RunOptions {
        let mut run = RunOptions::default();
        if let Some(file) = file {
            file.apply(&mut run);
        }
        if !self.backend.is_empty() {
            run.backends = self.backend.clone();
        }
        run.api_key_env = self.backend_api_key_env.clone().or(run.api_key_env);
        run.workers = self.workers.unwrap_or(run.workers);
        run.grace = self.grace.map_or(run.grace, |grace| grace.0);
        run.checkpoint_rows = self.checkpoint_rows.unwrap_or(run.checkpoint_rows);
        run
    }

    /// The server these flags and `file` ask for, running batches with `run`; `env` reads the
    /// clients' key.
    pub fn options(
        &self,
        file: Option<&ServePipeline>,
        run: RunOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<ServeOptions> {
        let api_key = match self
            .api_key_env
            .as_ref()
            .or(file.and_then(|file| file.api_key_env.as_ref()))
        {
            Some(name) => Some(
                env(name)
                    .filter(|key| !key.is_empty())
                    .with_context(|| format!("--api-key-env {name}: the variable is not set"))?,
            ),
            None => None,
        };
        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| file.map(|file| file.data_dir.clone()))
            .context("--data-dir is required")?;
        if self
            .header_timeout
            .is_some_and(|timeout| timeout.0.is_zero())
        {
            anyhow::bail!("--header-timeout must be longer than zero");
        }
        let webhook = self.webhook(file, &env)?;
        Ok(ServeOptions {
            listen: self
                .listen
                .or(file.and_then(|file| file.listen))
                .unwrap_or(DEFAULT_LISTEN),
            data_dir,
            run,
            api_key,
            max_file_bytes: self
                .max_file_bytes
                .or(file.and_then(|file| file.max_file_bytes))
                .unwrap_or(DEFAULT_MAX_FILE_BYTES),
            allow_open: self.allow_open || file.is_some_and(|file| file.allow_open),
            max_connections: self
                .max_connections
                .map(|count| usize::try_from(count).unwrap_or(usize::MAX))
                .or(file.and_then(|file| file.max_connections))
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_timeout: self
                .header_timeout
                .map(|timeout| timeout.0)
                .or(file.and_then(|file| file.header_timeout))
                .unwrap_or(DEFAULT_HEADER_TIMEOUT),
            webhook,
            mock: None,
        })
    }

    /// The webhooks these flags and `file` ask for; `env` reads the secret.
    fn webhook(
        &self,
        file: Option<&ServePipeline>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<WebhookOptions>> {
        let url = self
            .webhook_url
            .clone()
            .or(file.and_then(|file| file.webhook_url.clone()));
        let secret_env = self
            .webhook_secret_env
            .as_ref()
            .or(file.and_then(|file| file.webhook_secret_env.as_ref()));
        let (url, name) = match (url, secret_env) {
            (None, None) => return Ok(None),
            (Some(url), Some(name)) => (url, name),
            (Some(_), None) => anyhow::bail!(
                "--webhook-url needs --webhook-secret-env, the variable holding the signing secret"
            ),
            (None, Some(_)) => anyhow::bail!("--webhook-secret-env needs --webhook-url"),
        };
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--webhook-url {url}: not an http(s) URL");
        }
        let text = env(name)
            .filter(|secret| !secret.is_empty())
            .with_context(|| format!("--webhook-secret-env {name}: the variable is not set"))?;
        let secret =
            Secret::parse(&text).with_context(|| format!("--webhook-secret-env {name}"))?;
        Ok(Some(WebhookOptions { url, secret }))
    }
}
