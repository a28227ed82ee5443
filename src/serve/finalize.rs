//! A finished batch's output and error files: the ok rows and the error rows of its results
//! dataset as OpenAI Batch output lines, both written from the dataset (not from a stream of
//! the run), so that a batch resumed after a crash lists each custom_id exactly once and the
//! files agree with the counts. The error file is rebuilt even though the engine writes one
//! as it runs (`--errors`): a run cut by a kill, whose batch is then closed without running
//! again (a cancelled one), leaves lines there for rows its last checkpoint lacks. Both become
//! stored Files through the store ([`result_files`]).

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
use crate::sink::errors::{self, ErrorsFileError};
use crate::sink::parquet::OutputMode;
use crate::sink::{dataset, jsonl, results};
use crate::stats::StatsSnapshot;

/// Why a batch's result files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ErrorsFile(#[from] ErrorsFileError),
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

/// Writes the error rows of the dataset `results` to `path` (synced), with the engine's own
/// error-file writer; nothing when there are none.
pub fn write_errors(results: &Path, path: &Path) -> Result<(), FinalizeError> {
    let mut kept = Vec::new();
    if results.is_dir() {
        for part in dataset::parquet_files(results)? {
            if !checkpoint::holds_nothing(&part)? {
                let existing = checkpoint::inspect(&part)?;
                kept.push((part, existing));
            }
        }
    }
    // Opened to resume: the file is truncated and rebuilt from the rows, then synced.
    let mode = OutputMode::Resume {
        retry_errors: false,
    };
    errors::open("the error file", path, mode, &kept)?;
    Ok(())
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
    write_errors(&dir.join("results"), &errors)?;
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
    use crate::item::{ErrorCode, OutcomeError};
    use crate::reply::ReplyFields;
    use crate::sink::results::{ExtraColumns, RowBuilder};

    /// A results dataset of one part: `ok` rows that succeeded, then `failed` that did not.
    fn dataset(results: &Path, ok: u64, failed: u64) {
        let extras = ExtraColumns::default();
        let mut rows = RowBuilder::new(results::schema(false, &extras), &extras);
        for line in 0..ok + failed {
            let outcome = Outcome {
                line: line + 1,
                custom_id: Some(format!("req-{line}")),
                model: None,
                reply: None,
                error: (line >= ok).then(|| OutcomeError {
                    code: ErrorCode::InternalError,
                    message: "failed".into(),
                }),
                attempts: 1,
                latency: Duration::ZERO,
                finished_at: SystemTime::now(),
                passthrough: Vec::new(),
            };
            rows.push(&outcome, &ReplyFields::default());
        }
        let batch = rows.finish().expect("rows");
        std::fs::create_dir_all(results).expect("a results folder");
        let file = File::create(results.join("part-0.parquet")).expect("a part");
        // As the engine's checkpoint writer sets it: no page index after the row groups.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties))
                .expect("a writer");
        writer.write(&batch).expect("written");
        writer.close().expect("closed");
    }

    #[test]
    fn the_error_file_holds_the_error_rows_whatever_the_run_left_there() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let id = store
            .new_id(crate::serve::store::BATCH_PREFIX)
            .expect("an id");
        let batch_dir = store.batch_dir(&id).expect("its folder");
        dataset(&batch_dir.join("results"), 3, 2);
        // A killed run's error file: a line for a row its last checkpoint lacks.
        let errors = batch_dir.join("errors.jsonl");
        std::fs::write(&errors, "{\"custom_id\": \"lost\"}\n").expect("written");
        let (output, error_file, counts) = result_files(&store, &id).expect("finalized");
        assert_eq!(counts, RowCounts { ok: 3, errors: 2 });
        assert!(output.is_some());
        let error_file = error_file.expect("an error file");
        let path = store.content_path(&error_file).expect("stored");
        let text = std::fs::read_to_string(path).expect("readable");
        let ids: Vec<&str> = text
            .lines()
            .map(|line| line.split('"').nth(7).unwrap_or_default())
            .collect();
        assert_eq!(ids, ["req-3", "req-4"], "{text}");

        // Finalizing again after a crash makes no second pair of files.
        let again = result_files(&store, &id).expect("finalized");
        assert_eq!((again.0, again.1), (output, Some(error_file)));
        assert_eq!(store.files().expect("listed").len(), 2);
        assert!(!errors.exists());
    }
}
