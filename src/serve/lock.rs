//! The data directory's one owner: an exclusive lock (`sink::lock`) on `<data-dir>/.lock`,
//! taken before the server reads or changes anything there. Two servers on one directory would
//! each take the other's uploads for half-written ones and run each other's batches, so the
//! second is refused, naming the first (its pid, host and start time are written into the
//! file).
//!
//! A lock rather than a pid file: the kernel drops the lock with the last descriptor, so a
//! SIGKILLed server leaves no stale lock to clean by hand, and a pid reused by another
//! process cannot hold it. What is in the file is only for the message.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::sink::checkpoint::ResultsError;
use crate::sink::lock::{self, LockFile, WriterLock};

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

/// Takes `dir` (created if missing) for this process, or says who holds it: the same lock,
/// with the holder's pid, host and start in it, as a results file's writer takes
/// (`sink::lock`).
pub fn lock(dir: &Path) -> Result<WriterLock, LockError> {
    fs::create_dir_all(dir).map_err(|cause| LockError::Io {
        path: dir.to_owned(),
        cause,
    })?;
    let path = dir.join(LOCK_FILE);
    match lock::take(&path, &dir.display().to_string(), LockFile::Kept) {
        Ok(held) => Ok(held),
        Err(ResultsError::Busy { holder, .. }) => Err(LockError::Held {
            dir: dir.to_owned(),
            holder,
        }),
        Err(ResultsError::Io { path, cause }) => Err(LockError::Io { path, cause }),
        Err(other) => Err(LockError::Io {
            path,
            cause: io::Error::other(other.to_string()),
        }),
    }
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
