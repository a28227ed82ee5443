//! A dataset shard on object storage, written by one run at a time across machines.
//!
//! The local lock (`sink::lock`) keeps two runs of one machine apart; two hosts (a scheduler
//! retrying a shard elsewhere while the first still runs, another `TMPDIR`) share nothing but
//! the store. So each shard has a lease object beside its parts, `.part-<i>-of-<n>.lease`, taken
//! and renewed only by conditional writes (create-if-absent, replace-if-unchanged):
//!
//! - A run takes the lease when it is free, released, expired (no renewal for
//!   `--store-lease`), or held by a process of this machine that is gone; otherwise it stops
//!   at once naming the holder. Each taking raises the lease's token, so every writer of a
//!   shard has its own number, logged when it takes over.
//! - The lease is renewed on a thread of its own, and confirmed (renewed by a conditional write
//!   that fails if anyone else wrote it) before every part upload.
//! - Every part upload is itself conditional: a new part must not exist, a part written
//!   before must be the version this run last wrote or read. A writer stalled between its
//!   confirmation and its upload (SIGSTOP, a long pause) therefore cannot overwrite what a newer
//!   writer published, nor add a part beside it: its upload fails and it stops.
//!
//! What it owns: the lease, the versions of the shard's parts, and making the local staging
//! folder a copy of the remote parts at start. Writing parts is the checkpoint writer's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::checkpoint::ResultsError;
use super::dataset::{self, PartOwner};
use super::generation::{self, Marker};
use super::lock::Holder;
use super::mode::OutputMode;
use crate::storage::{PutCondition, Remote, StorageError, Version};

fn remove_if_present(path: &Path) -> Result<(), ResultsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(cause) => Err(ResultsError::Io {
            path: path.to_owned(),
            cause,
        }),
    }
}

/// Takings of a lease raced by other runs before giving up.
const TAKE_ATTEMPTS: usize = 5;

/// The lease object's name for `owner`'s parts.
pub fn lease_name(owner: PartOwner) -> String {
    format!(".part-{}-of-{}.lease", owner.index, owner.count)
}

/// Who holds the lease whose object holds `bytes`, and until when, if it is held now (not let
/// go, not expired); for `status`.
pub fn live_holder(bytes: &[u8]) -> Option<String> {
    let record: Record = serde_json::from_slice(bytes).ok()?;
    (!record.released && now_ms() < record.expires_at_ms).then(|| {
        format!(
            "{} (lease valid until {})",
            record.holder.describe(),
            format_ms(record.expires_at_ms)
        )
    })
}

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Raised by each taking: which writer of the shard this is.
    token: u64,
    holder: Holder,
    /// Milliseconds since the Unix epoch after which the lease is free, by the holder's clock.
    expires_at_ms: u64,
    /// Let go by a run that ended: free at once.
    #[serde(default)]
    released: bool,
}

/// This run's hold on a shard of a remote dataset.
pub struct Lease {
    shared: Arc<Shared>,
    renewer: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
}

struct Shared {
    /// A remote of its own, so that a renewal never waits behind a part's upload; it rides
    /// out an outage as long as the uploads do (a confirmation precedes each of them).
    remote: Remote,
    /// The same store with retries cut to a third of the lease: the renewal thread tries
    /// again at its next turn anyway, and letting the lease go at the end must not hold up a
    /// run stopped by an outage for the whole `--store-retry-for` again.
    quick: Remote,
    name: String,
    owner: PartOwner,
    record: Mutex<Held>,
    lease_for: Duration,
}

struct Held {
    record: Record,
    version: Version,
    /// Another writer wrote the lease: this run must publish nothing more.
    lost: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// When a lease taken or renewed now for `lease_for` ends, in milliseconds since the epoch.
fn expiry(lease_for: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(lease_for.as_millis()).unwrap_or(u64::MAX))
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Lease {
    /// Takes `owner`'s lease in `remote`'s folder (see the module comment).
    pub fn take(remote: &Remote, owner: PartOwner) -> Result<Lease, ResultsError> {
        let settings = remote.settings();
        let own = Remote::open_with(remote.url(), settings)?;
        let quick = Remote::open_with(
            remote.url(),
            crate::storage::StoreSettings {
                retry_for: settings.retry_for.min(settings.lease_for / 3),
                ..settings
            },
        )?;
        let name = lease_name(owner);
        let url = own.url_of(&name);
        let lease_for = settings.lease_for;
        let record = |token| Record {
            token,
            holder: Holder::me(),
            expires_at_ms: expiry(lease_for),
            released: false,
        };
        for _ in 0..TAKE_ATTEMPTS {
            let (taken, condition) = match own.get(&name)? {
                None => (record(1), PutCondition::Absent),
                Some((bytes, version)) => {
                    let found: Record = serde_json::from_slice(&bytes).map_err(|error| {
                        ResultsError::Damaged {
                            path: PathBuf::from(&url),
                            reason: format!(
                                "the lease of {} is not one batchflow wrote ({error}); remove it if no run writes this shard",
                                owner.describe()
                            ),
                        }
                    })?;
                    let why = if found.released {
                        None
                    } else if now_ms() >= found.expires_at_ms {
                        Some(format!(
                            "its lease expired at {}",
                            format_ms(found.expires_at_ms)
                        ))
                    } else if found.holder.is_gone_from_here() {
                        Some("its process is gone".to_owned())
                    } else {
                        return Err(ResultsError::Busy {
                            path: PathBuf::from(&url),
                            owner: owner.describe(),
                            holder: format!(
                                "{}, lease valid until {} unless renewed",
                                found.holder.describe(),
                                format_ms(found.expires_at_ms)
                            ),
                        });
                    };
                    if let Some(why) = why {
                        tracing::warn!(
                            "Taking over {} of {} from {} ({why}): this run is its writer number {}.",
                            owner.describe(),
                            remote.url(),
                            found.holder.describe(),
                            found.token + 1
                        );
                    }
                    (record(found.token + 1), PutCondition::Unchanged(version))
                }
            };
            let bytes = serde_json::to_vec(&taken).map_err(|error| ResultsError::Io {
                path: PathBuf::from(&url),
                cause: error.into(),
            })?;
            match own.put(&name, bytes, &condition) {
                Ok(version) => {
                    tracing::debug!(
                        token = taken.token,
                        "Took the lease of {}.",
                        owner.describe()
                    );
                    let shared = Arc::new(Shared {
                        remote: own,
                        quick,
                        name,
                        owner,
                        record: Mutex::new(Held {
                            record: taken,
                            version,
                            lost: false,
                        }),
                        lease_for,
                    });
                    let renewer = spawn_renewer(Arc::clone(&shared))?;
                    return Ok(Lease {
                        shared,
                        renewer: Some(renewer),
                    });
                }
                // Another run took it between the read and the write: read it again.
                Err(StorageError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ResultsError::Busy {
            path: PathBuf::from(&url),
            owner: owner.describe(),
            holder: "other runs taking it at the same time".to_owned(),
        })
    }

    /// Proves that this run still holds the shard, right before it publishes: the lease is
    /// renewed by a write that fails if another run wrote it since.
    pub fn confirm(&self) -> Result<(), ResultsError> {
        self.shared.renew(&self.shared.remote)
    }
}

impl Shared {
    fn renew(&self, remote: &Remote) -> Result<(), ResultsError> {
        let mut held = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if held.lost {
            return Err(self.fenced(held.record.token));
        }
        let mut record = held.record.clone();
        record.expires_at_ms = expiry(self.lease_for);
        let bytes = serde_json::to_vec(&record).map_err(|error| ResultsError::Io {
            path: PathBuf::from(self.remote.url_of(&self.name)),
            cause: error.into(),
        })?;
        let condition = PutCondition::Unchanged(held.version.clone());
        match put_or_find_own(remote, &self.name, bytes, &condition) {
            Ok(version) => {
                held.record = record;
                held.version = version;
                Ok(())
            }
            Err(StorageError::Conflict { .. }) => {
                held.lost = true;
                Err(self.fenced(record.token))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn fenced(&self, token: u64) -> ResultsError {
        ResultsError::Fenced {
            owner: self.owner.describe(),
            url: self.remote.url().to_owned(),
            token,
        }
    }

    /// Lets the lease go, so that the next run need not wait for it to expire.
    fn release(&self) {
        let held = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if held.lost {
            return;
        }
        let mut record = held.record.clone();
        record.released = true;
        let Ok(bytes) = serde_json::to_vec(&record) else {
            return;
        };
        let condition = PutCondition::Unchanged(held.version.clone());
        if let Err(error) = self.quick.put(&self.name, bytes, &condition) {
            tracing::debug!(
                "Cannot release the lease of {}: {error}.",
                self.owner.describe()
            );
        }
    }
}

/// A conditional write that, when refused, checks whether the object holds exactly these bytes:
/// a write that landed but whose answer was lost is retried by the store's client, and the
/// retry is refused because of the write itself. That is this writer's version, not another's.
fn put_or_find_own(
    remote: &Remote,
    name: &str,
    bytes: Vec<u8>,
    condition: &PutCondition,
) -> Result<Version, StorageError> {
    let expected = bytes.clone();
    match remote.put(name, bytes, condition) {
        Err(StorageError::Conflict { url }) => match remote.get(name)? {
            Some((found, version)) if found == expected => Ok(version),
            _ => Err(StorageError::Conflict { url }),
        },
        written => written,
    }
}

/// Renews the lease every third of its term until told to stop (or the lease is dropped).
fn spawn_renewer(
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<()>, thread::JoinHandle<()>), ResultsError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let every = shared.lease_for / 3;
    let handle = thread::Builder::new()
        .name("lease".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                match shared.renew(&shared.quick) {
                    Ok(()) => {}
                    Err(ResultsError::Fenced { .. }) => {
                        tracing::warn!(
                            "Another run took over {} of {}: this run publishes nothing more.",
                            shared.owner.describe(),
                            shared.remote.url()
                        );
                        return;
                    }
                    Err(error) => tracing::warn!("Cannot renew the lease: {error}."),
                }
            }
        })
        .map_err(|cause| ResultsError::Io {
            path: PathBuf::from("lease renewal thread"),
            cause,
        })?;
    Ok((stop, handle))
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.renewer.take() {
            drop(stop);
            let _ = handle.join();
        }
        self.shared.release();
    }
}

/// A shard of a remote dataset as this run writes it: the store, the lease, and the version of
/// each part this run last wrote or read.
pub struct RemoteShard {
    pub remote: Remote,
    lease: Lease,
    versions: HashMap<String, Version>,
}

impl RemoteShard {
    /// Takes `owner`'s lease, then makes the local staging folder `dir` a copy of its remote
    /// parts and generation marker, the remote being what is durable: local parts of an earlier
    /// run are dropped, remote ones downloaded. A run that starts a generation (`marker`: new,
    /// or `--overwrite`) records it in the store before any old part is deleted.
    pub fn open(
        remote: &Remote,
        owner: PartOwner,
        dir: &Path,
        mode: OutputMode,
        marker: Option<&Marker>,
    ) -> Result<RemoteShard, ResultsError> {
        let lease = Lease::take(remote, owner)?;
        dataset::remove_leftovers(dir, owner)?;
        dataset::remove_parts(dir, owner)?;
        let listed = remote.list_versions()?;
        let mut parts: Vec<(String, Version)> = listed
            .iter()
            .filter(|(name, _)| owner.owns_part(name))
            .cloned()
            .collect();
        parts.sort_by(|(one, _), (other, _)| one.cmp(other));
        let others: Vec<String> =
            dataset::other_layouts(listed.iter().map(|(name, _)| name.as_str()), owner)
                .into_iter()
                .map(str::to_owned)
                .collect();
        let marker_name = generation::marker_name(owner);
        let local_marker = dir.join(&marker_name);
        let other_layout = || generation::other_layout(remote.url(), owner, &others);
        let replaces_others = match (mode, marker) {
            (OutputMode::New, _) if !others.is_empty() => return Err(other_layout()),
            (OutputMode::New, _) if !parts.is_empty() => {
                return Err(ResultsError::Exists {
                    path: PathBuf::from(remote.url_of(&parts[0].0)),
                });
            }
            (OutputMode::New | OutputMode::Overwrite, Some(marker)) => {
                remote.put(&marker_name, marker.to_bytes(), &PutCondition::Any)?;
                marker.replaces_other_layouts
            }
            _ => match remote.get(&marker_name)? {
                Some((bytes, _)) => {
                    let found =
                        Marker::from_bytes(&bytes, Path::new(&remote.url_of(&marker_name)))?;
                    generation::write(dir, owner, &found)?;
                    found.replaces_other_layouts
                }
                None => {
                    remove_if_present(&local_marker)?;
                    false
                }
            },
        };
        if !others.is_empty() && !replaces_others {
            return Err(other_layout());
        }
        for name in &others {
            remote.delete(name)?;
        }
        if mode == OutputMode::Overwrite {
            for (name, _) in &parts {
                remote.delete(name)?;
            }
            parts.clear();
        }
        for (name, _) in &parts {
            let bytes = remote.download(name, &dir.join(name))?;
            tracing::debug!(part = %name, bytes, "Downloaded a part to resume.");
        }
        if !parts.is_empty() {
            tracing::info!(
                "Downloaded {} parts of {} from {} to resume.",
                parts.len(),
                owner.describe(),
                remote.url()
            );
        }
        Ok(RemoteShard {
            remote: remote.clone(),
            lease,
            versions: parts.into_iter().collect(),
        })
    }

    /// Deletes parts taken out of the dataset (stale, damaged, empty) from the store.
    pub fn remove(&mut self, names: &[String]) -> Result<(), ResultsError> {
        for name in names {
            self.lease.confirm()?;
            self.remote.delete(name)?;
            self.versions.remove(name);
        }
        Ok(())
    }

    /// Uploads a published local part over its remote object, if this run still holds the
    /// shard and nobody else wrote that object since this run last did.
    pub fn publish(&mut self, path: &Path) -> Result<(), ResultsError> {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| ResultsError::Damaged {
                path: path.to_owned(),
                reason: "a part's name is not text".into(),
            })?;
        self.lease.confirm()?;
        let condition = match self.versions.get(name) {
            Some(version) => PutCondition::Unchanged(version.clone()),
            None => PutCondition::Absent,
        };
        let bytes = std::fs::read(path).map_err(|cause| ResultsError::Io {
            path: path.to_owned(),
            cause,
        })?;
        match put_or_find_own(&self.remote, name, bytes, &condition) {
            Ok(version) => {
                self.versions.insert(name.to_owned(), version);
                Ok(())
            }
            // Written by someone else since this run read or wrote it. If this run still holds
            // the lease, that was a write of the run it took over from, sent before that run
            // died or stalled and landing only now: its rows are not in this run's done set.
            Err(StorageError::Conflict { .. }) => match self.lease.confirm() {
                Ok(()) => Err(ResultsError::LateWrite {
                    url: self.remote.url_of(name),
                }),
                Err(error) => Err(error),
            },
            Err(error) => Err(error.into()),
        }
    }
}
