//! A finished batch's output file: the ok rows of its results dataset as OpenAI Batch output
//! lines, written from the dataset (not from a stream of the run) so that a batch resumed
//! after a crash lists each custom_id exactly once. The error file is the engine's own
//! (`--errors`), which a resumed run rebuilds from the same dataset. Both become stored Files
//! through the store ([`result_files`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use serde_json::value::RawValue;

use super::store::{Store, StoreError};
use super::wire::RequestCounts;
use crate::item::{HttpReply, Outcome, ReplyBody};
use crate::sink::checkpoint::{self, ResultsError};
use crate::sink::{dataset, jsonl, results};
use crate::stats::StatsSnapshot;

/// Why a batch's result files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rows of a results dataset, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub ok: u64,
    pub errors: u64,
}

impl RowCounts {
    /// Sets `counts`' completed and failed to these rows plus what a run has written since.
    pub fn add_run(&self, run: &StatsSnapshot, counts: &mut RequestCounts) {
        counts.completed = self.ok + run.succeeded;
        counts.failed = self.errors + run.failed + run.invalid;
    }
}

/// Writes the ok rows of the dataset `results` to `output` (synced); the rows counted. A
/// dataset that was never created holds nothing.
pub fn write_output(results: &Path, output: &Path) -> Result<RowCounts, ResultsError> {
    let failed = |cause: io::Error| ResultsError::Io {
        path: output.to_owned(),
        cause,
    };
    let mut writer = BufWriter::new(File::create(output).map_err(failed)?);
    let mut counts = RowCounts::default();
    if results.is_dir() {
        for part in dataset::parquet_files(results)? {
            if checkpoint::holds_nothing(&part)? {
                continue;
            }
            write_part(&part, &mut writer, &mut counts)?;
        }
    }
    let file = writer
        .into_inner()
        .map_err(|error| failed(error.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok(counts)
}

/// Counts the rows of a dataset without writing anything (for live counts after a resume).
pub fn count_rows(results: &Path) -> Result<RowCounts, ResultsError> {
    let mut counts = RowCounts::default();
    if !results.is_dir() {
        return Ok(counts);
    }
    for part in dataset::parquet_files(results)? {
        if checkpoint::holds_nothing(&part)? {
            continue;
        }
        let existing = checkpoint::inspect(&part)?;
        let statuses = checkpoint::count_statuses(&part, &existing)?;
        counts.ok += statuses.ok;
        counts.errors += statuses.error;
    }
    Ok(counts)
}

fn write_part(
    part: &Path,
    writer: &mut impl Write,
    counts: &mut RowCounts,
) -> Result<(), ResultsError> {
    let existing = checkpoint::inspect(part)?;
    let has_raw = existing
        .schema(part)?
        .field_with_name(results::RAW_RESPONSE)
        .is_ok();
    let mut columns = vec!["custom_id", "request_line", "status_code", "error_code"];
    if has_raw {
        columns.push(results::RAW_RESPONSE);
    }
    let unreadable = |cause: String| ResultsError::Io {
        path: part.to_owned(),
        cause: io::Error::other(cause),
    };
    let mut line = Vec::with_capacity(1024);
    for batch in existing.reader(part, &columns)? {
        let batch = batch.map_err(|error| unreadable(error.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| unreadable(format!("no {name} column")))
        };
        let ids = column("custom_id")?.as_string::<i32>();
        let codes = column("error_code")?.as_string::<i32>();
        let lines = column("request_line")?.as_primitive::<Int64Type>();
        let statuses = column("status_code")?.as_primitive::<Int32Type>();
        let raw = batch
            .column_by_name(results::RAW_RESPONSE)
            .map(|column| column.as_string::<i32>());
        for row in 0..batch.num_rows() {
            if codes.is_valid(row) {
                counts.errors += 1;
                continue;
            }
            counts.ok += 1;
            let body = match raw.filter(|raw| raw.is_valid(row)) {
                Some(raw) => reply_body(raw.value(row)),
                None => ReplyBody::Json(RawValue::NULL.to_owned()),
            };
            let outcome = Outcome {
                line: u64::try_from(lines.value(row)).unwrap_or(0),
                custom_id: ids.is_valid(row).then(|| ids.value(row).to_owned()),
                model: None,
                reply: Some(HttpReply {
                    status: statuses
                        .is_valid(row)
                        .then(|| u16::try_from(statuses.value(row)).ok())
                        .flatten()
                        .unwrap_or(200),
                    request_id: String::new(),
                    body,
                }),
                error: None,
                attempts: 0,
                latency: Duration::ZERO,
                finished_at: SystemTime::now(),
                passthrough: Vec::new(),
            };
            line.clear();
            jsonl::output_line(&outcome, &mut line)
                .map_err(|error| unreadable(error.to_string()))?;
            line.push(b'\n');
            writer.write_all(&line).map_err(|cause| ResultsError::Io {
                path: part.to_owned(),
                cause,
            })?;
        }
    }
    Ok(())
}

/// The response body as received: JSON when it parses, else its text.
fn reply_body(text: &str) -> ReplyBody {
    match RawValue::from_string(text.to_owned()) {
        Ok(json) => ReplyBody::Json(json),
        Err(_) => ReplyBody::Text(text.to_owned()),
    }
}

/// The batch's output file (its ok rows) and error file as stored Files, `None` where a file
/// would be empty; and the rows counted.
pub fn result_files(
    store: &Store,
    id: &str,
) -> Result<(Option<String>, Option<String>, RowCounts), FinalizeError> {
    let dir = store.batch_dir(id)?;
    let ids = store.result_file_ids(id)?;
    let output = dir.join("output.jsonl");
    let counts = write_output(&dir.join("results"), &output)?;
    let output_id = if store.file(&ids.output)?.is_some() {
        Some(ids.output)
    } else if counts.ok > 0 {
        let name = format!("{id}_output.jsonl");
        Some(
            store
                .adopt_file(&ids.output, &output, &name, "batch_output")?
                .id,
        )
    } else {
        None
    };
    let errors = dir.join("errors.jsonl");
    let error_bytes = std::fs::metadata(&errors).map_or(0, |metadata| metadata.len());
    let errors_id = if store.file(&ids.error)?.is_some() {
        Some(ids.error)
    } else if error_bytes > 0 {
        let name = format!("{id}_error.jsonl");
        Some(
            store
                .adopt_file(&ids.error, &errors, &name, "batch_output")?
                .id,
        )
    } else {
        None
    };
    // What was not adopted (an empty file, or one made again after a crash) is not kept.
    for leftover in [output, errors] {
        if leftover.exists() {
            std::fs::remove_file(&leftover).map_err(|cause| StoreError::Io {
                path: leftover.clone(),
                cause,
            })?;
        }
    }
    Ok((output_id, errors_id, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizing_again_after_a_crash_makes_no_second_pair_of_files() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let id = store
            .new_id(crate::serve::store::BATCH_PREFIX)
            .expect("an id");
        let errors = store
            .batch_dir(&id)
            .expect("its folder")
            .join("errors.jsonl");
        std::fs::write(&errors, "{\"custom_id\": \"a\"}\n").expect("written");
        let first = result_files(&store, &id).expect("finalized");
        assert!(first.0.is_none() && first.1.is_some(), "{first:?}");
        // The engine's resume rebuilds the error file before finalizing runs again.
        std::fs::write(&errors, "{\"custom_id\": \"a\"}\n").expect("written");
        let second = result_files(&store, &id).expect("finalized");
        assert_eq!(first.1, second.1);
        assert_eq!(store.files().expect("listed").len(), 1);
        assert!(!errors.exists());
    }
}
