//! One writer per results file and per dataset shard on this machine: an exclusive lock on a
//! hidden file beside the results (`.<name>.lock` for a file, `.part-<i>-of-<n>.lock` for a
//! shard's parts, which no `*.parquet` glob matches), holding who writes: [`Holder`].
//!
//! The lock is an open-file-description lock (`F_OFD_SETLK`): released when the run's file is
//! closed or its process dies, however it dies, and testable without being taken
//! (`F_OFD_GETLK`), so `status` can tell a running writer from a stopped one without ever
//! making a starting run fail for a moment. A results file's lock file is removed when its run
//! ends, so that a finished run leaves only its results beside them; a taker checks, once it
//! holds the lock, that the file it locked is still the one at the path (else it locked a file
//! being removed, and tries again), so removing it can never let two runs in. A dataset's lock
//! files stay: the directory is batchflow's own.
//!
//! What it leaves to others: writers on other machines sharing a store, which the store's
//! lease keeps apart (`sink::lease`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::checkpoint::ResultsError;

/// Who writes a results file or a shard: enough to find the process, and to tell whether it is
/// gone when it ran on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// When the writer took hold, in seconds since the Unix epoch.
    pub since: u64,
    /// The kernel's boot id: the same host name after a reboot is another machine's run.
    #[serde(default)]
    pub boot_id: String,
    /// The process's start time (clock ticks after boot): a pid used again later is another
    /// process.
    #[serde(default)]
    pub start_ticks: u64,
}

impl Holder {
    /// This process.
    pub fn me() -> Holder {
        let pid = std::process::id();
        Holder {
            pid,
            host: host_name(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            boot_id: boot_id(),
            start_ticks: start_ticks(pid).unwrap_or(0),
        }
    }

    /// "pid 4242 on gpu-box, since 2026-12-03T10:40:00Z".
    pub fn describe(&self) -> String {
        let since = UNIX_EPOCH + Duration::from_secs(self.since);
        format!(
            "pid {} on {}, since {}",
            self.pid,
            self.host,
            humantime::format_rfc3339_seconds(since)
        )
    }

    /// Whether this holder was a process of this machine that is gone (it exited, was killed,
    /// or the machine rebooted since). A holder elsewhere is never known to be gone.
    pub fn is_gone_from_here(&self) -> bool {
        if self.host != host_name() || self.boot_id.is_empty() {
            return false;
        }
        if self.boot_id != boot_id() {
            return true;
        }
        match start_ticks(self.pid) {
            None => true,
            Some(ticks) => self.start_ticks != 0 && ticks != self.start_ticks,
        }
    }
}

/// Held while a run writes; released when dropped or when the process dies.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    /// The lock file, removed on drop (while still locked) when set.
    remove: Option<PathBuf>,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            let _ = fs::remove_file(path);
        }
    }
}

/// Whether a lock file outlives its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFile {
    Kept,
    RemovedAtEnd,
}

/// The lock file of a single results file: `.<name>.lock` beside it.
pub fn file_lock_path(results: &Path) -> PathBuf {
    let name = results
        .file_name()
        .map_or_else(|| "results".into(), |name| name.to_string_lossy());
    results.with_file_name(format!(".{name}.lock"))
}

/// Takes the lock at `path` (created if missing) for `what` ("shard 0/1", the file's name), or
/// fails at once naming the run that holds it.
pub fn take(path: &Path, what: &str, lock_file: LockFile) -> Result<WriterLock, ResultsError> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = take_once(path, what)?;
        let io_error = |cause| ResultsError::Io {
            path: path.to_owned(),
            cause,
        };
        let locked = file.metadata().map_err(io_error)?;
        match fs::metadata(path) {
            Ok(found) if (found.dev(), found.ino()) == (locked.dev(), locked.ino()) => {
                return Ok(WriterLock {
                    _file: file,
                    remove: (lock_file == LockFile::RemovedAtEnd).then(|| path.to_owned()),
                });
            }
            // Its last holder removed it as this run locked it: lock the new one.
            Ok(_) => continue,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error(error)),
        }
    }
}

fn take_once(path: &Path, what: &str) -> Result<File, ResultsError> {
    let io_error = |cause| ResultsError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error)?;
    let mut request = whole_file_lock(libc::F_WRLCK);
    // SAFETY: the descriptor is open for the call; `request` is a valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut request) } != 0 {
        let cause = io::Error::last_os_error();
        if matches!(
            cause.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EACCES)
        ) {
            return Err(busy(path, what, read_holder(&mut file)));
        }
        return Err(io_error(cause));
    }
    let record = serde_json::to_vec(&Holder::me()).map_err(|error| io_error(error.into()))?;
    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    file.write_all(&record).map_err(io_error)?;
    Ok(file)
}

/// Who holds the lock at `path` now; `None` if nobody does (or there is no lock file).
pub fn holder(path: &Path) -> Result<Option<Holder>, ResultsError> {
    let io_error = |cause| ResultsError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(error)),
    };
    let mut probe = whole_file_lock(libc::F_WRLCK);
    // SAFETY: the descriptor is open for the call; `probe` is a valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) } != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    if i32::from(probe.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    Ok(Some(read_holder(&mut file).unwrap_or_else(|| Holder {
        pid: 0,
        host: "an unknown host".into(),
        since: 0,
        boot_id: String::new(),
        start_ticks: 0,
    })))
}

/// The error for a lock held by another run.
fn busy(path: &Path, what: &str, holder: Option<Holder>) -> ResultsError {
    ResultsError::Busy {
        path: path.to_owned(),
        owner: what.to_owned(),
        holder: holder.map_or_else(|| "another run".to_owned(), |holder| holder.describe()),
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn whole_file_lock(kind: i32) -> libc::flock {
    // SAFETY: flock is a plain C struct for which all zeroes is a valid value.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request
}

/// This machine's name.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// A running process's start time, field 22 of `/proc/<pid>/stat`; `None` if it is gone.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_naming_the_holder_and_the_probe_tells_held_from_free() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join(".r.parquet.lock");
        assert_eq!(holder(&path).expect("probed"), None);
        let held = take(&path, "r.parquet", LockFile::RemovedAtEnd).expect("taken");
        // Open-file-description locks conflict within one process too, as between two.
        let refused = take(&path, "r.parquet", LockFile::Kept).expect_err("held");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        let found = holder(&path).expect("probed").expect("held");
        assert_eq!(found.pid, std::process::id());
        assert!(!found.is_gone_from_here(), "this process runs");
        drop(held);
        assert!(!path.exists(), "a results file's lock goes with its run");
        assert_eq!(holder(&path).expect("probed"), None);
        drop(take(&path, "shard 0/1", LockFile::Kept).expect("free again"));
        assert!(path.exists(), "a dataset's lock file stays");
    }

    #[test]
    fn a_holder_of_this_machine_whose_process_is_gone_is_known_gone() {
        let mut gone = Holder::me();
        gone.start_ticks += 1;
        assert!(gone.is_gone_from_here(), "another process under this pid");
        let mut elsewhere = Holder::me();
        elsewhere.host = "another-host".into();
        elsewhere.pid = u32::MAX;
        assert!(!elsewhere.is_gone_from_here());
        assert_eq!(
            file_lock_path(Path::new("out/r.parquet")),
            Path::new("out/.r.parquet.lock")
        );
    }
}
