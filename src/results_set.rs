//! The results that `status` and `verify` read, wherever they are: one results file, a local
//! dataset directory, or either on object storage (`s3://bucket/run/` for a dataset,
//! `s3://bucket/results.parquet` for one file).
//!
//! What it owns: listing the files (every `*.parquet` directly in the folder, hidden files
//! aside, as a reader globbing `DIR/*.parquet` sees them), handing each out as a local file, and
//! telling a file that can be read from a damaged one, with why. A remote file is downloaded to
//! a private staging folder (`storage::create_private_dir`), read and removed before the next
//! one, so the local disk holds one file at a time. A part is at most a few MiB
//! (`sink::dataset::PART_BYTES`): fetching only its footer and the columns read by ranged gets
//! would save little, at the price of a second Parquet reader beside `sink::checkpoint`'s. What
//! a file holds, and what it means, is the callers'. Beside local results it also finds who
//! writes them (their lock) and the run's live-status file (`live_status`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use crate::live_status::{self, LiveStatus};
use crate::sink::checkpoint::{self, ExistingResults, ResultsError};
use crate::sink::dataset::{self, PartOwner};
use crate::sink::generation::{self, Marker};
use crate::sink::lock::{self, Holder};
use crate::storage::{self, Remote, Staging, StorageError};

/// The results at a path or URL, listed.
pub struct ResultsSet {
    /// A folder of files (a local directory, or a URL ending in `/`), as opposed to one file.
    pub dataset: bool,
    /// By name.
    pub files: Vec<ResultsEntry>,
    source: Source,
    /// The local path of a local set (the file, or the directory).
    root: PathBuf,
    /// Each shard's generation marker, for the shards of a dataset that have one
    /// (`sink::generation`): a part of another generation is stale.
    markers: HashMap<PartOwner, Marker>,
}

/// One results file of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsEntry {
    /// How messages name it: the file name within a dataset, the path or URL as given otherwise.
    pub name: String,
    /// Its local path, or its object's name in the remote folder.
    location: PathBuf,
}

enum Source {
    Local,
    Remote { remote: Remote, staging: Staging },
}

impl ResultsSet {
    /// Lists the results at `path`: an object-storage URL, a directory, or one file. A folder
    /// may hold no results file; a file must exist.
    pub fn open(path: &Path) -> Result<ResultsSet, ResultsError> {
        let text = path.to_string_lossy();
        if storage::is_url(&text) {
            return ResultsSet::open_remote(&text);
        }
        // `file:///folder/` is a local path, as for a run's --output.
        if let Some(local) = storage::local_path(&text) {
            return ResultsSet::open(&local?);
        }
        let io_error = |cause| ResultsError::Io {
            path: path.to_owned(),
            cause,
        };
        if !fs::metadata(path).map_err(io_error)?.is_dir() {
            return Ok(ResultsSet {
                dataset: false,
                files: vec![ResultsEntry {
                    name: path.display().to_string(),
                    location: path.to_owned(),
                }],
                source: Source::Local,
                root: path.to_owned(),
                markers: HashMap::new(),
            });
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Through a link, as a reader globbing the folder would.
            let file = entry.path();
            if is_results_name(&name) && fs::metadata(&file).is_ok_and(|found| found.is_file()) {
                files.push(ResultsEntry {
                    name,
                    location: file,
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut markers = HashMap::new();
        for owner in owners(&files) {
            if let Some(marker) = generation::read(path, owner)? {
                markers.insert(owner, marker);
            }
        }
        Ok(ResultsSet {
            dataset: true,
            files,
            source: Source::Local,
            root: path.to_owned(),
            markers,
        })
    }

    fn open_remote(url: &str) -> Result<ResultsSet, ResultsError> {
        let staging = Staging::create("batchflow-read", url)?;
        if url.ends_with('/') {
            let remote = Remote::open(url)?;
            let mut names: Vec<String> = remote
                .list()?
                .into_iter()
                .filter(|name| is_results_name(name))
                .collect();
            names.sort();
            let files: Vec<ResultsEntry> = names
                .into_iter()
                .map(|name| ResultsEntry {
                    location: PathBuf::from(&name),
                    name,
                })
                .collect();
            let mut markers = HashMap::new();
            for owner in owners(&files) {
                let name = generation::marker_name(owner);
                if let Some((bytes, _)) = remote.get(&name)? {
                    let url = remote.url_of(&name);
                    markers.insert(owner, Marker::from_bytes(&bytes, Path::new(&url))?);
                }
            }
            return Ok(ResultsSet {
                dataset: true,
                files,
                source: Source::Remote { remote, staging },
                root: PathBuf::new(),
                markers,
            });
        }
        let (remote, name) = Remote::open_object(url)?;
        Ok(ResultsSet {
            dataset: false,
            files: vec![ResultsEntry {
                name: url.to_owned(),
                location: PathBuf::from(name),
            }],
            source: Source::Remote { remote, staging },
            root: PathBuf::new(),
            markers: HashMap::new(),
        })
    }

    /// One file of this folder as a set of its own: what a single results file's reader
    /// (its lock, its live-status file) finds beside it.
    pub fn file_set(&self, entry: &ResultsEntry) -> Result<ResultsSet, ResultsError> {
        match &self.source {
            Source::Local => ResultsSet::open(&entry.location),
            Source::Remote { remote, .. } => {
                ResultsSet::open_remote(&remote.url_of(&entry.location.to_string_lossy()))
            }
        }
    }

    /// Opens `entry`, read at `local` (see [`open_file`]); in a dataset, a part of a
    /// generation that `--overwrite` replaced is [`Opened::Stale`].
    pub fn open_entry(&self, entry: &ResultsEntry, local: &Path) -> Result<Opened, ResultsError> {
        let opened = open_file(local, self.dataset)?;
        let Opened::Results(existing) = &opened else {
            return Ok(opened);
        };
        let Some(marker) =
            dataset::owner_of(&entry.name).and_then(|owner| self.markers.get(&owner))
        else {
            return Ok(opened);
        };
        let part = generation::of_part(existing.metadata.file_metadata().key_value_metadata());
        if generation::is_current(Some(marker), part) {
            return Ok(opened);
        }
        Ok(Opened::Stale(format!(
            "a part of generation {}, which --overwrite replaced by {} (--resume removes it); its rows are not counted",
            part.unwrap_or("(none)"),
            marker.generation
        )))
    }

    /// Who writes `owner`'s parts (or, for `None`, the single results file) now: a run holding
    /// its lock on this machine, or its lease on a store; `None` if nobody does.
    pub fn writer(&self, owner: Option<PartOwner>) -> Result<Option<String>, ResultsError> {
        match (&self.source, owner) {
            (Source::Local, _) => Ok(self.lock_holder(owner)?.map(|holder| holder.describe())),
            (Source::Remote { remote, .. }, Some(owner)) => Ok(remote
                .get(&crate::sink::remote::lease_name(owner))?
                .and_then(|(bytes, _)| crate::sink::remote::live_holder(&bytes))),
            (Source::Remote { .. }, None) => Ok(None),
        }
    }

    /// Who holds the lock of `owner`'s parts (or, for `None`, of the single results file) on
    /// this machine; `None` if nobody does, and for results on object storage.
    pub fn lock_holder(&self, owner: Option<PartOwner>) -> Result<Option<Holder>, ResultsError> {
        match (&self.source, owner) {
            (Source::Local, None) => lock::holder(&lock::file_lock_path(&self.root)),
            (Source::Local, Some(owner)) => lock::holder(&dataset::lock_path(&self.root, owner)),
            (Source::Remote { .. }, _) => Ok(None),
        }
    }

    /// The live-status file of the run writing `owner`'s parts (or, for `None`, the single
    /// results file), if it left one: only local results have one.
    pub fn live_status(&self, owner: Option<PartOwner>) -> Option<LiveStatus> {
        match self.source {
            Source::Local => live_status::read(&live_status::path_of(&self.root, owner)),
            Source::Remote { .. } => None,
        }
    }

    /// Calls `read` with the local path of `entry`: the file itself, or its object downloaded
    /// for the call and removed after it.
    pub fn with_local<T>(
        &self,
        entry: &ResultsEntry,
        read: impl FnOnce(&Path) -> T,
    ) -> Result<T, ResultsError> {
        let (remote, staging) = match &self.source {
            Source::Local => return Ok(read(&entry.location)),
            Source::Remote { remote, staging } => (remote, staging),
        };
        let object = entry.location.to_string_lossy();
        let local = staging.path().join(&*object);
        match remote.download(&object, &local) {
            Ok(_) => {}
            // A folder's URL without its `/` names an object that is not there.
            Err(StorageError::Store {
                url,
                cause: object_store::Error::NotFound { .. },
            }) if !self.dataset => {
                return Err(ResultsError::Io {
                    path: PathBuf::from(url),
                    cause: io::Error::new(
                        io::ErrorKind::NotFound,
                        "no such object (a dataset's URL ends in /)",
                    ),
                });
            }
            Err(error) => return Err(error.into()),
        }
        let read = read(&local);
        fs::remove_file(&local).map_err(|cause| ResultsError::Io {
            path: local.clone(),
            cause,
        })?;
        Ok(read)
    }
}

/// The shard owners among `files`' names.
fn owners(files: &[ResultsEntry]) -> Vec<PartOwner> {
    let mut owners: Vec<PartOwner> = files
        .iter()
        .filter_map(|entry| dataset::owner_of(&entry.name))
        .collect();
    owners.sort_by_key(|owner| (owner.count, owner.index));
    owners.dedup();
    owners
}

/// Whether a file name in a folder is a results file: `*.parquet` (any case), not hidden. A
/// writer's staging file (`*.parquet.tmp`) and a download (`*.parquet.download`) are not.
fn is_results_name(name: &str) -> bool {
    const EXTENSION: &str = ".parquet";
    let parquet = name.len() > EXTENSION.len()
        && name
            .get(name.len() - EXTENSION.len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(EXTENSION));
    parquet && !name.starts_with('.')
}

/// A results file as far as its footer tells.
pub enum Opened {
    /// No row: its run was stopped before its first checkpoint.
    Nothing,
    Results(ExistingResults),
    /// It cannot be read as a results file: why.
    Damaged(String),
    /// A part of a replaced generation, left by an `--overwrite` stopped before it removed it:
    /// why. Its rows are not the dataset's.
    Stale(String),
}

/// Opens the results file at `path`. In a dataset, a file that is empty or only Parquet's magic
/// is damaged (a part is published whole, footer and all, from its first instant); a single
/// file may be such a leftover of an older batchflow killed at once, holding nothing. What the
/// file holds never fails the call: a file that cannot be opened or read is `Damaged` too.
pub fn open_file(path: &Path, in_dataset: bool) -> Result<Opened, ResultsError> {
    let length = match fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(cause) => return Ok(Opened::Damaged(unreadable(&cause))),
    };
    if !in_dataset && checkpoint::holds_nothing(path).unwrap_or(false) {
        return Ok(Opened::Nothing);
    }
    // Parquet's magic at both ends and a footer length: 12 bytes at the least.
    match length {
        0 => return Ok(Opened::Damaged("it is empty (0 bytes)".into())),
        1..12 => {
            return Ok(Opened::Damaged(format!(
                "it is {length} bytes, too short for a Parquet file"
            )));
        }
        _ => {}
    }
    match checkpoint::inspect(path) {
        Ok(existing) if existing.metadata.num_row_groups() == 0 => Ok(Opened::Nothing),
        Ok(existing) => Ok(Opened::Results(existing)),
        Err(ResultsError::Damaged { reason, .. }) => Ok(Opened::Damaged(reason)),
        Err(ResultsError::Io { cause, .. }) => Ok(Opened::Damaged(unreadable(&cause))),
        Err(other) => Err(other),
    }
}

/// Why a file that cannot be opened or read is damaged.
pub fn unreadable(cause: &dyn std::fmt::Display) -> String {
    format!("it cannot be read ({cause})")
}

/// The reason for a results file whose footer read but whose rows did not.
pub fn rows_unreadable(error: &ResultsError) -> String {
    match error {
        ResultsError::Parquet { cause, .. } => format!("its rows cannot be read ({cause})"),
        ResultsError::Io { cause, .. } => unreadable(cause),
        other => other.to_string(),
    }
}

/// Whether an error while reading a file's rows is the file's damage rather than a failure to
/// go on (a local disk, a store).
pub fn is_damage(error: &ResultsError) -> bool {
    matches!(
        error,
        ResultsError::Parquet { .. } | ResultsError::Damaged { .. } | ResultsError::Io { .. }
    )
}

impl std::fmt::Debug for ResultsSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResultsSet")
            .field("dataset", &self.dataset)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_parquet_files_are_results() {
        assert!(is_results_name("part-0-of-1-00000.parquet"));
        assert!(is_results_name("Old.PARQUET"));
        assert!(!is_results_name(".hidden.parquet"));
        assert!(!is_results_name("part-0-of-1-00000.parquet.tmp"));
        assert!(!is_results_name(".parquet"));
        assert!(!is_results_name("notes.txt"));
    }

    #[test]
    fn damage_is_told_with_why_and_a_single_empty_file_holds_nothing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).expect("written");
            path
        };
        let reason = |path: &Path, in_dataset| match open_file(path, in_dataset).expect("local") {
            Opened::Damaged(reason) | Opened::Stale(reason) => reason,
            Opened::Nothing => "nothing".into(),
            Opened::Results(_) => "results".into(),
        };
        let empty = write("empty.parquet", b"");
        assert_eq!(reason(&empty, true), "it is empty (0 bytes)");
        assert_eq!(reason(&empty, false), "nothing");
        let magic = write("magic.parquet", b"PAR1");
        assert_eq!(
            reason(&magic, true),
            "it is 4 bytes, too short for a Parquet file"
        );
        let garbage = write("garbage.parquet", &[0xAB; 100]);
        assert_eq!(reason(&garbage, true), "it is not a Parquet file");
        let torn = write("torn.parquet", b"PAR1 then no footer at all");
        assert!(
            reason(&torn, true).contains("no readable Parquet footer"),
            "{}",
            reason(&torn, true)
        );
        assert!(
            reason(&dir.path().join("absent.parquet"), true).starts_with("it cannot be read"),
            "a file gone since it was listed"
        );
    }
}
