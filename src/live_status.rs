//! The live-status file: a small JSON file beside a run's Parquet results, rewritten atomically
//! about every second while the run goes and once more with how it ended, so that
//! `batchflow status` in another terminal can tell a running run (how far, how fast, when it
//! will be done) from one whose process is gone and from one that ended.
//!
//! What it owns: the file's place (`.<name>.live.json` beside a results file,
//! `.part-<i>-of-<n>.live.json` in a dataset folder, one per shard as the lock files are: hidden,
//! so that no `*.parquet` glob, `status`, `verify`, `--prune` or resume takes it for a part),
//! its format ([`LiveStatus`]), writing it ([`LiveFile`]) and telling from it whether its run
//! still goes ([`LiveStatus::verdict`]). Its words are `status`'s.
//!
//! Results on object storage get none: `status` reads those from the store, where a file kept
//! on the writer's disk would not be found (and a write to the store every second would cost
//! more than it tells).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::paths::replace_with_json;
use crate::sink::dataset::PartOwner;
use crate::sink::lock::{self, Holder};
use crate::sink::parquet::ParquetOutput;
use crate::stats::StatsSnapshot;

/// A run on another machine whose file was not rewritten for this long is taken for stopped:
/// its process cannot be looked up from here.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Where a run is, as it last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// It reached the end of its input.
    Finished,
    /// Stopped by a signal (or `--on-reload stop`), its results closed and resumable.
    Interrupted,
    /// An error ended it; what it wrote is kept.
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Interrupted => "interrupted",
            RunState::Failed => "failed",
        }
    }
}

/// The file's content. The counts are this run's (a resumed run's total leaves out the lines
/// its results already had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    pub state: RunState,
    pub pid: u32,
    pub host: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub started_at_unix: u64,
    pub updated_at: String,
    pub updated_at_unix: u64,
    /// Results this run is expected to produce; null while unknown (standard input).
    pub total: Option<u64>,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub invalid: u64,
    /// Results per second over the last 30 seconds (the average until then).
    pub rate_per_sec: f64,
    /// Null while the total or the rate is unknown, and once the run has ended.
    pub eta_secs: Option<f64>,
    /// The concurrency limit now.
    pub workers: u64,
    /// With `start_ticks`, tells a process gone from one that took its pid since (as the
    /// writer lock does: `sink::lock::Holder`).
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub start_ticks: u64,
}

/// What became of the run of a live-status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Running,
    /// It says it runs, but its process on this machine is gone (killed, crashed, the machine
    /// restarted).
    Gone,
    /// It says it runs on another machine, but has not been heard from for [`STALE_AFTER`].
    Silent,
    /// It wrote how it ended.
    Ended(RunState),
}

impl LiveStatus {
    /// The run as a writer lock records it.
    pub fn holder(&self) -> Holder {
        Holder {
            pid: self.pid,
            host: self.host.clone(),
            since: self.started_at_unix,
            boot_id: self.boot_id.clone(),
            start_ticks: self.start_ticks,
        }
    }

    /// Whether its run still goes at `now` (Unix seconds). `writer` is who holds the results'
    /// lock now: the same process holding it settles it, whatever the clocks say.
    pub fn verdict(&self, writer: Option<&Holder>, now: u64) -> Verdict {
        if self.state != RunState::Running {
            return Verdict::Ended(self.state);
        }
        if writer.is_some_and(|writer| writer.pid == self.pid && writer.host == self.host) {
            return Verdict::Running;
        }
        let holder = self.holder();
        if holder.host == lock::host_name() && !holder.boot_id.is_empty() {
            return match holder.is_gone_from_here() {
                true => Verdict::Gone,
                false => Verdict::Running,
            };
        }
        match now.saturating_sub(self.updated_at_unix) > STALE_AFTER.as_secs() {
            true => Verdict::Silent,
            false => Verdict::Running,
        }
    }
}

/// The live-status file of results at `results` (a file, or a dataset folder when `owner` is
/// the shard writing into it).
pub fn path_of(results: &Path, owner: Option<PartOwner>) -> PathBuf {
    match owner {
        Some(owner) => results.join(format!(
            ".part-{}-of-{}.live.json",
            owner.index, owner.count
        )),
        None => {
            let name = results
                .file_name()
                .map_or_else(|| "results".into(), |name| name.to_string_lossy());
            results.with_file_name(format!(".{name}.live.json"))
        }
    }
}

/// The file at `path`; `None` if there is none, or it cannot be read as one (another tool's
/// file of that name is not worth failing `status` for).
pub fn read(path: &Path) -> Option<LiveStatus> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// One run's live-status file, and the run as it describes itself in it.
#[derive(Debug, Clone)]
pub struct LiveFile {
    path: PathBuf,
    run: Holder,
}

impl LiveFile {
    /// The live-status file of a run writing `output`; `None` for results on object storage.
    pub fn for_output(output: &ParquetOutput) -> Option<LiveFile> {
        if output.remote.is_some() {
            return None;
        }
        Some(LiveFile {
            path: path_of(&output.path, output.dataset),
            run: Holder::me(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file with `snapshot`'s figures, so that a reader never sees half of it:
    /// write a sibling, then rename.
    pub fn write(&self, snapshot: &StatsSnapshot, state: RunState) -> io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let status = LiveStatus {
            state,
            pid: self.run.pid,
            host: self.run.host.clone(),
            started_at: rfc3339(self.run.since),
            started_at_unix: self.run.since,
            updated_at: rfc3339(now),
            updated_at_unix: now,
            total: snapshot.total,
            done: snapshot.done,
            succeeded: snapshot.succeeded,
            failed: snapshot.failed,
            invalid: snapshot.invalid,
            rate_per_sec: snapshot
                .rate_per_sec
                .unwrap_or(snapshot.average_rate_per_sec),
            eta_secs: snapshot.eta_secs.filter(|_| state == RunState::Running),
            workers: snapshot.workers,
            boot_id: self.run.boot_id.clone(),
            start_ticks: self.run.start_ticks,
        };
        replace_with_json(&self.path, &status)
    }
}

/// "2026-12-03T15:10:00Z".
pub fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::stats::RunStats;

    #[test]
    fn the_file_is_hidden_beside_a_file_and_per_shard_in_a_dataset() {
        assert_eq!(
            path_of(Path::new("out/r.parquet"), None),
            Path::new("out/.r.parquet.live.json")
        );
        let owner = PartOwner { index: 1, count: 4 };
        assert_eq!(
            path_of(Path::new("out/set/"), Some(owner)),
            Path::new("out/set/.part-1-of-4.live.json")
        );
    }

    #[test]
    fn a_written_file_reads_back_and_tells_this_running_process_from_a_gone_or_ended_one() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let results = dir.path().join("r.parquet");
        let file = LiveFile {
            path: path_of(&results, None),
            run: Holder::me(),
        };
        let mut snapshot = RunStats::new(Instant::now()).snapshot(Instant::now());
        snapshot.total = Some(10);
        snapshot.done = 4;
        snapshot.eta_secs = Some(6.0);
        file.write(&snapshot, RunState::Running).expect("written");
        assert!(!crate::paths::with_suffix(file.path(), crate::paths::REPLACING_SUFFIX).exists());
        let read = read(file.path()).expect("read back");
        assert_eq!(
            (read.pid, read.total, read.done),
            (std::process::id(), Some(10), 4)
        );
        assert_eq!(read.eta_secs, Some(6.0));
        let now = read.updated_at_unix;
        assert_eq!(
            read.verdict(None, now),
            Verdict::Running,
            "this process runs"
        );

        let mut gone = read.clone();
        gone.start_ticks += 1;
        assert_eq!(
            gone.verdict(None, now),
            Verdict::Gone,
            "another process's pid"
        );
        assert_eq!(
            gone.verdict(Some(&read.holder()), now),
            Verdict::Running,
            "the lock's holder is the run"
        );

        let mut elsewhere = read.clone();
        elsewhere.host = "another-host".into();
        assert_eq!(elsewhere.verdict(None, now + 5), Verdict::Running);
        assert_eq!(elsewhere.verdict(None, now + 31), Verdict::Silent);

        file.write(&snapshot, RunState::Finished).expect("written");
        let ended = super::read(file.path()).expect("read back");
        assert_eq!(ended.verdict(None, now), Verdict::Ended(RunState::Finished));
        assert_eq!(ended.eta_secs, None, "an ended run has no ETA");
    }

    #[test]
    fn a_file_that_is_not_one_is_no_live_status() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join(".r.parquet.live.json");
        assert_eq!(read(&path), None);
        fs::write(&path, b"{\"half").expect("written");
        assert_eq!(read(&path), None);
    }
}
