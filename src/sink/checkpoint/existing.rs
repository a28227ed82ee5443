//! A results file found on disk, checked but not modified: its footer (the last checkpoint),
//! its schema, and readers of its kept rows.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ProjectionMask, parquet_to_arrow_schema};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::{FileState, PARQUET_MAGIC, ResultsError, STATE_KEY, io_error, parquet_error};

/// A results file found on disk, checked but not modified.
pub struct ExistingResults {
    pub metadata: Arc<ParquetMetaData>,
    /// End of the last kept row group.
    pub data_end: u64,
}

impl ExistingResults {
    pub fn rows(&self) -> u64 {
        u64::try_from(self.metadata.file_metadata().num_rows()).unwrap_or(0)
    }

    /// The file was left by a run that did not close it (killed, power cut).
    pub fn unclosed(&self) -> bool {
        self.state() == Some(FileState::InProgress)
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

/// Reads what is on disk. Fails with [`ResultsError::Damaged`] when it is not a whole results
/// file.
pub fn inspect(path: &Path) -> Result<ExistingResults, ResultsError> {
    let damaged = |reason: String| ResultsError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    let mut magic = [0u8; 4];
    if length < 12 || file.read_exact_at(&mut magic, 0).is_err() || &magic != PARQUET_MAGIC {
        return Err(damaged("it is not a Parquet file".into()));
    }
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|error| damaged(format!("it has no readable Parquet footer ({error})")))?;
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, length - 8)
        .map_err(io_error(path))?;
    let footer_length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    let data_end = (length - 8)
        .checked_sub(footer_length)
        .ok_or_else(|| damaged("its footer is longer than the file".into()))?;
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
    })
}
