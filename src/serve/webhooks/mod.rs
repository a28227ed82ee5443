//! Webhooks of `batchflow serve`: a batch that ends (`completed`, `failed`, `expired`,
//! `cancelled`) is announced to `--webhook-url` in OpenAI's event shape, signed as OpenAI signs
//! (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once
//! across restarts:
//!
//! ```text
//!  runner ──Events::announce──▶ outbox.rs (<data-dir>/webhooks/<batch_id>.json, before the record)
//!                                   │ wake
//!                                   ▼
//!                       deliver.rs: POST, signed (sign.rs), until 2xx; backoff; then remove
//! ```
//!
//! This module owns the options and the handle the runner announces through; it leaves the
//! statuses to the runner and the records to the store. An event is written before the batch's
//! record says it ended, and delivered only once the record does: a server killed between the
//! two leaves an event whose batch is not over, which the next start drops (the batch runs
//! again and announces its end anew).

mod deliver;
mod outbox;
mod sign;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::store::{Store, StoreError};
use super::wire::{BatchStatus, unix_now};
use crate::shutdown::Shutdown;
use deliver::{Deliverer, Verdict};
use outbox::{Event, EventData, EventKind, Outbox};
pub use sign::{Secret, SecretError};

/// Where events go and what signs them.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub url: url::Url,
    pub secret: Secret,
}

/// Why webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook outbox: {0}")]
    Outbox(#[from] StoreError),
    #[error("cannot make the webhook client: {0}")]
    Client(String),
}

/// The runner's handle: announces batch ends. Without `--webhook-url` it announces nothing.
#[derive(Clone, Default)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    outbox: Outbox,
    store: Store,
    wake: Arc<Notify>,
}

impl Events {
    /// Announces that batch `batch_id` reaches the terminal `status` through `close`, the
    /// write of its record: the event is kept in the outbox first, then `close` runs, then the
    /// delivery task is woken; `close`'s answer is returned. Any terminal status may be given;
    /// another one only runs `close`. An event that cannot be kept is logged and lost (the
    /// batch still closes): a full disk must not hold batches open.
    pub async fn announce<T>(
        &self,
        batch_id: &str,
        status: BatchStatus,
        close: impl Future<Output = T>,
    ) -> T {
        let (Some(inner), Some(kind)) = (&self.inner, EventKind::of(status)) else {
            return close.await;
        };
        let (outbox, store, batch) = (
            inner.outbox.clone(),
            inner.store.clone(),
            batch_id.to_owned(),
        );
        let kept = tokio::task::spawn_blocking(move || {
            // A batch whose earlier close failed on the disk announces again: its event
            // keeps its id, so the receiver gets one.
            if outbox
                .of_batch(&batch)?
                .is_some_and(|pending| pending.kind == kind)
            {
                return Ok(());
            }
            let event = Event {
                id: store.new_id("evt_")?,
                object: "event".to_owned(),
                created_at: unix_now(),
                kind,
                data: EventData { id: batch },
            };
            outbox.add(&event)
        })
        .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(batch_id, "Cannot keep the batch's webhook event: {error}.");
            }
            Err(error) => {
                tracing::error!(batch_id, "Cannot keep the batch's webhook event: {error}.");
            }
        }
        let answer = close.await;
        inner.wake.notify_one();
        answer
    }
}

/// Opens the outbox, drops the events of batches that are not over (see the module's doc) and
/// starts the delivery task, which ends when `server` stops. Run before the runner starts, so
/// that no event of this run is taken for a stale one.
pub async fn start(
    options: WebhookOptions,
    data_dir: &Path,
    store: Store,
    server: Shutdown,
) -> Result<(Events, JoinHandle<()>), WebhookError> {
    let (dir, checked) = (data_dir.to_owned(), store.clone());
    let outbox = tokio::task::spawn_blocking(move || recover(&dir, &checked))
        .await
        .map_err(|error| {
            WebhookError::Outbox(StoreError::Io {
                path: data_dir.join("webhooks"),
                cause: std::io::Error::other(error),
            })
        })??;
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        // A redirect would carry the signed event elsewhere; the receiver's own URL is given.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("batchflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| WebhookError::Client(crate::backend::http::error_chain(&error)))?;
    let wake = Arc::new(Notify::new());
    let deliverer = Deliverer {
        outbox: outbox.clone(),
        store: store.clone(),
        options,
        client,
        wake: Arc::clone(&wake),
    };
    let task = tokio::spawn(deliverer.run(server));
    let events = Events {
        inner: Some(Arc::new(Inner {
            outbox,
            store,
            wake,
        })),
    };
    Ok((events, task))
}

/// Opens the outbox and removes its stale events (blocking).
fn recover(data_dir: &Path, store: &Store) -> Result<Outbox, StoreError> {
    let outbox = Outbox::open(data_dir)?;
    let mut pending = 0;
    for (event, status) in deliver::statuses(&outbox, store)? {
        if deliver::verdict(event.kind.status(), status) == Verdict::Deliver {
            pending += 1;
        } else {
            tracing::info!(event_id = %event.id, batch_id = %event.data.id, "Dropping a stale webhook event.");
            outbox.remove(&event)?;
        }
    }
    if pending > 0 {
        tracing::info!(events = pending, "Delivering the pending webhook events.");
    }
    Ok(outbox)
}
