//! Appending row groups to a results file and checkpointing them: each checkpoint stages the
//! published file's data plus the new row groups and a footer, then renames the staging file
//! over the published one. Resuming re-registers the kept column chunks from their metadata.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowRowGroupWriterFactory, ArrowWriterOptions, compute_leaves,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{
    FileMetaData, KeyValue, ParquetMetaDataBuilder, ParquetMetaDataWriter, RowGroupMetaData,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::existing::ExistingResults;
use super::side_files::{STAGING_SUFFIX, sync_folder};
use super::{FileState, PARQUET_MAGIC, ResultsError, STATE_KEY, io_error, parquet_error};
use crate::paths::with_suffix;

/// Compression of the results' column chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Codec {
    /// Small files, fast enough; every reader supports it.
    #[default]
    Zstd,
    Snappy,
    Uncompressed,
}

impl Codec {
    pub fn parse(name: &str) -> Option<Codec> {
        match name.to_ascii_lowercase().as_str() {
            "zstd" => Some(Codec::Zstd),
            "snappy" => Some(Codec::Snappy),
            "none" | "uncompressed" => Some(Codec::Uncompressed),
            _ => None,
        }
    }

    fn parquet(self) -> Compression {
        match self {
            Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
            Codec::Snappy => Compression::SNAPPY,
            Codec::Uncompressed => Compression::UNCOMPRESSED,
        }
    }
}

/// Long free-text columns: min/max statistics on them help no query and, kept for every row
/// group, make the footer (rebuilt at each checkpoint) and the writer's memory grow.
const UNSTATISTICAL_COLUMNS: [&[&str]; 4] = [
    &["content"],
    &["raw_response"],
    &["error_message"],
    &["embedding", "list", "item"],
];

fn writer_properties(codec: Codec) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(codec.parquet())
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_statistics_truncate_length(Some(64))
        .set_offset_index_disabled(true)
        .set_created_by(concat!("batchflow ", env!("CARGO_PKG_VERSION")).to_owned());
    for path in UNSTATISTICAL_COLUMNS {
        let path = ColumnPath::new(path.iter().map(|part| (*part).to_owned()).collect());
        builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    builder.build()
}

/// The writer's sink. The published file (at `path`) is never written to: new bytes go to a
/// staging file (`<path>.tmp`) that starts as a copy of the published file's data and replaces
/// the published file by an atomic rename at the next checkpoint, so a reader opening the path
/// at any instant finds a whole file. Positions below `skip_until` are kept row groups being
/// re-registered (already in the published file), so their bytes are dropped.
struct StagedFile {
    path: PathBuf,
    staging_path: PathBuf,
    /// Open from the first byte written after a checkpoint until the next one.
    staging: Option<File>,
    /// Where the published file's row groups end: what a new staging file starts with.
    published_data_end: u64,
    position: u64,
    skip_until: u64,
}

impl StagedFile {
    /// The staging file, made on first use from a copy of the published file's data (in the
    /// kernel: `io::copy` between files is `copy_file_range` on Linux, a reflink where the
    /// file system has them).
    fn staging(&mut self) -> io::Result<&File> {
        if let Some(ref staging) = self.staging {
            return Ok(staging);
        }
        let mut staging = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.staging_path)?;
        if self.published_data_end > 0 {
            let published = File::open(&self.path)?;
            let copied = io::copy(&mut published.take(self.published_data_end), &mut staging)?;
            if copied != self.published_data_end {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ended after {copied} bytes, before its last checkpoint's {}",
                        self.path.display(),
                        self.published_data_end
                    ),
                ));
            }
        }
        Ok(self.staging.insert(staging))
    }

    /// Drops the staging file: the published file stays as it was.
    fn discard(&mut self) -> io::Result<()> {
        self.staging = None;
        match fs::remove_file(&self.staging_path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.position + buf.len() as u64;
        if end <= self.skip_until {
            self.position = end;
            return Ok(buf.len());
        }
        let skipped = self.skip_until.saturating_sub(self.position) as usize;
        let at = self.position + skipped as u64;
        self.staging()?.write_all_at(&buf[skipped..], at)?;
        self.position = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stands in for the bytes of kept column chunks during re-registration; they are discarded
/// by [`AppendFile`], so their content does not matter.
struct KeptBytes;

impl Length for KeptBytes {
    fn len(&self) -> u64 {
        u64::MAX
    }
}

impl ChunkReader for KeptBytes {
    type T = io::Repeat;

    fn get_read(&self, _start: u64) -> parquet::errors::Result<io::Repeat> {
        Ok(io::repeat(0))
    }

    fn get_bytes(&self, _start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        Ok(Bytes::from(vec![0; length]))
    }
}

/// Appends row groups to a results file, checkpointing on request.
pub struct ResultsWriter {
    writer: SerializedFileWriter<StagedFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    durable_rows: u64,
    /// A write failed: what is written since the last checkpoint is torn and must never be
    /// published.
    failed: bool,
    /// Written in every footer beside the state: what produced the file.
    key_values: Vec<KeyValue>,
}

impl ResultsWriter {
    /// Starts a new file, published at once with no rows (so that readers and `--resume` find
    /// a valid file from the first instant). It must not exist unless `overwrite`, and an
    /// existing file stays whole until the empty one replaces it. `key_values` go in every
    /// footer.
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        overwrite: bool,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        if !overwrite && path.symlink_metadata().is_ok() {
            return Err(ResultsError::Exists {
                path: path.to_owned(),
            });
        }
        let mut writer = ResultsWriter::open(path, schema, &[], 0, codec, key_values)?;
        writer.checkpoint()?;
        Ok(writer)
    }

    /// Continues a file found by [`super::inspect`], appending after its row groups.
    pub fn resume(
        path: &Path,
        existing: &ExistingResults,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        let schema = existing.schema(path)?;
        let row_groups = existing.metadata.row_groups();
        let mut writer = ResultsWriter::open(
            path,
            schema,
            row_groups,
            existing.data_end,
            codec,
            key_values,
        )?;
        writer.durable_rows = existing.rows();
        Ok(writer)
    }

    fn open(
        path: &Path,
        schema: SchemaRef,
        kept: &[RowGroupMetaData],
        data_end: u64,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        let sink = StagedFile {
            path: path.to_owned(),
            staging_path: with_suffix(path, STAGING_SUFFIX),
            staging: None,
            published_data_end: data_end,
            position: 0,
            skip_until: data_end,
        };
        let options = ArrowWriterOptions::new().with_properties(writer_properties(codec));
        let (mut writer, factory) =
            ArrowWriter::try_new_with_options(sink, Arc::clone(&schema), options)
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(parquet_error(path))?;
        for group in kept {
            let mut group_writer = writer.next_row_group().map_err(parquet_error(path))?;
            for column in group.columns() {
                let close = ColumnCloseResult {
                    bytes_written: u64::try_from(column.compressed_size()).unwrap_or(0),
                    rows_written: u64::try_from(group.num_rows()).unwrap_or(0),
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                group_writer
                    .append_column(&KeptBytes, close)
                    .map_err(parquet_error(path))?;
            }
            group_writer.close().map_err(parquet_error(path))?;
        }
        writer.flush().map_err(io_error(path))?;
        if writer.bytes_written() as u64 != data_end.max(PARQUET_MAGIC.len() as u64) {
            return Err(ResultsError::Damaged {
                path: path.to_owned(),
                reason: format!(
                    "its row groups do not lie back to back up to byte {data_end}, so it cannot be appended to"
                ),
            });
        }
        Ok(ResultsWriter {
            writer,
            factory,
            schema,
            durable_rows: 0,
            failed: false,
            key_values,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The published file.
    pub fn path(&self) -> &Path {
        &self.writer.inner().path
    }

    /// Rows safe on disk as of the last checkpoint.
    pub fn durable_rows(&self) -> u64 {
        self.durable_rows
    }

    /// Bytes of row groups written so far (what the next checkpoint's staging file copies).
    pub fn data_bytes(&self) -> u64 {
        self.writer.bytes_written() as u64
    }

    /// Row groups written so far, kept ones included.
    pub fn row_groups(&self) -> usize {
        self.writer.flushed_row_groups().len()
    }

    fn written_rows(&self) -> u64 {
        self.writer
            .flushed_row_groups()
            .iter()
            .map(|group| u64::try_from(group.num_rows()).unwrap_or(0))
            .sum()
    }

    /// Writes `batch` as one row group (not yet durable: see [`ResultsWriter::checkpoint`]).
    pub fn write_row_group(&mut self, batch: &RecordBatch) -> Result<(), ResultsError> {
        let path = self.path().to_owned();
        let index = self.writer.flushed_row_groups().len();
        let mut column_writers = self
            .factory
            .create_column_writers(index)
            .map_err(parquet_error(&path))?;
        let mut column_writer = column_writers.iter_mut();
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, array).map_err(parquet_error(&path))? {
                let writer = column_writer
                    .next()
                    .expect("the factory makes one writer per leaf column of the schema");
                writer.write(&leaf).map_err(parquet_error(&path))?;
            }
        }
        let mut group_writer = self.writer.next_row_group().map_err(parquet_error(&path))?;
        for writer in column_writers {
            let chunk = writer.close().map_err(parquet_error(&path))?;
            chunk
                .append_to_row_group(&mut group_writer)
                .map_err(parquet_error(&path))?;
        }
        group_writer.close().map_err(parquet_error(&path))?;
        Ok(())
    }

    /// Footer bytes describing every row group written so far.
    fn footer(&self, state: FileState) -> Result<Vec<u8>, ResultsError> {
        let properties = self.writer.properties();
        let row_groups = self.writer.flushed_row_groups().to_vec();
        let mut key_values = properties.key_value_metadata().cloned().unwrap_or_default();
        key_values.extend(self.key_values.iter().cloned());
        key_values.push(KeyValue::new(
            STATE_KEY.to_owned(),
            state.as_str().to_owned(),
        ));
        let file_metadata = FileMetaData::new(
            properties.writer_version().as_num(),
            i64::try_from(self.written_rows()).unwrap_or(i64::MAX),
            Some(properties.created_by().to_owned()),
            Some(key_values),
            Arc::new(self.writer.schema_descr().clone()),
            None,
        );
        let metadata = ParquetMetaDataBuilder::new(file_metadata)
            .set_row_groups(row_groups)
            .build();
        let mut footer = Vec::new();
        ParquetMetaDataWriter::new(&mut footer, &metadata)
            .finish()
            .map_err(parquet_error(self.path()))?;
        Ok(footer)
    }

    /// Writes the footer after the data in the staging file, fsyncs it and renames it over the
    /// published file: from then on a reader opening the path sees these rows.
    fn publish(&mut self, state: FileState) -> Result<(), ResultsError> {
        let path = self.path().to_owned();
        self.writer.flush().map_err(io_error(&path))?;
        let data_end = self.writer.bytes_written() as u64;
        let footer = self.footer(state)?;
        let sink = self.writer.inner_mut();
        let staging_path = sink.staging_path.clone();
        let io = io_error(&staging_path);
        let staging = sink.staging().map_err(&io)?;
        staging.write_all_at(&footer, data_end).map_err(&io)?;
        staging
            .set_len(data_end + footer.len() as u64)
            .map_err(&io)?;
        staging.sync_data().map_err(&io)?;
        fs::rename(&staging_path, &path).map_err(io_error(&path))?;
        sink.staging = None;
        sink.published_data_end = data_end;
        sync_folder(&path)?;
        self.durable_rows = self.written_rows();
        Ok(())
    }

    /// Makes every row group written so far durable and visible. After this returns, a crash
    /// at any instant loses none of these rows.
    pub fn checkpoint(&mut self) -> Result<(), ResultsError> {
        self.publish(FileState::InProgress)
    }

    /// After a failed write (a full disk), drops what was staged since the last checkpoint: the
    /// published file is that checkpoint, readable and resumable as it is.
    pub fn restore_last_checkpoint(&mut self) -> Result<(), ResultsError> {
        self.failed = true;
        let sink = self.writer.inner_mut();
        let staging_path = sink.staging_path.clone();
        sink.discard().map_err(io_error(&staging_path))
    }

    /// Publishes the file for good with `state` in its footer. Returns the row count. After a
    /// failed write it publishes nothing: the last checkpoint stays, resumable.
    pub fn close(mut self, state: FileState) -> Result<u64, ResultsError> {
        if !self.failed {
            self.publish(state)?;
        }
        Ok(self.durable_rows)
    }
}
