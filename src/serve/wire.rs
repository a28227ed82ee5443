//! The OpenAI objects `batchflow serve` speaks, as serde types: File, Batch, their lists, and
//! the error shape `{"error": {"message", "type", "param", "code"}}` with its HTTP status. The
//! store keeps these same objects on disk, so what is listed after a restart is what was
//! answered before it. Handlers and the runner fill them; this module only shapes them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Now, in unix seconds, as every timestamp of the API is given.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A File object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    /// `batch` for uploads, `batch_output` for the files a batch produces.
    pub purpose: String,
    /// Always `processed`: a file is listed only once it is stored whole.
    pub status: String,
}

/// `GET /files`.
#[derive(Debug, Serialize)]
pub struct FileList {
    pub object: &'static str,
    pub data: Vec<FileObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// `DELETE /files/{id}`.
#[derive(Debug, Serialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

/// The order of a list by creation: `desc` (newest first, the default) or `asc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

impl Order {
    /// The `order` query parameter; `None` gives the default.
    pub fn parse(given: Option<&str>) -> Result<Order, ApiError> {
        match given {
            None | Some("desc") => Ok(Order::Desc),
            Some("asc") => Ok(Order::Asc),
            Some(other) => Err(ApiError::invalid(
                format!("order must be 'asc' or 'desc', not '{other}'."),
                Some("order"),
            )),
        }
    }
}

/// The answer to a list whose `after` names no stored object: a 400. Answering with the first
/// page again would send a client that follows `has_more` round in a loop, and one whose
/// cursor was deleted would silently see items twice.
pub fn unknown_cursor(after: Option<&str>) -> ApiError {
    ApiError::invalid(
        format!(
            "after: no object with id '{}' to list after.",
            after.unwrap_or_default()
        ),
        Some("after"),
    )
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    /// The wire name, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Nothing more happens to a batch in this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// `request_counts`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One entry of a batch's `errors.data`: why it failed, with the input line when one is to
/// blame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

/// A batch's `errors`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchErrors {
    pub object: String,
    pub data: Vec<BatchError>,
}

impl BatchErrors {
    pub fn new(data: Vec<BatchError>) -> BatchErrors {
        BatchErrors {
            object: "list".into(),
            data,
        }
    }
}

/// A Batch object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `GET /batches`.
#[derive(Debug, Serialize)]
pub struct BatchList {
    pub object: &'static str,
    pub data: Vec<Batch>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// One line of a batch's output or error file, in OpenAI's shape: `id` is `batch_req_…`, unique
/// per line; `response` is null only when the request got no HTTP answer; `error` is null on
/// an ok line.
#[derive(Debug, Serialize)]
pub struct OutputLine<'a> {
    pub id: String,
    pub custom_id: Option<&'a str>,
    pub response: Option<LineResponse<'a>>,
    pub error: Option<LineError<'a>>,
}

/// The HTTP answer of an output line: `body` always a JSON object.
#[derive(Debug, Serialize)]
pub struct LineResponse<'a> {
    pub status_code: u16,
    /// The backend's response id (`chatcmpl-…`), else one made up (`req_…`); never empty.
    pub request_id: String,
    pub body: &'a serde_json::value::RawValue,
}

/// Why an error line failed: one of OpenAI's codes or the engine's.
#[derive(Debug, Serialize)]
pub struct LineError<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

/// `POST /batches`.
#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// An error answer: its HTTP status and OpenAI's error object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request itself is wrong; `param` names the field.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// 404, worded as OpenAI words it: `No such File object: file-…`.
    pub fn not_found(object: &str, id: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("No such {object} object: {id}"),
            kind: "invalid_request_error",
            param: Some("id"),
            code: None,
        }
    }

    /// 404 for a path the API does not have.
    pub fn not_found_route() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message:
                "batchflow serves the Files and Batches API under /v1; this path is not part of it."
                    .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 413: an upload over `--max-file-bytes`.
    pub fn too_large(limit: u64) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("The file is larger than the server's limit of {limit} bytes."),
            kind: "invalid_request_error",
            param: Some("file"),
            code: Some("file_too_large"),
        }
    }

    /// 413: a form field other than the file over its limit.
    pub fn field_too_large(param: &'static str, limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("'{param}' is longer than the server's limit of {limit} bytes."),
            kind: "invalid_request_error",
            param: Some(param),
            code: Some("field_too_large"),
        }
    }

    /// 413: a request body (other than an upload) over `limit` bytes.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "The request body is larger than the server's limit of {limit} bytes."
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 409: the batch's state does not allow it.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 401: no or a wrong bearer key. The key given is never echoed.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key: send it as `Authorization: Bearer KEY`.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 500: the server's own failure (its disk, mostly); the cause is logged, not sent.
    pub fn internal() -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The server failed to handle the request; its log says why.".into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_snake_case_and_terminal_ones_are_known() {
        let text = serde_json::to_string(&BatchStatus::InProgress).expect("serializes");
        assert_eq!(text, "\"in_progress\"");
        assert!(BatchStatus::Cancelled.is_terminal());
        assert!(!BatchStatus::Cancelling.is_terminal());
    }

    #[test]
    fn order_is_asc_or_desc() {
        assert_eq!(Order::parse(None).expect("default"), Order::Desc);
        assert_eq!(Order::parse(Some("asc")).expect("asc"), Order::Asc);
        let error = Order::parse(Some("up")).expect_err("not an order");
        assert_eq!(error.param, Some("order"));
    }

    #[test]
    fn each_status_names_itself_as_serde_does() {
        for status in BatchStatus::ALL {
            let text = serde_json::to_string(&status).expect("serializes");
            assert_eq!(text, format!("\"{}\"", status.as_str()));
        }
    }
}
