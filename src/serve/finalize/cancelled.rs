//! The error lines of the requests a cancelled or expired batch never sent: one
//! `batch_cancelled` or `batch_expired` line, with no response, for each input line whose
//! custom_id its results lack, so that the batch's counts add up to its total as OpenAI's do.
//! The rest of finalizing is the parent's.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use arrow_array::cast::AsArray;

use super::text;
use crate::backend::http::random_id;
use crate::serve::wire::{LineError, OutputLine};
use crate::sink::checkpoint::{self, ResultsError};
use crate::sink::dataset;

/// Why a batch ended before sending every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    Cancelled,
    Expired,
    /// The engine stopped with an error after sending started.
    Failed,
}

impl Unsent {
    /// The error of each request it kept from being sent.
    fn error(self) -> LineError<'static> {
        match self {
            Unsent::Cancelled => LineError {
                code: "batch_cancelled",
                message: "This request was not executed: the batch was cancelled first.",
            },
            Unsent::Expired => LineError {
                code: "batch_expired",
                message: "This request could not be executed before the completion window expired.",
            },
            Unsent::Failed => LineError {
                code: "batch_failed",
                message: "This request was not executed: the batch failed first (see its errors).",
            },
        }
    }
}

/// Appends to the error file at `path` a line for each request of `input` that the dataset
/// `results` has no row for, with the error of `why`; how many. Holds the custom_ids of the
/// results (compact per-id state), never the input.
pub(super) fn write_unsent(
    input: &Path,
    results: &Path,
    path: &Path,
    why: Unsent,
) -> Result<u64, ResultsError> {
    #[derive(serde::Deserialize)]
    struct Request {
        custom_id: Option<String>,
    }
    let done = custom_ids(results)?;
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |cause: io::Error| ResultsError::Io { path, cause }
    };
    let mut reader = BufReader::new(File::open(input).map_err(io_error(input))?);
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    let mut writer = BufWriter::new(file);
    let (mut text, mut line, mut written) = (Vec::new(), Vec::new(), 0);
    loop {
        text.clear();
        if reader
            .read_until(b'\n', &mut text)
            .map_err(io_error(input))?
            == 0
        {
            break;
        }
        // The file passed validation before it ran; a line without a custom_id (a batch
        // cancelled while it was being validated) has nothing to report under.
        let Some(custom_id) = serde_json::from_slice::<Request>(&text)
            .ok()
            .and_then(|request| request.custom_id)
        else {
            continue;
        };
        if done.contains(&custom_id) {
            continue;
        }
        let output = OutputLine {
            id: format!("batch_req_{}", random_id()),
            custom_id: Some(&custom_id),
            response: None,
            error: Some(why.error()),
        };
        line.clear();
        serde_json::to_writer(&mut line, &output).map_err(|error| ResultsError::Io {
            path: path.to_owned(),
            cause: io::Error::other(error),
        })?;
        line.push(b'\n');
        writer.write_all(&line).map_err(io_error(path))?;
        written += 1;
    }
    let file = writer
        .into_inner()
        .map_err(|error| io_error(path)(error.into_error()))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(written)
}

/// The custom_ids the dataset `results` has rows for.
fn custom_ids(results: &Path) -> Result<HashSet<String>, ResultsError> {
    let mut ids = HashSet::new();
    if !results.is_dir() {
        return Ok(ids);
    }
    for part in dataset::parquet_files(results)? {
        if checkpoint::holds_nothing(&part)? {
            continue;
        }
        let existing = checkpoint::inspect(&part)?;
        for batch in existing.reader(&part, &["custom_id"])? {
            let batch = batch.map_err(|error| ResultsError::Io {
                path: part.clone(),
                cause: io::Error::other(error),
            })?;
            let Some(column) = batch.column_by_name("custom_id") else {
                continue;
            };
            let column = column.as_string::<i32>();
            ids.extend(
                (0..batch.num_rows()).filter_map(|row| text(column, row).map(str::to_owned)),
            );
        }
    }
    Ok(ids)
}
