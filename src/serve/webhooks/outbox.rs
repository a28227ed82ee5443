//! The events not yet acknowledged, one small JSON file each in `<data-dir>/webhooks/`, named
//! by its batch (a batch ends once, so it has one event at most): written atomically (by the
//! store's `write_json`) before the first attempt, removed once the receiver answers 2xx, so
//! that a server killed meanwhile delivers them after its restart, under the same event id. Blocking I/O: callers on the runtime go through `spawn_blocking`.
//! When to deliver and how is `deliver.rs`'s business.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::store::{StoreError, TEMPORARY_SUFFIX, io_error, read_json, write_json};
use super::super::wire::BatchStatus;

/// An event as OpenAI posts it; its JSON is the body sent, byte for byte on every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub data: EventData,
}

/// `data` of a batch event: the batch's id, which the receiver retrieves for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub id: String,
}

/// The batch events OpenAI sends: one per terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "batch.completed")]
    Completed,
    #[serde(rename = "batch.failed")]
    Failed,
    #[serde(rename = "batch.expired")]
    Expired,
    #[serde(rename = "batch.cancelled")]
    Cancelled,
}

impl EventKind {
    /// The event of a batch reaching `status`; `None` for a status that is not terminal.
    pub fn of(status: BatchStatus) -> Option<EventKind> {
        match status {
            BatchStatus::Completed => Some(EventKind::Completed),
            BatchStatus::Failed => Some(EventKind::Failed),
            BatchStatus::Expired => Some(EventKind::Expired),
            BatchStatus::Cancelled => Some(EventKind::Cancelled),
            _ => None,
        }
    }

    /// The batch status this event announces.
    pub fn status(self) -> BatchStatus {
        match self {
            EventKind::Completed => BatchStatus::Completed,
            EventKind::Failed => BatchStatus::Failed,
            EventKind::Expired => BatchStatus::Expired,
            EventKind::Cancelled => BatchStatus::Cancelled,
        }
    }
}

/// `<data-dir>/webhooks/`.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens (creating) the folder and removes the half-written files a killed server left.
    pub fn open(data_dir: &Path) -> Result<Outbox, StoreError> {
        let dir = data_dir.join("webhooks");
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = entry.map_err(io_error(&dir))?.path();
            if path.to_string_lossy().ends_with(TEMPORARY_SUFFIX) {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(Outbox { dir })
    }

    /// Keeps `event` until [`Outbox::remove`], in place of any other of its batch; the
    /// batch's id is one the store made.
    pub fn add(&self, event: &Event) -> Result<(), StoreError> {
        write_json(&self.path(&event.data.id), event)
    }

    /// The pending event of batch `batch_id`, if any.
    pub fn of_batch(&self, batch_id: &str) -> Result<Option<Event>, StoreError> {
        read_json(&self.path(batch_id))
    }

    /// The pending events, oldest first. One that cannot be read is logged and skipped.
    pub fn pending(&self) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = entry.map_err(io_error(&self.dir))?.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            match read_json::<Event>(&path) {
                Ok(Some(event)) => events.push(event),
                // Removed since it was listed: delivered.
                Ok(None) => {}
                Err(error) => tracing::error!("Skipping an unreadable webhook event: {error}."),
            }
        }
        events.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(events)
    }

    /// Forgets a delivered (or stale) event. Not synced: a removal lost to a crash only
    /// delivers the event once more, which at-least-once allows.
    pub fn remove(&self, event: &Event) -> Result<(), StoreError> {
        let path = self.path(&event.data.id);
        // Only this event: one that replaced it since (its batch announced again while it
        // waited) stays.
        if self
            .of_batch(&event.data.id)?
            .is_none_or(|kept| kept.id != event.id)
        {
            return Ok(());
        }
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, cause: error })
            }
            _ => Ok(()),
        }
    }

    fn path(&self, batch_id: &str) -> PathBuf {
        self.dir.join(format!("{batch_id}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, created_at: u64) -> Event {
        Event {
            id: id.to_owned(),
            object: "event".to_owned(),
            created_at,
            kind: EventKind::Completed,
            data: EventData {
                id: format!("batch_{id}"),
            },
        }
    }

    #[test]
    fn the_body_is_openais_shape() {
        let body = serde_json::to_string(&event("evt_1", 7)).expect("JSON");
        assert_eq!(
            body,
            r#"{"id":"evt_1","object":"event","created_at":7,"type":"batch.completed","data":{"id":"batch_evt_1"}}"#
        );
    }

    #[test]
    fn events_stay_until_removed_oldest_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let outbox = Outbox::open(dir.path()).expect("opens");
        outbox.add(&event("evt_b", 2)).expect("adds");
        outbox.add(&event("evt_a", 1)).expect("adds");
        fs::write(dir.path().join("webhooks/batch_c.json.tmp"), b"{").expect("writes");
        let reopened = Outbox::open(dir.path()).expect("opens again");
        let ids: Vec<String> = reopened
            .pending()
            .expect("lists")
            .into_iter()
            .map(|event| event.id)
            .collect();
        assert_eq!(ids, ["evt_a", "evt_b"]);
        reopened.remove(&event("evt_a", 1)).expect("removes");
        reopened
            .remove(&event("evt_a", 1))
            .expect("removing twice is fine");
        assert_eq!(reopened.pending().expect("lists"), [event("evt_b", 2)]);
        // A batch's newer event replaces its older one, which is then no longer removable.
        let newer = Event {
            id: "evt_b2".to_owned(),
            ..event("evt_b", 3)
        };
        reopened.add(&newer).expect("replaces");
        reopened.remove(&event("evt_b", 2)).expect("a no-op");
        assert_eq!(
            reopened.of_batch("batch_evt_b").expect("reads"),
            Some(newer)
        );
    }
}
