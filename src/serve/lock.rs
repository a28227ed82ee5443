//! The data directory's one owner: an exclusive `flock` on `<data-dir>/.lock`, taken before
//! the server reads or changes anything there. Two servers on one directory would each take
//! the other's uploads for half-written ones and run each other's batches, so the second is
//! refused, naming the first (its pid, host and start time are written into the file).
//!
//! `flock` rather than a pid file: the kernel drops the lock with the last descriptor, so a
//! SIGKILLed server leaves no stale lock to clean by hand, and a pid reused by another
//! process cannot hold it. What is in the file is only for the message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The lock file's name in the data directory.
const LOCK_FILE: &str = ".lock";

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error(
        "{dir} is in use by another batchflow serve ({holder}); stop it, or give this server a --data-dir of its own"
    )]
    Held { dir: PathBuf, holder: String },
}

/// The held lock; the directory is this process's until it is dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes `dir` (created if missing) for this process, or says who holds it.
pub fn lock(dir: &Path) -> Result<DataDirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let failed = |cause| LockError::Io {
        path: path.clone(),
        cause,
    };
    fs::create_dir_all(dir).map_err(|cause| LockError::Io {
        path: dir.to_owned(),
        cause,
    })?;
    // Not truncated on open: what the holder wrote is read back if the lock is taken.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(failed)?;
    // SAFETY: the descriptor belongs to `file`, which is open for the whole call; flock
    // touches no memory of ours.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let cause = io::Error::last_os_error();
        if cause.kind() != io::ErrorKind::WouldBlock {
            return Err(failed(cause));
        }
        let mut holder = String::new();
        // The holder may not have written its name yet; the refusal stands either way.
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(LockError::Held {
            dir: dir.to_owned(),
            holder: if holder.is_empty() {
                "a process that has not written its name yet".into()
            } else {
                holder.to_owned()
            },
        });
    }
    let started = humantime::format_rfc3339_seconds(SystemTime::now());
    let name = format!(
        "pid {} on {}, started {started}\n",
        std::process::id(),
        hostname()
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(name.as_bytes()))
        .map_err(failed)?;
    Ok(DataDirLock { _file: file })
}

/// This machine's name, for the message of a refused server on a shared file system.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_named_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let first = lock(dir.path()).expect("the first lock");
        // flock locks belong to the open file description, so a second open in this same
        // process conflicts as another process would.
        let refused = lock(dir.path()).expect_err("refused");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        lock(dir.path()).expect("free again");
    }
}
