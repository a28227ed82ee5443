//! Whole-file passes over the kept rows: what is done (for resume), counts by status (for
//! `status`), and the rewrite without error rows (for `--retry-errors`).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use parquet::file::metadata::KeyValue;

use super::existing::ExistingResults;
use super::side_files::sync_folder;
use super::writer::{Codec, ResultsWriter};
use super::{FileState, ResultsError, io_error, parquet_error};
use crate::item::{DoneSet, ErrorCode, id_hash};
use crate::paths::with_suffix;

/// Adds the custom_ids (and invalid line numbers) of the kept rows to `done`: three narrow
/// columns, never the responses.
pub fn read_done(
    path: &Path,
    existing: &ExistingResults,
    done: &mut DoneSet,
) -> Result<(), ResultsError> {
    for batch in existing.reader(path, &["custom_id", "request_line", "error_code"])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let (Some(ids), Some(lines), Some(codes)) = (
            batch.column_by_name("custom_id"),
            batch.column_by_name("request_line"),
            batch.column_by_name("error_code"),
        ) else {
            continue;
        };
        let ids = ids.as_string::<i32>();
        let lines = lines.as_primitive::<arrow_array::types::Int64Type>();
        let codes = codes.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let invalid_input = codes.is_valid(row) && is_invalid_input_code(codes.value(row));
            if invalid_input {
                done.invalid_lines
                    .insert(u64::try_from(lines.value(row)).unwrap_or(0));
            } else if ids.is_valid(row) {
                done.ids.insert(id_hash(ids.value(row)));
                done.failed += u64::from(codes.is_valid(row));
            }
        }
    }
    Ok(())
}

fn is_invalid_input_code(code: &str) -> bool {
    ErrorCode::from_name(code).is_some_and(ErrorCode::is_invalid_input)
}

/// Counts of kept rows by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub ok: u64,
    pub error: u64,
    /// Of the error rows, those of input lines that could not become a request (the others
    /// are requests that failed).
    pub invalid: u64,
}

pub fn count_statuses(
    path: &Path,
    existing: &ExistingResults,
) -> Result<StatusCounts, ResultsError> {
    let mut counts = StatusCounts::default();
    for batch in existing.reader(path, &["status", "error_code"])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let Some(status) = batch.column_by_name("status") else {
            continue;
        };
        let codes = batch
            .column_by_name("error_code")
            .map(|codes| codes.as_string::<i32>());
        for (row, value) in status.as_string::<i32>().iter().enumerate() {
            match value {
                None => {}
                Some("ok") => counts.ok += 1,
                Some(_) => {
                    counts.error += 1;
                    let invalid = codes.is_some_and(|codes| {
                        codes.is_valid(row) && is_invalid_input_code(codes.value(row))
                    });
                    counts.invalid += u64::from(invalid);
                }
            }
        }
    }
    Ok(counts)
}

/// Rewrites the file without its error rows (for `--retry-errors`), re-encoding what is kept.
/// The new file replaces the old one by an atomic rename once it is complete. Returns how many rows were
/// dropped.
pub fn drop_error_rows(
    path: &Path,
    existing: &ExistingResults,
    codec: Codec,
    key_values: Vec<KeyValue>,
) -> Result<u64, ResultsError> {
    let schema = existing.schema(path)?;
    let temporary = with_suffix(path, ".rewrite");
    let mut writer =
        ResultsWriter::create(&temporary, Arc::clone(&schema), true, codec, key_values)?;
    let mut dropped = 0;
    for batch in existing.reader(path, &[])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let Some(status) = batch.column_by_name("status") else {
            continue;
        };
        let keep: arrow_array::BooleanArray = status
            .as_string::<i32>()
            .iter()
            .map(|value| Some(value == Some("ok")))
            .collect();
        dropped += (batch.num_rows() - keep.true_count()) as u64;
        let kept = arrow_select::filter::filter_record_batch(&batch, &keep)
            .map_err(|error| parquet_error(path)(error.into()))?;
        if kept.num_rows() > 0 {
            writer.write_row_group(&kept)?;
        }
    }
    writer.close(FileState::Interrupted)?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_folder(path)?;
    Ok(dropped)
}
