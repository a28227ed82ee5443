//! Backends: where requests are sent. The [`Backend`] trait is the seam the stage depends on;
//! [`http::HttpBackend`] speaks to Ollama's native API and any OpenAI-compatible API alike,
//! because a request's `url` path is sent to the server as it is.
//!
//! This module also owns the two decisions about a failed attempt that are about the server, not
//! about timing: what went wrong ([`FailureKind`]) and whether trying again can help
//! ([`FailureKind::is_retryable`]). How long to wait is the stage's business
//! (`stage::retry`).

pub mod http;
pub mod pool;
pub mod preflight;

use std::future::Future;
use std::time::Duration;

use crate::item::{ErrorCode, HttpReply, Request};

/// Why a backend cannot be used. Every message names the URL (and the model).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid backend URL {value:?}: {reason}")]
    Url { value: String, reason: String },

    #[error("cannot reach the backend at {url}: {cause}")]
    Unreachable { url: String, cause: String },

    #[error(
        "no server at {url} ({cause}): start Ollama (`ollama serve`), point {knob} or OLLAMA_HOST at a running server, or try --mock"
    )]
    NoServer {
        url: String,
        cause: String,
        knob: String,
    },

    #[error(
        "the server at {url} answered neither as Ollama nor as an OpenAI-compatible API: {detail}"
    )]
    Unrecognised { url: String, detail: String },

    #[error("the backend at {url} has no model {model:?}; it has: {available}")]
    ModelMissing {
        url: String,
        model: String,
        available: String,
    },

    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

/// Where Ollama listens when nothing says otherwise.
pub const DEFAULT_OLLAMA_HOST: &str = "127.0.0.1:11434";

/// Sends one attempt of one request.
pub trait Backend: Send + Sync + 'static {
    /// One HTTP attempt. A 2xx answer with a JSON body is `Ok`; everything else is a failure
    /// the stage may retry.
    fn send(
        &self,
        request: &Request,
    ) -> impl Future<Output = Result<HttpReply, AttemptFailure>> + Send;
}

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection, or it broke before the whole response arrived.
    Connection,
    /// No whole response within the request timeout.
    Timeout,
    /// A 2xx answer whose body is not JSON.
    InvalidBody,
    /// A response body over the configured size limit.
    TooLarge,
    /// The server says it does not have the model.
    ModelNotFound,
    /// Any other non-2xx status.
    Status(u16),
}

impl FailureKind {
    /// Transient failures: the same request may well succeed a moment later. Other 4xx answers
    /// describe the request itself and would fail the same way again.
    pub fn is_retryable(self) -> bool {
        match self {
            FailureKind::Connection | FailureKind::Timeout | FailureKind::InvalidBody => true,
            FailureKind::Status(status) => matches!(status, 429 | 500 | 502 | 503 | 504),
            FailureKind::TooLarge | FailureKind::ModelNotFound => false,
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            FailureKind::Connection => ErrorCode::ConnectionError,
            FailureKind::Timeout => ErrorCode::RequestTimeout,
            FailureKind::InvalidBody | FailureKind::TooLarge => ErrorCode::InvalidResponse,
            FailureKind::ModelNotFound => ErrorCode::ModelNotFound,
            FailureKind::Status(429) => ErrorCode::RateLimited,
            FailureKind::Status(503) => ErrorCode::ServerBusy,
            FailureKind::Status(status) if status >= 500 => ErrorCode::ServerError,
            FailureKind::Status(_) => ErrorCode::ClientError,
        }
    }
}

/// A failed attempt, with the answer if there was one.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub kind: FailureKind,
    pub reply: Option<HttpReply>,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// Normalises a backend address the way the Ollama CLI reads `OLLAMA_HOST`: `host`,
/// `host:port`, `scheme://host[:port][/path]`. Without a scheme the port defaults to 11434;
/// with `http://` or `https://` to 80 or 443. A wildcard listen address (`0.0.0.0`, `::`) means
/// this machine. Returns `scheme://host:port[/path]` with no trailing slash.
pub fn parse_base_url(value: &str) -> Result<String, BackendError> {
    let bad = |reason: &str| BackendError::Url {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = value.trim();
    let (scheme, rest, default_port) = match trimmed.split_once("://") {
        None => ("http", trimmed, 11434),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => ("http", rest, 80),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => ("https", rest, 443),
        Some(_) => return Err(bad("the scheme must be http or https")),
    };
    let (host_port, path) = match rest.split_once('/') {
        Some((host_port, path)) => (host_port, path.trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(host_port).ok_or_else(|| bad("unreadable host or port"))?;
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| bad("the port must be a number from 0 to 65535"))?,
        None => default_port,
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        host => host,
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

/// Splits `host:port`, `[v6]:port`, `host`, `[v6]` or a bare IPv6 address.
fn split_host_port(host_port: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = host_port.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &host_port[..end + 2];
        return match &rest[end + 1..] {
            "" => Some((host, None)),
            after => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match host_port.matches(':').count() {
        0 => Some((host_port, None)),
        1 => host_port
            .split_once(':')
            .map(|(host, port)| (host, Some(port))),
        _ => Some((host_port, None)).filter(|_| host_port.parse::<std::net::Ipv6Addr>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_the_ollama_host_forms() {
        let cases = [
            ("", "http://127.0.0.1:11434"),
            ("example", "http://example:11434"),
            ("example:8080", "http://example:8080"),
            ("0.0.0.0", "http://127.0.0.1:11434"),
            ("http://example", "http://example:80"),
            ("https://example/ollama/", "https://example:443/ollama"),
            ("HTTP://127.0.0.1:9/", "http://127.0.0.1:9"),
            ("[::1]:99", "http://[::1]:99"),
            ("::1", "http://[::1]:11434"),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_base_url(input).expect(input), expected, "{input}");
        }
    }

    #[test]
    fn base_url_rejects_nonsense_with_the_value_named() {
        for input in ["ftp://x", "host:notaport", "host:99999", "[::1"] {
            let error = parse_base_url(input).expect_err(input).to_string();
            assert!(error.contains(input), "{error}");
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for status in [429, 500, 502, 503, 504] {
            assert!(FailureKind::Status(status).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 422, 501] {
            assert!(!FailureKind::Status(status).is_retryable(), "{status}");
        }
        assert!(!FailureKind::ModelNotFound.is_retryable());
        assert!(FailureKind::Connection.is_retryable());
    }
}
