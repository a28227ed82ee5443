//! The server's durable state, as plain files in `--data-dir` (no database server):
//!
//! ```text
//! files/<file_id>/content      the bytes, renamed into place only once whole
//! files/<file_id>/meta.json    its File object; a file without one does not exist
//! batches/<batch_id>.json      the Batch object
//! batches/<batch_id>/          the batch's run: results/ (the engine's dataset), stats.json
//! ```
//!
//! Every JSON record is written atomically (`<name>.tmp`, fsync, rename, fsync of the folder),
//! so a SIGKILL leaves the old record or the new one, never half of either. Ids come from the
//! system's CSPRNG, and no path is built from a caller's text unless it is an id of exactly
//! the format made here; anything else is simply not found. Blocking I/O: callers on the async
//! runtime go through `spawn_blocking`. What the records mean is the handlers' and the
//! runner's business.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::wire::{Batch, FileObject};

/// Characters of an id after its prefix.
const ID_CHARS: usize = 24;
const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const FILE_PREFIX: &str = "file-";
pub const BATCH_PREFIX: &str = "batch_";
pub(super) const TEMPORARY_SUFFIX: &str = ".tmp";

/// Why the store could not read or write. Messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a record this server wrote: {cause}")]
    Corrupt {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("the system's random number generator failed")]
    Random,
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// A File object with its place in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub file: FileObject,
    /// Nanoseconds since the epoch, made unique by the store: newest first, ties impossible.
    pub order: u64,
}

/// A Batch object with its place in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBatch {
    pub batch: Batch,
    pub order: u64,
}

/// The ids reserved for a batch's output and error files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResultFileIds {
    pub output: String,
    pub error: String,
}

/// What became of a file asked to be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDeletion {
    Deleted,
    NotFound,
    /// Kept: it is the input of this batch, which has not ended.
    InputOf(String),
}

/// The data directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    root: Arc<PathBuf>,
    random: Arc<SystemRandom>,
    last_order: Arc<AtomicU64>,
    /// Held across each read-modify-write of a batch record, so the runner's updates and a
    /// cancel never overwrite each other; and across a batch's creation and a file's
    /// deletion, so a batch's input is never deleted under it.
    batch_lock: Arc<Mutex<()>>,
}

impl Store {
    /// Opens (creating) the data directory and removes what a killed server left half-written.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [root.join("files"), root.join("batches")] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let store = Store {
            root: Arc::new(root.to_owned()),
            random: Arc::new(SystemRandom::new()),
            last_order: Arc::new(AtomicU64::new(0)),
            batch_lock: Arc::new(Mutex::new(())),
        };
        store.sweep()?;
        Ok(store)
    }

    /// Removes uploads that never completed (no meta.json) and `*.tmp` records.
    fn sweep(&self) -> Result<(), StoreError> {
        let files = self.root.join("files");
        for entry in fs::read_dir(&files).map_err(io_error(&files))? {
            let dir = entry.map_err(io_error(&files))?.path();
            if dir.is_dir() && !dir.join("meta.json").exists() {
                tracing::info!(path = %dir.display(), "Removing an upload that never completed.");
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
        }
        let batches = self.root.join("batches");
        for entry in fs::read_dir(&batches).map_err(io_error(&batches))? {
            let path = entry.map_err(io_error(&batches))?.path();
            if path.to_string_lossy().ends_with(TEMPORARY_SUFFIX) {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(())
    }

    /// A new id: `prefix` and 24 characters drawn uniformly from 62 by the CSPRNG.
    pub fn new_id(&self, prefix: &str) -> Result<String, StoreError> {
        let mut id = String::with_capacity(prefix.len() + ID_CHARS);
        id.push_str(prefix);
        let mut bytes = [0u8; 64];
        while id.len() < prefix.len() + ID_CHARS {
            self.random
                .fill(&mut bytes)
                .map_err(|_| StoreError::Random)?;
            // 248 = 4 × 62: bytes above it are dropped, so no character is likelier.
            for &byte in bytes.iter().filter(|&&byte| byte < 248) {
                if id.len() == prefix.len() + ID_CHARS {
                    break;
                }
                id.push(ID_ALPHABET[usize::from(byte % 62)] as char);
            }
        }
        Ok(id)
    }

    /// A listing position later than every one before it in this process.
    pub fn next_order(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        let mut last = self.last_order.load(Ordering::SeqCst);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .last_order
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    fn file_dir(&self, id: &str) -> Option<PathBuf> {
        is_id(FILE_PREFIX, id).then(|| self.root.join("files").join(id))
    }

    /// Where an upload is streamed to, in a new file's folder (created).
    pub fn staging(&self) -> Result<(String, PathBuf), StoreError> {
        let id = self.new_id(FILE_PREFIX)?;
        let dir = self.root.join("files").join(&id);
        fs::create_dir(&dir).map_err(io_error(&dir))?;
        Ok((id, dir.join(format!("content{TEMPORARY_SUFFIX}"))))
    }

    /// Makes a staged upload a stored file: its content synced and renamed into place, then
    /// its meta.json, which is what makes it exist.
    pub fn commit_file(&self, stored: &StoredFile) -> Result<(), StoreError> {
        let dir = self.root.join("files").join(&stored.file.id);
        let staged = dir.join(format!("content{TEMPORARY_SUFFIX}"));
        File::open(&staged)
            .and_then(|file| file.sync_all())
            .map_err(io_error(&staged))?;
        let content = dir.join("content");
        fs::rename(&staged, &content).map_err(io_error(&content))?;
        write_json(&dir.join("meta.json"), stored)
    }

    /// Removes a staged upload that will not be committed.
    pub fn discard(&self, id: &str) {
        if let Some(dir) = self.file_dir(id) {
            if let Err(error) = fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), "Cannot remove a discarded upload: {error}.");
            }
        }
    }

    /// Stores the file at `source` (in the data directory, so a rename) as the file `id`, an
    /// id from [`Store::result_file_ids`].
    pub fn adopt_file(
        &self,
        id: &str,
        source: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let Some(dir) = self.file_dir(id) else {
            unreachable!("result file ids are made by Store::new_id");
        };
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let staged = dir.join(format!("content{TEMPORARY_SUFFIX}"));
        fs::rename(source, &staged).map_err(io_error(&staged))?;
        let bytes = fs::metadata(&staged).map_err(io_error(&staged))?.len();
        let stored = StoredFile {
            file: FileObject {
                id: id.to_owned(),
                object: "file".into(),
                bytes,
                created_at: super::wire::unix_now(),
                filename: filename.to_owned(),
                purpose: purpose.to_owned(),
                status: "processed".into(),
            },
            order: self.next_order(),
        };
        self.commit_file(&stored)?;
        Ok(stored.file)
    }

    /// The ids of a batch's output and error files, drawn once and kept beside its results,
    /// so that finalizing again after a crash makes the same two files, never a second pair.
    pub fn result_file_ids(&self, batch_id: &str) -> Result<ResultFileIds, StoreError> {
        let path = self.batch_dir(batch_id)?.join("file_ids.json");
        if let Some(ids) = read_json::<ResultFileIds>(&path)? {
            if is_id(FILE_PREFIX, &ids.output) && is_id(FILE_PREFIX, &ids.error) {
                return Ok(ids);
            }
        }
        let ids = ResultFileIds {
            output: self.new_id(FILE_PREFIX)?,
            error: self.new_id(FILE_PREFIX)?,
        };
        write_json(&path, &ids)?;
        Ok(ids)
    }

    /// The file `id`, if it exists (an id of another format never does).
    pub fn file(&self, id: &str) -> Result<Option<StoredFile>, StoreError> {
        match self.file_dir(id) {
            Some(dir) => read_json(&dir.join("meta.json")),
            None => Ok(None),
        }
    }

    /// The content of an existing file.
    pub fn content_path(&self, id: &str) -> Option<PathBuf> {
        self.file_dir(id).map(|dir| dir.join("content"))
    }

    /// Every stored file, newest first.
    pub fn files(&self) -> Result<Vec<StoredFile>, StoreError> {
        let dir = self.root.join("files");
        let mut files = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if let Some(stored) = self.file(id)? {
                files.push(stored);
            }
        }
        files.sort_by_key(|stored| std::cmp::Reverse(stored.order));
        Ok(files)
    }

    /// Deletes a file, unless a batch not yet ended reads it as its input. Its meta.json goes
    /// first, so a kill midway leaves a folder that the next start sweeps away.
    pub fn delete_file(&self, id: &str) -> Result<FileDeletion, StoreError> {
        let Some(dir) = self.file_dir(id) else {
            return Ok(FileDeletion::NotFound);
        };
        // Held from the check to the removal, so that no batch is created on the file in
        // between (`create_batch` checks its input under the same lock).
        let _held = self.lock_batches();
        let reader = self
            .batches()?
            .into_iter()
            .find(|stored| stored.batch.input_file_id == id && !stored.batch.status.is_terminal());
        if let Some(reader) = reader {
            return Ok(FileDeletion::InputOf(reader.batch.id));
        }
        let meta = dir.join("meta.json");
        match fs::remove_file(&meta) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(FileDeletion::NotFound);
            }
            Err(cause) => return Err(StoreError::Io { path: meta, cause }),
        }
        sync_dir(&dir)?;
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(FileDeletion::Deleted)
    }

    fn batch_record(&self, id: &str) -> Option<PathBuf> {
        is_id(BATCH_PREFIX, id).then(|| self.root.join("batches").join(format!("{id}.json")))
    }

    /// The folder of a batch's run (results, error file, stats), created.
    pub fn batch_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("batches").join(id);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(dir)
    }

    pub fn batch(&self, id: &str) -> Result<Option<StoredBatch>, StoreError> {
        match self.batch_record(id) {
            Some(path) => read_json(&path),
            None => Ok(None),
        }
    }

    /// Writes a new batch record if its input file still exists (`false` if it does not):
    /// checked under the lock that a deletion holds, so a batch never starts on a file
    /// deleted as it was created.
    pub fn create_batch(&self, stored: &StoredBatch) -> Result<bool, StoreError> {
        let Some(path) = self.batch_record(&stored.batch.id) else {
            unreachable!("batch ids are made by Store::new_id");
        };
        let _held = self.lock_batches();
        if self.file(&stored.batch.input_file_id)?.is_none() {
            return Ok(false);
        }
        write_json(&path, stored)?;
        Ok(true)
    }

    fn lock_batches(&self) -> std::sync::MutexGuard<'_, ()> {
        self.batch_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes a batch record under the lock: `change` sees the current record and may edit
    /// it; the edited record is written back. `None` if there is no such batch.
    pub fn update_batch<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Batch) -> T,
    ) -> Result<Option<(Batch, T)>, StoreError> {
        let Some(path) = self.batch_record(id) else {
            return Ok(None);
        };
        let _held = self.lock_batches();
        let Some(mut stored) = read_json::<StoredBatch>(&path)? else {
            return Ok(None);
        };
        let before = stored.batch.clone();
        let answer = change(&mut stored.batch);
        if stored.batch != before {
            write_json(&path, &stored)?;
        }
        Ok(Some((stored.batch, answer)))
    }

    /// Every batch, newest first.
    pub fn batches(&self) -> Result<Vec<StoredBatch>, StoreError> {
        let dir = self.root.join("batches");
        let mut batches = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|name| name.strip_suffix(".json")) else {
                continue;
            };
            if let Some(stored) = self.batch(id)? {
                batches.push(stored);
            }
        }
        batches.sort_by_key(|stored| std::cmp::Reverse(stored.order));
        Ok(batches)
    }
}

/// Whether `id` is `prefix` and exactly `ID_CHARS` characters of the id alphabet: the only
/// caller text that ever becomes part of a path.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == ID_CHARS && rest.bytes().all(|byte| byte.is_ascii_alphanumeric())
    })
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                cause,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|cause| StoreError::Corrupt {
            path: path.to_owned(),
            cause,
        })
}

/// Writes `value` to `path` atomically: a synced sibling renamed over it, then the folder
/// synced so that the rename itself survives a crash.
pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StoreError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(TEMPORARY_SUFFIX);
    let temporary = PathBuf::from(temporary);
    let json = serde_json::to_vec_pretty(value).map_err(|cause| StoreError::Corrupt {
        path: path.to_owned(),
        cause,
    })?;
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_one_format_paths_accept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let id = store.new_id(FILE_PREFIX).expect("an id");
        assert!(is_id(FILE_PREFIX, &id), "{id}");
        assert_ne!(id, store.new_id(FILE_PREFIX).expect("an id"));
        for bad in ["file-../../etc", "file-", "batch_abc", &format!("{id}x")] {
            assert!(!is_id(FILE_PREFIX, bad), "{bad}");
        }
        assert!(
            store
                .file("file-../../../etc/passwd")
                .expect("reads")
                .is_none()
        );
    }

    #[test]
    fn orders_only_rise() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let orders: Vec<u64> = (0..1000).map(|_| store.next_order()).collect();
        assert!(orders.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
