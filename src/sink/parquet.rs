//! The Parquet results sink: buffers rows, cuts a row group and checkpoints it every
//! `--checkpoint-rows` rows, [`CHECKPOINT_BYTES`] of buffered rows or `--checkpoint-secs`
//! seconds, whichever comes first, and prepares the file at start (new, overwritten, or
//! resumed with its done set).
//!
//! Each row group costs the writer some 35 KB of metadata until the file is closed, and every
//! checkpoint writes the footer of all row groups so far: row groups of thousands of rows keep
//! both small however long the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parquet::file::metadata::KeyValue;

use super::checkpoint::{self, Codec, ExistingResults, FileState, ResultsError, ResultsWriter};
use super::dataset::{self, PartOwner};
use super::fingerprint::Fingerprint;
use super::generation::{self, Marker, Settled};
use super::lock::{self, WriterLock};
use super::remote::RemoteShard;
use super::results::{self, ExtraColumns, RAW_RESPONSE, RowBuilder};
use super::{Sink, SinkError};
use crate::item::{DoneSet, Outcome};
use crate::reply::ReplyFields;
use crate::shutdown::Shutdown;
use crate::storage::Remote;

/// Buffered rows that make a checkpoint however few they are, so that long rows (raw
/// responses, embeddings) cannot fill memory before `--checkpoint-rows` is reached.
pub const CHECKPOINT_BYTES: usize = 8 << 20;

pub use super::mode::OutputMode;

/// The Parquet output of a run.
#[derive(Debug, Clone)]
pub struct ParquetOutput {
    /// The results file, or the dataset directory when `dataset` is set.
    pub path: PathBuf,
    /// `Some` when `path` names a dataset directory: whose parts this run writes there.
    pub dataset: Option<PartOwner>,
    /// Row groups that seal a dataset part (see [`dataset`]).
    pub part_row_groups: usize,
    /// For a dataset on object storage: where each part is uploaded at every checkpoint.
    /// `path` is then a local staging directory, a cache of the remote parts.
    pub remote: Option<Remote>,
    pub mode: OutputMode,
    /// Keep each response body as JSON text in `raw_response`.
    pub keep_raw: bool,
    pub checkpoint_rows: usize,
    pub checkpoint_interval: Duration,
    /// A pipeline's passthrough and output columns.
    pub extras: ExtraColumns,
    pub codec: Codec,
    /// Resume even if the file was made with another model, template, options or schema
    /// (the change is recorded in the file).
    pub allow_config_change: bool,
    /// Told of each checkpoint, for a reader that follows the file as it grows (a later
    /// stage of a pipeline reads the rows an earlier one published).
    pub published: Option<Published>,
}

/// What a follower of a results file is told: how many times rows were published, and
/// whether the writer is done. Each checkpoint (and the close) renames a complete file over
/// the last, so whatever a follower opens after a change is whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishState {
    pub checkpoints: u64,
    /// No row will be published after this: the run that writes the file has ended.
    pub ended: bool,
}

/// The sending side of [`PublishState`], shared by the sink and the run that owns it.
#[derive(Debug, Clone)]
pub struct Published(Arc<tokio::sync::watch::Sender<PublishState>>);

impl Published {
    pub fn new() -> Published {
        Published(Arc::new(tokio::sync::watch::Sender::new(
            PublishState::default(),
        )))
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<PublishState> {
        self.0.subscribe()
    }

    fn checkpointed(&self) {
        self.0.send_modify(|state| state.checkpoints += 1);
    }

    /// The writing run is over, however it ended.
    pub fn end(&self) {
        self.0.send_modify(|state| state.ended = true);
    }
}

impl Default for Published {
    fn default() -> Published {
        Published::new()
    }
}

/// The sink, ready to write, and what the file already held.
pub struct PreparedOutput {
    pub sink: ParquetSink,
    /// Lines to skip; empty for a new file.
    pub done: DoneSet,
    /// Rows kept from an earlier run.
    pub kept_rows: u64,
    /// Error rows dropped by `--retry-errors`.
    pub dropped_errors: u64,
    /// The files whose rows are kept from an earlier run, as resumed (after `--retry-errors`
    /// dropped their error rows); empty for output started anew.
    pub kept: Vec<(PathBuf, ExistingResults)>,
}

/// Checks, before anything else happens, that the output can be used as asked: a `.parquet`
/// name (or a dataset directory), and no existing file (no part of this run's shard) unless
/// resuming or overwriting. Creates nothing.
pub fn check_path(output: &ParquetOutput) -> Result<(), ResultsError> {
    let path = &output.path;
    if let Some(remote) = &output.remote
        && matches!(output.mode, OutputMode::Resume { prune: true, .. })
    {
        return Err(ResultsError::PruneRemote {
            url: remote.url().to_owned(),
        });
    }
    if output.remote.is_some() {
        // What the remote holds is listed when the output is prepared (this runs on the async
        // runtime, which must not wait on a store); a refusal there still precedes any write.
        return Ok(());
    }
    let lock_path = match output.dataset {
        Some(owner) => dataset::lock_path(path, owner),
        None => lock::file_lock_path(path),
    };
    if let Some(holder) = lock::holder(&lock_path)? {
        return Err(ResultsError::Busy {
            path: lock_path,
            owner: output
                .dataset
                .map_or_else(|| path.display().to_string(), PartOwner::describe),
            holder: holder.describe(),
        });
    }
    if let Some(owner) = output.dataset {
        if output.mode == OutputMode::New {
            if let Some(part) = dataset::list_parts(path, owner)?.first() {
                return Err(ResultsError::Exists {
                    path: part.path.clone(),
                });
            }
        }
        return Ok(());
    }
    if path
        .extension()
        .is_none_or(|extension| !extension.eq_ignore_ascii_case("parquet"))
    {
        return Err(ResultsError::NotParquet { path: path.clone() });
    }
    if output.mode == OutputMode::New && path.symlink_metadata().is_ok() {
        return Err(ResultsError::Exists { path: path.clone() });
    }
    Ok(())
}

/// The output as opened: its writer and what it already held.
struct Opened {
    writer: ResultsWriter,
    done: DoneSet,
    dropped_errors: u64,
    kept: Vec<(PathBuf, ExistingResults)>,
    /// For a dataset: where the part after the writer's goes.
    next_part: Option<NextPart>,
    /// Kept files that `--retry-errors` rewrote.
    rewritten: Vec<PathBuf>,
    /// For a dataset: the names of parts taken out of it (stale, damaged, empty).
    dropped: Vec<String>,
}

/// Opens the output according to its mode; `fingerprint` is written in the file (in every part).
/// Nothing is modified unless the mode allows it and the existing file (if any) checks out, its
/// fingerprint included.
pub fn prepare(
    output: &ParquetOutput,
    fingerprint: Fingerprint,
    shutdown: Shutdown,
) -> Result<PreparedOutput, ResultsError> {
    let (opened, lock, remote) = match (output.dataset, &output.remote) {
        (Some(owner), remote) => {
            match remote {
                Some(_) => crate::storage::create_private_dir(&output.path)?,
                None => dataset::create_dir(&output.path)?,
            }
            // A local staging folder of a store's dataset is a cache: nothing of it outlives
            // the run (see `StagingFolder`), its lock file included.
            let lock_file = match remote {
                Some(_) => lock::LockFile::RemovedAtEnd,
                None => lock::LockFile::Kept,
            };
            let lock = dataset::lock(&output.path, owner, lock_file)?;
            // A run that starts a generation on a store records it there before anything else.
            let marker = remote.as_ref().and_then(|_| Marker::for_mode(output.mode));
            let mut shard = remote
                .as_ref()
                .map(|remote| {
                    RemoteShard::open(remote, owner, &output.path, output.mode, marker.as_ref())
                })
                .transpose()?;
            let opened = open_dataset(output, owner, fingerprint, marker)?;
            // Parts rewritten by --retry-errors replace their remote objects now, before any
            // new row (the requests they lost are sent again); parts taken out of the dataset
            // leave the store too.
            if let Some(shard) = &mut shard {
                for path in &opened.rewritten {
                    shard.publish(path)?;
                }
                shard.remove(&opened.dropped)?;
            }
            (opened, Some(lock), shard)
        }
        (None, _) => {
            let lock = lock::take(
                &lock::file_lock_path(&output.path),
                &output.path.display().to_string(),
                lock::LockFile::RemovedAtEnd,
            )?;
            (open_file(output, fingerprint)?, Some(lock), None)
        }
    };
    let kept_rows = opened.kept.iter().map(|(_, kept)| kept.rows()).sum();
    let rows = RowBuilder::new(opened.writer.schema(), &output.extras);
    Ok(PreparedOutput {
        sink: ParquetSink {
            writer: Some(opened.writer),
            next_part: opened.next_part,
            remote,
            _lock: lock,
            _staging: output
                .remote
                .as_ref()
                .zip(output.dataset)
                .map(|(_, owner)| StagingFolder {
                    dir: output.path.clone(),
                    owner,
                }),
            rows,
            checkpoint_rows: output.checkpoint_rows.max(1),
            checkpoint_interval: output.checkpoint_interval,
            last_checkpoint: Instant::now(),
            shutdown,
            abandoned: false,
            published: output.published.clone(),
        },
        done: opened.done,
        kept_rows,
        dropped_errors: opened.dropped_errors,
        kept: opened.kept,
    })
}

/// Opens a single results file.
fn open_file(output: &ParquetOutput, fingerprint: Fingerprint) -> Result<Opened, ResultsError> {
    let path = &output.path;
    let exists = path.symlink_metadata().is_ok();
    // `Some(overwrite)`: a file is started anew; `None`: the existing one is resumed.
    let start_anew = match output.mode {
        OutputMode::New if exists => return Err(ResultsError::Exists { path: path.clone() }),
        OutputMode::New => Some(false),
        OutputMode::Overwrite => Some(true),
        OutputMode::Resume { .. } if !exists => {
            tracing::info!(
                "Nothing to resume at {}: starting a new results file.",
                path.display()
            );
            Some(false)
        }
        OutputMode::Resume { .. } if checkpoint::holds_nothing(path)? => {
            tracing::info!(
                "{} holds no rows (its run was stopped before its first checkpoint): starting it again in place.",
                path.display()
            );
            Some(true)
        }
        OutputMode::Resume { .. } => None,
    };
    if let Some(overwrite) = start_anew {
        let schema = results::schema(output.keep_raw, &output.extras);
        let key_values = fingerprint.key_values();
        let writer = ResultsWriter::create(path, schema, overwrite, output.codec, key_values)?;
        return Ok(Opened {
            writer,
            done: DoneSet::default(),
            dropped_errors: 0,
            kept: Vec::new(),
            next_part: None,
            rewritten: Vec::new(),
            dropped: Vec::new(),
        });
    }
    let mut done = DoneSet::default();
    let (existing, dropped_errors, fingerprint) = keep(output, path, fingerprint, &mut done)?;
    let writer = ResultsWriter::resume(path, &existing, output.codec, fingerprint.key_values())?;
    Ok(Opened {
        writer,
        done,
        dropped_errors,
        kept: vec![(path.clone(), existing)],
        next_part: None,
        rewritten: Vec::new(),
        dropped: Vec::new(),
    })
}

/// Opens `owner`'s parts of a dataset directory: resumes its last part (or starts the next one
/// when that is sealed), after reading what every earlier part holds.
fn open_dataset(
    output: &ParquetOutput,
    owner: PartOwner,
    mut fingerprint: Fingerprint,
    marker: Option<Marker>,
) -> Result<Opened, ResultsError> {
    let dir = &output.path;
    let Settled {
        parts,
        marker,
        dropped,
    } = generation::settle(dir, owner, output.mode, marker)?;
    match output.mode {
        OutputMode::Resume { .. } if parts.is_empty() => tracing::info!(
            "Nothing of {} to resume in {}: starting its first part.",
            owner.describe(),
            dir.display()
        ),
        OutputMode::Resume { .. } => tracing::info!(
            "Resuming {} in {}: {} parts.",
            owner.describe(),
            dir.display(),
            parts.len()
        ),
        OutputMode::New | OutputMode::Overwrite => {}
    }
    let mut done = DoneSet::default();
    let mut kept = Vec::new();
    let mut dropped_errors = 0;
    let mut rewritten = Vec::new();
    // A last part with no rows (its run was stopped before its first checkpoint) is started
    // again in place rather than left as an empty file.
    let mut reuse_last = None;
    let last_seq = parts.last().map(|part| part.seq);
    // Every part is checked before any is modified: a part that fails its check (other
    // columns, other settings) must find the earlier ones as they were.
    let mut checked = Vec::new();
    for part in &parts {
        if checkpoint::holds_nothing(&part.path)? {
            if Some(part.seq) == last_seq {
                reuse_last = Some(part.seq);
            }
            continue;
        }
        let (existing, carried) = check_kept(output, &part.path, fingerprint)?;
        fingerprint = carried;
        checked.push((part.path.clone(), existing));
    }
    let mut key_values = fingerprint.key_values();
    key_values.extend(marker.as_ref().map(Marker::key_value));
    for (path, existing) in checked {
        let (existing, dropped) =
            take_kept(output, &path, existing, key_values.clone(), &mut done)?;
        dropped_errors += dropped;
        if dropped > 0 {
            rewritten.push(path.clone());
        }
        kept.push((path, existing));
    }
    let full = |existing: &ExistingResults| {
        existing.data_end >= dataset::PART_BYTES
            || existing.metadata.num_row_groups() >= output.part_row_groups.max(1)
    };
    let schema = results::schema(output.keep_raw, &output.extras);
    let last_part = parts.last().map(|part| (part.path.as_path(), part.seq));
    let continued = match (kept.last(), last_part) {
        (Some((path, existing)), Some((last_path, seq)))
            if path == last_path && !full(existing) =>
        {
            Some((path, existing, seq))
        }
        _ => None,
    };
    let (writer, seq) = if let Some((path, existing, seq)) = continued {
        let writer = ResultsWriter::resume(path, existing, output.codec, key_values.clone())?;
        (writer, seq)
    } else {
        // A new part, or the empty last one started again in place.
        let seq = reuse_last.unwrap_or_else(|| last_part.map_or(0, |(_, seq)| seq + 1));
        let path = dir.join(owner.part_name(seq));
        let overwrite = reuse_last.is_some();
        let writer =
            ResultsWriter::create(&path, schema, overwrite, output.codec, key_values.clone())?;
        (writer, seq)
    };
    Ok(Opened {
        writer,
        done,
        dropped_errors,
        kept,
        rewritten,
        dropped,
        next_part: Some(NextPart {
            dir: dir.clone(),
            owner,
            seq: seq + 1,
            row_groups: output.part_row_groups.max(1),
            codec: output.codec,
            key_values,
        }),
    })
}

/// Checks an existing results file against this run, drops its error rows if asked, and adds
/// what it holds to `done`. Returns the file as kept, the error rows dropped, and this run's
/// fingerprint with the file's record of changes carried over.
fn keep(
    output: &ParquetOutput,
    path: &Path,
    fingerprint: Fingerprint,
    done: &mut DoneSet,
) -> Result<(ExistingResults, u64, Fingerprint), ResultsError> {
    let (existing, fingerprint) = check_kept(output, path, fingerprint)?;
    let key_values = fingerprint.key_values();
    let (existing, dropped) = take_kept(output, path, existing, key_values, done)?;
    Ok((existing, dropped, fingerprint))
}

/// Checks an existing results file against this run (columns and fingerprint), modifying
/// nothing. Returns the file and this run's fingerprint with the file's record of changes
/// carried over.
fn check_kept(
    output: &ParquetOutput,
    path: &Path,
    mut fingerprint: Fingerprint,
) -> Result<(ExistingResults, Fingerprint), ResultsError> {
    let existing = checkpoint::inspect(path)?;
    let how = if existing.unclosed() {
        "from the last checkpoint of a run that did not finish"
    } else {
        "from a closed file"
    };
    if output.dataset.is_some() {
        // One line per part would say little; the dataset's line says how many.
        tracing::debug!(part = %path.display(), rows = existing.rows(), "Kept a part.");
    } else {
        tracing::info!(
            "Resuming {} {how}: {} rows kept.",
            path.display(),
            existing.rows()
        );
    }
    let file_has_raw = check_columns(output, path, &existing)?;
    let file_fingerprint =
        Fingerprint::read(existing.metadata.file_metadata().key_value_metadata());
    let changes = match &file_fingerprint {
        Some(file) => file.changes(&fingerprint),
        // Before fingerprints, derived ids came from std's hasher: this run's differ, and
        // every record would be sent again beside its old row.
        None if fingerprint.derives_ids() && existing.rows() > 0 => vec![format!(
            "id_scheme was not recorded (an older batchflow, whose derived custom_ids differ) and is now {}",
            fingerprint.id_scheme()
        )],
        None => {
            tracing::info!(
                "{} does not record what produced it (an older batchflow wrote it); its settings cannot be compared.",
                path.display()
            );
            Vec::new()
        }
    };
    if !changes.is_empty() && !output.allow_config_change {
        return Err(ResultsError::ConfigChanged {
            path: path.to_owned(),
            changes: changes.join("; "),
        });
    }
    if !changes.is_empty() {
        tracing::warn!(
            "Resuming {} with other settings ({}); the change is recorded in the file.",
            path.display(),
            changes.join("; ")
        );
    }
    fingerprint.record_changes(file_fingerprint.as_ref(), &changes);
    if file_has_raw != output.keep_raw {
        tracing::warn!(
            "The results file {} was written {} the raw_response column; keeping it that way.",
            path.display(),
            if file_has_raw { "with" } else { "without" }
        );
    }
    Ok((existing, fingerprint))
}

/// Takes a checked file's rows as done, after dropping its error rows if `--retry-errors`
/// asks (the rewrite carries `key_values`). Returns the file as kept and the rows dropped.
fn take_kept(
    output: &ParquetOutput,
    path: &Path,
    mut existing: ExistingResults,
    key_values: Vec<KeyValue>,
    done: &mut DoneSet,
) -> Result<(ExistingResults, u64), ResultsError> {
    let retry_errors = matches!(
        output.mode,
        OutputMode::Resume {
            retry_errors: true,
            ..
        }
    );
    let mut dropped = 0;
    if retry_errors && !existing.groups_with_errors().is_empty() {
        dropped = checkpoint::drop_error_rows(path, &existing, output.codec, key_values)?;
        existing = checkpoint::inspect(path)?;
        tracing::info!(
            "Dropped {dropped} error rows of {} to send those requests again.",
            path.display()
        );
    }
    checkpoint::read_done(path, &existing, done)?;
    Ok((existing, dropped))
}

/// Checks that a kept file has the columns this run writes; returns whether it keeps raw
/// responses (which is how a row is stored, not what it holds).
fn check_columns(
    output: &ParquetOutput,
    path: &Path,
    existing: &ExistingResults,
) -> Result<bool, ResultsError> {
    let file_schema = existing.schema(path)?;
    let file_has_raw = file_schema.field_with_name(RAW_RESPONSE).is_ok();
    let expected = results::schema(file_has_raw, &output.extras);
    if file_schema.fields() == expected.fields() {
        return Ok(file_has_raw);
    }
    let names = |schema: &arrow_schema::SchemaRef| {
        schema
            .fields()
            .iter()
            .map(|field| field.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(ResultsError::Damaged {
        path: path.to_owned(),
        reason: format!(
            "its columns ({}) are not the ones this run writes ({}); write to a new file",
            names(&file_schema),
            names(&expected)
        ),
    })
}

/// Where a dataset's next part goes once the current one is sealed.
struct NextPart {
    dir: PathBuf,
    owner: PartOwner,
    seq: u64,
    /// Row groups that seal a part.
    row_groups: usize,
    codec: Codec,
    key_values: Vec<KeyValue>,
}

/// The local staging folder of a shard of a remote dataset: its generation marker and the
/// folder itself go when the sink is dropped. A folder still holding parts (a run that failed
/// before uploading them) stays, and the next run of the shard empties it.
struct StagingFolder {
    dir: PathBuf,
    owner: PartOwner,
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(generation::marker_name(self.owner)));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Writes outcomes as rows of the results file.
pub struct ParquetSink {
    /// `None` once closed.
    writer: Option<ResultsWriter>,
    /// For a dataset: the part that follows the writer's once it is sealed.
    next_part: Option<NextPart>,
    /// For a dataset on object storage: where each published part is uploaded.
    remote: Option<RemoteShard>,
    /// This run's hold on its results file or its shard's parts, until the sink is dropped.
    _lock: Option<WriterLock>,
    /// For a dataset on object storage: its local staging folder, removed once the lock is
    /// let go (fields drop in order).
    _staging: Option<StagingFolder>,
    rows: RowBuilder,
    checkpoint_rows: usize,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    /// Tells, at the end, whether the run stopped early (the footer records it).
    shutdown: Shutdown,
    /// Another output failed: the run stopped early.
    abandoned: bool,
    published: Option<Published>,
}

impl ParquetSink {
    fn writer(&mut self) -> Result<&mut ResultsWriter, SinkError> {
        self.writer.as_mut().ok_or_else(|| {
            SinkError::Io(std::io::Error::other("the results file is already closed"))
        })
    }

    fn write_buffered_rows(&mut self) -> Result<(), SinkError> {
        if self.rows.rows() == 0 {
            return Ok(());
        }
        let batch = self
            .rows
            .finish()
            .map_err(|error| SinkError::Io(std::io::Error::other(error)))?;
        self.seal_full_part()?;
        self.writer()?.write_row_group(&batch)?;
        Ok(())
    }

    /// In a dataset, starts the next part when the current one is full. The current part is
    /// left as published at its last checkpoint (row groups are only written right before a
    /// checkpoint), so sealing it writes nothing.
    fn seal_full_part(&mut self) -> Result<(), SinkError> {
        let (Some(next), Some(writer)) = (&mut self.next_part, &self.writer) else {
            return Ok(());
        };
        if writer.data_bytes() < dataset::PART_BYTES && writer.row_groups() < next.row_groups {
            return Ok(());
        }
        let path = next.dir.join(next.owner.part_name(next.seq));
        let schema = writer.schema();
        let writer =
            ResultsWriter::create(&path, schema, false, next.codec, next.key_values.clone())?;
        next.seq += 1;
        let sealed = self.writer.replace(writer);
        if let (Some(sealed), Some(_)) = (sealed, &self.remote) {
            // Uploaded at its last checkpoint: the local copy is only a cache.
            let path = sealed.path().to_owned();
            drop(sealed);
            std::fs::remove_file(&path).map_err(SinkError::Io)?;
        }
        Ok(())
    }

    /// After a failed write, leaves the file as of its last checkpoint rather than publishing a
    /// torn row group.
    fn restore_after_failure(&mut self) {
        if let Some(writer) = &mut self.writer {
            if let Err(restore) = writer.restore_last_checkpoint() {
                tracing::warn!(
                    "Cannot remove the rows staged since the last checkpoint: {restore}."
                );
            }
        }
    }

    /// Uploads the current part as published (a dataset on object storage only).
    fn upload_current(&mut self) -> Result<(), SinkError> {
        if let (Some(remote), Some(writer)) = (&mut self.remote, &self.writer) {
            remote.publish(writer.path())?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), SinkError> {
        let written = self
            .write_buffered_rows()
            .and_then(|()| Ok(self.writer()?.checkpoint()?))
            .and_then(|()| self.upload_current());
        if let Err(error) = written {
            self.restore_after_failure();
            return Err(error);
        }
        self.last_checkpoint = Instant::now();
        if let Some(published) = &self.published {
            published.checkpointed();
        }
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, outcome: &Outcome, reply: &ReplyFields) -> Result<(), SinkError> {
        self.rows.push(outcome, reply);
        if self.rows.rows() >= self.checkpoint_rows
            || self.rows.buffered_bytes() >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= self.checkpoint_interval
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        (self.rows.rows() > 0).then(|| self.last_checkpoint + self.checkpoint_interval)
    }

    fn on_deadline(&mut self) -> Result<(), SinkError> {
        if self.rows.rows() > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn abandon(&mut self) -> Result<(), SinkError> {
        self.abandoned = true;
        self.finish()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Err(error) = self.write_buffered_rows() {
            self.restore_after_failure();
            return Err(error);
        }
        let state = if self.abandoned || self.shutdown.is_stopping() {
            FileState::Interrupted
        } else {
            FileState::Complete
        };
        if let Some(writer) = self.writer.take() {
            let path = writer.path().to_owned();
            writer.close(state)?;
            checkpoint::remove_leftovers(&path)?;
            if let (Some(remote), Some(next)) = (&mut self.remote, &self.next_part) {
                remote.publish(&path)?;
                // The store holds every part now: the local copies (the parts downloaded to
                // resume, the last one written) are only a cache.
                dataset::remove_parts(&next.dir, next.owner)?;
            }
            if let Some(published) = &self.published {
                published.checkpointed();
            }
        }
        Ok(())
    }
}
