//! A Parquet results file that is a valid, readable Parquet file after every checkpoint and can
//! be resumed after a crash at any instant.
//!
//! Parquet puts its footer (the index of every row group) at the end of the file and the
//! parquet crate cannot reopen a file for appending. The design:
//!
//! 1. Each checkpoint writes the buffered rows as one row group, then a footer describing every
//!    row group so far at the data end, and fsyncs. Readers (DuckDB, Polars, pyarrow) can open
//!    the file while the run goes on.
//! 2. Then a small sidecar marker (`<output>.checkpoint`: data end, row count, footer bytes) is
//!    replaced atomically (write, fsync, rename, fsync the folder). The marker is what makes a
//!    checkpoint durable: the next row group overwrites the old footer, so after a crash the
//!    marker's footer is the truth.
//! 3. Resume truncates the file to the marker's data end and puts its footer back. To append
//!    in place, a new writer re-registers the kept row groups' column chunks (metadata only: the
//!    bytes are already at exactly the offsets the writer computes, so it discards them instead
//!    of writing them) and then continues after them.
//! 4. A clean close writes the final footer and removes the marker.
//!
//! Page indexes and bloom filters are off so that nothing but column chunks lies between the
//! file's magic and the footer; that layout is what re-registration relies on, and it is
//! checked (the re-registered length must equal the data end) before anything is written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{
    ArrowRowGroupWriterFactory, ArrowWriterOptions, compute_leaves,
};
use parquet::arrow::{ArrowWriter, ProjectionMask, parquet_to_arrow_schema};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataReader,
    ParquetMetaDataWriter,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::paths::with_suffix;
use crate::record::{DoneSet, ErrorCode};
use crate::source::jsonl::id_hash;

const MARKER_MAGIC: &[u8; 8] = b"BFCKPT01";
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
/// Footer key-value entry telling how the run that wrote the file ended.
pub const STATE_KEY: &str = "batchflow.state";

/// How the run that wrote a results file ended, as recorded in its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Checkpointed by a run that was still going (or was killed).
    InProgress,
    /// Closed cleanly after an interrupt or an error: resumable.
    Interrupted,
    /// Closed after the whole input was processed.
    Complete,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::InProgress => "in_progress",
            FileState::Interrupted => "interrupted",
            FileState::Complete => "complete",
        }
    }

    fn parse(text: &str) -> Option<FileState> {
        [
            FileState::InProgress,
            FileState::Interrupted,
            FileState::Complete,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// What can go wrong with a results file. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },

    #[error("{path}: {cause}")]
    Parquet { path: PathBuf, cause: ParquetError },

    #[error("{path} cannot be resumed: {reason}. It was left untouched")]
    Damaged { path: PathBuf, reason: String },

    #[error("{path} already exists; pass --resume to continue it or --overwrite to replace it")]
    Exists { path: PathBuf },

    #[error(
        "--output writes Parquet: name the file *.parquet (for JSONL, redirect standard output), not {path}"
    )]
    NotParquet { path: PathBuf },

    #[error(
        "{path} was made with other settings: {changes}. Mixing them in one table would corrupt an analysis: write to a new file, or pass --allow-config-change to resume anyway (the change is recorded in the file)"
    )]
    ConfigChanged { path: PathBuf, changes: String },
}

/// The files written beside a results file, by the suffix added to its name: the marker, the
/// marker's temporary file, and `--retry-errors`' rewrite with its own two.
pub const SIDE_FILES: [(&str, &str); 5] = [
    ("its checkpoint marker", ".checkpoint"),
    ("its marker's temporary file", ".checkpoint.tmp"),
    ("its rewrite file", ".rewrite"),
    ("its rewrite's marker", ".rewrite.checkpoint"),
    (
        "its rewrite marker's temporary file",
        ".rewrite.checkpoint.tmp",
    ),
];

/// The sidecar marker's path for a results file.
pub fn marker_path(path: &Path) -> PathBuf {
    with_suffix(path, ".checkpoint")
}

/// Removes what a killed run may have left beside the results file, but the marker (which is
/// the file's last checkpoint): nothing of it is needed once the file is closed or resumed.
pub fn remove_leftovers(path: &Path) -> Result<(), ResultsError> {
    for (_, suffix) in SIDE_FILES
        .iter()
        .filter(|(_, suffix)| *suffix != ".checkpoint")
    {
        let leftover = with_suffix(path, suffix);
        match fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&leftover)(error)),
        }
    }
    Ok(())
}

/// Whether the file at `path` holds no row at all by any account: empty or only Parquet's
/// magic, without a marker (a run killed in its first instant), or with a marker of zero rows.
/// Such a file can be started again in place.
pub fn holds_nothing(path: &Path) -> Result<bool, ResultsError> {
    if let Some(marker) = read_marker(&marker_path(path))? {
        return Ok(decode_footer(&marker.footer).is_ok_and(|metadata| {
            metadata.file_metadata().num_rows() == 0 && metadata.num_row_groups() == 0
        }));
    }
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    if length > PARQUET_MAGIC.len() as u64 {
        return Ok(false);
    }
    let mut bytes = Vec::with_capacity(PARQUET_MAGIC.len());
    file.take(PARQUET_MAGIC.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    Ok(bytes.is_empty() || bytes == PARQUET_MAGIC)
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> ResultsError + '_ {
    move |cause| ResultsError::Io {
        path: path.to_owned(),
        cause,
    }
}

fn parquet_error(path: &Path) -> impl Fn(ParquetError) -> ResultsError + '_ {
    move |cause| ResultsError::Parquet {
        path: path.to_owned(),
        cause,
    }
}

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

/// A results file found on disk, checked but not modified.
pub struct ExistingResults {
    pub metadata: Arc<ParquetMetaData>,
    /// End of the last kept row group.
    pub data_end: u64,
    /// The file was left by a run that did not close it (killed, power cut).
    pub from_marker: bool,
}

impl ExistingResults {
    pub fn rows(&self) -> u64 {
        u64::try_from(self.metadata.file_metadata().num_rows()).unwrap_or(0)
    }

    pub fn state(&self) -> Option<FileState> {
        self.metadata
            .file_metadata()
            .key_value_metadata()?
            .iter()
            .find(|entry| entry.key == STATE_KEY)
            .and_then(|entry| entry.value.as_deref())
            .and_then(FileState::parse)
    }

    pub fn schema(&self, path: &Path) -> Result<SchemaRef, ResultsError> {
        let file_metadata = self.metadata.file_metadata();
        parquet_to_arrow_schema(
            file_metadata.schema_descr(),
            file_metadata.key_value_metadata(),
        )
        .map(Arc::new)
        .map_err(parquet_error(path))
    }

    /// The row groups that may hold error rows: those whose `error_code` chunk is not all
    /// null by its statistics (a group without statistics counts as one that may).
    pub fn groups_with_errors(&self) -> Vec<usize> {
        let rows = |group: &parquet::file::metadata::RowGroupMetaData| {
            u64::try_from(group.num_rows()).unwrap_or(u64::MAX)
        };
        (0..self.metadata.num_row_groups())
            .filter(|index| {
                let group = self.metadata.row_group(*index);
                let nulls = group
                    .columns()
                    .iter()
                    .find(|column| column.column_path().string() == "error_code")
                    .and_then(|column| column.statistics())
                    .and_then(|statistics| statistics.null_count_opt());
                nulls.is_none_or(|nulls| nulls < rows(group))
            })
            .collect()
    }

    /// A reader of the kept rows, `columns` only (all if empty). Works on a file whose tail is
    /// garbage, since it uses the checkpoint's footer rather than the file's end.
    pub fn reader(
        &self,
        path: &Path,
        columns: &[&str],
    ) -> Result<ParquetRecordBatchReader, ResultsError> {
        self.reader_of_groups(path, columns, None)
    }

    /// Like [`ExistingResults::reader`], of the row groups `groups` only (all if `None`).
    pub fn reader_of_groups(
        &self,
        path: &Path,
        columns: &[&str],
        groups: Option<Vec<usize>>,
    ) -> Result<ParquetRecordBatchReader, ResultsError> {
        let file = File::open(path).map_err(io_error(path))?;
        let metadata =
            ArrowReaderMetadata::try_new(Arc::clone(&self.metadata), ArrowReaderOptions::new())
                .map_err(parquet_error(path))?;
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
            .with_batch_size(8192);
        if !columns.is_empty() {
            let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
            builder = builder.with_projection(mask);
        }
        if let Some(groups) = groups {
            builder = builder.with_row_groups(groups);
        }
        builder.build().map_err(parquet_error(path))
    }
}

/// Reads what is on disk: the marker's checkpoint if there is one, else the file's own footer.
/// Fails with [`ResultsError::Damaged`] when neither gives a consistent file.
pub fn inspect(path: &Path) -> Result<ExistingResults, ResultsError> {
    let damaged = |reason: String| ResultsError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    let mut magic = [0u8; 4];
    if length < 4 || file.read_exact_at(&mut magic, 0).is_err() || &magic != PARQUET_MAGIC {
        return Err(damaged("it is not a Parquet file".into()));
    }
    let (metadata, data_end, from_marker) = match read_marker(&marker_path(path))? {
        Some(marker) => {
            if length < marker.data_end {
                return Err(damaged(format!(
                    "it is {length} bytes long, shorter than its last checkpoint ({} bytes)",
                    marker.data_end
                )));
            }
            let metadata = decode_footer(&marker.footer).map_err(|error| {
                damaged(format!("its checkpoint marker is unreadable ({error})"))
            })?;
            (metadata, marker.data_end, true)
        }
        None => {
            let metadata = ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .map_err(|error| {
                    damaged(format!(
                        "it has no readable Parquet footer and no checkpoint marker ({error})"
                    ))
                })?;
            let mut tail = [0u8; 8];
            file.read_exact_at(&mut tail, length - 8)
                .map_err(io_error(path))?;
            let footer_length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
            (metadata, length - 8 - footer_length, false)
        }
    };
    let chunks_end = metadata
        .row_groups()
        .iter()
        .flat_map(|group| group.columns())
        .map(|column| {
            let (start, length) = column.byte_range();
            start + length
        })
        .max()
        .unwrap_or(PARQUET_MAGIC.len() as u64);
    if chunks_end != data_end {
        return Err(damaged(format!(
            "its row groups end at byte {chunks_end}, not at the data end {data_end}; it was not written by batchflow"
        )));
    }
    let file_metadata = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(
        file_metadata.schema_descr(),
        file_metadata.key_value_metadata(),
    )
    .map_err(|error| damaged(format!("its schema is unreadable ({error})")))?;
    for (required, data_type) in [
        ("custom_id", DataType::Utf8),
        ("request_line", DataType::Int64),
        ("error_code", DataType::Utf8),
        ("status", DataType::Utf8),
    ] {
        match schema.field_with_name(required) {
            Ok(field) if *field.data_type() == data_type => {}
            Ok(field) => {
                return Err(damaged(format!(
                    "its {required} column is {}, not {data_type}; it is not a batchflow results file",
                    field.data_type()
                )));
            }
            Err(_) => {
                return Err(damaged(format!(
                    "it has no {required} column; it is not a batchflow results file"
                )));
            }
        }
    }
    Ok(ExistingResults {
        metadata: Arc::new(metadata),
        data_end,
        from_marker,
    })
}

/// Decodes footer bytes as written by [`ParquetMetaDataWriter`] (metadata, length, magic).
fn decode_footer(footer: &[u8]) -> Result<ParquetMetaData, ParquetError> {
    let body_length = footer
        .len()
        .checked_sub(8)
        .ok_or_else(|| ParquetError::General("footer too short".into()))?;
    ParquetMetaDataReader::decode_metadata(&footer[..body_length])
}

struct Marker {
    data_end: u64,
    footer: Vec<u8>,
}

fn read_marker(path: &Path) -> Result<Option<Marker>, ResultsError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes).map_err(io_error(path))?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
    };
    let malformed = || ResultsError::Damaged {
        path: path.to_owned(),
        reason: "the checkpoint marker is malformed".into(),
    };
    let header_length = MARKER_MAGIC.len() + 16;
    if bytes.len() < header_length || &bytes[..8] != MARKER_MAGIC {
        return Err(malformed());
    }
    let number = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    let data_end = number(8);
    let footer_length = number(16);
    if bytes.len() as u64 != header_length as u64 + footer_length {
        return Err(malformed());
    }
    Ok(Some(Marker {
        data_end,
        footer: bytes[header_length..].to_vec(),
    }))
}

/// Replaces the marker atomically: a reader sees the old one or the new one, never a mix.
fn write_marker(path: &Path, data_end: u64, footer: &[u8]) -> Result<(), ResultsError> {
    let temporary = with_suffix(path, ".tmp");
    let mut bytes = Vec::with_capacity(24 + footer.len());
    bytes.extend_from_slice(MARKER_MAGIC);
    bytes.extend_from_slice(&data_end.to_le_bytes());
    bytes.extend_from_slice(&(footer.len() as u64).to_le_bytes());
    bytes.extend_from_slice(footer);
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_folder(path)
}

fn sync_folder(path: &Path) -> Result<(), ResultsError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(folder))
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

    /// Continues a file found by [`inspect`]: makes it valid at its last checkpoint, then
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
        kept: &[parquet::file::metadata::RowGroupMetaData],
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

/// Reads the custom_ids (and invalid line numbers) of the kept rows: three narrow columns,
/// never the responses.
pub fn read_done(path: &Path, existing: &ExistingResults) -> Result<DoneSet, ResultsError> {
    let mut done = DoneSet::default();
    for batch in existing.reader(path, &["custom_id", "request_line", "error_code"])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let (Some(ids), Some(lines), Some(codes)) = (
            batch.column_by_name("custom_id"),
            batch.column_by_name("request_line"),
            batch.column_by_name("error_code"),
        ) else {
            continue;
        };
        let ids = ids.as_string::<i32>();
        let lines = lines.as_primitive::<arrow_array::types::Int64Type>();
        let codes = codes.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let invalid_input = codes.is_valid(row) && is_invalid_input_code(codes.value(row));
            if invalid_input {
                done.invalid_lines
                    .insert(u64::try_from(lines.value(row)).unwrap_or(0));
            } else if ids.is_valid(row) {
                done.ids.insert(id_hash(ids.value(row)));
            }
        }
    }
    Ok(done)
}

fn is_invalid_input_code(code: &str) -> bool {
    ErrorCode::from_name(code).is_some_and(ErrorCode::is_invalid_input)
}

/// Counts of kept rows by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub ok: u64,
    pub error: u64,
}

pub fn count_statuses(
    path: &Path,
    existing: &ExistingResults,
) -> Result<StatusCounts, ResultsError> {
    let mut counts = StatusCounts::default();
    for batch in existing.reader(path, &["status"])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let Some(status) = batch.column_by_name("status") else {
            continue;
        };
        for value in status.as_string::<i32>().iter().flatten() {
            if value == "ok" {
                counts.ok += 1;
            } else {
                counts.error += 1;
            }
        }
    }
    Ok(counts)
}

/// Rewrites the file without its error rows (for `--retry-errors`), re-encoding what is kept.
/// The file must be closed (no marker: see [`ResultsWriter::close`]), so that until the new
/// file atomically replaces it, the old one is complete on its own. Returns how many rows were
/// dropped.
pub fn drop_error_rows(
    path: &Path,
    existing: &ExistingResults,
    codec: Codec,
    key_values: Vec<KeyValue>,
) -> Result<u64, ResultsError> {
    let schema = existing.schema(path)?;
    let temporary = with_suffix(path, ".rewrite");
    let mut writer =
        ResultsWriter::create(&temporary, Arc::clone(&schema), true, codec, key_values)?;
    let mut dropped = 0;
    for batch in existing.reader(path, &[])? {
        let batch = batch.map_err(|error| parquet_error(path)(error.into()))?;
        let Some(status) = batch.column_by_name("status") else {
            continue;
        };
        let keep: arrow_array::BooleanArray = status
            .as_string::<i32>()
            .iter()
            .map(|value| Some(value == Some("ok")))
            .collect();
        dropped += (batch.num_rows() - keep.true_count()) as u64;
        let kept = arrow_select::filter::filter_record_batch(&batch, &keep)
            .map_err(|error| parquet_error(path)(error.into()))?;
        if kept.num_rows() > 0 {
            writer.write_row_group(&kept)?;
        }
    }
    writer.close(FileState::Interrupted)?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_folder(path)?;
    Ok(dropped)
}
