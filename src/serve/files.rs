//! The Files API handlers: multipart upload (`purpose=batch`), list (`purpose`, `order`,
//! `limit`, `after`), retrieve, content and delete. An upload is streamed to a staging file and counted as it arrives: over
//! `--max-file-bytes` it is refused with 413 and the staging file removed, and only a whole
//! upload is committed (the store's job), so nothing half-stored is ever listed. The other
//! fields are held only up to [`MAX_FIELD_BYTES`], unknown ones not at all.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::store::{FileDeletion, Page, StoredFile};
use super::wire::{ApiError, FileDeleted, FileList, FileObject, Order, unix_now, unknown_cursor};
use super::{AppState, blocking};

/// Purposes an upload may have: batchflow only runs batches.
const UPLOAD_PURPOSES: &[&str] = &["batch"];

/// Bytes read from disk per chunk of a download.
const DOWNLOAD_CHUNK: usize = 64 << 10;

/// A form field other than the file (`purpose`) longer than this gets 413: it is held in
/// memory, and the longest purpose is a few bytes.
pub const MAX_FIELD_BYTES: usize = 64 << 10;

/// What the multipart framing adds around the file: boundaries, part headers and the short
/// fields. A body this much over `--max-file-bytes` cannot hold a file within it.
pub const FORM_OVERHEAD: u64 = 64 << 10;

/// A whole upload, staged.
struct Received {
    filename: String,
    purpose: String,
    bytes: u64,
}

pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    // Refused before a byte is read when the length is declared; a chunked body is cut at the
    // same size by the route's body limit.
    if declared.is_some_and(|length| length > state.max_file_bytes.saturating_add(FORM_OVERHEAD)) {
        return Err(ApiError::too_large(state.max_file_bytes));
    }
    let mut multipart = multipart.map_err(|rejection| {
        ApiError::invalid(
            format!("Expected a multipart/form-data upload: {rejection}"),
            None,
        )
    })?;
    let (id, staged) = blocking(&state.store, |store| store.staging()).await?;
    let received = match receive(&mut multipart, &staged, state.max_file_bytes).await {
        Ok(received) => received,
        Err(error) => {
            let discarded = id.clone();
            blocking(&state.store, move |store| {
                store.discard(&discarded);
                Ok(())
            })
            .await?;
            return Err(error);
        }
    };
    let stored = StoredFile {
        file: FileObject {
            id,
            object: "file".into(),
            bytes: received.bytes,
            created_at: unix_now(),
            filename: received.filename,
            purpose: received.purpose,
            status: "processed".into(),
        },
        order: state.store.next_order(),
    };
    let file = stored.file.clone();
    blocking(&state.store, move |store| store.commit_file(&stored)).await?;
    tracing::info!(file_id = %file.id, bytes = file.bytes, "Stored an uploaded file.");
    Ok(Json(file))
}

/// Reads the form: `purpose`, and `file` streamed to `staged`.
async fn receive(
    multipart: &mut Multipart,
    staged: &Path,
    limit: u64,
) -> Result<Received, ApiError> {
    let (mut purpose, mut file) = (None, None);
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|error| form_error(error, limit, None))?
    {
        match field.name() {
            Some("purpose") => purpose = Some(short_field(field, limit, "purpose").await?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let bytes = stream_to(field, staged, limit).await?;
                file = Some((filename, bytes));
            }
            // Fields the API does not know are passed over, as OpenAI does: read and dropped
            // chunk by chunk, never held.
            _ => {
                while field
                    .chunk()
                    .await
                    .map_err(|error| form_error(error, limit, None))?
                    .is_some()
                {}
            }
        }
    }
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'purpose'.", Some("purpose"))
    })?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            format!("'{purpose}' is not a supported purpose; batchflow takes 'batch'."),
            Some("purpose"),
        ));
    }
    let (filename, bytes) =
        file.ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'.", Some("file")))?;
    Ok(Received {
        filename,
        purpose,
        bytes,
    })
}

/// A short text field, read chunk by chunk so that a long one is refused with 413 once it
/// passes [`MAX_FIELD_BYTES`] instead of being held whole.
async fn short_field(
    mut field: Field<'_>,
    limit: u64,
    param: &'static str,
) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|error| form_error(error, limit, Some(param)))?
    {
        if text.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::field_too_large(param, MAX_FIELD_BYTES));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .map_err(|_| ApiError::invalid(format!("'{param}' is not UTF-8 text."), Some(param)))
}

/// A form that cannot be read: 413 when it ran past the route's body limit, else 400.
fn form_error(
    error: axum::extract::multipart::MultipartError,
    limit: u64,
    param: Option<&'static str>,
) -> ApiError {
    if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::invalid(error.body_text(), param)
    }
}

/// Appends the field's chunks to `staged` as they arrive. The writes go to the page cache and
/// take microseconds, so they run on the runtime; the one slow call, the fsync, is the
/// store's, off it.
async fn stream_to(mut field: Field<'_>, staged: &Path, limit: u64) -> Result<u64, ApiError> {
    let failed = |error: std::io::Error| {
        tracing::error!(path = %staged.display(), "Cannot write an upload: {error}.");
        ApiError::internal()
    };
    let mut file = std::fs::File::create(staged).map_err(failed)?;
    let mut bytes = 0u64;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|error| form_error(error, limit, Some("file")))?
    {
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(ApiError::too_large(limit));
        }
        file.write_all(&chunk).map_err(failed)?;
    }
    Ok(bytes)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    purpose: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    order: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<FileList>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text(), None))?;
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be from 1 to 10000.",
            Some("limit"),
        ));
    }
    let order = Order::parse(query.order.as_deref())?;
    let (purpose, after) = (query.purpose.clone(), query.after.clone());
    let page = blocking(&state.store, move |store| {
        store.files(purpose.as_deref(), order, after.as_deref(), limit)
    })
    .await?
    .ok_or_else(|| unknown_cursor(query.after.as_deref()))?;
    let Page { data, has_more } = page;
    Ok(Json(FileList {
        object: "list",
        first_id: data.first().map(|file| file.id.clone()),
        last_id: data.last().map(|file| file.id.clone()),
        data,
        has_more,
    }))
}

pub async fn retrieve(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<FileObject>, ApiError> {
    let looked_up = id.clone();
    match blocking(&state.store, move |store| store.file(&looked_up)).await? {
        Some(file) => Ok(Json(file)),
        None => Err(ApiError::not_found("File", &id)),
    }
}

pub async fn content(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let looked_up = id.clone();
    let found = blocking(&state.store, move |store| {
        Ok(store
            .file(&looked_up)?
            .and_then(|_| store.content_path(&looked_up)))
    })
    .await?;
    let Some(path) = found else {
        return Err(ApiError::not_found("File", &id));
    };
    let file = std::fs::File::open(&path).map_err(|error| {
        tracing::error!(path = %path.display(), "Cannot open a stored file: {error}.");
        ApiError::internal()
    })?;
    let body = Body::from_stream(read_chunks(file, path));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The file's bytes as a stream, read on a blocking thread a few chunks ahead of the client.
fn read_chunks(
    mut file: std::fs::File,
    path: PathBuf,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0u8; DOWNLOAD_CHUNK];
            let read = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(read) => read,
                Err(error) => {
                    tracing::error!(path = %path.display(), "Cannot read a stored file: {error}.");
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            };
            chunk.truncate(read);
            if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                // The client went away.
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

pub async fn delete(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let deleted = id.clone();
    match blocking(&state.store, move |store| store.delete_file(&deleted)).await? {
        FileDeletion::Deleted => {
            tracing::info!(file_id = %id, "Deleted a file.");
            Ok(Json(FileDeleted {
                id,
                object: "file",
                deleted: true,
            }))
        }
        FileDeletion::NotFound => Err(ApiError::not_found("File", &id)),
        FileDeletion::InputOf(batch_id) => Err(ApiError::conflict(format!(
            "File {id} is the input of batch {batch_id}, which has not ended; cancel it or wait for it to end."
        ))),
    }
}
