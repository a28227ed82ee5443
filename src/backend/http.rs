//! The HTTP backend: one shared keep-alive `reqwest` client posting request bodies to
//! `base_url + request.url`, reading answers with a size limit, and classifying failures.

use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::value::RawValue;

use super::BackendError;
use super::{AttemptFailure, Backend, FailureKind};
use crate::item::{HttpReply, ReplyBody, Request};

/// Everything needed to build an [`HttpBackend`].
#[derive(Debug, Clone)]
pub struct HttpBackendConfig {
    /// As returned by [`super::parse_base_url`].
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    /// Whole-request limit: connect, send, wait, read the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Larger answers are refused, so one runaway reply cannot exhaust memory.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept per host; at least the number of workers.
    pub pool_size: usize,
}

/// A backend reached over HTTP: Ollama (native or `/v1`) or any OpenAI-compatible server.
pub struct HttpBackend {
    client: reqwest::Client,
    base_url: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_response_bytes: usize,
    /// Request URLs parsed once per path: a batch posts to one or two paths, and parsing the
    /// URL of every request (host check included) cost about 3% of the client's CPU.
    endpoint_urls: Mutex<Vec<(Box<str>, reqwest::Url)>>,
}

/// Distinct request paths whose parsed URL is kept; any others are parsed per request.
const KEPT_ENDPOINT_URLS: usize = 16;

impl HttpBackend {
    pub fn new(config: HttpBackendConfig) -> Result<HttpBackend, BackendError> {
        crate::tls::install_crypto_provider();
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    BackendError::HttpClient(
                        "the API key holds characters not allowed in a header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.pool_size)
            .tcp_nodelay(true)
            // A redirect could carry the API key to another host; a batch endpoint has no
            // reason to redirect, so the 3xx is reported instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("batchflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| BackendError::HttpClient(error_chain(&error)))?;
        Ok(HttpBackend {
            client,
            base_url: config.base_url,
            authorization,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            endpoint_urls: Mutex::new(Vec::new()),
        })
    }

    /// `base_url + path`, parsed.
    fn endpoint_url(&self, path: &str) -> Result<reqwest::Url, String> {
        let mut kept = self
            .endpoint_urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, url)) = kept.iter().find(|(kept_path, _)| **kept_path == *path) {
            return Ok(url.clone());
        }
        let url = reqwest::Url::parse(&format!("{}{path}", self.base_url))
            .map_err(|error| format!("cannot form the request URL: {error}"))?;
        if kept.len() < KEPT_ENDPOINT_URLS {
            kept.push((path.into(), url.clone()));
        }
        Ok(url)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A GET for the preflight checks: the status and the body, or why there was none.
    pub async fn get(&self, path: &str) -> Result<(u16, Bytes), GetFailure> {
        self.get_within(path, self.timeout).await
    }

    /// A GET with its own time limit (status probes must not hang a progress line).
    pub async fn get_within(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), GetFailure> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base_url))
            .timeout(timeout);
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await.map_err(GetFailure::of)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(GetFailure::of)?;
        Ok((status, body))
    }

    async fn read_body(&self, response: reqwest::Response) -> Result<Bytes, AttemptFailure> {
        let too_large = |status: u16| AttemptFailure {
            kind: FailureKind::TooLarge,
            reply: None,
            retry_after: None,
            message: format!(
                "the HTTP {status} response is larger than --max-response-bytes ({} bytes)",
                self.max_response_bytes
            ),
        };
        let status = response.status().as_u16();
        match response.content_length() {
            Some(length) if length > self.max_response_bytes as u64 => Err(too_large(status)),
            // hyper enforces Content-Length framing, so the body cannot outgrow it.
            Some(_) => response.bytes().await.map_err(transport_failure),
            None => {
                let mut response = response;
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(too_large(status));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(body))
            }
        }
    }
}

impl Backend for HttpBackend {
    async fn send(&self, request: &Request) -> Result<HttpReply, AttemptFailure> {
        let url = self
            .endpoint_url(&request.url)
            .map_err(|message| AttemptFailure {
                kind: FailureKind::Connection,
                reply: None,
                retry_after: None,
                message,
            })?;
        let mut builder = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(request.body.clone());
        if let Some(authorization) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization.clone());
        }
        let response = builder.send().await.map_err(transport_failure)?;
        let status = response.status().as_u16();
        let request_id = request_id(response.headers());
        let retry_after = retry_after(response.headers());
        let bytes = self.read_body(response).await?;
        let body = match serde_json::from_slice::<Box<RawValue>>(&bytes) {
            Ok(json) => ReplyBody::Json(json),
            Err(_) => ReplyBody::Text(String::from_utf8_lossy(&bytes).into_owned()),
        };
        let reply = HttpReply {
            status,
            request_id,
            body,
        };
        if (200..300).contains(&status) {
            return match reply.body {
                ReplyBody::Json(_) => Ok(reply),
                ReplyBody::Text(_) => Err(AttemptFailure {
                    kind: FailureKind::InvalidBody,
                    message: format!("the HTTP {status} response body is not valid JSON"),
                    reply: Some(reply),
                    retry_after: None,
                }),
            };
        }
        let server_message = error_message(&reply.body);
        let kind = if status == 404 && says_model_not_found(&server_message) {
            FailureKind::ModelNotFound
        } else {
            FailureKind::Status(status)
        };
        Err(AttemptFailure {
            kind,
            message: format!("HTTP {status}: {server_message}"),
            reply: Some(reply),
            retry_after,
        })
    }
}

/// The server's own words: Ollama's `{"error": "…"}`, OpenAI's `{"error": {"message": "…"}}`,
/// or the start of whatever else it sent.
pub fn error_message(body: &ReplyBody) -> String {
    const MAX_CHARS: usize = 300;
    let text = match body {
        ReplyBody::Json(json) => match serde_json::from_str::<serde_json::Value>(json.get()) {
            Ok(value) => match &value["error"] {
                serde_json::Value::String(message) => message.clone(),
                serde_json::Value::Object(error) => match error.get("message") {
                    Some(serde_json::Value::String(message)) => message.clone(),
                    _ => json.get().to_owned(),
                },
                _ => json.get().to_owned(),
            },
            Err(_) => json.get().to_owned(),
        },
        ReplyBody::Text(text) => text.trim().to_owned(),
    };
    if text.chars().count() > MAX_CHARS {
        text.chars().take(MAX_CHARS).chain("…".chars()).collect()
    } else {
        text
    }
}

/// Ollama says `model "x" not found, try pulling it first`; OpenAI-compatible servers say
/// `The model `x` does not exist`.
pub fn says_model_not_found(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("model")
        && (message.contains("not found") || message.contains("does not exist"))
}

fn transport_failure(error: reqwest::Error) -> AttemptFailure {
    let kind = if error.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Connection
    };
    AttemptFailure {
        kind,
        reply: None,
        retry_after: None,
        message: error_chain(&error.without_url()),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", random_id()))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by model servers).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// 24 random alphanumerics, as in OpenAI's `batch_req_…` ids.
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..24)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// Why a GET got no answer.
#[derive(Debug)]
pub struct GetFailure {
    /// The error and its causes on one line.
    pub chain: String,
    /// No connection was made (nothing listens there, or the host is unknown): the innermost
    /// cause, which says which, and is all a person needs of the chain.
    pub no_connection: Option<String>,
}

impl GetFailure {
    fn of(error: reqwest::Error) -> GetFailure {
        let mut innermost: &dyn StdError = &error;
        while let Some(cause) = innermost.source() {
            innermost = cause;
        }
        GetFailure {
            chain: error_chain(&error),
            no_connection: error.is_connect().then(|| innermost.to_string()),
        }
    }
}

/// An error and its causes on one line: reqwest's own message alone rarely says why.
pub fn error_chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> ReplyBody {
        ReplyBody::Json(serde_json::from_str(text).expect("test JSON"))
    }

    #[test]
    fn error_message_reads_both_error_shapes() {
        assert_eq!(
            error_message(&json(r#"{"error":"server busy"}"#)),
            "server busy"
        );
        assert_eq!(
            error_message(&json(r#"{"error":{"message":"nope","type":"x"}}"#)),
            "nope"
        );
        assert_eq!(error_message(&ReplyBody::Text(" <html> ".into())), "<html>");
    }

    #[test]
    fn retry_after_takes_seconds_and_ignores_nonsense() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(value).expect("header"),
            );
            headers
        };
        assert_eq!(retry_after(&headers("2")), Some(Duration::from_secs(2)));
        for nonsense in ["1e20", "-1", "NaN", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(retry_after(&headers(nonsense)), None, "{nonsense}");
        }
    }

    #[test]
    fn model_not_found_is_recognised_in_both_dialects() {
        assert!(says_model_not_found(
            r#"model "x" not found, try pulling it first"#
        ));
        assert!(says_model_not_found("The model `gpt-9` does not exist"));
        assert!(!says_model_not_found("404 page not found"));
    }
}
