//! The files written beside a results file (the staging file of the next checkpoint, and
//! `--retry-errors`' rewrite with its own), and what a killed run may leave of them.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use parquet::file::metadata::ParquetMetaDataReader;

use super::{PARQUET_MAGIC, ResultsError, io_error};
use crate::paths::with_suffix;

/// Added to a file's name for its staging file: rows written since the last checkpoint.
pub const STAGING_SUFFIX: &str = ".tmp";

/// The files written beside a results file, by the suffix added to its name. None ends in
/// `.parquet`, so globs such as `results/*.parquet` never match them.
pub const SIDE_FILES: [(&str, &str); 3] = [
    ("its staging file", STAGING_SUFFIX),
    ("its rewrite file", ".rewrite"),
    ("its rewrite's staging file", ".rewrite.tmp"),
];

/// Removes what a killed run may have left beside the results file: nothing of it is needed,
/// since the published file is always the last checkpoint.
pub fn remove_leftovers(path: &Path) -> Result<(), ResultsError> {
    for (_, suffix) in SIDE_FILES {
        let leftover = with_suffix(path, suffix);
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&leftover)(error)),
        }
    }
    Ok(())
}

/// Whether the file at `path` holds no row at all: published with no row group (a run stopped
/// before its first checkpoint), or empty or only Parquet's magic (left by an older batchflow
/// killed in its first instant). Such a file can be started again in place.
pub fn holds_nothing(path: &Path) -> Result<bool, ResultsError> {
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    if length > PARQUET_MAGIC.len() as u64 {
        return Ok(ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .is_ok_and(|metadata| metadata.num_row_groups() == 0));
    }
    let mut bytes = Vec::with_capacity(PARQUET_MAGIC.len());
    file.take(PARQUET_MAGIC.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    Ok(bytes.is_empty() || bytes == PARQUET_MAGIC)
}

pub(super) fn sync_folder(path: &Path) -> Result<(), ResultsError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(folder))
}
