//! Served pipelines: a file with a `[serve]` section describes `batchflow serve` (address,
//! data directory, clients' key, upload limit, connection bounds, grace, webhooks) with the `[backend]` every batch runs
//! against and the checkpoint keys of `[sink]`. Requests come from uploaded files, so
//! `[source]` and `[request]` have no place in it, and the sink's output keys neither: each
//! batch's results live in the data directory. Checked and resolved without I/O, like a run's
//! pipeline; the server's options are the binary's to build from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::resolve::{BackendParts, relative_to, resolve_backend};
use super::{BackendSection, DurationValue};
use crate::options::RunOptions;

/// A served pipeline file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub serve: ServeSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub sink: ServeSinkSection,
}

/// `[serve]`: the server's own knobs, as `batchflow serve`'s flags name them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Address to listen on; default 127.0.0.1:8080.
    pub listen: Option<String>,
    /// Uploaded files, batch records and results (relative to the pipeline file's folder).
    pub data_dir: String,
    /// The environment variable holding the key clients must send as a bearer token.
    pub api_key_env: Option<String>,
    /// Uploads larger than this get 413; default 200 MB.
    pub max_file_bytes: Option<u64>,
    /// Listen on a non-loopback address without `api_key_env`.
    pub allow_open: Option<bool>,
    /// After a signal, how long the running batch's in-flight requests may take.
    pub grace: Option<DurationValue>,
    /// Connections served at once; more wait to be accepted. Default 512.
    pub max_connections: Option<usize>,
    /// A connection whose request headers take longer than this is closed. Default 10s.
    pub header_timeout: Option<DurationValue>,
    /// Where batch ends are posted as OpenAI webhook events; needs `webhook_secret_env`.
    pub webhook_url: Option<String>,
    /// The environment variable holding the webhooks' signing secret (`whsec_<base64>`).
    pub webhook_secret_env: Option<String>,
}

/// `[sink]` of a served pipeline: how often each batch's results are checkpointed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSinkSection {
    pub checkpoint_rows: Option<u64>,
    pub checkpoint_secs: Option<DurationValue>,
}

/// A served pipeline whose fields are checked and resolved.
#[derive(Debug, Clone)]
pub struct ServePipeline {
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub api_key_env: Option<String>,
    pub max_file_bytes: Option<u64>,
    pub allow_open: bool,
    pub grace: Option<Duration>,
    pub max_connections: Option<usize>,
    pub header_timeout: Option<Duration>,
    pub webhook_url: Option<url::Url>,
    pub webhook_secret_env: Option<String>,
    pub backend: BackendSection,
    backend_parts: BackendParts,
    pub checkpoint_rows: Option<u64>,
    pub checkpoint_interval: Option<Duration>,
}

impl ServePipeline {
    /// Lays the run knobs every batch shares (backends, workers, timeouts, retries, grace,
    /// checkpoints) over `options`; what the file leaves unset stays as it was.
    pub fn apply(&self, options: &mut RunOptions) {
        self.backend_parts.apply(&self.backend, options);
        options.grace = self.grace.unwrap_or(options.grace);
        options.checkpoint_rows = self.checkpoint_rows.unwrap_or(options.checkpoint_rows);
        options.checkpoint_interval = self
            .checkpoint_interval
            .unwrap_or(options.checkpoint_interval);
    }
}

/// Checks a loaded served pipeline without any I/O; `folder` resolves the data directory.
/// Every problem is listed.
pub fn resolve_serve(file: &ServeFile, folder: &Path) -> Result<ServePipeline, Vec<String>> {
    let mut problems = Vec::new();
    let serve = &file.serve;
    let listen = serve.listen.as_deref().and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "serve.listen: {text:?} is not an address such as \"127.0.0.1:8080\""
                ));
            })
            .ok()
    });
    if serve.data_dir.is_empty() {
        problems.push("serve.data_dir: the data directory is empty".into());
    } else if serve.data_dir.contains("://") {
        problems.push("serve.data_dir: the data directory is a local folder, not a URL".into());
    }
    if serve.max_file_bytes == Some(0) {
        problems.push("serve.max_file_bytes must be at least 1".into());
    }
    if serve.max_connections == Some(0) {
        problems.push("serve.max_connections must be at least 1".into());
    }
    if file.sink.checkpoint_rows == Some(0) {
        problems.push("sink.checkpoint_rows must be at least 1".into());
    }
    let grace = serve
        .grace
        .as_ref()
        .and_then(|value| value.resolve("serve.grace", &mut problems));
    let header_timeout = serve
        .header_timeout
        .as_ref()
        .and_then(|value| value.resolve("serve.header_timeout", &mut problems));
    if header_timeout == Some(Duration::ZERO) {
        problems.push("serve.header_timeout must be longer than zero".into());
    }
    let webhook_url = serve
        .webhook_url
        .as_deref()
        .and_then(|text| match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                problems.push(format!("serve.webhook_url: {text:?} is not an http(s) URL"));
                None
            }
        });
    match (&serve.webhook_url, &serve.webhook_secret_env) {
        (Some(_), None) => problems.push(
            "serve.webhook_url needs serve.webhook_secret_env, the variable holding the signing secret"
                .into(),
        ),
        (None, Some(_)) => {
            problems.push("serve.webhook_secret_env is set but serve.webhook_url is not".into());
        }
        _ => {}
    }
    let checkpoint_interval = file
        .sink
        .checkpoint_secs
        .as_ref()
        .and_then(|value| value.resolve("sink.checkpoint_secs", &mut problems));
    let backend_parts = resolve_backend(&file.backend, &mut problems);
    let pipeline = ServePipeline {
        listen,
        data_dir: relative_to(folder, &serve.data_dir),
        api_key_env: serve.api_key_env.clone(),
        max_file_bytes: serve.max_file_bytes,
        allow_open: serve.allow_open.unwrap_or(false),
        grace,
        max_connections: serve.max_connections,
        header_timeout,
        webhook_url,
        webhook_secret_env: serve.webhook_secret_env.clone(),
        backend: file.backend.clone(),
        backend_parts,
        checkpoint_rows: file.sink.checkpoint_rows,
        checkpoint_interval,
    };
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Workers;

    fn parsed(text: &str) -> ServeFile {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn a_served_pipeline_resolves_and_lays_its_knobs_over_the_defaults() {
        let file = parsed(concat!(
            "[serve]\nlisten = \"127.0.0.1:9000\"\ndata_dir = \"batches\"\n",
            "api_key_env = \"KEY\"\ngrace = \"5s\"\n",
            "[backend]\nurls = [\"http://a:1\", \"http://b:2\"]\nworkers = 3\ntimeout = \"1m\"\n",
            "[sink]\ncheckpoint_rows = 50\n",
        ));
        let pipeline = resolve_serve(&file, Path::new("/srv")).expect("valid");
        assert_eq!(
            pipeline.listen,
            Some("127.0.0.1:9000".parse().expect("addr"))
        );
        assert_eq!(pipeline.data_dir, PathBuf::from("/srv/batches"));
        assert_eq!(pipeline.api_key_env.as_deref(), Some("KEY"));
        let mut options = RunOptions::default();
        pipeline.apply(&mut options);
        assert_eq!(options.backends, ["http://a:1", "http://b:2"]);
        assert_eq!(options.workers, Workers::Fixed(3));
        assert_eq!(options.timeout, Duration::from_secs(60));
        assert_eq!(options.grace, Duration::from_secs(5));
        assert_eq!(options.checkpoint_rows, 50);
        assert_eq!(
            options.checkpoint_interval,
            RunOptions::default().checkpoint_interval,
            "unset keys keep their defaults"
        );
    }

    #[test]
    fn webhook_keys_resolve_together() {
        let file = parsed(concat!(
            "[serve]\ndata_dir = \"d\"\nwebhook_url = \"https://hooks.example/batch\"\n",
            "webhook_secret_env = \"HOOK_SECRET\"\n",
        ));
        let pipeline = resolve_serve(&file, Path::new(".")).expect("valid");
        assert_eq!(
            pipeline.webhook_url.map(String::from).as_deref(),
            Some("https://hooks.example/batch")
        );
        assert_eq!(pipeline.webhook_secret_env.as_deref(), Some("HOOK_SECRET"));
        let alone = parsed("[serve]\ndata_dir = \"d\"\nwebhook_secret_env = \"HOOK_SECRET\"\n");
        let problems = resolve_serve(&alone, Path::new(".")).expect_err("invalid");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].starts_with("serve.webhook_secret_env"));
    }

    #[test]
    fn every_problem_of_a_served_pipeline_is_listed() {
        let file = parsed(concat!(
            "[serve]\nlisten = \"everywhere\"\ndata_dir = \"s3://bucket/\"\n",
            "max_file_bytes = 0\ngrace = \"soon\"\nmax_connections = 0\n",
            "webhook_url = \"ftp://x\"\n",
            "[backend]\nworkers = \"many\"\n[sink]\ncheckpoint_rows = 0\n",
        ));
        let problems = resolve_serve(&file, Path::new(".")).expect_err("invalid");
        for key in [
            "serve.listen",
            "serve.data_dir",
            "serve.max_file_bytes",
            "serve.grace",
            "serve.max_connections",
            "serve.webhook_url",
            "backend.workers",
            "sink.checkpoint_rows",
        ] {
            assert!(
                problems.iter().any(|problem| problem.starts_with(key)),
                "{key}: {problems:#?}"
            );
        }
        // webhook_url: not http(s), and without its secret's variable.
        assert_eq!(problems.len(), 9, "{problems:#?}");
    }
}
