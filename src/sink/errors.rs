//! The error file (`--errors`, `[sink] errors`): every outcome that ends in error, a request
//! that failed for good or an invalid input line, as an OpenAI Batch output line in a file of
//! its own, as OpenAI's batches keep errors apart from results.
//!
//! Beside a results file it holds exactly the results' error rows: a resumed run rebuilds it
//! from them before appending, so lines written after the last checkpoint of a killed run (and
//! error rows that `--retry-errors` dropped) do not survive, and each failed custom_id appears
//! once.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, StringArray};
use serde_json::value::RawValue;

use super::checkpoint::{ExistingResults, ResultsError};
use super::jsonl::JsonlSink;
use super::parquet::OutputMode;
use super::{Sink, SinkError};
use crate::item::{ErrorCode, HttpReply, Outcome, OutcomeError, ReplyBody};
use crate::reply::ReplyFields;

/// Why the error file cannot be opened or rebuilt. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ErrorsFileError {
    #[error(
        "{knob} {path} already exists; pass --resume to continue it or --overwrite to replace it"
    )]
    Exists { knob: String, path: PathBuf },

    #[error("{knob} {path}: {cause}")]
    Io {
        knob: String,
        path: PathBuf,
        cause: io::Error,
    },

    #[error(transparent)]
    Results(#[from] ResultsError),
}

/// Writes error outcomes as OpenAI Batch output lines; passes over the others.
pub struct ErrorsSink {
    lines: JsonlSink<File>,
    /// A second handle, to fsync at the end.
    file: File,
}

/// Opens the error file at `path` for a run whose outputs are opened as `mode`. `kept` are the
/// results files being resumed (one, or a dataset's parts), whose error rows the error file is
/// rebuilt from.
pub fn open(
    knob: &str,
    path: &Path,
    mode: OutputMode,
    kept: &[(PathBuf, ExistingResults)],
) -> Result<ErrorsSink, ErrorsFileError> {
    let io_error = |cause: io::Error| ErrorsFileError::Io {
        knob: knob.to_owned(),
        path: path.to_owned(),
        cause,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    match mode {
        OutputMode::New => options.create_new(true),
        OutputMode::Overwrite | OutputMode::Resume { .. } => options.create(true).truncate(true),
    };
    let file = options.open(path).map_err(|cause| {
        if cause.kind() == io::ErrorKind::AlreadyExists {
            ErrorsFileError::Exists {
                knob: knob.to_owned(),
                path: path.to_owned(),
            }
        } else {
            io_error(cause)
        }
    })?;
    let handle = file.try_clone().map_err(io_error)?;
    let mut sink = ErrorsSink {
        lines: JsonlSink::new(file),
        file: handle,
    };
    if !kept.is_empty() {
        let rebuilt = kept
            .iter()
            .try_for_each(|(results, existing)| rebuild(&mut sink, results, existing))
            .and_then(|()| sink.lines.finish());
        rebuilt.map_err(|error| match error {
            SinkError::Results(error) => ErrorsFileError::Results(error),
            SinkError::Io(cause) | SinkError::Thread(cause) => io_error(cause),
            SinkError::Closed => io_error(io::Error::from(io::ErrorKind::BrokenPipe)),
        })?;
        sink.file.sync_data().map_err(io_error)?;
    }
    Ok(sink)
}

/// Writes one line per error row of the results file.
fn rebuild(
    sink: &mut ErrorsSink,
    results: &Path,
    existing: &ExistingResults,
) -> Result<(), SinkError> {
    let has_raw = existing
        .schema(results)?
        .field_with_name(super::results::RAW_RESPONSE)
        .is_ok();
    let mut columns = vec![
        "custom_id",
        "request_line",
        "status_code",
        "error_code",
        "error_message",
    ];
    if has_raw {
        columns.push(super::results::RAW_RESPONSE);
    }
    let unreadable = |error: arrow_schema::ArrowError| {
        SinkError::Io(io::Error::other(format!(
            "{}: cannot read its error rows: {error}",
            results.display()
        )))
    };
    // Row groups without an error row are passed over whole: the raw responses of the ok rows
    // are most of the file.
    let groups = existing.groups_with_errors();
    for batch in existing.reader_of_groups(results, &columns, Some(groups))? {
        let batch = batch.map_err(unreadable)?;
        let strings = |name: &str| {
            batch
                .column_by_name(name)
                .map(|column| column.as_string::<i32>())
        };
        let (Some(ids), Some(codes), Some(messages)) = (
            strings("custom_id"),
            strings("error_code"),
            strings("error_message"),
        ) else {
            continue;
        };
        let lines = batch
            .column_by_name("request_line")
            .map(|column| column.as_primitive::<Int64Type>());
        let statuses = batch
            .column_by_name("status_code")
            .map(|column| column.as_primitive::<Int32Type>());
        let raw = strings(super::results::RAW_RESPONSE);
        for row in 0..batch.num_rows() {
            if !codes.is_valid(row) {
                continue;
            }
            fn text(array: &StringArray, row: usize) -> Option<&str> {
                array.is_valid(row).then(|| array.value(row))
            }
            let status = statuses
                .filter(|statuses| statuses.is_valid(row))
                .and_then(|statuses| u16::try_from(statuses.value(row)).ok());
            let outcome = Outcome {
                line: lines.map_or(0, |lines| u64::try_from(lines.value(row)).unwrap_or(0)),
                custom_id: text(ids, row).map(str::to_owned),
                model: None,
                reply: status.map(|status| HttpReply {
                    status,
                    request_id: String::new(),
                    body: reply_body(raw.and_then(|raw| text(raw, row))),
                }),
                error: Some(OutcomeError {
                    code: ErrorCode::from_name(codes.value(row))
                        .unwrap_or(ErrorCode::InternalError),
                    message: text(messages, row).unwrap_or_default().to_owned(),
                }),
                attempts: 0,
                latency: Duration::ZERO,
                finished_at: SystemTime::now(),
                passthrough: Vec::new(),
            };
            sink.lines.write(&outcome, &ReplyFields::default())?;
        }
    }
    Ok(())
}

/// The response body as it was received: JSON when it parses, else the text; nothing when the
/// results file was written without raw responses.
fn reply_body(raw: Option<&str>) -> ReplyBody {
    match raw {
        Some(text) => match RawValue::from_string(text.to_owned()) {
            Ok(json) => ReplyBody::Json(json),
            Err(_) => ReplyBody::Text(text.to_owned()),
        },
        None => ReplyBody::Json(RawValue::NULL.to_owned()),
    }
}

impl Sink for ErrorsSink {
    fn write(&mut self, outcome: &Outcome, reply: &ReplyFields) -> Result<(), SinkError> {
        if outcome.is_ok() {
            return Ok(());
        }
        self.lines.write(outcome, reply)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.lines.flush()
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.lines.deadline()
    }

    fn on_deadline(&mut self) -> Result<(), SinkError> {
        self.lines.on_deadline()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.lines.finish()?;
        self.file.sync_data().map_err(SinkError::Io)
    }
}
