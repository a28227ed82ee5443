//! The `status` command: what a Parquet results file (or each shard of a results dataset)
//! holds and whether it can be resumed, read without running or modifying anything, here or on
//! object storage. A part (or file) that cannot be read is named with why, and the others are
//! still counted. Where the run left a live-status file (`live_status`), it also says whether
//! that run still goes, how far it is and when it should be done, or when it ended.
//!
//! A pipeline's stages are reported one after the other, each under its name: from a folder of
//! stage results (`results/screen.parquet`, `results/extract.parquet`: plain results files, no
//! dataset's parts), ordered by the stage each one's fingerprint says it reads, or from the
//! pipeline file's stages, in its order (the caller lists them).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::live_status::{LiveStatus, Verdict};
use crate::progress;
use crate::results_set::{self, Opened, ResultsSet};
use crate::sink::checkpoint::{self, FileState, ResultsError};
use crate::sink::dataset::{self, PartOwner};
use crate::sink::fingerprint::Fingerprint;

/// What `status` found: one results file, or a dataset's shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    File(ResultsStatus),
    /// A results file that cannot be read: why.
    Damaged(String),
    Dataset {
        /// Each shard's readable parts taken together, in shard order, with their number.
        shards: Vec<(PartOwner, usize, ResultsStatus)>,
        /// The parts that cannot be read, by name, with why; their rows are in no shard's.
        damaged: Vec<(String, String)>,
    },
    /// The results of a pipeline's stages, in the order it runs them.
    Stages(Vec<StageFound>),
}

/// One stage's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFound {
    pub name: String,
    /// Where its results are, as messages name them.
    pub path: String,
    /// The stage it reads and its filter (`screen where fit != 'weak'`); `None` for a stage
    /// that reads the source.
    pub reads: Option<String>,
    /// What its results hold; `None` when it has none yet.
    pub found: Option<Found>,
}

/// A stage to report: its name, where its results are and what it reads (see [`StageFound`]).
#[derive(Debug, Clone)]
pub struct StageResults {
    pub name: String,
    pub path: PathBuf,
    pub reads: Option<String>,
}

/// Reads a results file, or a dataset's parts: a local path, or an object-storage URL (a
/// dataset `s3://bucket/run/`, or one file), each remote part downloaded in turn.
/// A folder of plain results files (no part of a dataset among them) is a pipeline's stage
/// results, each file a stage.
pub fn find(path: &Path) -> Result<Found, ResultsError> {
    let set = ResultsSet::open(path)?;
    if !set.dataset {
        return find_file(&set);
    }
    let holds_parts = set
        .files
        .iter()
        .any(|entry| dataset::part_of(&entry.name).is_some());
    if !set.files.is_empty() && !holds_parts {
        return find_stage_files(&set);
    }
    // Other `*.parquet` files in the folder are not any shard's.
    let mut parts: Vec<(PartOwner, u64, &results_set::ResultsEntry)> = set
        .files
        .iter()
        .filter_map(|entry| dataset::part_of(&entry.name).map(|(owner, seq)| (owner, seq, entry)))
        .collect();
    parts.sort_by_key(|(owner, seq, _)| (owner.count, owner.index, *seq));
    let mut shards: Vec<(PartOwner, usize, ResultsStatus)> = Vec::new();
    let mut damaged = Vec::new();
    for (owner, _, entry) in parts {
        let status = match set.with_local(entry, |local| {
            read_file(local, set.open_entry(entry, local)?)
        })?? {
            Ok(status) => status,
            Err(reason) => {
                damaged.push((entry.name.clone(), reason));
                continue;
            }
        };
        match shards.last_mut() {
            Some((last, parts, sum)) if *last == owner => {
                *parts += 1;
                *sum = ResultsStatus {
                    rows: sum.rows + status.rows,
                    ok: sum.ok + status.ok,
                    errors: sum.errors + status.errors,
                    invalid_input: sum.invalid_input + status.invalid_input,
                    duplicates: sum.duplicates + status.duplicates,
                    row_groups: sum.row_groups + status.row_groups,
                    // How the run ended is in its last part.
                    state: status.state.or(sum.state),
                    fingerprint: status.fingerprint.or(sum.fingerprint.take()),
                    holds_nothing: sum.holds_nothing && status.holds_nothing,
                    writer: sum.writer.take(),
                    live: sum.live.take(),
                };
            }
            _ => {
                let writer = set.writer(Some(owner))?;
                let live = live_run(&set, Some(owner))?;
                shards.push((
                    owner,
                    1,
                    ResultsStatus {
                        writer,
                        live,
                        ..status
                    },
                ))
            }
        }
    }
    Ok(Found::Dataset { shards, damaged })
}

/// The one results file of `set`.
fn find_file(set: &ResultsSet) -> Result<Found, ResultsError> {
    let entry = set.files.first().expect("a set of one file lists it");
    Ok(
        match set.with_local(entry, |local| {
            read_file(local, set.open_entry(entry, local)?)
        })?? {
            Ok(status) => Found::File(ResultsStatus {
                writer: set.writer(None)?,
                live: live_run(set, None)?,
                ..status
            }),
            Err(reason) => Found::Damaged(reason),
        },
    )
}

/// Each file of a folder of stage results, as a stage named after it; those that read no
/// stage first, then each after the stage it reads (its fingerprint's `upstream`), then those
/// whose file does not tell.
fn find_stage_files(set: &ResultsSet) -> Result<Found, ResultsError> {
    let mut stages = Vec::with_capacity(set.files.len());
    for entry in &set.files {
        let file = set.file_set(entry)?;
        let found = find_file(&file)?;
        let reads = match &found {
            Found::File(status) => status
                .fingerprint
                .as_ref()
                .and_then(|fingerprint| fingerprint.upstream().map(str::to_owned)),
            _ => None,
        };
        stages.push(StageFound {
            name: stage_name(&entry.name),
            path: file
                .files
                .first()
                .map_or_else(|| entry.name.clone(), |file| file.name.clone()),
            reads,
            found: Some(found),
        });
    }
    // A file without a fingerprint (no checkpoint yet, damaged) does not say what it reads:
    // last, where a later stage, which checkpoints after those it reads, most likely belongs.
    let keys: Vec<(bool, usize)> = (0..stages.len())
        .map(|index| {
            let known = matches!(&stages[index].found,
                Some(Found::File(status)) if status.fingerprint.is_some());
            (!known, depth(&stages, index))
        })
        .collect();
    let mut ordered: Vec<((bool, usize), StageFound)> = keys.into_iter().zip(stages).collect();
    ordered.sort_by(|(a_key, a), (b_key, b)| (a_key, &a.name).cmp(&(b_key, &b.name)));
    Ok(Found::Stages(
        ordered.into_iter().map(|(_, stage)| stage).collect(),
    ))
}

/// A results file's stage: its name without `.parquet`.
fn stage_name(file: &str) -> String {
    let cut = file.len().saturating_sub(".parquet".len());
    file.get(..cut).unwrap_or(file).to_owned()
}

/// The stage an `upstream` entry names (`screen` of `screen where fit != 'weak'`).
fn read_stage(reads: &str) -> &str {
    reads.split_once(' ').map_or(reads, |(stage, _)| stage)
}

/// How many stages stand before `index` in the chain of the stages it reads: 0 for one that
/// reads none. A stage it reads that is not among `stages` still counts one; a circle (files
/// from several pipelines in one folder) stops at the number of stages.
fn depth(stages: &[StageFound], index: usize) -> usize {
    let mut depth = 0;
    let mut at = index;
    while let Some(reads) = stages[at].reads.as_deref() {
        depth += 1;
        match stages
            .iter()
            .position(|stage| stage.name == read_stage(reads))
        {
            Some(next) if depth < stages.len() => at = next,
            _ => break,
        }
    }
    depth
}

/// The results of a pipeline's stages, in the order given: each read as [`find`] reads it, or
/// none yet where its results do not exist.
pub fn find_stages(stages: Vec<StageResults>) -> Result<Found, ResultsError> {
    let mut found = Vec::with_capacity(stages.len());
    for stage in stages {
        let results = match find(&stage.path) {
            Ok(results) => Some(results),
            Err(ResultsError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        found.push(StageFound {
            name: stage.name,
            path: stage.path.display().to_string(),
            reads: stage.reads,
            found: results,
        });
    }
    Ok(Found::Stages(found))
}

impl Found {
    /// Some file could not be read: `status` exits 2.
    pub fn is_damaged(&self) -> bool {
        match self {
            Found::File(_) => false,
            Found::Damaged(_) => true,
            Found::Dataset { damaged, .. } => !damaged.is_empty(),
            Found::Stages(stages) => stages
                .iter()
                .any(|stage| stage.found.as_ref().is_some_and(Found::is_damaged)),
        }
    }

    /// The human-readable report printed by `batchflow status`.
    pub fn render(&self, path: &Path) -> String {
        let mut report = String::new();
        match self {
            Found::File(status) => return status.render(path),
            Found::Damaged(reason) => {
                let _ = writeln!(report, "{}", path.display());
                let _ = writeln!(report, "  damaged:    {reason}");
                let _ = writeln!(
                    report,
                    "  next:       this file cannot be read; its rows are lost unless a copy exists"
                );
            }
            Found::Stages(stages) => {
                let names: Vec<&str> = stages.iter().map(|stage| stage.name.as_str()).collect();
                let _ = writeln!(
                    report,
                    "{}: {} stage(s): {}",
                    path.display(),
                    stages.len(),
                    names.join(", ")
                );
                for stage in stages {
                    report.push_str(&stage.render());
                }
            }
            Found::Dataset { shards, damaged } if shards.is_empty() && damaged.is_empty() => {
                let _ = writeln!(report, "{}", path.display());
                let _ = writeln!(report, "  a dataset directory with no part files yet");
            }
            Found::Dataset { shards, damaged } => {
                let rows: u64 = shards.iter().map(|(_, _, status)| status.rows).sum();
                let _ = writeln!(
                    report,
                    "{}: dataset, {} shard(s), {rows} rows in all",
                    path.display(),
                    shards.len()
                );
                for (owner, parts, status) in shards {
                    let name = format!("{} ({parts} parts)", owner.describe());
                    report.push_str(&status.render(Path::new(&name)));
                }
                if !damaged.is_empty() {
                    let _ = writeln!(
                        report,
                        "damaged: {} part(s) cannot be read; their rows are not counted above",
                        damaged.len()
                    );
                    for (name, reason) in damaged {
                        let _ = writeln!(report, "  {name}: {reason}");
                    }
                }
            }
        }
        report
    }
}

impl StageFound {
    /// Its results' report under a `stage NAME: PATH` heading, with what it reads.
    fn render(&self) -> String {
        let heading = format!("stage {}: {}", self.name, self.path);
        let body = match &self.found {
            Some(found) => found.render(Path::new(&heading)),
            None => format!(
                "{heading}\n  state:      no results yet: the stage has not run, or not reached its first checkpoint\n"
            ),
        };
        let Some(reads) = &self.reads else {
            return body;
        };
        match body.split_once('\n') {
            Some((first, rest)) => format!("{first}\n  reads:      {reads}\n{rest}"),
            None => format!("{body}\n  reads:      {reads}\n"),
        }
    }
}

/// A results file's state, as counted from the file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsStatus {
    pub rows: u64,
    pub ok: u64,
    pub errors: u64,
    /// Of the errors, rows of input lines that could not be sent (`--retry-errors` cannot
    /// help them: the input must change).
    pub invalid_input: u64,
    /// Of those, lines refused for reusing an earlier line's custom_id.
    pub duplicates: u64,
    pub row_groups: usize,
    pub state: Option<FileState>,
    /// What produced the file; `None` for a file written before fingerprints.
    pub fingerprint: Option<Fingerprint>,
    /// The file's run was stopped before its first checkpoint: nothing to keep.
    pub holds_nothing: bool,
    /// The run writing it now (its lock or lease is held): "pid 42 on host, since …".
    pub writer: Option<String>,
    /// What the live-status file of its latest run says, when it left one.
    pub live: Option<LiveRun>,
}

/// A run as its live-status file tells it, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRun {
    /// "running (pid 42 on host, since …), last update …", "stopped (…): its process is gone;
    /// last seen …", "finished at … (…)".
    pub run: String,
    /// Its own figures: "120/1000 (12.0%) · 3 failed · 0 invalid · 25.3/s · ETA 35s · 8 workers".
    pub figures: String,
}

/// The live-status file of `owner`'s run (the single file's for `None`), judged against who
/// holds the results' lock now.
fn live_run(set: &ResultsSet, owner: Option<PartOwner>) -> Result<Option<LiveRun>, ResultsError> {
    let Some(live) = set.live_status(owner) else {
        return Ok(None);
    };
    let writer = set.lock_holder(owner)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Ok(Some(LiveRun::of(
        &live,
        live.verdict(writer.as_ref(), now),
        now,
    )))
}

impl LiveRun {
    pub fn of(live: &LiveStatus, verdict: Verdict, now: u64) -> LiveRun {
        let who = live.holder().describe();
        let run = match verdict {
            Verdict::Running => format!("running ({who}), last update {}", live.updated_at),
            Verdict::Gone => format!(
                "stopped ({who}): its process is gone; last seen {}",
                live.updated_at
            ),
            Verdict::Silent => format!(
                "stopped ({who}): not heard from since {}, {} ago",
                live.updated_at,
                progress::seconds(now.saturating_sub(live.updated_at_unix) as f64)
            ),
            Verdict::Ended(state) => {
                format!("{} at {} ({who})", state.as_str(), live.updated_at)
            }
        };
        let mut figures = vec![match live.total {
            Some(total) if total > 0 => format!(
                "{}/{total} ({:.1}%)",
                live.done,
                live.done as f64 * 100.0 / total as f64
            ),
            Some(_) => format!("{}/0 (nothing to send)", live.done),
            None => format!("{} done (total unknown)", live.done),
        }];
        figures.push(format!("{} failed", live.failed));
        figures.push(format!("{} invalid", live.invalid));
        match live.rate_per_sec < 100.0 {
            true => figures.push(format!("{:.1}/s", live.rate_per_sec)),
            false => figures.push(format!("{:.0}/s", live.rate_per_sec)),
        }
        if let Some(eta) = live.eta_secs.filter(|_| verdict == Verdict::Running) {
            figures.push(format!("ETA {}", progress::seconds(eta)));
        }
        figures.push(format!("{} workers", live.workers));
        LiveRun {
            run,
            figures: figures.join(" · "),
        }
    }
}

/// Reads one results file: its status, or why it cannot be read (see
/// [`results_set::open_file`]).
pub fn read_file(
    path: &Path,
    opened: Opened,
) -> Result<Result<ResultsStatus, String>, ResultsError> {
    let existing = match opened {
        Opened::Damaged(reason) | Opened::Stale(reason) => return Ok(Err(reason)),
        Opened::Nothing => {
            return Ok(Ok(ResultsStatus {
                rows: 0,
                ok: 0,
                errors: 0,
                invalid_input: 0,
                duplicates: 0,
                row_groups: 0,
                state: None,
                fingerprint: None,
                holds_nothing: true,
                writer: None,
                live: None,
            }));
        }
        Opened::Results(existing) => existing,
    };
    let counts = match checkpoint::count_statuses(path, &existing) {
        Ok(counts) => counts,
        Err(error) if results_set::is_damage(&error) => {
            return Ok(Err(results_set::rows_unreadable(&error)));
        }
        Err(error) => return Err(error),
    };
    Ok(Ok(ResultsStatus {
        rows: existing.rows(),
        ok: counts.ok,
        errors: counts.error,
        invalid_input: counts.invalid_input,
        duplicates: counts.duplicates,
        row_groups: existing.metadata.num_row_groups(),
        state: existing.state(),
        fingerprint: Fingerprint::read(existing.metadata.file_metadata().key_value_metadata()),
        holds_nothing: false,
        writer: None,
        live: None,
    }))
}

impl ResultsStatus {
    /// The human-readable report printed by `batchflow status`.
    pub fn render(&self, path: &Path) -> String {
        let writing;
        let state = match self.state {
            _ if self.writer.is_some() => {
                writing = format!(
                    "being written by {}; the rows below are safe at its last checkpoint",
                    self.writer.as_deref().unwrap_or_default()
                );
                writing.as_str()
            }
            _ if self.holds_nothing => {
                "holds no rows: its run was stopped before its first checkpoint"
            }
            Some(FileState::InProgress) => {
                "stopped without closing (killed or crashed: no run holds it now); the rows below are safe at the last checkpoint"
            }
            Some(FileState::Complete) => "complete: the run reached the end of its input",
            Some(FileState::Interrupted) => {
                "interrupted: closed cleanly before the end of its input"
            }
            None => "written by another tool or an older batchflow",
        };
        let next = match self.state {
            _ if self.writer.is_some() => {
                "wait for that run to end (another run of it is refused while it runs)"
            }
            _ if self.holds_nothing => {
                "run the same command with --resume to start it again in place"
            }
            Some(FileState::Complete) => {
                "nothing to resume (--resume with a larger input sends only the missing requests)"
            }
            _ => "run the same command with --resume to continue where it stopped",
        };
        let mut report = String::new();
        let _ = writeln!(report, "{}", path.display());
        let _ = writeln!(report, "  state:      {state}");
        if let Some(live) = &self.live {
            let _ = writeln!(report, "  run:        {}", live.run);
            let _ = writeln!(report, "  this run:   {}", live.figures);
        }
        let failed = self.errors.saturating_sub(self.invalid_input);
        let _ = writeln!(
            report,
            "  rows:       {} (ok {}, failed {failed}, invalid {})",
            self.rows, self.ok, self.invalid_input
        );
        let _ = writeln!(report, "  row groups: {}", self.row_groups);
        let _ = writeln!(report, "  next:       {next}");
        self.render_errors(&mut report);
        match &self.fingerprint {
            Some(fingerprint) => {
                let _ = writeln!(report, "  made by:");
                for (key, value) in fingerprint.entries() {
                    let _ = writeln!(report, "    {key}: {value}");
                }
            }
            None if self.holds_nothing => {}
            None => {
                let _ = writeln!(report, "  made by:    not recorded (an older batchflow)");
            }
        }
        report
    }

    /// What to do about the error rows: send the failed requests again, or fix the input
    /// lines that no retry can help.
    fn render_errors(&self, report: &mut String) {
        let failed = self.errors.saturating_sub(self.invalid_input);
        if failed > 0 {
            let _ = writeln!(
                report,
                "  failed:     --resume --retry-errors sends the {failed} failed requests again"
            );
        }
        if self.duplicates > 0 {
            let _ = writeln!(
                report,
                "  duplicates: {} lines reuse an earlier line's custom_id; sending them again fails the same way: give each line its own id (for records, --id-column or source.id_column in a pipeline file) or remove the repeated lines",
                self.duplicates
            );
        }
        let other_invalid = self.invalid_input.saturating_sub(self.duplicates);
        if other_invalid > 0 {
            let _ = writeln!(
                report,
                "  invalid:    {other_invalid} input lines could not be sent; fix them in the input (each error row names its line and why), then --resume --retry-errors"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, reads: Option<&str>) -> StageFound {
        StageFound {
            name: name.into(),
            path: format!("{name}.parquet"),
            reads: reads.map(str::to_owned),
            found: None,
        }
    }

    #[test]
    fn a_stage_stands_after_the_chain_of_stages_it_reads_and_a_circle_ends() {
        assert_eq!(stage_name("extract.parquet"), "extract");
        assert_eq!(stage_name("Old.PARQUET"), "Old");
        let stages = [
            stage("c", Some("b where fit != 'weak'")),
            stage("b", Some("a")),
            stage("a", None),
            stage("d", Some("gone")),
            stage("e", Some("e")),
        ];
        let depths: Vec<usize> = (0..stages.len()).map(|at| depth(&stages, at)).collect();
        assert_eq!(depths, [2, 1, 0, 1, stages.len()]);
    }
}
