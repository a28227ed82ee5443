//! Generations of a dataset shard, so that a replacement cannot half-happen.
//!
//! `--overwrite` of a shard records a new generation id in the shard's marker
//! (`.part-<i>-of-<n>.generation`, beside its parts and uploaded with them on object storage)
//! *before* any old part goes, and every part carries the id of the generation that wrote it in
//! its footer ([`KEY`]). A part whose id is not the marker's is left over from a replaced
//! generation: `--resume` removes it rather than counting its rows as done, and `status` and
//! `verify` name it. An overwrite killed between the marker and the last removal therefore
//! leaves nothing that passes for complete. A shard without a marker was written before
//! generations: its parts (with no id) are all current.
//!
//! The marker also records whether its generation replaced the other shard layouts of the
//! directory (an `--overwrite` with another `--shard` count), so that a resume finishes that
//! removal instead of refusing the parts it had not yet removed. Without `--overwrite`, parts of
//! another layout stop a run (their rows would be counted twice).
//!
//! [`settle`] applies all of this when a run opens its shard, and also sets aside damaged parts
//! (unreadable as Parquet) so that their rows are sent again and glob readers work again.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, ResultsError};
use super::dataset::{self, Part, PartOwner};
use super::lock;
use super::mode::OutputMode;

/// The footer key of a part's generation id.
pub const KEY: &str = "batchflow.generation";

/// What a shard's marker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The current generation's id.
    pub generation: String,
    /// This generation replaced the parts of every other shard layout in the directory.
    #[serde(default)]
    pub replaces_other_layouts: bool,
}

impl Marker {
    /// The new generation a run in `mode` starts, if it starts one: a new run does, and an
    /// `--overwrite` does, replacing the other shard layouts too; a resume goes on with the
    /// shard's own.
    pub fn for_mode(mode: OutputMode) -> Option<Marker> {
        match mode {
            OutputMode::New => Some(Marker::new(false)),
            OutputMode::Overwrite => Some(Marker::new(true)),
            OutputMode::Resume { .. } => None,
        }
    }

    /// A new generation.
    fn new(replaces_other_layouts: bool) -> Marker {
        Marker {
            generation: format!("{:016x}", fastrand::u64(..)),
            replaces_other_layouts,
        }
    }

    /// The footer entry of the parts this generation writes.
    pub fn key_value(&self) -> KeyValue {
        KeyValue::new(KEY.to_owned(), self.generation.clone())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a marker is plain data that always serializes")
    }

    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Marker, ResultsError> {
        serde_json::from_slice(bytes).map_err(|error| ResultsError::Damaged {
            path: path.to_owned(),
            reason: format!("not a generation marker batchflow wrote ({error})"),
        })
    }
}

/// The name of `owner`'s marker.
pub fn marker_name(owner: PartOwner) -> String {
    format!(".part-{}-of-{}.generation", owner.index, owner.count)
}

/// The marker of `owner` in `dir`; `None` if the shard has none.
pub fn read(dir: &Path, owner: PartOwner) -> Result<Option<Marker>, ResultsError> {
    let path = dir.join(marker_name(owner));
    match fs::read(&path) {
        Ok(bytes) => Marker::from_bytes(&bytes, &path).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(ResultsError::Io { path, cause }),
    }
}

/// Writes `owner`'s marker in `dir` durably (staged, synced, renamed, the directory synced):
/// once this returns, a crash cannot bring the old generation back.
pub fn write(dir: &Path, owner: PartOwner, marker: &Marker) -> Result<PathBuf, ResultsError> {
    let path = dir.join(marker_name(owner));
    let staging = dir.join(format!("{}.tmp", marker_name(owner)));
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |cause| ResultsError::Io {
            path: path.clone(),
            cause,
        }
    };
    let mut file = fs::File::create(&staging).map_err(io_error(&staging))?;
    file.write_all(&marker.to_bytes())
        .map_err(io_error(&staging))?;
    file.sync_all().map_err(io_error(&staging))?;
    fs::rename(&staging, &path).map_err(io_error(&path))?;
    fs::File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(io_error(dir))?;
    Ok(path)
}

/// The generation id in a part's footer entries, if any.
pub fn of_part(key_values: Option<&Vec<KeyValue>>) -> Option<&str> {
    key_values?
        .iter()
        .find(|entry| entry.key == KEY)?
        .value
        .as_deref()
}

/// Whether a part whose footer says `part` belongs to the shard whose marker is `marker`.
pub fn is_current(marker: Option<&Marker>, part: Option<&str>) -> bool {
    match marker {
        None => true,
        Some(marker) => part == Some(marker.generation.as_str()),
    }
}

/// A damaged part is renamed with this added: out of every `*.parquet` glob, kept to look at.
pub const DAMAGED_SUFFIX: &str = ".damaged";

/// A shard's parts once settled: those that count, its generation, and the names of the
/// files this run took out of the dataset (stale, damaged, empty), for a remote store to drop
/// too.
pub struct Settled {
    pub parts: Vec<Part>,
    pub marker: Option<Marker>,
    pub dropped: Vec<String>,
}

/// Settles `owner`'s parts in `dir` for a run in `mode` (see the module comment). `preset` is
/// the new generation of a run that starts one (new or overwrite), already recorded in a
/// remote store; `None` draws one. Nothing is removed unless every check passed.
pub fn settle(
    dir: &Path,
    owner: PartOwner,
    mode: OutputMode,
    preset: Option<Marker>,
) -> Result<Settled, ResultsError> {
    dataset::remove_leftovers(dir, owner)?;
    let mut parts = dataset::list_parts(dir, owner)?;
    let others = dataset::other_layout_parts(dir, owner)?;
    let mut dropped = Vec::new();
    let marker = match preset.or_else(|| Marker::for_mode(mode)) {
        Some(marker) => {
            if let (OutputMode::New, Some(part)) = (mode, parts.first()) {
                return Err(ResultsError::Exists {
                    path: part.path.clone(),
                });
            }
            if !marker.replaces_other_layouts {
                refuse_other_layouts(dir, owner, &others)?;
            }
            write(dir, owner, &marker)?;
            Some(marker)
        }
        None => {
            let marker = read(dir, owner)?;
            if !marker
                .as_ref()
                .is_some_and(|marker| marker.replaces_other_layouts)
            {
                refuse_other_layouts(dir, owner, &others)?;
            }
            marker
        }
    };
    if marker
        .as_ref()
        .is_some_and(|marker| marker.replaces_other_layouts)
    {
        remove_other_layouts(dir, &others)?;
    }
    if mode == OutputMode::Overwrite {
        dataset::remove_parts(dir, owner)?;
        parts.clear();
    }
    let last_seq = parts.last().map(|part| part.seq);
    let mut kept = Vec::with_capacity(parts.len());
    for part in parts {
        let name = file_name(&part.path);
        if checkpoint::holds_nothing(&part.path)? {
            // The last one is started again in place; an earlier one is in every glob
            // reader's way.
            if Some(part.seq) == last_seq {
                kept.push(part);
            } else {
                remove(&part.path)?;
                dropped.push(name);
            }
            continue;
        }
        match checkpoint::inspect(&part.path) {
            Ok(existing) => {
                let key_values = existing.metadata.file_metadata().key_value_metadata();
                if is_current(marker.as_ref(), of_part(key_values)) {
                    kept.push(part);
                } else {
                    tracing::info!(
                        "Removing {}: a part of a generation that --overwrite replaced.",
                        part.path.display()
                    );
                    remove(&part.path)?;
                    dropped.push(name);
                }
            }
            Err(ResultsError::Damaged { reason, .. }) if !footer_readable(&part.path) => {
                let aside = crate::paths::with_suffix(&part.path, DAMAGED_SUFFIX);
                tracing::warn!(
                    "{} is damaged ({reason}): its rows are sent again, and it is moved to {}.",
                    part.path.display(),
                    aside.display()
                );
                fs::rename(&part.path, &aside).map_err(|cause| ResultsError::Io {
                    path: part.path.clone(),
                    cause,
                })?;
                dropped.push(name);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Settled {
        parts: kept,
        marker,
        dropped,
    })
}

/// Whether `path` has a Parquet footer that parses: a part without one was damaged after it
/// was published (truncated, overwritten), as a batchflow part never is.
fn footer_readable(path: &Path) -> bool {
    fs::File::open(path).is_ok_and(|file| {
        parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .is_ok()
    })
}

fn refuse_other_layouts(
    dir: &Path,
    owner: PartOwner,
    others: &[PathBuf],
) -> Result<(), ResultsError> {
    if others.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = others.iter().map(|path| file_name(path)).collect();
    Err(other_layout(&dir.display().to_string(), owner, &names))
}

/// The refusal of a run of `owner` in `dir` (a path or a store's URL), which holds `others`:
/// parts of another shard layout, the first three named.
pub fn other_layout(dir: &str, owner: PartOwner, others: &[String]) -> ResultsError {
    let mut names: Vec<&str> = others.iter().take(3).map(String::as_str).collect();
    let more = format!("and {} more", others.len().saturating_sub(names.len()));
    if others.len() > names.len() {
        names.push(&more);
    }
    ResultsError::OtherLayout {
        dir: dir.to_owned(),
        owner: owner.describe(),
        parts: names.join(", "),
    }
}

/// Removes the parts of other layouts, unless one of their runs is still writing.
fn remove_other_layouts(dir: &Path, others: &[PathBuf]) -> Result<(), ResultsError> {
    let mut owners: Vec<PartOwner> = others
        .iter()
        .filter_map(|path| dataset::owner_of(&file_name(path)))
        .collect();
    owners.sort_by_key(|owner| (owner.count, owner.index));
    owners.dedup();
    for other in owners {
        let lock_path = dataset::lock_path(dir, other);
        if let Some(holder) = lock::holder(&lock_path)? {
            return Err(ResultsError::Busy {
                path: lock_path,
                owner: other.describe(),
                holder: holder.describe(),
            });
        }
    }
    for path in others {
        remove(path)?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), ResultsError> {
    fs::remove_file(path).map_err(|cause| ResultsError::Io {
        path: path.to_owned(),
        cause,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_survives_a_round_trip_and_decides_which_parts_are_current() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let owner = PartOwner { index: 1, count: 2 };
        assert_eq!(read(dir.path(), owner).expect("read"), None);
        let marker = Marker::new(true);
        write(dir.path(), owner, &marker).expect("written");
        let found = read(dir.path(), owner).expect("read").expect("a marker");
        assert_eq!(found, marker);
        assert!(is_current(Some(&marker), Some(&marker.generation)));
        assert!(!is_current(Some(&marker), Some("0000000000000000")));
        assert!(!is_current(Some(&marker), None), "a part of before");
        assert!(is_current(None, None), "a shard of before generations");
        let entries = vec![marker.key_value()];
        assert_eq!(of_part(Some(&entries)), Some(marker.generation.as_str()));
        assert_ne!(Marker::new(false).generation, marker.generation);
        fs::write(dir.path().join(marker_name(owner)), b"{").expect("written");
        assert!(
            read(dir.path(), owner).is_err(),
            "a damaged marker is named"
        );
    }
}
