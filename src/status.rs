//! The `status` command: what a Parquet results file holds and whether it can be resumed,
//! read without running or modifying anything.

use std::fmt::Write as _;
use std::path::Path;

use crate::sink::checkpoint::{self, FileState, ResultsError};
use crate::sink::fingerprint::Fingerprint;

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
