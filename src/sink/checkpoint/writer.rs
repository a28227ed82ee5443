//! Appending row groups to a results file in place and checkpointing them: a footer for every
//! row group so far at the data end, then the marker. Resuming re-registers the kept column
//! chunks from their metadata instead of copying them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
use super::marker::{marker_path, sync_folder, write_marker};
use super::{FileState, PARQUET_MAGIC, ResultsError, STATE_KEY, io_error, parquet_error};

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

/// The writer's sink: positions below `skip_until` are already on disk (kept row groups being
/// re-registered), so bytes for them are dropped; later bytes are written at their position.
struct AppendFile {
    file: File,
    position: u64,
    skip_until: u64,
}

impl Write for AppendFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.position + buf.len() as u64;
        if end <= self.skip_until {
            self.position = end;
            return Ok(buf.len());
        }
        let skipped = self.skip_until.saturating_sub(self.position) as usize;
        self.file
            .write_all_at(&buf[skipped..], self.position + skipped as u64)?;
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
    path: PathBuf,
    marker: PathBuf,
    writer: SerializedFileWriter<AppendFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Second handle on the file, for the footer and fsync outside the writer's stream.
    file: File,
    durable_rows: u64,
    /// Data end and footer of the last checkpoint, to put back after a failed write.
    last_checkpoint: Option<(u64, Vec<u8>)>,
    /// Written in every footer beside the state: what produced the file.
    key_values: Vec<KeyValue>,
}

impl ResultsWriter {
    /// Starts a new file. It must not exist unless `overwrite`. `key_values` go in every
    /// footer.
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        overwrite: bool,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        let remove_marker = || match fs::remove_file(marker_path(path)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&marker_path(path))(error)),
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if overwrite {
            // The old marker goes before the file is emptied: a kill in between must not
            // leave an empty file with a marker of rows it no longer has.
            remove_marker()?;
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => ResultsError::Exists {
                path: path.to_owned(),
            },
            _ => io_error(path)(error),
        })?;
        remove_marker()?;
        let mut writer = ResultsWriter::open(path, file, schema, &[], 0, codec, key_values)?;
        // The marker first: a run killed while the first footer is half written then leaves a
        // marker of zero rows, which says that nothing was done (see [`holds_nothing`]).
        let footer = writer.footer(FileState::InProgress)?;
        write_marker(&writer.marker, PARQUET_MAGIC.len() as u64, &footer)?;
        writer.checkpoint()?;
        Ok(writer)
    }

    /// Continues a file found by [`super::inspect`]: makes it valid at its last checkpoint, then
    /// appends after the kept row groups.
    pub fn resume(
        path: &Path,
        existing: &ExistingResults,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        let schema = existing.schema(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let row_groups = existing.metadata.row_groups();
        let mut writer = ResultsWriter::open(
            path,
            file,
            schema,
            row_groups,
            existing.data_end,
            codec,
            key_values,
        )?;
        writer.durable_rows = existing.rows();
        writer.checkpoint()?;
        Ok(writer)
    }

    fn open(
        path: &Path,
        file: File,
        schema: SchemaRef,
        kept: &[RowGroupMetaData],
        data_end: u64,
        codec: Codec,
        key_values: Vec<KeyValue>,
    ) -> Result<ResultsWriter, ResultsError> {
        let handle = file.try_clone().map_err(io_error(path))?;
        let sink = AppendFile {
            file,
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
            path: path.to_owned(),
            marker: marker_path(path),
            writer,
            factory,
            schema,
            file: handle,
            durable_rows: 0,
            last_checkpoint: None,
            key_values,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows safe on disk as of the last checkpoint.
    pub fn durable_rows(&self) -> u64 {
        self.durable_rows
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
        let path = self.path.clone();
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
            .map_err(parquet_error(&self.path))?;
        Ok(footer)
    }

    /// Writes the footer after the data and fsyncs; returns the footer.
    fn seal(&mut self, state: FileState) -> Result<Vec<u8>, ResultsError> {
        self.writer.flush().map_err(io_error(&self.path))?;
        let data_end = self.writer.bytes_written() as u64;
        let footer = self.footer(state)?;
        let io = io_error(&self.path);
        self.file.write_all_at(&footer, data_end).map_err(&io)?;
        self.file
            .set_len(data_end + footer.len() as u64)
            .map_err(&io)?;
        self.file.sync_data().map_err(&io)?;
        Ok(footer)
    }

    /// Makes every row group written so far durable. After this returns, a crash at any
    /// instant loses none of these rows.
    pub fn checkpoint(&mut self) -> Result<(), ResultsError> {
        let footer = self.seal(FileState::InProgress)?;
        let data_end = self.writer.bytes_written() as u64;
        write_marker(&self.marker, data_end, &footer)?;
        self.durable_rows = self.written_rows();
        self.last_checkpoint = Some((data_end, footer));
        Ok(())
    }

    /// After a failed write (a full disk), makes the file what it was at the last checkpoint:
    /// readable as it is, and resumable. Writes nothing beyond the file's current length.
    pub fn restore_last_checkpoint(&self) -> Result<(), ResultsError> {
        let Some((data_end, footer)) = &self.last_checkpoint else {
            return Ok(());
        };
        let io = io_error(&self.path);
        self.file
            .set_len(data_end + footer.len() as u64)
            .map_err(&io)?;
        self.file.write_all_at(footer, *data_end).map_err(&io)?;
        self.file.sync_data().map_err(&io)
    }

    /// Seals the file for good and removes the marker. Returns the row count.
    pub fn close(mut self, state: FileState) -> Result<u64, ResultsError> {
        self.seal(state)?;
        match fs::remove_file(&self.marker) {
            Ok(()) => sync_folder(&self.marker)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&self.marker)(error)),
        }
        self.durable_rows = self.written_rows();
        Ok(self.durable_rows)
    }
}
