//! Whole-file passes over the kept rows: what is done (for resume), counts by status (for
//! `status`), and the rewrites without error rows (for `--retry-errors`) or without the rows of
//! lines the input no longer has (for `--prune`).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, BooleanArray, RecordBatch};
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
    /// Error rows of input lines that could not be sent (their code says the line is at
    /// fault): sending them again fails the same way until the input changes.
    pub invalid_input: u64,
    /// Of those, lines refused for reusing an earlier line's custom_id.
    pub duplicates: u64,
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
                None => continue,
                Some("ok") => counts.ok += 1,
                Some(_) => counts.error += 1,
            }
            let code = codes
                .filter(|codes| codes.is_valid(row))
                .and_then(|codes| ErrorCode::from_name(codes.value(row)));
            if code.is_some_and(ErrorCode::is_invalid_input) {
                counts.invalid_input += 1;
            }
            if code == Some(ErrorCode::DuplicateCustomId) {
                counts.duplicates += 1;
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
    let keep = |batch: &RecordBatch, _first_row: u64| {
        batch.column_by_name("status").map(|status| {
            status
                .as_string::<i32>()
                .iter()
                .map(|value| Some(value == Some("ok")))
                .collect()
        })
    };
    rewrite_keeping(
        path,
        existing,
        codec,
        key_values,
        FileState::Interrupted,
        keep,
    )
}

/// Rewrites the file without the rows among its first `earlier_rows` (those an earlier run
/// wrote) whose custom_id, or invalid line, is not in `matched`: what this run's input still
/// has of the done set. Rows with neither were never done, so they stay. The rewrite keeps the
/// file's state and replaces it by an atomic rename. Returns how many rows were dropped.
pub fn drop_unmatched_rows(
    path: &Path,
    existing: &ExistingResults,
    codec: Codec,
    key_values: Vec<KeyValue>,
    earlier_rows: u64,
    matched: &DoneSet,
) -> Result<u64, ResultsError> {
    let keep = |batch: &RecordBatch, first_row: u64| {
        let (ids, lines, codes) = (
            batch.column_by_name("custom_id")?.as_string::<i32>(),
            batch
                .column_by_name("request_line")?
                .as_primitive::<arrow_array::types::Int64Type>(),
            batch.column_by_name("error_code")?.as_string::<i32>(),
        );
        let keep = (0..batch.num_rows()).map(|row| {
            let kept = if first_row + row as u64 >= earlier_rows {
                true
            } else if codes.is_valid(row) && is_invalid_input_code(codes.value(row)) {
                let line = u64::try_from(lines.value(row)).unwrap_or(0);
                matched.invalid_lines.contains(&line)
            } else if ids.is_valid(row) {
                matched.ids.contains(id_hash(ids.value(row)))
            } else {
                true
            };
            Some(kept)
        });
        Some(keep.collect())
    };
    let state = existing.state().unwrap_or(FileState::Interrupted);
    rewrite_keeping(path, existing, codec, key_values, state, keep)
}

/// Writes the rows that `keep` marks (given each batch and the number of its first row) to a
/// rewrite file beside `path`, closed as `state`, then renames it over `path`. A batch `keep`
/// cannot judge (a column missing) is kept whole. Returns how many rows were dropped.
fn rewrite_keeping(
    path: &Path,
    existing: &ExistingResults,
    codec: Codec,
    key_values: Vec<KeyValue>,
    state: FileState,
    mut keep: impl FnMut(&RecordBatch, u64) -> Option<BooleanArray>,
) -> Result<u64, ResultsError> {
    let schema = existing.schema(path)?;
    let temporary = with_suffix(path, ".rewrite");
    let mut writer =
        ResultsWriter::create(&temporary, Arc::clone(&schema), true, codec, key_values)?;
    let (mut dropped, mut first_row) = (0, 0);
    for batch in existing.reader(path, &[])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let rows = batch.num_rows() as u64;
        let kept = match keep(&batch, first_row) {
            Some(mask) => {
                dropped += rows - mask.true_count() as u64;
                arrow_select::filter::filter_record_batch(&batch, &mask)
                    .map_err(|error| parquet_error(path)(error.into()))?
            }
            None => batch,
        };
        first_row += rows;
        if kept.num_rows() > 0 {
            writer.write_row_group(&kept)?;
        }
    }
    writer.close(state)?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_folder(path)?;
    Ok(dropped)
}
