//! The `verify` command: proof that results (one Parquet results file, or a dataset directory
//! of them: shards, parts) hold exactly one row for every line of the input, with every line
//! that has none, or more than one, and every row that belongs to no line, named.
//!
//! A line is known the way `--resume` knows it: a request by its custom_id, an invalid line
//! (which may have no id, or a duplicated one) by its line number. The input is read by the
//! source module, exactly as a run reads it, so generated ids and invalid lines come out the
//! same; the options that decide which lines are valid (`--model`, `--max-line-bytes`, a
//! pipeline's template) must be the run's.
//!
//! Memory is 16 bytes an input line and results row, not the rows: each is reduced to a
//! 64-bit hash of its key. Up to three passes, the later ones only when there is something to
//! name:
//!
//! 1. the results (three narrow columns: custom_id, request_line, error_code) on one thread
//!    and the input on another, each into a sorted vector of hashes; a merge of the two finds
//!    the keys with no row, several rows, or no line;
//! 2. the input again, when lines are missing or duplicated: their ids and line numbers, in
//!    input order (so the input must be a file, not standard input);
//! 3. the results again, when rows are unexpected or lines duplicated: those rows, and the
//!    files of each duplicated line.
//!
//! Sorting and merging, rather than looking each line up in a table of rows, keeps every pass
//! a sequential scan: a lookup per line in a table of a million missed the cache at nearly
//! every probe and took a third of the time.
//!
//! Results on object storage are read one file at a time, each downloaded and removed
//! ([`crate::results_set`]); an input there is downloaded once. A file of a dataset that cannot
//! be read (empty, not Parquet, its footer or rows torn) is a problem named with why, its rows
//! then missing; the others are still checked. One results file that cannot be read fails.
//!
//! Two distinct keys share a hash with odds of about n²/2⁶⁵ (3·10⁻⁸ at a million); they would
//! show as a line duplicated, never as one silently complete. Printing the problems, and the
//! exit code, are the caller's.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::thread;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;

use crate::idset::IdHasher;
use crate::item::{ErrorCode, SourceItem};
use crate::options::RunOptions;
use crate::results_set::{self, Opened, ResultsEntry, ResultsSet};
use crate::sink::checkpoint::ResultsError;
use crate::source::{self, Input, SourceError, SourceOptions};
use crate::storage;

mod report;
mod stages;
pub use report::{Problem, ProblemKind, Summary};
pub use stages::{Upstream, verify_stage};

/// Why verification could not be done (as opposed to problems found). Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path} holds no results files (*.parquet)")]
    NoResultsFiles { path: PathBuf },

    #[error("{path} is not a batchflow results file: {reason}")]
    NotResults { path: PathBuf, reason: String },

    #[error(transparent)]
    Results(ResultsError),

    #[error(transparent)]
    Source(#[from] SourceError),

    #[error(
        "verify reads the input again to name what is missing: give it the input file, not standard input"
    )]
    Stdin,

    #[error("writing the report failed: {0}")]
    Report(io::Error),

    #[error("verify failed: {0}")]
    Thread(String),
}

impl From<ResultsError> for VerifyError {
    /// A file that is whole but not results (another Parquet file, a text file) is named as
    /// such, not as a results file that "cannot be resumed".
    fn from(error: ResultsError) -> VerifyError {
        match error {
            ResultsError::Damaged { path, reason } => VerifyError::NotResults { path, reason },
            other => VerifyError::Results(other),
        }
    }
}

/// Checks the results at `results` against the input of `options` (its input, records
/// template, model and line limit; not its shard: the whole input is owed). Each problem goes
/// to `report`: damaged files by name, then missing lines in input order, then unexpected rows
/// in file order, then duplicated lines in input order. A failing `report` stops the check.
pub fn verify(
    results: &Path,
    options: &RunOptions,
    mut report: impl FnMut(Problem) -> io::Result<()>,
) -> Result<Summary, VerifyError> {
    // An input on object storage is read twice (the second time to name lines), so it is
    // downloaded once and kept until the end.
    let mut downloaded = None;
    let local_options;
    let options = match &options.input {
        Input::Stdin | Input::Pipe(_) => return Err(VerifyError::Stdin),
        Input::File(input) if storage::is_url(&input.to_string_lossy()) => {
            let url = input.to_string_lossy();
            let staging = storage::Staging::create("batchflow-verify-input", &url)
                .map_err(ResultsError::from)?;
            let (local, _) = staging.download(&url).map_err(ResultsError::from)?;
            downloaded = Some(staging);
            local_options = RunOptions {
                input: Input::File(local),
                ..options.clone()
            };
            &local_options
        }
        _ => options,
    };
    let set = ResultsSet::open(results)?;
    if set.files.is_empty() {
        return Err(VerifyError::NoResultsFiles {
            path: results.to_owned(),
        });
    }
    // The results are read beside the input: both are a core's worth of decoding.
    let (read, (lines, invalid_lines)) = thread::scope(|scope| {
        let rows = scope.spawn(|| row_keys(&set, |row| row.key()));
        let lines = input_keys(options);
        let rows = rows
            .join()
            .map_err(|_| VerifyError::Thread("the results reader panicked".into()))?;
        Ok::<_, VerifyError>((rows?, lines?))
    })?;
    let (verdicts, summary, damaged) = judge(&set, &lines, invalid_lines, read, &mut report)?;
    drop(lines);
    let duplicates = name_owed(
        &verdicts,
        |each| {
            read_input(options, |item| {
                let (custom_id, line, key) = item_key(item);
                each(custom_id, line, key)
            })
        },
        &mut report,
    )?;
    name_rows(
        &set,
        &damaged,
        &verdicts.unexpected,
        duplicates,
        |row| row.key(),
        &mut report,
    )?;
    drop(downloaded);
    Ok(summary)
}

/// Reports the files of `set` that cannot be read (`damaged`), then the parts of another
/// shard layout than the dataset's main one; how many of those there are.
/// Compares the keys owed a row with the rows read, reports the files that cannot be read,
/// and sums it all up; the files that cannot be read come back for naming rows.
type Judged = (Verdicts, Summary, Vec<(ResultsEntry, String)>);

fn judge(
    set: &ResultsSet,
    owed: &[u64],
    invalid_lines: u64,
    read: RowKeys,
    report: &mut impl FnMut(Problem) -> io::Result<()>,
) -> Result<Judged, VerifyError> {
    let RowKeys {
        keys: rows,
        damaged,
    } = read;
    let other_layout = report_files(set, &damaged, report)?;
    let verdicts = compare(owed, &rows);
    let summary = Summary {
        input_lines: owed.len() as u64,
        invalid_lines,
        rows: rows.len() as u64,
        files: set.files.len(),
        missing: verdicts.missing.len() as u64,
        duplicated: verdicts.duplicated.len() as u64,
        unexpected: verdicts.unexpected_rows,
        damaged: damaged.len(),
        other_layout,
    };
    Ok((verdicts, summary, damaged))
}

fn report_files(
    set: &ResultsSet,
    damaged: &[(ResultsEntry, String)],
    report: &mut impl FnMut(Problem) -> io::Result<()>,
) -> Result<usize, VerifyError> {
    let other_layout = other_layout_parts(set);
    let damaged_files = damaged.iter().map(|(file, reason)| ProblemKind::Damaged {
        file: file.name.clone(),
        reason: reason.clone(),
    });
    let other_layout_files = other_layout
        .iter()
        .map(|(file, reason)| ProblemKind::OtherLayout {
            file: file.clone(),
            reason: reason.clone(),
        });
    for kind in damaged_files.chain(other_layout_files) {
        report(Problem {
            custom_id: None,
            line: 0,
            kind,
        })
        .map_err(VerifyError::Report)?;
    }
    Ok(other_layout.len())
}

/// The parts of a dataset whose shard count is not its main layout's (the one with the most
/// parts; of equals, the fewer shards), each with why.
fn other_layout_parts(set: &ResultsSet) -> Vec<(String, String)> {
    let mut parts_by_count: std::collections::BTreeMap<u64, usize> = Default::default();
    let owners: Vec<(&ResultsEntry, u64)> = set
        .files
        .iter()
        .filter_map(|entry| {
            crate::sink::dataset::owner_of(&entry.name).map(|owner| (entry, owner.count))
        })
        .collect();
    for (_, count) in &owners {
        *parts_by_count.entry(*count).or_default() += 1;
    }
    let Some(main) = parts_by_count
        .iter()
        .max_by_key(|(count, parts)| (**parts, std::cmp::Reverse(**count)))
        .map(|(count, _)| *count)
    else {
        return Vec::new();
    };
    owners
        .into_iter()
        .filter(|(_, count)| *count != main)
        .map(|(entry, count)| {
            let reason = format!(
                "a part of {count} shard(s) beside the dataset's parts of {main}: their rows overlap and count twice; keep one layout (a run with --overwrite replaces the others)"
            );
            (entry.name.clone(), reason)
        })
        .collect()
}

/// What the merge of input and results found, as sorted keys.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdicts {
    /// Lines with no row.
    missing: Vec<u64>,
    /// Lines with several rows, and how many.
    duplicated: Vec<(u64, u64)>,
    /// Keys of rows that no line owns.
    unexpected: Vec<u64>,
    unexpected_rows: u64,
}

/// Merges the sorted keys of the input's lines and of the results' rows.
fn compare(lines: &[u64], rows: &[u64]) -> Verdicts {
    let mut verdicts = Verdicts::default();
    let (mut line, mut row) = (0, 0);
    while line < lines.len() || row < rows.len() {
        let key = match (lines.get(line), rows.get(row)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        let run =
            |keys: &[u64], at: usize| keys[at..].iter().take_while(|&&other| other == key).count();
        let (owners, found) = (run(lines, line), run(rows, row));
        match (owners, found) {
            (0, found) => {
                verdicts.unexpected.push(key);
                verdicts.unexpected_rows += found as u64;
            }
            (_, 0) => verdicts.missing.push(key),
            (_, 1) => {}
            (_, found) => verdicts.duplicated.push((key, found as u64)),
        }
        line += owners;
        row += found;
    }
    verdicts
}

/// A duplicated line, named, with the files of its rows once they are found.
struct Duplicate {
    key: u64,
    custom_id: Option<String>,
    line: u64,
    count: u64,
    files: Vec<String>,
}

/// Problem keys, looked up once a line or row in the naming passes: a hash table takes one
/// cache miss where a binary search of a quarter of a million keys took several.
type KeySet = HashSet<u64, BuildHasherDefault<IdHasher>>;
type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// What is owed a row, handed in turn to a naming pass: its custom_id (if any), its line and
/// its key.
type Owed<'a> = dyn FnMut(Option<&str>, u64, u64) -> io::Result<()> + 'a;

/// Pass 2, when lines are missing or duplicated: reports the missing ones, and names the
/// duplicated ones for [`name_rows`], in the order `read_owed` hands them (the input's, for
/// input lines).
fn name_owed(
    verdicts: &Verdicts,
    read_owed: impl FnOnce(&mut Owed<'_>) -> Result<(), VerifyError>,
    report: &mut impl FnMut(Problem) -> io::Result<()>,
) -> Result<Vec<Duplicate>, VerifyError> {
    let mut duplicates = Vec::new();
    if verdicts.missing.is_empty() && verdicts.duplicated.is_empty() {
        return Ok(duplicates);
    }
    let missing: KeySet = verdicts.missing.iter().copied().collect();
    let duplicated: KeyMap<u64> = verdicts.duplicated.iter().copied().collect();
    read_owed(&mut |custom_id, line, key| {
        let custom_id = || custom_id.map(str::to_owned);
        if missing.contains(&key) {
            let kind = ProblemKind::Missing;
            let custom_id = custom_id();
            return report(Problem {
                custom_id,
                line,
                kind,
            });
        }
        if let Some(&count) = duplicated.get(&key) {
            let custom_id = custom_id();
            let files = Vec::new();
            duplicates.push(Duplicate {
                key,
                custom_id,
                line,
                count,
                files,
            });
        }
        Ok(())
    })?;
    Ok(duplicates)
}

/// Pass 3, when rows are unexpected or lines duplicated: reports the rows no line owns, then
/// each duplicated line with its files. The files of `set` that are `damaged` are not read
/// again; `key` keys a row as the first pass did.
fn name_rows(
    set: &ResultsSet,
    damaged: &[(ResultsEntry, String)],
    unexpected: &[u64],
    mut duplicates: Vec<Duplicate>,
    key: fn(&Row<'_>) -> u64,
    report: &mut impl FnMut(Problem) -> io::Result<()>,
) -> Result<(), VerifyError> {
    if unexpected.is_empty() && duplicates.is_empty() {
        return Ok(());
    }
    let files = set
        .files
        .iter()
        .filter(|entry| !damaged.iter().any(|(file, _)| file == *entry));
    let by_key: KeyMap<usize> = duplicates
        .iter()
        .enumerate()
        .map(|(index, duplicate)| (duplicate.key, index))
        .collect();
    let unexpected: KeySet = unexpected.iter().copied().collect();
    for file in files {
        let mut failed = None;
        let mut each = |row: Row<'_>| {
            let key = key(&row);
            if let Some(&index) = by_key.get(&key) {
                duplicates[index].files.push(file.name.clone());
            } else if failed.is_none() && unexpected.contains(&key) {
                let problem = Problem {
                    custom_id: row.custom_id.map(str::to_owned),
                    line: row.line.unwrap_or(0),
                    kind: ProblemKind::Unexpected {
                        file: file.name.clone(),
                    },
                };
                failed = report(problem).err();
            }
        };
        // A file read whole in the first pass and damaged since is no longer a problem to
        // list but a failure to finish.
        if let Err(reason) = set.with_local(file, |path| {
            read_rows(path, set.open_entry(file, path)?, &mut each)
        })?? {
            return Err(VerifyError::NotResults {
                path: PathBuf::from(&file.name),
                reason,
            });
        }
        if let Some(error) = failed {
            return Err(VerifyError::Report(error));
        }
    }
    for duplicate in duplicates {
        report(Problem {
            custom_id: duplicate.custom_id,
            line: duplicate.line,
            kind: ProblemKind::Duplicated {
                count: duplicate.count,
                files: duplicate.files,
            },
        })
        .map_err(VerifyError::Report)?;
    }
    Ok(())
}

/// What the first pass over the results found.
struct RowKeys {
    /// Every readable row's key, sorted.
    keys: Vec<u64>,
    /// The files that cannot be read, with why.
    damaged: Vec<(ResultsEntry, String)>,
}

/// Every results row's key (by `key`), sorted, and the files that cannot be read. A single
/// results file that cannot be read fails the check: there is nothing else to check.
fn row_keys(set: &ResultsSet, key: fn(&Row<'_>) -> u64) -> Result<RowKeys, VerifyError> {
    let mut keys = Vec::new();
    let mut damaged = Vec::new();
    for entry in &set.files {
        // A file's keys count only once it is read to its end: a file that fails half-way
        // is damaged, all of it.
        let mut file_keys = Vec::new();
        let read = set.with_local(entry, |path| {
            read_rows(path, set.open_entry(entry, path)?, |row| {
                file_keys.push(key(&row))
            })
        })??;
        match read {
            // One file's keys are all the keys: no copy.
            Ok(()) if keys.is_empty() => keys = file_keys,
            Ok(()) => keys.append(&mut file_keys),
            Err(reason) if !set.dataset => {
                return Err(VerifyError::NotResults {
                    path: PathBuf::from(&entry.name),
                    reason,
                });
            }
            Err(reason) => damaged.push((entry.clone(), reason)),
        }
    }
    keys.sort_unstable();
    Ok(RowKeys { keys, damaged })
}

/// Every input line's key, sorted, and how many lines are invalid.
fn input_keys(options: &RunOptions) -> Result<(Vec<u64>, u64), VerifyError> {
    let mut keys = Vec::new();
    let mut invalid = 0;
    read_input(options, |item| {
        invalid += u64::from(matches!(item, SourceItem::Invalid(_)));
        keys.push(item_key(item).2);
        Ok(())
    })?;
    keys.sort_unstable();
    Ok((keys, invalid))
}

/// The key of a request (its custom_id) or of an invalid line (its number), hashed.
fn id_key(custom_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(custom_id.as_bytes())
}

/// Line numbers hash under their own seed, apart from ids.
fn line_key(line: u64) -> u64 {
    const LINE_SEED: u64 = 0x6c69_6e65;
    xxhash_rust::xxh3::xxh3_64_with_seed(&line.to_le_bytes(), LINE_SEED)
}

/// An input item's id (if any), line and key.
fn item_key(item: &SourceItem) -> (Option<&str>, u64, u64) {
    match item {
        SourceItem::Request(request) => (
            Some(request.custom_id.as_str()),
            request.line,
            id_key(&request.custom_id),
        ),
        SourceItem::Invalid(invalid) => (
            invalid.custom_id.as_deref(),
            invalid.line,
            line_key(invalid.line),
        ),
    }
}

/// One row of a results file, as far as verification reads it.
struct Row<'a> {
    custom_id: Option<&'a str>,
    line: Option<u64>,
    /// The row is an invalid input line's (its error code says so).
    invalid_input: bool,
}

impl Row<'_> {
    /// As `--resume` tells rows apart: an invalid line's by its number, a request's by its id.
    fn key(&self) -> u64 {
        match (self.invalid_input, self.custom_id, self.line) {
            (false, Some(custom_id), _) => id_key(custom_id),
            (_, _, Some(line)) => line_key(line),
            // Neither: no input line can own it, so it shows as unexpected.
            (true, Some(custom_id), None) => id_key(custom_id),
            (_, None, None) => line_key(0),
        }
    }
}

/// Calls `each` with every row of the results file at `path`, batch by batch, reading only
/// the three narrow columns; `Ok(Err(why))` for a file that cannot be read (see
/// [`results_set::open_file`]), found at its footer or in its rows.
fn read_rows(
    path: &Path,
    opened: Opened,
    mut each: impl FnMut(Row<'_>),
) -> Result<Result<(), String>, ResultsError> {
    let existing = match opened {
        Opened::Nothing => return Ok(Ok(())),
        Opened::Damaged(reason) | Opened::Stale(reason) => return Ok(Err(reason)),
        Opened::Results(existing) => existing,
    };
    let mut read = || -> Result<(), ResultsError> {
        let parquet_error = |error: arrow_schema::ArrowError| ResultsError::Parquet {
            path: path.to_owned(),
            cause: error.into(),
        };
        for batch in existing.reader(path, &["custom_id", "request_line", "error_code"])? {
            let batch = batch.map_err(parquet_error)?;
            // `inspect` checked the three columns and their types; a projection keeps them.
            let (Some(ids), Some(lines), Some(codes)) = (
                batch.column_by_name("custom_id"),
                batch.column_by_name("request_line"),
                batch.column_by_name("error_code"),
            ) else {
                return Err(ResultsError::Damaged {
                    path: path.to_owned(),
                    reason: "a batch of its rows lacks custom_id, request_line or error_code"
                        .into(),
                });
            };
            let (ids, lines, codes) = (
                ids.as_string::<i32>(),
                lines.as_primitive::<Int64Type>(),
                codes.as_string::<i32>(),
            );
            for row in 0..batch.num_rows() {
                let invalid_input = codes.is_valid(row)
                    && ErrorCode::from_name(codes.value(row))
                        .is_some_and(ErrorCode::is_invalid_input);
                each(Row {
                    custom_id: ids.is_valid(row).then(|| ids.value(row)),
                    line: lines
                        .is_valid(row)
                        .then(|| u64::try_from(lines.value(row)).ok())
                        .flatten(),
                    invalid_input,
                });
            }
        }
        Ok(())
    };
    match read() {
        Ok(()) => Ok(Ok(())),
        Err(error) if results_set::is_damage(&error) => {
            Ok(Err(results_set::rows_unreadable(&error)))
        }
        Err(error) => Err(error),
    }
}

/// Reads the whole input of `options` through the source module, on this thread, handing
/// each item to `each` in order. A failing `each` stops the reading.
fn read_input(
    options: &RunOptions,
    mut each: impl FnMut(&SourceItem) -> io::Result<()>,
) -> Result<(), VerifyError> {
    let source_options = SourceOptions {
        model_override: options.model.clone(),
        max_line_bytes: options.max_line_bytes,
        done: None,
        track_done: false,
        records: options.records.clone(),
        shard: None,
        limit: None,
        model_knob: options.knobs.model.clone(),
        log_invalid: false,
        // They change no custom_id, which is all verify reads.
        ollama_options: None,
        keep_alive: None,
        upstream: None,
    };
    let opened = source::open_for(options.input.clone(), &source_options)?;
    let mut failed = None;
    source::read(opened, &source_options, |item| match each(&item) {
        Ok(()) => ControlFlow::Continue(()),
        Err(error) => {
            failed = Some(error);
            ControlFlow::Break(())
        }
    })?;
    match failed {
        Some(error) => Err(VerifyError::Report(error)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
