//! The data directory's index, `index.sqlite`: every batch and file record, with the columns
//! that listing, counting and lookups need, so that no request reads more records than it
//! answers with. A record is kept whole as the JSON of its OpenAI object; `seq` (its listing
//! position, unique and rising) orders lists and places cursors; `batch_counts` is kept by
//! triggers, so counting batches by status reads eight rows however many batches there are.
//!
//! One connection behind a mutex: the server is the data directory's only writer (its lock),
//! and a request holds the connection for a few index lookups. WAL with `synchronous = FULL`:
//! a commit is on disk before it is answered, as each JSON record was before.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::super::wire::{Batch, BatchStatus, FileObject, Order};
use super::{FileDeletion, StoreError, StoredBatch, StoredFile};

/// The schema's version, kept in `PRAGMA user_version`; 0 is a database not yet made.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE files (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX files_by_purpose ON files (purpose, seq);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX batches_by_status ON batches (status, seq);
CREATE INDEX batches_by_input ON batches (input_file_id);
CREATE TABLE batch_counts (
    status TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TRIGGER batch_counted AFTER INSERT ON batches BEGIN
    UPDATE batch_counts SET count = count + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER batch_recounted AFTER UPDATE OF status ON batches
WHEN OLD.status <> NEW.status BEGIN
    UPDATE batch_counts SET count = count - 1 WHERE status = OLD.status;
    UPDATE batch_counts SET count = count + 1 WHERE status = NEW.status;
END;
";

/// One page of a list, in listing order, and whether more follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// A record of the data directory's earlier layout, moved into the index on start.
pub(super) enum Legacy {
    File(StoredFile),
    Batch(Box<StoredBatch>),
}

pub(super) struct Index {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Index {
    /// Opens `path`, making the database and its schema if there is none; and whether it was
    /// made now.
    pub(super) fn open(path: &Path) -> Result<(Index, bool), StoreError> {
        let failed = sql_error(path);
        let connection = Connection::open(path).map_err(&failed)?;
        connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(&failed)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(&failed)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(&failed)?;
        let made = match version {
            0 => {
                let mut statuses = String::new();
                for status in BatchStatus::ALL {
                    statuses.push_str(&format!(
                        "INSERT INTO batch_counts (status) VALUES ('{}');\n",
                        status.as_str()
                    ));
                }
                connection
                    .execute_batch(&format!(
                        "BEGIN;\n{SCHEMA}{statuses}PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
                    ))
                    .map_err(&failed)?;
                true
            }
            SCHEMA_VERSION => false,
            newer => {
                return Err(StoreError::NewerIndex {
                    path: path.to_owned(),
                    version: newer,
                });
            }
        };
        let index = Index {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        };
        Ok((index, made))
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        sql_error(&self.path)
    }

    fn decode<T: for<'de> serde::Deserialize<'de>>(&self, record: &str) -> Result<T, StoreError> {
        serde_json::from_str(record).map_err(|cause| StoreError::Corrupt {
            path: self.path.clone(),
            cause,
        })
    }

    fn encode(&self, value: &impl serde::Serialize) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|cause| StoreError::Corrupt {
            path: self.path.clone(),
            cause,
        })
    }

    /// The highest listing position stored, 0 if none: new positions start above it, so a
    /// clock set back between two starts cannot give a new record an old one's place.
    pub(super) fn last_seq(&self) -> Result<u64, StoreError> {
        let highest: i64 = self
            .connection()
            .query_row(
                "SELECT max(coalesce((SELECT max(seq) FROM files), 0),
                            coalesce((SELECT max(seq) FROM batches), 0))",
                [],
                |row| row.get(0),
            )
            .map_err(self.failed())?;
        Ok(u64::try_from(highest).unwrap_or(0))
    }

    /// Moves records of the earlier layout in, in one transaction; a record already in the
    /// index (a migration cut short after its commit) is kept as it is. How many were new.
    pub(super) fn import(
        &self,
        records: impl Iterator<Item = Result<Legacy, StoreError>>,
    ) -> Result<usize, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(self.failed())?;
        let mut moved = 0;
        for record in records {
            let inserted = match record? {
                Legacy::File(stored) => self.insert_file_in(&transaction, &stored, true)?,
                Legacy::Batch(stored) => self.insert_batch_in(&transaction, &stored, true)?,
            };
            moved += inserted;
        }
        transaction.commit().map_err(self.failed())?;
        Ok(moved)
    }

    fn insert_file_in(
        &self,
        transaction: &Transaction<'_>,
        stored: &StoredFile,
        or_ignore: bool,
    ) -> Result<usize, StoreError> {
        let verb = insert_verb(or_ignore);
        transaction
            .execute(
                &format!("{verb} INTO files (seq, id, purpose, record) VALUES (?1, ?2, ?3, ?4)"),
                params![
                    seq(stored.order),
                    stored.file.id,
                    stored.file.purpose,
                    self.encode(&stored.file)?
                ],
            )
            .map_err(self.failed())
    }

    fn insert_batch_in(
        &self,
        transaction: &Transaction<'_>,
        stored: &StoredBatch,
        or_ignore: bool,
    ) -> Result<usize, StoreError> {
        let verb = insert_verb(or_ignore);
        transaction
            .execute(
                &format!(
                    "{verb} INTO batches (seq, id, status, input_file_id, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                params![
                    seq(stored.order),
                    stored.batch.id,
                    stored.batch.status.as_str(),
                    stored.batch.input_file_id,
                    self.encode(&stored.batch)?
                ],
            )
            .map_err(self.failed())
    }

    pub(super) fn insert_file(&self, stored: &StoredFile) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(self.failed())?;
        self.insert_file_in(&transaction, stored, false)?;
        transaction.commit().map_err(self.failed())
    }

    pub(super) fn has_file(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.seq_of(&self.connection(), "files", id)?.is_some())
    }

    pub(super) fn file(&self, id: &str) -> Result<Option<FileObject>, StoreError> {
        let record = self.record(&self.connection(), "files", id)?;
        record.map(|record| self.decode(&record)).transpose()
    }

    /// Removes a file's record, unless a batch not yet ended reads it as its input; the
    /// check and the removal in one transaction, so no batch is created on it in between.
    pub(super) fn delete_file(&self, id: &str) -> Result<FileDeletion, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(self.failed())?;
        let mut readers = transaction
            .prepare(&format!(
                "SELECT id FROM batches WHERE input_file_id = ?1 AND status IN ({})",
                unfinished_statuses()
            ))
            .map_err(self.failed())?;
        let reader: Option<String> = readers
            .query_row([id], |row| row.get(0))
            .optional()
            .map_err(self.failed())?;
        drop(readers);
        if let Some(reader) = reader {
            return Ok(FileDeletion::InputOf(reader));
        }
        let removed = transaction
            .execute("DELETE FROM files WHERE id = ?1", [id])
            .map_err(self.failed())?;
        transaction.commit().map_err(self.failed())?;
        Ok(if removed == 0 {
            FileDeletion::NotFound
        } else {
            FileDeletion::Deleted
        })
    }

    /// A page of files, of one purpose or all, newest first or oldest first, after the file
    /// `after` (of any purpose, so a filter does not change what a cursor means). `None` when
    /// `after` names no stored file.
    pub(super) fn files(
        &self,
        purpose: Option<&str>,
        order: Order,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page<FileObject>>, StoreError> {
        let connection = self.connection();
        let Some(after) = self.cursor(&connection, "files", after)? else {
            return Ok(None);
        };
        let (compare, direction) = match order {
            Order::Desc => ("<", "DESC"),
            Order::Asc => (">", "ASC"),
        };
        let filter = if purpose.is_some() {
            "AND purpose = ?3"
        } else {
            "AND ?3 IS NULL"
        };
        let records = self.records(
            &connection,
            &format!(
                "SELECT record FROM files WHERE seq {compare} ?1 {filter}
                 ORDER BY seq {direction} LIMIT ?2"
            ),
            params![after.unwrap_or(start(order)), page_rows(limit), purpose],
        )?;
        Ok(Some(self.page(records, limit)?))
    }

    /// The listing position of `after` in `table`: `Some(None)` with no cursor, `None` when
    /// the cursor names nothing stored.
    fn cursor(
        &self,
        connection: &Connection,
        table: &str,
        after: Option<&str>,
    ) -> Result<Option<Option<i64>>, StoreError> {
        let Some(after) = after else {
            return Ok(Some(None));
        };
        Ok(self.seq_of(connection, table, after)?.map(Some))
    }

    /// The listing position of `id` in `table`, if it is stored there.
    fn seq_of(
        &self,
        connection: &Connection,
        table: &str,
        id: &str,
    ) -> Result<Option<i64>, StoreError> {
        connection
            .query_row(
                &format!("SELECT seq FROM {table} WHERE id = ?1"),
                [id],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.failed())
    }

    /// The JSON record of `id` in `table`.
    fn record(
        &self,
        connection: &Connection,
        table: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        connection
            .query_row(
                &format!("SELECT record FROM {table} WHERE id = ?1"),
                [id],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.failed())
    }

    fn records(
        &self,
        connection: &Connection,
        sql: &str,
        parameters: impl rusqlite::Params,
    ) -> Result<Vec<String>, StoreError> {
        let mut statement = connection.prepare(sql).map_err(self.failed())?;
        let rows = statement
            .query_map(parameters, |row| row.get(0))
            .map_err(self.failed())?;
        rows.collect::<Result<_, _>>().map_err(self.failed())
    }

    fn page<T: for<'de> serde::Deserialize<'de>>(
        &self,
        records: Vec<String>,
        limit: usize,
    ) -> Result<Page<T>, StoreError> {
        let has_more = records.len() > limit;
        let data = records
            .iter()
            .take(limit)
            .map(|record| self.decode(record))
            .collect::<Result<_, _>>()?;
        Ok(Page { data, has_more })
    }

    /// Writes a new batch record if its input file is still stored (`false` if not), both in
    /// one transaction, so a batch never starts on a file deleted as it was created.
    pub(super) fn insert_batch(&self, stored: &StoredBatch) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(self.failed())?;
        let input = self.seq_of(&transaction, "files", &stored.batch.input_file_id)?;
        if input.is_none() {
            return Ok(false);
        }
        self.insert_batch_in(&transaction, stored, false)?;
        transaction.commit().map_err(self.failed())?;
        Ok(true)
    }

    pub(super) fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        let record = self.record(&self.connection(), "batches", id)?;
        record.map(|record| self.decode(&record)).transpose()
    }

    /// Changes a batch record in one transaction: `change` sees the current record and may
    /// edit it; an edited record is written back. `None` if there is no such batch.
    pub(super) fn update_batch<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Batch) -> T,
    ) -> Result<Option<(Batch, T)>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(self.failed())?;
        let record = self.record(&transaction, "batches", id)?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut batch: Batch = self.decode(&record)?;
        let before = batch.clone();
        let answer = change(&mut batch);
        if batch != before {
            transaction
                .execute(
                    "UPDATE batches SET status = ?2, record = ?3 WHERE id = ?1",
                    params![id, batch.status.as_str(), self.encode(&batch)?],
                )
                .map_err(self.failed())?;
            transaction.commit().map_err(self.failed())?;
        }
        Ok(Some((batch, answer)))
    }

    /// A page of batches, newest first, after the batch `after`; `None` when `after` names
    /// no stored batch.
    pub(super) fn batches(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page<Batch>>, StoreError> {
        let connection = self.connection();
        let Some(after) = self.cursor(&connection, "batches", after)? else {
            return Ok(None);
        };
        let records = self.records(
            &connection,
            "SELECT record FROM batches WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            params![after.unwrap_or(start(Order::Desc)), page_rows(limit)],
        )?;
        Ok(Some(self.page(records, limit)?))
    }

    /// How many batches have each status, in `BatchStatus::ALL`'s order.
    pub(super) fn batch_counts(&self) -> Result<Vec<(BatchStatus, u64)>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare("SELECT count FROM batch_counts WHERE status = ?1")
            .map_err(self.failed())?;
        BatchStatus::ALL
            .into_iter()
            .map(|status| {
                let count: i64 = statement
                    .query_row([status.as_str()], |row| row.get(0))
                    .map_err(self.failed())?;
                Ok((status, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }

    /// The ids of batches not yet in a final state, oldest first.
    pub(super) fn unfinished(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare(&format!(
                "SELECT id FROM batches WHERE status IN ({}) ORDER BY seq ASC",
                unfinished_statuses()
            ))
            .map_err(self.failed())?;
        let ids = statement
            .query_map([], |row| row.get(0))
            .map_err(self.failed())?;
        ids.collect::<Result<_, _>>().map_err(self.failed())
    }
}

/// A migration keeps a record already moved (a migration cut short after its commit); a new
/// record never meets one.
fn insert_verb(or_ignore: bool) -> &'static str {
    match or_ignore {
        true => "INSERT OR IGNORE",
        false => "INSERT",
    }
}

fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |cause| StoreError::Index {
        path: path.to_owned(),
        cause,
    }
}

/// A listing position as SQLite stores it (a signed 64-bit integer). Positions are nanoseconds
/// since the epoch, which fit until 2262.
fn seq(order: u64) -> i64 {
    i64::try_from(order).unwrap_or(i64::MAX)
}

/// The cursor that lists from the first row in `order`.
fn start(order: Order) -> i64 {
    match order {
        Order::Desc => i64::MAX,
        Order::Asc => i64::MIN,
    }
}

/// One row more than a page holds: whether it comes back says whether more follow.
fn page_rows(limit: usize) -> i64 {
    i64::try_from(limit).map_or(i64::MAX, |limit| limit.saturating_add(1))
}

/// The statuses of batches not yet ended, as an SQL list of literals (our own constants).
fn unfinished_statuses() -> String {
    BatchStatus::ALL
        .into_iter()
        .filter(|status| !status.is_terminal())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
