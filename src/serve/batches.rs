//! The Batches API handlers: create (the request checked, the batch recorded as `validating`
//! and queued), retrieve (the counts its record holds, which the runner raises every second
//! while it runs, so that they never fall, even across a restart), list (newest first,
//! `after` and `limit`; an unknown `after` is a 400) and cancel. What happens to a batch
//! after it is queued is the runner's.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::check::ENDPOINTS;
use super::store::{BATCH_PREFIX, Page, StoredBatch};
use super::wire::{
    ApiError, Batch, BatchList, BatchStatus, CreateBatch, RequestCounts, unix_now, unknown_cursor,
};
use super::{AppState, blocking};

/// The one completion window OpenAI offers, and the longest batchflow takes. Shorter ones
/// (`"90s"`, `"30m"`) are batchflow's extension, for local use: at the window's end a batch is
/// `expired`, its finished lines kept.
const COMPLETION_WINDOW: &str = "24h";
const WINDOW_SECS: u64 = 24 * 3600;

/// The window's length in seconds, if it is one batchflow takes: 1 s up to 24 h.
fn window_secs(window: &str) -> Option<u64> {
    let secs = humantime::parse_duration(window.trim()).ok()?.as_secs();
    (1..=WINDOW_SECS).contains(&secs).then_some(secs)
}
/// OpenAI's limit on metadata pairs.
const MAX_METADATA: usize = 16;

pub async fn create(
    State(state): State<AppState>,
    request: Result<Json<CreateBatch>, JsonRejection>,
) -> Result<Json<Batch>, ApiError> {
    let Json(request) = request.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(super::MAX_JSON_BYTES)
        } else {
            ApiError::invalid(rejection.body_text(), None)
        }
    })?;
    let Some(window) = window_secs(&request.completion_window) else {
        return Err(ApiError::invalid(
            format!(
                "completion_window must be '{COMPLETION_WINDOW}' (or, with batchflow, a shorter duration such as '90s' or '30m')."
            ),
            Some("completion_window"),
        ));
    };
    if !ENDPOINTS.contains(&request.endpoint.as_str()) {
        return Err(ApiError::invalid(
            format!(
                "'{}' is not a supported endpoint; use one of {}.",
                request.endpoint,
                ENDPOINTS.join(", ")
            ),
            Some("endpoint"),
        ));
    }
    if request
        .metadata
        .as_ref()
        .is_some_and(|pairs| pairs.len() > MAX_METADATA)
    {
        return Err(ApiError::invalid(
            format!("metadata holds at most {MAX_METADATA} pairs."),
            Some("metadata"),
        ));
    }
    let input = request.input_file_id.clone();
    let file = blocking(&state.store, move |store| store.file(&input)).await?;
    match file {
        None => return Err(ApiError::not_found("File", &request.input_file_id)),
        Some(file) if file.purpose != "batch" => {
            return Err(ApiError::invalid(
                format!(
                    "File {} has purpose '{}'; a batch's input has purpose 'batch'.",
                    request.input_file_id, file.purpose
                ),
                Some("input_file_id"),
            ));
        }
        Some(_) => {}
    }
    let store = state.store.clone();
    let input_file_id = request.input_file_id.clone();
    let stored = blocking(&state.store, move |_| {
        let created_at = unix_now();
        let stored = StoredBatch {
            batch: Batch {
                id: store.new_id(BATCH_PREFIX)?,
                object: "batch".into(),
                endpoint: request.endpoint,
                errors: None,
                input_file_id: request.input_file_id,
                completion_window: request.completion_window,
                status: BatchStatus::Validating,
                output_file_id: None,
                error_file_id: None,
                created_at,
                in_progress_at: None,
                expires_at: Some(created_at + window),
                finalizing_at: None,
                completed_at: None,
                failed_at: None,
                expired_at: None,
                cancelling_at: None,
                cancelled_at: None,
                request_counts: RequestCounts::default(),
                metadata: request.metadata,
            },
            order: store.next_order(),
        };
        Ok(store.create_batch(&stored)?.then_some(stored))
    })
    .await?;
    // Deleted since it was looked up above.
    let Some(stored) = stored else {
        return Err(ApiError::not_found("File", &input_file_id));
    };
    let batch = stored.batch;
    tracing::info!(batch_id = %batch.id, input_file_id = %batch.input_file_id, endpoint = %batch.endpoint, "Batch created.");
    state.runner.enqueue(batch.id.clone());
    Ok(Json(batch))
}

pub async fn retrieve(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Batch>, ApiError> {
    let looked_up = id.clone();
    let found = blocking(&state.store, move |store| store.batch(&looked_up)).await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found("Batch", &id))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BatchList>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text(), None))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be from 1 to 100.",
            Some("limit"),
        ));
    }
    let after = query.after.clone();
    let page = blocking(&state.store, move |store| {
        store.batches(after.as_deref(), limit)
    })
    .await?
    .ok_or_else(|| unknown_cursor(query.after.as_deref()))?;
    let Page { data, has_more } = page;
    Ok(Json(BatchList {
        object: "list",
        first_id: data.first().map(|batch| batch.id.clone()),
        last_id: data.last().map(|batch| batch.id.clone()),
        data,
        has_more,
    }))
}

/// Marks the batch `cancelling`; the runner drains it to `cancelled`, keeping its results.
pub async fn cancel(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Batch>, ApiError> {
    let changed = id.clone();
    let updated = blocking(&state.store, move |store| {
        store.update_batch(&changed, |batch| match batch.status {
            BatchStatus::Validating | BatchStatus::InProgress => {
                batch.status = BatchStatus::Cancelling;
                batch.cancelling_at = Some(unix_now());
                Ok(true)
            }
            BatchStatus::Cancelling => Ok(false),
            other => Err(other),
        })
    })
    .await?;
    match updated {
        None => Err(ApiError::not_found("Batch", &id)),
        Some((_, Err(status))) => Err(ApiError::conflict(format!(
            "Batch {id} cannot be cancelled: its status is {}.",
            status.as_str()
        ))),
        Some((batch, Ok(newly))) => {
            if newly {
                tracing::info!(batch_id = %id, "Batch cancelling.");
            }
            state.runner.cancel(&id);
            Ok(Json(batch))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openais_window_and_shorter_ones_are_taken_longer_ones_not() {
        assert_eq!(window_secs("24h"), Some(WINDOW_SECS));
        assert_eq!(window_secs("90s"), Some(90));
        assert_eq!(window_secs("30m"), Some(1800));
        assert_eq!(window_secs("25h"), None);
        assert_eq!(window_secs("0s"), None);
        assert_eq!(window_secs("soon"), None);
    }
}
