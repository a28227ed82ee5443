//! The server's durable state in `--data-dir` (no database server):
//!
//! ```text
//! index.sqlite                 every File and Batch object (index.rs); a file without a
//!                              record there does not exist
//! files/<file_id>/content      the bytes, renamed into place only once whole
//! batches/<batch_id>/          the batch's run: results/ (the engine's dataset), stats.json,
//!                              file_ids.json
//! ```
//!
//! Records are SQLite rows, each change one transaction; the few JSON files left (a batch's
//! file ids, the webhook outbox) are written atomically (`<name>.tmp`, fsync, rename, fsync
//! of the folder). A SIGKILL leaves the old state or the new one, never half of either. A data
//! directory of the earlier layout, which kept each record as JSON (`files/<id>/meta.json`,
//! `batches/<id>.json`), is moved into the index on start. Ids come from the system's CSPRNG,
//! and no path is built from a caller's text unless it is an id of exactly the format made
//! here; anything else is simply not found. Blocking I/O: callers on the async runtime go
//! through `spawn_blocking`. What the records mean is the handlers' and the runner's business.

mod index;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::wire::{Batch, BatchStatus, FileObject, Order};
pub use index::Page;
use index::{Index, Legacy};

/// Characters of an id after its prefix.
const ID_CHARS: usize = 24;
const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const FILE_PREFIX: &str = "file-";
pub const BATCH_PREFIX: &str = "batch_";
pub(super) const TEMPORARY_SUFFIX: &str = ".tmp";
const INDEX_NAME: &str = "index.sqlite";
/// A file's record in the earlier layout.
const LEGACY_FILE_RECORD: &str = "meta.json";

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
    #[error("{path}: {cause}")]
    Index {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("{path}: made by a newer batchflow (schema version {version}); run that version")]
    NewerIndex { path: PathBuf, version: i64 },
    #[error(
        "{files} holds {count} stored files (such as {example}) but {index} was just made: \
         the index that recorded them was removed or lost. Put it back, or move {files} \
         aside to start with no files."
    )]
    IndexLost {
        files: PathBuf,
        index: PathBuf,
        count: usize,
        example: String,
    },
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// A File object with its place in listings (in the earlier layout, its `meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub file: FileObject,
    /// Nanoseconds since the epoch, made unique by the store: newest first, ties impossible.
    pub order: u64,
}

/// A Batch object with its place in listings (in the earlier layout, `batches/<id>.json`).
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
    index: Arc<Index>,
}

impl Store {
    /// Opens (creating) the data directory, moves records of the earlier layout into the
    /// index, and removes what a killed server left half-written.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [root.join("files"), root.join("batches")] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let (index, made) = Index::open(&root.join(INDEX_NAME))?;
        let store = Store {
            root: Arc::new(root.to_owned()),
            random: Arc::new(SystemRandom::new()),
            last_order: Arc::new(AtomicU64::new(0)),
            index: Arc::new(index),
        };
        // One listing of `files/` serves the three passes: none adds or removes a folder
        // before the sweep.
        let file_dirs = store.file_dirs()?;
        if made {
            store.refuse_unrecorded_files(&file_dirs)?;
        }
        store.migrate(&file_dirs)?;
        store.sweep(file_dirs)?;
        store
            .last_order
            .store(store.index.last_seq()?, Ordering::SeqCst);
        Ok(store)
    }

    /// The folders of stored files, each with its id.
    fn file_dirs(&self) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let files = self.root.join("files");
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&files).map_err(io_error(&files))? {
            let entry = entry.map_err(io_error(&files))?;
            let dir = entry.path();
            if dir.is_dir() {
                dirs.push((entry.file_name().to_string_lossy().into_owned(), dir));
            }
        }
        Ok(dirs)
    }

    /// A new index beside files whose records are nowhere (no index row, no earlier-layout
    /// `meta.json`) means the index was lost: sweeping would delete every upload and result.
    fn refuse_unrecorded_files(&self, file_dirs: &[(String, PathBuf)]) -> Result<(), StoreError> {
        let unrecorded: Vec<&String> = file_dirs
            .iter()
            .filter(|(_, dir)| {
                dir.join("content").exists() && !dir.join(LEGACY_FILE_RECORD).exists()
            })
            .map(|(id, _)| id)
            .collect();
        match unrecorded.first() {
            None => Ok(()),
            Some(example) => Err(StoreError::IndexLost {
                files: self.root.join("files"),
                index: self.root.join(INDEX_NAME),
                count: unrecorded.len(),
                example: (*example).clone(),
            }),
        }
    }

    /// Moves every record of the earlier layout into the index in one transaction, then
    /// removes the JSON records. A migration cut short runs again on the next start: what it
    /// committed is kept, the rest is moved.
    fn migrate(&self, file_dirs: &[(String, PathBuf)]) -> Result<(), StoreError> {
        let file_records: Vec<PathBuf> = file_dirs
            .iter()
            .map(|(_, dir)| dir.join(LEGACY_FILE_RECORD))
            .filter(|record| record.exists())
            .collect();
        let batches = self.root.join("batches");
        let mut batch_records = Vec::new();
        for entry in fs::read_dir(&batches).map_err(io_error(&batches))? {
            let path = entry.map_err(io_error(&batches))?.path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned());
            match name {
                Some(name) if name.ends_with(TEMPORARY_SUFFIX) => {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
                Some(name) if name.ends_with(".json") && path.is_file() => batch_records.push(path),
                _ => {}
            }
        }
        if file_records.is_empty() && batch_records.is_empty() {
            return Ok(());
        }
        let files = file_records
            .iter()
            .map(|path| read_json::<StoredFile>(path).map(|stored| stored.map(Legacy::File)));
        let batches = batch_records.iter().map(|path| {
            read_json::<StoredBatch>(path)
                .map(|stored| stored.map(|stored| Legacy::Batch(Box::new(stored))))
        });
        let moved = self
            .index
            .import(files.chain(batches).filter_map(Result::transpose))?;
        for record in file_records.iter().chain(&batch_records) {
            fs::remove_file(record).map_err(io_error(record))?;
        }
        tracing::info!(
            files = file_records.len(),
            batches = batch_records.len(),
            moved,
            "Moved the data directory's records into {INDEX_NAME}."
        );
        Ok(())
    }

    /// Removes file folders without a record: uploads that never completed, and files whose
    /// deletion was cut short after their record went.
    fn sweep(&self, file_dirs: Vec<(String, PathBuf)>) -> Result<(), StoreError> {
        for (id, dir) in file_dirs {
            if !self.index.has_file(&id)? {
                tracing::info!(path = %dir.display(), "Removing a file folder with no record (an upload or deletion cut short).");
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
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
    /// its record, which is what makes it exist.
    pub fn commit_file(&self, stored: &StoredFile) -> Result<(), StoreError> {
        let dir = self.root.join("files").join(&stored.file.id);
        let staged = dir.join(format!("content{TEMPORARY_SUFFIX}"));
        File::open(&staged)
            .and_then(|file| file.sync_all())
            .map_err(io_error(&staged))?;
        let content = dir.join("content");
        fs::rename(&staged, &content).map_err(io_error(&content))?;
        sync_dir(&dir)?;
        self.index.insert_file(stored)
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

    /// The file `id`, if it exists.
    pub fn file(&self, id: &str) -> Result<Option<FileObject>, StoreError> {
        self.index.file(id)
    }

    /// The content of an existing file.
    pub fn content_path(&self, id: &str) -> Option<PathBuf> {
        self.file_dir(id).map(|dir| dir.join("content"))
    }

    /// A page of stored files, of one purpose or all, after the file `after`; `None` when
    /// `after` names no stored file.
    pub fn files(
        &self,
        purpose: Option<&str>,
        order: Order,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page<FileObject>>, StoreError> {
        self.index.files(purpose, order, after, limit)
    }

    /// Deletes a file, unless a batch not yet ended reads it as its input. Its record goes
    /// first, so a kill midway leaves a folder that the next start sweeps away.
    pub fn delete_file(&self, id: &str) -> Result<FileDeletion, StoreError> {
        let deletion = self.index.delete_file(id)?;
        if deletion == FileDeletion::Deleted {
            if let Some(dir) = self.file_dir(id) {
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
        }
        Ok(deletion)
    }

    /// The folder of a batch's run (results, error file, stats), created.
    pub fn batch_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("batches").join(id);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(dir)
    }

    pub fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        self.index.batch(id)
    }

    /// Stores a new batch if its input file still exists (`false` if it does not), checked in
    /// the same transaction, so a batch never starts on a file deleted as it was created.
    pub fn create_batch(&self, stored: &StoredBatch) -> Result<bool, StoreError> {
        self.index.insert_batch(stored)
    }

    /// Changes a batch record in one transaction: `change` sees the current record and may
    /// edit it; the edited record is written back, so the runner's updates and a cancel
    /// never overwrite each other. `None` if there is no such batch.
    pub fn update_batch<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Batch) -> T,
    ) -> Result<Option<(Batch, T)>, StoreError> {
        self.index.update_batch(id, change)
    }

    /// A page of batches, newest first, after the batch `after`; `None` when `after` names no
    /// stored batch.
    pub fn batches(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page<Batch>>, StoreError> {
        self.index.batches(after, limit)
    }

    /// How many batches have each status, in `BatchStatus::ALL`'s order.
    pub fn batch_counts(&self) -> Result<Vec<(BatchStatus, u64)>, StoreError> {
        self.index.batch_counts()
    }

    /// The ids of batches not yet in a final state, oldest first.
    pub fn unfinished_batches(&self) -> Result<Vec<String>, StoreError> {
        self.index.unfinished()
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
    use crate::serve::wire::RequestCounts;

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

    fn file_object(id: &str, purpose: &str) -> FileObject {
        FileObject {
            id: id.to_owned(),
            object: "file".into(),
            bytes: 1,
            created_at: 1,
            filename: "input.jsonl".into(),
            purpose: purpose.to_owned(),
            status: "processed".into(),
        }
    }

    fn batch_object(id: &str, input: &str, status: BatchStatus) -> Batch {
        Batch {
            id: id.to_owned(),
            object: "batch".into(),
            endpoint: "/v1/chat/completions".into(),
            errors: None,
            input_file_id: input.to_owned(),
            completion_window: "24h".into(),
            status,
            output_file_id: None,
            error_file_id: None,
            created_at: 1,
            in_progress_at: None,
            expires_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: None,
        }
    }

    /// A stored file of `purpose` with content, as an upload leaves it.
    fn upload(store: &Store, purpose: &str) -> String {
        let (id, staged) = store.staging().expect("staged");
        fs::write(&staged, b"{}\n").expect("written");
        store
            .commit_file(&StoredFile {
                file: file_object(&id, purpose),
                order: store.next_order(),
            })
            .expect("committed");
        id
    }

    fn new_batch(store: &Store, input: &str) -> String {
        let id = store.new_id(BATCH_PREFIX).expect("an id");
        let stored = StoredBatch {
            batch: batch_object(&id, input, BatchStatus::Validating),
            order: store.next_order(),
        };
        assert!(store.create_batch(&stored).expect("stored"));
        id
    }

    fn ids<T>(page: Option<Page<T>>, id: impl Fn(&T) -> &str) -> (Vec<String>, bool) {
        let page = page.expect("a known cursor");
        let ids = page.data.iter().map(|item| id(item).to_owned()).collect();
        (ids, page.has_more)
    }

    #[test]
    fn pages_follow_cursors_in_either_order_and_know_when_more_follow() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let made: Vec<String> = ["batch", "batch_output", "batch", "batch_output"]
            .into_iter()
            .map(|purpose| upload(&store, purpose))
            .collect();
        let files = |purpose, order, after: Option<&String>, limit| {
            ids(
                store
                    .files(purpose, order, after.map(String::as_str), limit)
                    .expect("listed"),
                |file: &FileObject| &file.id,
            )
        };
        let newest_first: Vec<String> = made.iter().rev().cloned().collect();
        assert_eq!(
            files(None, Order::Desc, None, 2),
            (newest_first[..2].to_vec(), true)
        );
        assert_eq!(
            files(None, Order::Desc, Some(&newest_first[1]), 2),
            (newest_first[2..].to_vec(), false)
        );
        assert_eq!(
            files(None, Order::Asc, Some(&made[0]), 3),
            (made[1..].to_vec(), false)
        );
        // A cursor on a file the filter drops still places the page.
        assert_eq!(
            files(Some("batch"), Order::Asc, Some(&made[1]), 5),
            (vec![made[2].clone()], false)
        );
        assert_eq!(
            files(Some("batch"), Order::Desc, None, 1),
            (vec![made[2].clone()], true)
        );
        let unknown = store
            .files(None, Order::Desc, Some("file-gone"), 2)
            .expect("listed");
        assert!(unknown.is_none(), "an unknown cursor is not the first page");

        let batches: Vec<String> = (0..3).map(|_| new_batch(&store, &made[0])).collect();
        let listed = |after: Option<&String>| {
            ids(
                store.batches(after.map(String::as_str), 2).expect("listed"),
                |batch: &Batch| &batch.id,
            )
        };
        assert_eq!(
            listed(None),
            (vec![batches[2].clone(), batches[1].clone()], true)
        );
        assert_eq!(listed(Some(&batches[1])), (vec![batches[0].clone()], false));
        assert!(store.batches(Some(&made[0]), 2).expect("listed").is_none());
    }

    #[test]
    fn counts_by_status_follow_every_change_and_unfinished_batches_come_oldest_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let input = upload(&store, "batch");
        let batches: Vec<String> = (0..3).map(|_| new_batch(&store, &input)).collect();
        let count = |status| {
            store
                .batch_counts()
                .expect("counted")
                .into_iter()
                .find(|(counted, _)| *counted == status)
                .map(|(_, count)| count)
        };
        assert_eq!(count(BatchStatus::Validating), Some(3));
        store
            .update_batch(&batches[1], |batch| {
                batch.status = BatchStatus::Completed;
            })
            .expect("updated");
        // A change that leaves the status alone counts nothing twice.
        store
            .update_batch(&batches[1], |batch| batch.request_counts.total = 5)
            .expect("updated");
        assert_eq!(count(BatchStatus::Validating), Some(2));
        assert_eq!(count(BatchStatus::Completed), Some(1));
        assert_eq!(
            store.unfinished_batches().expect("listed"),
            vec![batches[0].clone(), batches[2].clone()]
        );
        assert_eq!(
            store.delete_file(&input).expect("answered"),
            FileDeletion::InputOf(batches[0].clone())
        );
    }

    #[test]
    fn an_earlier_layout_moves_into_the_index_once_and_keeps_its_order() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let root = dir.path();
        let input = format!("{FILE_PREFIX}{}", "A".repeat(ID_CHARS));
        let batch_id = format!("{BATCH_PREFIX}{}", "B".repeat(ID_CHARS));
        let file_dir = root.join("files").join(&input);
        fs::create_dir_all(&file_dir).expect("made");
        fs::write(file_dir.join("content"), b"{}\n").expect("written");
        write_json(
            &file_dir.join(LEGACY_FILE_RECORD),
            &StoredFile {
                file: file_object(&input, "batch"),
                order: 10,
            },
        )
        .expect("written");
        let record = root.join("batches").join(format!("{batch_id}.json"));
        fs::create_dir_all(root.join("batches").join(&batch_id)).expect("made");
        write_json(
            &record,
            &StoredBatch {
                batch: batch_object(&batch_id, &input, BatchStatus::InProgress),
                order: 20,
            },
        )
        .expect("written");
        // An upload the earlier server was killed in.
        let half = root
            .join("files")
            .join(format!("{FILE_PREFIX}{}", "C".repeat(ID_CHARS)));
        fs::create_dir_all(&half).expect("made");
        fs::write(half.join("content.tmp"), b"{").expect("written");

        let store = Store::open(root).expect("opens and migrates");
        assert!(!record.exists() && !file_dir.join(LEGACY_FILE_RECORD).exists());
        assert!(!half.exists(), "the half upload is swept");
        assert_eq!(
            store.file(&input).expect("read"),
            Some(file_object(&input, "batch"))
        );
        let batch = store.batch(&batch_id).expect("read").expect("moved");
        assert_eq!(batch.status, BatchStatus::InProgress);
        assert_eq!(store.unfinished_batches().expect("listed"), vec![batch_id]);
        assert!(store.next_order() > 20);
        drop(store);
        let again = Store::open(root).expect("opens again");
        assert_eq!(
            again.batch_counts().expect("counted")[2],
            (BatchStatus::InProgress, 1)
        );
    }

    #[test]
    fn a_lost_index_is_refused_rather_than_its_files_swept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let id = {
            let store = Store::open(dir.path()).expect("opens");
            upload(&store, "batch")
        };
        for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
            let path = dir.path().join(name);
            if path.exists() {
                fs::remove_file(path).expect("removed");
            }
        }
        let error = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(
            error.contains(&id) && error.contains("removed or lost"),
            "{error}"
        );
        assert!(dir.path().join("files").join(&id).join("content").exists());
    }

    #[test]
    fn a_deleted_file_is_gone_from_the_index_and_the_disk() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let id = upload(&store, "batch");
        assert_eq!(
            store.delete_file(&id).expect("deleted"),
            FileDeletion::Deleted
        );
        assert_eq!(
            store.delete_file(&id).expect("answered"),
            FileDeletion::NotFound
        );
        assert!(store.file(&id).expect("read").is_none());
        assert!(!dir.path().join("files").join(&id).exists());
    }
}
