//! The sidecar marker (`<results>.checkpoint`): the last checkpoint's data end and footer,
//! replaced atomically; the other files written beside a results file, and what a killed run
//! may leave of them.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::existing::decode_footer;
use super::{PARQUET_MAGIC, ResultsError, io_error};
use crate::paths::with_suffix;

const MARKER_MAGIC: &[u8; 8] = b"BFCKPT01";

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

pub(super) struct Marker {
    pub(super) data_end: u64,
    pub(super) footer: Vec<u8>,
}

pub(super) fn read_marker(path: &Path) -> Result<Option<Marker>, ResultsError> {
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
pub(super) fn write_marker(path: &Path, data_end: u64, footer: &[u8]) -> Result<(), ResultsError> {
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

pub(super) fn sync_folder(path: &Path) -> Result<(), ResultsError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(folder))
}
