//! A results dataset: a directory of Parquet part files, named by `--output DIR/` (the trailing
//! slash says "directory"). Each part is a results file of its own, written and checkpointed as
//! one (`sink::checkpoint`: staged beside it, renamed over it), so a reader globbing
//! `DIR/*.parquet` sees whole files at every instant. A part is sealed once it holds
//! [`PART_BYTES`] of data or `part_row_groups` row groups, and the next row group starts a new
//! part: a checkpoint copies at most one part, however long the run, and a slow run's small
//! checkpoints still fill parts of hundreds of row groups instead of a file each.
//!
//! Shards share a dataset without clashing: shard `i` of `n` owns the parts named
//! `part-<i>-of-<n>-<seq>.parquet` and never touches another shard's (an unsharded run is shard
//! 0 of 1). What this module owns: the part names, listing a shard's parts, and the leftovers a
//! killed writer may leave; writing a part is the checkpoint writer's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, ResultsError};
use super::lock::{LockFile, WriterLock};

/// Data in a part that seals it: a checkpoint copies the part's earlier row groups (a kernel
/// copy), so this bounds the bytes copied per checkpoint.
pub const PART_BYTES: u64 = 8 << 20;

/// Row groups in a part that seal it: each costs the writer its metadata until the part is
/// sealed, and a reader its footer entry.
pub const PART_ROW_GROUPS: usize = 256;

const PART_PREFIX: &str = "part-";
const PART_EXTENSION: &str = ".parquet";

/// Whether an output path names a dataset directory: it ends in a `/`.
pub fn names_dataset(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().ends_with(b"/")
}

/// Which parts of a dataset a run writes: those of its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartOwner {
    pub index: u64,
    pub count: u64,
}

impl PartOwner {
    pub const UNSHARDED: PartOwner = PartOwner { index: 0, count: 1 };

    /// The file name of this owner's part number `seq`.
    pub fn part_name(self, seq: u64) -> String {
        format!(
            "{PART_PREFIX}{}-of-{}-{seq:05}{PART_EXTENSION}",
            self.index, self.count
        )
    }

    /// The part number of `name` if it is one of this owner's parts or their side files, and
    /// what follows `.parquet` (empty for the part itself, `.tmp` for its staging file, …).
    fn seq_of(self, name: &str) -> Option<(u64, &str)> {
        let rest = name.strip_prefix(PART_PREFIX)?;
        let rest = rest.strip_prefix(&format!("{}-of-{}-", self.index, self.count))?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seq = rest.get(..digits)?.parse().ok()?;
        let suffix = rest.get(digits..)?.strip_prefix(PART_EXTENSION)?;
        Some((seq, suffix))
    }

    /// Whether `name` is one of this owner's published parts.
    pub fn owns_part(self, name: &str) -> bool {
        matches!(self.seq_of(name), Some((_, "")))
    }

    pub fn describe(self) -> String {
        format!("shard {}/{}", self.index, self.count)
    }
}

/// The owner of a published part's name, whoever it is.
pub fn owner_of(name: &str) -> Option<PartOwner> {
    part_of(name).map(|(owner, _)| owner)
}

/// The owner and number of a published part's name, whoever it is.
pub fn part_of(name: &str) -> Option<(PartOwner, u64)> {
    let rest = name.strip_prefix(PART_PREFIX)?;
    let (index, rest) = rest.split_once("-of-")?;
    let (count, _) = rest.split_once('-')?;
    let owner = PartOwner {
        index: index.parse().ok()?,
        count: count.parse().ok()?,
    };
    match owner.seq_of(name)? {
        (seq, "") => Some((owner, seq)),
        _ => None,
    }
}

/// The owners of the parts published in `dir`, in shard order.
pub fn owners(dir: &Path) -> Result<Vec<PartOwner>, ResultsError> {
    let mut owners: Vec<PartOwner> = entries(dir)?
        .iter()
        .filter_map(|(_, name)| owner_of(name))
        .collect();
    owners.sort_by_key(|owner| (owner.count, owner.index));
    owners.dedup();
    Ok(owners)
}

/// Of `names`, the published parts of another shard layout than `owner`'s (another shard
/// count): rows a run of `owner` would count again.
pub fn other_layouts<'a>(
    names: impl IntoIterator<Item = &'a str>,
    owner: PartOwner,
) -> Vec<&'a str> {
    let mut found: Vec<&str> = names
        .into_iter()
        .filter(|name| owner_of(name).is_some_and(|other| other.count != owner.count))
        .collect();
    found.sort_unstable();
    found
}

/// The published parts in `dir` of another shard layout than `owner`'s.
pub fn other_layout_parts(dir: &Path, owner: PartOwner) -> Result<Vec<PathBuf>, ResultsError> {
    let entries = entries(dir)?;
    let names = other_layouts(entries.iter().map(|(_, name)| name.as_str()), owner);
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// One published part of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub path: PathBuf,
    pub seq: u64,
}

/// The published parts of `owner` in `dir`, in order; none if `dir` does not exist.
pub fn list_parts(dir: &Path, owner: PartOwner) -> Result<Vec<Part>, ResultsError> {
    let mut parts = Vec::new();
    for (path, name) in entries(dir)? {
        if let Some((seq, "")) = owner.seq_of(&name) {
            parts.push(Part { path, seq });
        }
    }
    parts.sort_by_key(|part| part.seq);
    Ok(parts)
}

/// Every Parquet file in `dir` (all shards' parts, and any other `*.parquet` put there), in
/// name order: what a reader globbing `dir/*.parquet` sees.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, ResultsError> {
    let mut files: Vec<PathBuf> = entries(dir)?
        .into_iter()
        .filter(|(_, name)| name.ends_with(PART_EXTENSION) && !name.starts_with('.'))
        .map(|(path, _)| path)
        .collect();
    files.sort();
    Ok(files)
}

/// Removes what a killed writer of `owner` may have left in `dir`: staging and rewrite files
/// (including those of a part whose creation never got as far as publishing it) and unfinished
/// downloads of remote parts.
pub fn remove_leftovers(dir: &Path, owner: PartOwner) -> Result<(), ResultsError> {
    for (path, name) in entries(dir)? {
        let is_side_file = owner.seq_of(&name).is_some_and(|(_, suffix)| {
            suffix == crate::storage::DOWNLOAD_SUFFIX
                || checkpoint::SIDE_FILES
                    .iter()
                    .any(|(_, side)| *side == suffix)
        });
        if is_side_file {
            fs::remove_file(&path).map_err(|cause| ResultsError::Io { path, cause })?;
        }
    }
    Ok(())
}

/// Removes the published parts of `owner` (for `--overwrite`).
pub fn remove_parts(dir: &Path, owner: PartOwner) -> Result<(), ResultsError> {
    for part in list_parts(dir, owner)? {
        fs::remove_file(&part.path).map_err(|cause| ResultsError::Io {
            path: part.path.clone(),
            cause,
        })?;
    }
    Ok(())
}

/// The lock file of `owner`'s parts in `dir` (see `sink::lock`): `.part-<i>-of-<n>.lock`,
/// which no `*.parquet` glob matches. Two runs of one shard at once (a double launch, a
/// scheduler retrying a shard that still runs) would otherwise remove each other's staging
/// files and rename torn files over published parts.
pub fn lock_path(dir: &Path, owner: PartOwner) -> PathBuf {
    dir.join(format!(".part-{}-of-{}.lock", owner.index, owner.count))
}

/// Takes `owner`'s lock in `dir`, or fails at once naming the run that holds it.
pub fn lock(dir: &Path, owner: PartOwner, lock_file: LockFile) -> Result<WriterLock, ResultsError> {
    super::lock::take(&lock_path(dir, owner), &owner.describe(), lock_file)
}

/// Creates the dataset directory if it is missing (its parent must exist: a typo in a path
/// should not grow a tree).
pub fn create_dir(dir: &Path) -> Result<(), ResultsError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(cause) => Err(ResultsError::Io {
            path: dir.to_owned(),
            cause,
        }),
    }
}

/// The entries of `dir` whose names are text, with their paths; none if `dir` is missing.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, String)>, ResultsError> {
    let io_error = |cause| ResultsError::Io {
        path: dir.to_owned(),
        cause,
    };
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(error)),
    };
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(io_error)?;
        if let Ok(name) = entry.file_name().into_string() {
            found.push((entry.path(), name));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_name_belongs_to_its_owner_only() {
        let owner = PartOwner { index: 1, count: 4 };
        let name = owner.part_name(7);
        assert_eq!(name, "part-1-of-4-00007.parquet");
        assert_eq!(owner.seq_of(&name), Some((7, "")));
        assert_eq!(owner.seq_of(&format!("{name}.tmp")), Some((7, ".tmp")));
        assert_eq!(PartOwner { index: 1, count: 2 }.seq_of(&name), None);
        assert_eq!(
            PartOwner {
                index: 11,
                count: 4
            }
            .seq_of(&name),
            None
        );
        assert_eq!(owner.seq_of("part-1-of-4-.parquet"), None);
        assert_eq!(owner.seq_of("part-1-of-4-00007.csv"), None);
        // Numbers past the padding still sort by value.
        assert_eq!(owner.seq_of(&owner.part_name(123_456)), Some((123_456, "")));
    }

    #[test]
    fn listing_keeps_the_owners_published_parts_in_order_and_leftovers_go() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let owner = PartOwner { index: 0, count: 2 };
        let other = PartOwner { index: 1, count: 2 };
        for name in [
            owner.part_name(10),
            owner.part_name(2),
            format!("{}.tmp", owner.part_name(11)),
            other.part_name(0),
            format!("{}.tmp", other.part_name(1)),
            "notes.txt".to_owned(),
        ] {
            fs::write(dir.path().join(name), b"x").expect("a file");
        }
        let seqs: Vec<u64> = list_parts(dir.path(), owner)
            .expect("listed")
            .iter()
            .map(|part| part.seq)
            .collect();
        assert_eq!(seqs, [2, 10]);
        remove_leftovers(dir.path(), owner).expect("removed");
        assert!(
            !dir.path()
                .join(format!("{}.tmp", owner.part_name(11)))
                .exists()
        );
        assert!(
            dir.path()
                .join(format!("{}.tmp", other.part_name(1)))
                .exists()
        );
        assert_eq!(parquet_files(dir.path()).expect("listed").len(), 3);
        assert_eq!(owners(dir.path()).expect("listed"), [owner, other]);
        assert!(names_dataset(Path::new("results/")));
        assert!(!names_dataset(Path::new("results")));
        assert!(
            list_parts(&dir.path().join("missing"), owner)
                .expect("a missing folder holds no part")
                .is_empty()
        );
    }
}
