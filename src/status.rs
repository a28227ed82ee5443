//! The `status` command: what a Parquet results file (or each shard of a results dataset)
//! holds and whether it can be resumed, read without running or modifying anything.

use std::fmt::Write as _;
use std::path::Path;

use crate::sink::checkpoint::{self, FileState, ResultsError};
use crate::sink::dataset::{self, PartOwner};
use crate::sink::fingerprint::Fingerprint;

/// What `status` found: one results file, or a dataset's shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    File(ResultsStatus),
    /// Each shard's parts taken together, in shard order.
    Dataset(Vec<(PartOwner, usize, ResultsStatus)>),
}

/// Reads a results file, or a dataset directory's parts.
pub fn find(path: &Path) -> Result<Found, ResultsError> {
    if !path.is_dir() {
        return read(path).map(Found::File);
    }
    let mut shards = Vec::new();
    for owner in dataset::owners(path)? {
        let parts = dataset::list_parts(path, owner)?;
        let mut total: Option<ResultsStatus> = None;
        for part in &parts {
            let status = read(&part.path)?;
            total = Some(match total {
                None => status,
                Some(sum) => ResultsStatus {
                    rows: sum.rows + status.rows,
                    ok: sum.ok + status.ok,
                    errors: sum.errors + status.errors,
                    row_groups: sum.row_groups + status.row_groups,
                    // How the run ended is in its last part.
                    state: status.state.or(sum.state),
                    fingerprint: status.fingerprint.or(sum.fingerprint),
                    holds_nothing: sum.holds_nothing && status.holds_nothing,
                },
            });
        }
        if let Some(total) = total {
            shards.push((owner, parts.len(), total));
        }
    }
    Ok(Found::Dataset(shards))
}

impl Found {
    /// The human-readable report printed by `batchflow status`.
    pub fn render(&self, path: &Path) -> String {
        match self {
            Found::File(status) => status.render(path),
            Found::Dataset(shards) if shards.is_empty() => format!(
                "{}\n  a dataset directory with no part files yet\n",
                path.display()
            ),
            Found::Dataset(shards) => {
                let mut report = String::new();
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
                report
            }
        }
    }
}

/// A results file's state, as counted from the file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsStatus {
    pub rows: u64,
    pub ok: u64,
    pub errors: u64,
    pub row_groups: usize,
    pub state: Option<FileState>,
    /// What produced the file; `None` for a file written before fingerprints.
    pub fingerprint: Option<Fingerprint>,
    /// The file's run was stopped before its first checkpoint: nothing to keep.
    pub holds_nothing: bool,
}

pub fn read(path: &Path) -> Result<ResultsStatus, ResultsError> {
    if checkpoint::holds_nothing(path)? {
        return Ok(ResultsStatus {
            rows: 0,
            ok: 0,
            errors: 0,
            row_groups: 0,
            state: None,
            fingerprint: None,
            holds_nothing: true,
        });
    }
    let existing = checkpoint::inspect(path)?;
    let counts = checkpoint::count_statuses(path, &existing)?;
    Ok(ResultsStatus {
        rows: existing.rows(),
        ok: counts.ok,
        errors: counts.error,
        row_groups: existing.metadata.num_row_groups(),
        state: existing.state(),
        fingerprint: Fingerprint::read(existing.metadata.file_metadata().key_value_metadata()),
        holds_nothing: false,
    })
}

impl ResultsStatus {
    /// The human-readable report printed by `batchflow status`.
    pub fn render(&self, path: &Path) -> String {
        let state = match self.state {
            _ if self.holds_nothing => {
                "holds no rows: its run was stopped before its first checkpoint"
            }
            Some(FileState::InProgress) => {
                "stopped without closing (killed, crashed, or still running); the rows below are safe at the last checkpoint"
            }
            Some(FileState::Complete) => "complete: the run reached the end of its input",
            Some(FileState::Interrupted) => {
                "interrupted: closed cleanly before the end of its input"
            }
            None => "written by another tool or an older batchflow",
        };
        let next = match self.state {
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
        let _ = writeln!(
            report,
            "  rows:       {} (ok {}, error {})",
            self.rows, self.ok, self.errors
        );
        let _ = writeln!(report, "  row groups: {}", self.row_groups);
        let _ = writeln!(report, "  next:       {next}");
        if self.errors > 0 {
            let _ = writeln!(
                report,
                "  errors:     --resume --retry-errors sends the {} failed requests again",
                self.errors
            );
        }
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
}
