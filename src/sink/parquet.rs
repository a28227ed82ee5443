//! The Parquet results sink: buffers rows, cuts a row group and checkpoints it every
//! `--checkpoint-rows` rows, [`CHECKPOINT_BYTES`] of buffered rows or `--checkpoint-secs`
//! seconds, whichever comes first, and prepares the file at start (new, overwritten, or
//! resumed with its done set).
//!
//! Each row group costs the writer some 35 KB of metadata until the file is closed, and every
//! checkpoint writes the footer of all row groups so far: row groups of thousands of rows keep
//! both small however long the run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::checkpoint::{self, Codec, ExistingResults, FileState, ResultsError, ResultsWriter};
use super::fingerprint::Fingerprint;
use super::results::{self, ExtraColumns, RAW_RESPONSE, RowBuilder};
use super::{Sink, SinkError};
use crate::item::{DoneSet, Outcome};
use crate::reply::ReplyFields;
use crate::shutdown::Shutdown;

/// Buffered rows that make a checkpoint however few they are, so that long rows (raw
/// responses, embeddings) cannot fill memory before `--checkpoint-rows` is reached.
pub const CHECKPOINT_BYTES: usize = 8 << 20;

/// What to do with an existing file at the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Refuse to touch an existing file.
    New,
    /// Replace an existing file.
    Overwrite,
    /// Continue an existing file; with `retry_errors`, drop its error rows and redo them.
    Resume { retry_errors: bool },
}

/// The Parquet output of a run.
#[derive(Debug, Clone)]
pub struct ParquetOutput {
    pub path: PathBuf,
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
    /// The rows kept from an earlier run, as resumed (after `--retry-errors` dropped its error
    /// rows); `None` for a file started anew.
    pub kept: Option<ExistingResults>,
}

/// Checks, before anything else happens, that the output can be used as asked: a `.parquet`
/// name, and no existing file unless resuming or overwriting. Creates nothing.
pub fn check_path(output: &ParquetOutput) -> Result<(), ResultsError> {
    let path = &output.path;
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

/// Opens the output according to its mode; `fingerprint` is written in the file. Nothing is
/// modified unless the mode allows it and the existing file (if any) checks out, its
/// fingerprint included.
pub fn prepare(
    output: &ParquetOutput,
    fingerprint: Fingerprint,
    shutdown: Shutdown,
) -> Result<PreparedOutput, ResultsError> {
    let path = &output.path;
    let schema = results::schema(output.keep_raw, &output.extras);
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
    let retry_errors = matches!(output.mode, OutputMode::Resume { retry_errors: true });
    let (writer, done, dropped_errors, kept) = match start_anew {
        Some(overwrite) => {
            let key_values = fingerprint.key_values();
            let writer = ResultsWriter::create(path, schema, overwrite, output.codec, key_values)?;
            (writer, DoneSet::default(), 0, None)
        }
        None => resume(output, fingerprint, retry_errors)?,
    };
    let kept_rows = writer.durable_rows();
    let rows = RowBuilder::new(writer.schema(), &output.extras);
    Ok(PreparedOutput {
        sink: ParquetSink {
            writer: Some(writer),
            rows,
            checkpoint_rows: output.checkpoint_rows.max(1),
            checkpoint_interval: output.checkpoint_interval,
            last_checkpoint: Instant::now(),
            shutdown,
            abandoned: false,
        },
        done,
        kept_rows,
        dropped_errors,
        kept,
    })
}

/// Continues an existing results file, after checking its columns and fingerprint against
/// this run's (and, with `retry_errors`, dropping its error rows).
fn resume(
    output: &ParquetOutput,
    mut fingerprint: Fingerprint,
    retry_errors: bool,
) -> Result<(ResultsWriter, DoneSet, u64, Option<ExistingResults>), ResultsError> {
    let path = &output.path;
    let mut existing = checkpoint::inspect(path)?;
    let how = if existing.unclosed() {
        "from the last checkpoint of a run that did not finish"
    } else {
        "from a closed file"
    };
    tracing::info!(
        "Resuming {} {how}: {} rows kept.",
        path.display(),
        existing.rows()
    );
    let file_schema = existing.schema(path)?;
    let file_has_raw = file_schema.field_with_name(RAW_RESPONSE).is_ok();
    let expected = results::schema(file_has_raw, &output.extras);
    if file_schema.fields() != expected.fields() {
        let names = |schema: &arrow_schema::SchemaRef| {
            schema
                .fields()
                .iter()
                .map(|field| field.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ResultsError::Damaged {
            path: path.clone(),
            reason: format!(
                "its columns ({}) are not the ones this run writes ({}); write to a new file",
                names(&file_schema),
                names(&expected)
            ),
        });
    }
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
            path: path.clone(),
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
    let key_values = fingerprint.key_values();
    let mut dropped = 0;
    if retry_errors {
        dropped = checkpoint::drop_error_rows(path, &existing, output.codec, key_values.clone())?;
        existing = checkpoint::inspect(path)?;
        tracing::info!("Dropped {dropped} error rows to send those requests again.");
    }
    let writer = ResultsWriter::resume(path, &existing, output.codec, key_values)?;
    if file_has_raw != output.keep_raw {
        tracing::warn!(
            "The results file {} was written {} the raw_response column; keeping it that way.",
            path.display(),
            if file_has_raw { "with" } else { "without" }
        );
    }
    let done = checkpoint::read_done(path, &existing)?;
    Ok((writer, done, dropped, Some(existing)))
}

/// Writes outcomes as rows of the results file.
pub struct ParquetSink {
    /// `None` once closed.
    writer: Option<ResultsWriter>,
    rows: RowBuilder,
    checkpoint_rows: usize,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    /// Tells, at the end, whether the run stopped early (the footer records it).
    shutdown: Shutdown,
    /// Another output failed: the run stopped early.
    abandoned: bool,
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
        self.writer()?.write_row_group(&batch)?;
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

    fn checkpoint(&mut self) -> Result<(), SinkError> {
        let written = self
            .write_buffered_rows()
            .and_then(|()| Ok(self.writer()?.checkpoint()?));
        if let Err(error) = written {
            self.restore_after_failure();
            return Err(error);
        }
        self.last_checkpoint = Instant::now();
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
        }
        Ok(())
    }
}
