//! `verify` of a later stage of a pipeline: the stage owes one row to every row of the stage
//! it reads that was handed on to it (status ok, passing its `where` filter), and holds no
//! other. The records are rebuilt from the earlier stage's results exactly as the run built
//! them (`handoff`), and the filter is the run's, so what is owed is what the run was given.
//!
//! Rows are keyed by custom_id: every record a later stage reads has one, whether or not the
//! stage could send it. The passes are the parent module's (keys sorted and merged, then the
//! problems named), with the earlier stage's passing rows in place of input lines; memory is
//! the keys, not the rows.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};

use super::{
    Problem, Row, Summary, VerifyError, id_key, judge, line_key, name_owed, name_rows, row_keys,
};
use crate::filter::Filter;
use crate::handoff::{self, Handoff};
use crate::results_set::{self, Opened, ResultsSet};
use crate::sink::checkpoint::{ExistingResults, ResultsError};

/// Rows of the earlier stage decoded at a time: each becomes a JSON record, reply and all.
const BATCH_ROWS: usize = 1024;

/// The stage a later stage reads, as the run handed its rows on.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// How its rows became the records the later stage read.
    pub handoff: Handoff,
    /// Its results: a file, or a dataset's folder.
    pub results: PathBuf,
    /// The later stage's `where`.
    pub filter: Option<Filter>,
}

impl Row<'_> {
    /// A later stage's row is its record's: by custom_id, an invalid one too.
    fn stage_key(&self) -> u64 {
        match (self.custom_id, self.line) {
            (Some(custom_id), _) => id_key(custom_id),
            (None, line) => line_key(line.unwrap_or(0)),
        }
    }
}

/// Checks a later stage's results at `results` against the rows of `upstream` handed on to
/// it. Problems go to `report` as [`super::verify`]'s do; a missing or duplicated row is named
/// by its custom_id and its row number in the earlier stage's results (`line`).
pub fn verify_stage(
    results: &Path,
    upstream: &Upstream,
    mut report: impl FnMut(Problem) -> io::Result<()>,
) -> Result<Summary, VerifyError> {
    let from = ResultsSet::open(&upstream.results)?;
    let set = ResultsSet::open(results)?;
    if set.files.is_empty() {
        return Err(VerifyError::NoResultsFiles {
            path: results.to_owned(),
        });
    }
    let (read, owed) = thread::scope(|scope| {
        let rows = scope.spawn(|| row_keys(&set, |row| row.stage_key()));
        let mut owed = Vec::new();
        let handed = handed_on(&from, upstream, &mut |_, _, key| {
            owed.push(key);
            Ok(())
        });
        let rows = rows
            .join()
            .map_err(|_| VerifyError::Thread("the results reader panicked".into()))?;
        handed?;
        owed.sort_unstable();
        Ok::<_, VerifyError>((rows?, owed))
    })?;
    let (verdicts, summary, damaged) = judge(&set, &owed, 0, read, &mut report)?;
    drop(owed);
    let duplicates = name_owed(
        &verdicts,
        |each| handed_on(&from, upstream, each),
        &mut report,
    )?;
    name_rows(
        &set,
        &damaged,
        &verdicts.unexpected,
        duplicates,
        |row| row.stage_key(),
        &mut report,
    )?;
    Ok(summary)
}

/// Hands `each` the custom_id, row number (from 1, across the files in order) and key of
/// every row of `upstream` that the run handed on: status ok and passing the filter. A file
/// of the earlier stage that cannot be read fails the check: what is owed is unknown.
fn handed_on(
    from: &ResultsSet,
    upstream: &Upstream,
    each: &mut super::Owed<'_>,
) -> Result<(), VerifyError> {
    let wanted = upstream.handoff.columns_read();
    let mut row_number = 0;
    for entry in &from.files {
        let read =
            from.with_local(entry, |path| -> Result<Result<(), String>, VerifyError> {
                let existing = match from.open_entry(entry, path)? {
                    Opened::Nothing => return Ok(Ok(())),
                    Opened::Damaged(reason) | Opened::Stale(reason) => return Ok(Err(reason)),
                    Opened::Results(existing) => existing,
                };
                match read_records(path, &existing, &wanted, upstream, &mut row_number, each) {
                    Ok(()) => Ok(Ok(())),
                    Err(Stop::Report(error)) => Err(VerifyError::Report(error)),
                    Err(Stop::Results(error)) if results_set::is_damage(&error) => {
                        Ok(Err(results_set::rows_unreadable(&error)))
                    }
                    Err(Stop::Results(error)) => Err(error.into()),
                }
            })??;
        if let Err(reason) = read {
            return Err(VerifyError::NotResults {
                path: PathBuf::from(&entry.name),
                reason,
            });
        }
    }
    Ok(())
}

/// Why reading an earlier stage's records stopped.
enum Stop {
    Results(ResultsError),
    Report(io::Error),
}

/// The records of one results file of the earlier stage, `wanted` columns only.
fn read_records(
    path: &Path,
    existing: &ExistingResults,
    wanted: &[String],
    upstream: &Upstream,
    row_number: &mut u64,
    each: &mut super::Owed<'_>,
) -> Result<(), Stop> {
    let parquet_error = |cause: parquet::errors::ParquetError| {
        Stop::Results(ResultsError::Parquet {
            path: path.to_owned(),
            cause,
        })
    };
    let file = File::open(path).map_err(|cause| {
        Stop::Results(ResultsError::Io {
            path: path.to_owned(),
            cause,
        })
    })?;
    // The checkpoint's footer, not the file's end: a file being written has rows past it.
    let metadata =
        ArrowReaderMetadata::try_new(Arc::clone(&existing.metadata), ArrowReaderOptions::new())
            .map_err(parquet_error)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
        .with_batch_size(BATCH_ROWS);
    let projection = handoff::projection(&builder, wanted);
    let batches = builder
        .with_projection(projection)
        .build()
        .map_err(parquet_error)?;
    for batch in batches {
        let batch = batch.map_err(|error| parquet_error(error.into()))?;
        let records = handoff::records(&batch).map_err(|error| parquet_error(error.into()))?;
        for row in records {
            *row_number += 1;
            let Some(record) = upstream.handoff.handed_on(row) else {
                continue;
            };
            if upstream
                .filter
                .as_ref()
                .is_some_and(|filter| !filter.matches(&record))
            {
                continue;
            }
            let Some(custom_id) = record.get("custom_id").and_then(|id| id.as_str()) else {
                continue;
            };
            each(Some(custom_id), *row_number, id_key(custom_id)).map_err(Stop::Report)?;
        }
    }
    Ok(())
}
