//! JSONL output in the OpenAI Batch output format, one line per outcome:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`.
//!
//! A line is written whole or not at all from the reader's point of view: lines go through a
//! buffer and reach the file descriptor only at flush, which always ends on a newline. When
//! results arrive one by one, a flush per line would cost a system call per line; instead the
//! buffer is flushed once it holds [`FLUSH_BYTES`], or [`FLUSH_DELAY`] after its oldest line,
//! so a line is seen within milliseconds however busy the run.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Sink, SinkError};
use crate::backend::http::random_id;
use crate::item::{Outcome, ReplyBody};
use crate::reply::ReplyFields;

const BUFFER_BYTES: usize = 256 * 1024;
/// Buffered output this large is flushed as soon as no result is waiting.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// No line waits longer than this in the buffer.
pub const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// Writes OpenAI Batch output lines to any writer (stdout, a file, a test buffer).
pub struct JsonlSink<W: Write> {
    out: BufWriter<W>,
    line: Vec<u8>,
    /// When the oldest line not yet flushed was written.
    unflushed_since: Option<Instant>,
}

impl<W: Write + Send> JsonlSink<W> {
    pub fn new(out: W) -> Self {
        JsonlSink {
            out: BufWriter::with_capacity(BUFFER_BYTES, out),
            line: Vec::with_capacity(1024),
            unflushed_since: None,
        }
    }

    fn flush_now(&mut self) -> Result<(), SinkError> {
        self.unflushed_since = None;
        self.out.flush().map_err(SinkError::from_write)
    }
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: String,
    custom_id: Option<&'a str>,
    response: Option<OutputResponse<'a>>,
    error: Option<OutputError<'a>>,
}

#[derive(Serialize)]
struct OutputResponse<'a> {
    status_code: u16,
    request_id: &'a str,
    body: OutputBody<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputBody<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

#[derive(Serialize)]
struct OutputError<'a> {
    code: &'a str,
    message: &'a str,
}

/// The output line for one outcome, without the newline.
pub fn output_line(outcome: &Outcome, buffer: &mut Vec<u8>) -> serde_json::Result<()> {
    let line = OutputLine {
        id: format!("batch_req_{}", random_id()),
        custom_id: outcome.custom_id.as_deref(),
        response: outcome.reply.as_ref().map(|reply| OutputResponse {
            status_code: reply.status,
            request_id: &reply.request_id,
            body: match &reply.body {
                ReplyBody::Json(json) => OutputBody::Json(json),
                ReplyBody::Text(text) => OutputBody::Text(text),
            },
        }),
        error: outcome.error.as_ref().map(|error| OutputError {
            code: error.code.as_str(),
            message: &error.message,
        }),
    };
    serde_json::to_writer(buffer, &line)
}

impl<W: Write + Send> Sink for JsonlSink<W> {
    fn write(&mut self, outcome: &Outcome, _reply: &ReplyFields) -> Result<(), SinkError> {
        self.line.clear();
        output_line(outcome, &mut self.line).map_err(std::io::Error::from)?;
        self.line.push(b'\n');
        self.unflushed_since.get_or_insert_with(Instant::now);
        self.out
            .write_all(&self.line)
            .map_err(SinkError::from_write)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        match self.unflushed_since {
            Some(since)
                if self.out.buffer().len() >= FLUSH_BYTES || since.elapsed() >= FLUSH_DELAY =>
            {
                self.flush_now()
            }
            _ => Ok(()),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.unflushed_since.map(|since| since + FLUSH_DELAY)
    }

    fn on_deadline(&mut self) -> Result<(), SinkError> {
        self.flush_now()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush_now()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::item::{ErrorCode, HttpReply, OutcomeError};

    fn outcome(reply: Option<HttpReply>, error: Option<OutcomeError>) -> Outcome {
        Outcome {
            line: 3,
            custom_id: Some("c-1".into()),
            model: None,
            reply,
            error,
            attempts: 1,
            latency: Duration::ZERO,
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        }
    }

    fn render(outcome: &Outcome) -> serde_json::Value {
        let mut buffer = Vec::new();
        output_line(outcome, &mut buffer).expect("serialises");
        serde_json::from_slice(&buffer).expect("valid JSON")
    }

    #[test]
    fn success_keeps_the_body_verbatim() {
        let body = serde_json::from_str(r#"{"message":{"content":"hi"}}"#).expect("json");
        let line = render(&outcome(
            Some(HttpReply {
                status: 200,
                request_id: "req_1".into(),
                body: ReplyBody::Json(body),
            }),
            None,
        ));
        assert_eq!(line["custom_id"], "c-1");
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["response"]["body"]["message"]["content"], "hi");
        assert!(line["error"].is_null());
        assert!(
            line["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("batch_req_"))
        );
    }

    #[test]
    fn failure_without_answer_has_null_response_and_an_error() {
        let line = render(&outcome(
            None,
            Some(OutcomeError {
                code: ErrorCode::RequestTimeout,
                message: "slow".into(),
            }),
        ));
        assert!(line["response"].is_null());
        assert_eq!(line["error"]["code"], "request_timeout");
        assert_eq!(line["error"]["message"], "slow");
    }

    #[test]
    fn a_text_error_body_becomes_a_json_string() {
        let line = render(&outcome(
            Some(HttpReply {
                status: 502,
                request_id: "r".into(),
                body: ReplyBody::Text("<html>bad gateway</html>".into()),
            }),
            Some(OutcomeError {
                code: ErrorCode::ServerError,
                message: "HTTP 502".into(),
            }),
        ));
        assert_eq!(line["response"]["body"], "<html>bad gateway</html>");
    }
}
