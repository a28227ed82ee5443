//! The units that flow through the pipeline: a parsed input [`Request`], an input line that could
//! not become one ([`InvalidLine`]), and the [`Outcome`] every line ends as.
//!
//! Sources produce [`SourceItem`]s, the stage turns each into exactly one [`Outcome`], and sinks
//! serialise outcomes. Nothing here does I/O.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::idset::IdSet;

/// One request ready to send: validated, with the body already serialised so that retries resend
/// the same bytes without re-encoding.
#[derive(Debug, Clone)]
pub struct Request {
    /// 1-based line number in the input, for messages and the results' `request_line`.
    pub line: u64,
    pub custom_id: String,
    /// Path on the backend, such as `/api/chat` or `/v1/chat/completions`.
    pub url: String,
    /// The `model` the body names, after any `--model` override.
    pub model: Option<String>,
    /// JSON body exactly as it is sent.
    pub body: Bytes,
    /// Record values copied into the results (pipelines' `passthrough` columns), in order.
    pub passthrough: Vec<serde_json::Value>,
}

/// An input line that cannot be sent; it still produces one output line naming the problem.
#[derive(Debug, Clone)]
pub struct InvalidLine {
    pub line: u64,
    pub custom_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// What a source yields, in input order.
#[derive(Debug)]
pub enum SourceItem {
    Request(Request),
    Invalid(InvalidLine),
}

/// Stable machine-readable error codes written to `error.code` in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The line is not a JSON object (or not UTF-8).
    InvalidJson,
    /// The line is JSON but not a valid batch request (missing or wrong field).
    InvalidRequest,
    /// An earlier valid line already used this `custom_id`.
    DuplicateCustomId,
    /// The line is longer than `--max-line-bytes`.
    LineTooLong,
    /// No TCP connection, or it broke before a whole response arrived.
    ConnectionError,
    /// No whole response within `--timeout`.
    RequestTimeout,
    /// A 2xx answer whose body is not JSON, or too large.
    InvalidResponse,
    /// HTTP 429.
    RateLimited,
    /// HTTP 503: Ollama's queue is full.
    ServerBusy,
    /// Any other 5xx.
    ServerError,
    /// The server does not have the requested model.
    ModelNotFound,
    /// Any other non-2xx answer.
    ClientError,
    /// A bug in batchflow while handling this request; the batch went on.
    InternalError,
    /// The reply does not match the pipeline's output schema, even after retries.
    InvalidOutput,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::DuplicateCustomId => "duplicate_custom_id",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::ConnectionError => "connection_error",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InvalidResponse => "invalid_response",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::ServerError => "server_error",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ClientError => "client_error",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::InvalidOutput => "invalid_output",
        }
    }

    /// The code with this name, as written in results.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            InvalidJson,
            InvalidRequest,
            DuplicateCustomId,
            LineTooLong,
            ConnectionError,
            RequestTimeout,
            InvalidResponse,
            RateLimited,
            ServerBusy,
            ServerError,
            ModelNotFound,
            ClientError,
            InternalError,
            InvalidOutput,
        ]
        .into_iter()
        .find(|code| code.as_str() == name)
    }

    /// True for codes that describe the input line rather than the request's fate.
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidJson
                | ErrorCode::InvalidRequest
                | ErrorCode::DuplicateCustomId
                | ErrorCode::LineTooLong
        )
    }
}

/// A response body as received: JSON kept verbatim, anything else kept as text.
#[derive(Debug, Clone)]
pub enum ReplyBody {
    Json(Box<RawValue>),
    Text(String),
}

/// The last HTTP answer a request got.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub request_id: String,
    pub body: ReplyBody,
}

/// Why a request failed, as written to the output's `error` object.
#[derive(Debug, Clone)]
pub struct OutcomeError {
    pub code: ErrorCode,
    pub message: String,
}

/// The fate of one input line. Exactly one is produced per line.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub line: u64,
    pub custom_id: Option<String>,
    pub model: Option<String>,
    /// The last HTTP answer, successful or not; `None` if no answer ever arrived.
    pub reply: Option<HttpReply>,
    /// `None` on success.
    pub error: Option<OutcomeError>,
    /// HTTP attempts made (0 for invalid lines).
    pub attempts: u32,
    /// From the first attempt's start to the last attempt's end, backoff included.
    pub latency: Duration,
    pub finished_at: SystemTime,
    /// The request's passthrough values; empty for invalid lines.
    pub passthrough: Vec<serde_json::Value>,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn from_invalid(invalid: InvalidLine) -> Outcome {
        Outcome {
            line: invalid.line,
            custom_id: invalid.custom_id,
            model: None,
            reply: None,
            error: Some(OutcomeError {
                code: invalid.code,
                message: invalid.message,
            }),
            attempts: 0,
            latency: Duration::ZERO,
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        }
    }
}

/// 64-bit hash of a custom_id: the key of duplicate detection and of resume's done set. Both
/// are built afresh by each run (from the input and from the results file's custom_ids), so the
/// hash need only agree within one process; SipHash with fixed keys is unrelated to the xxh3
/// that picks shards, so a shard's ids still spread over the set's buckets. Two distinct ids
/// collide with odds of about n²/2⁶⁵ (3·10⁻⁸ at a million ids).
pub fn id_hash(custom_id: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    custom_id.hash(&mut hasher);
    hasher.finish()
}

/// What an earlier run already finished, so a resumed run skips those input lines.
#[derive(Debug, Default)]
pub struct DoneSet {
    /// [`id_hash`] of every custom_id with a result.
    pub ids: IdSet,
    /// Line numbers of invalid input lines with a result (they may have no custom_id).
    pub invalid_lines: HashSet<u64>,
    /// Rows of requests that were sent and ended in error: with the invalid lines, what makes
    /// a resumed run's results hold errors (and its exit status 1) though it sent nothing new.
    pub failed: u64,
}

impl DoneSet {
    pub fn len(&self) -> usize {
        self.ids.len() + self.invalid_lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
