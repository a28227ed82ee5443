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
use super::{FileState, ResultsError, STATE_KEY, io_error, parquet_error};
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

/// Whether each row of `batch` stays under `--prune`: a row is dropped when an earlier run
/// had it done (its custom_id, or its line for an invalid one, is in `done`) and this run's
/// input did not have it again (it is not in `matched`). This run's own rows are never in
/// `done` (a done line is skipped, not written), so they stay; so do rows with no key.
/// `None` when a column is missing: the batch is kept whole.
fn unmatched_mask(batch: &RecordBatch, done: &DoneSet, matched: &DoneSet) -> Option<BooleanArray> {
    let (ids, lines, codes) = (
        batch.column_by_name("custom_id")?.as_string::<i32>(),
        batch
            .column_by_name("request_line")?
            .as_primitive::<arrow_array::types::Int64Type>(),
        batch.column_by_name("error_code")?.as_string::<i32>(),
    );
    let keep = (0..batch.num_rows()).map(|row| {
        let stale = if codes.is_valid(row) && is_invalid_input_code(codes.value(row)) {
            let line = u64::try_from(lines.value(row)).unwrap_or(0);
            done.invalid_lines.contains(&line) && !matched.invalid_lines.contains(&line)
        } else if ids.is_valid(row) {
            let id = id_hash(ids.value(row));
            done.ids.contains(id) && !matched.ids.contains(id)
        } else {
            false
        };
        Some(!stale)
    });
    Some(keep.collect())
}

/// How many rows `--prune` would drop from the file (see [`drop_unmatched_rows`]), reading
/// only the three key columns.
pub fn count_unmatched_rows(
    path: &Path,
    existing: &ExistingResults,
    done: &DoneSet,
    matched: &DoneSet,
) -> Result<u64, ResultsError> {
    let mut stale = 0;
    for batch in existing.reader(path, &["custom_id", "request_line", "error_code"])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        if let Some(keep) = unmatched_mask(&batch, done, matched) {
            stale += (batch.num_rows() - keep.true_count()) as u64;
        }
    }
    Ok(stale)
}

/// Rewrites the file without the rows an earlier run had done that this run's input did not
/// have again (`done` without `matched`), for `--prune`. The rewrite keeps the file's footer
/// entries and state, and replaces it by an atomic rename. Returns how many rows were dropped.
pub fn drop_unmatched_rows(
    path: &Path,
    existing: &ExistingResults,
    codec: Codec,
    done: &DoneSet,
    matched: &DoneSet,
) -> Result<u64, ResultsError> {
    // The file's own entries (what made it, its generation), less the state the close writes.
    let key_values = existing
        .metadata
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|entry| entry.key.starts_with("batchflow.") && entry.key != STATE_KEY)
        .cloned()
        .collect();
    let state = existing.state().unwrap_or(FileState::Interrupted);
    let keep = |batch: &RecordBatch, _first_row: u64| unmatched_mask(batch, done, matched);
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
