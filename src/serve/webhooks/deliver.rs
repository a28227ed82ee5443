//! The delivery task: posts each pending event of the outbox, signed, until the receiver
//! answers 2xx, retrying with capped exponential backoff. An event goes out only once the
//! batch's record says what it announces (it is written just before the record is), so a
//! receiver that retrieves the batch on receipt sees the status it was told of. The task wakes
//! when an event is added or a retry is due, and stops with the server; whatever is pending
//! then stays in the outbox for the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::WebhookOptions;
use super::outbox::{Event, Outbox};
use crate::backend::http::error_chain;
use crate::serve::store::{Store, StoreError};
use crate::serve::wire::{BatchStatus, unix_now};
use crate::shutdown::Shutdown;

/// The first retry comes within this; each failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// A receiver that takes longer than this to answer has failed the attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do with a pending event, given its batch's status now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Its batch's record does not say so yet: it is being written.
    Wait,
    /// No such batch, or one that ended otherwise: the event is stale.
    Drop,
}

/// The verdict on an event announcing `announced` for a batch whose status is `now`.
pub fn verdict(announced: BatchStatus, now: Option<BatchStatus>) -> Verdict {
    match now {
        Some(now) if now == announced => Verdict::Deliver,
        Some(now) if !now.is_terminal() => Verdict::Wait,
        _ => Verdict::Drop,
    }
}

/// How long to wait after the `failures`-th failed attempt: the capped exponential bound,
/// its upper half drawn by `jitter` (in [0, 1)) so that receivers back from an outage are not
/// hit by every event at once.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let bound = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    bound.div_f64(2.0).mul_f64(1.0 + jitter.clamp(0.0, 1.0))
}

/// Why an attempt failed (it is retried either way).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Send(String),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

/// A pending event's failed attempts so far and when it may be tried again.
struct Retry {
    failures: u32,
    due: Instant,
}

pub(super) struct Deliverer {
    pub outbox: Outbox,
    pub store: Store,
    pub options: WebhookOptions,
    pub client: reqwest::Client,
    pub wake: Arc<Notify>,
}

impl Deliverer {
    /// Delivers until `server` stops.
    pub async fn run(self, server: Shutdown) {
        let mut retries: HashMap<String, Retry> = HashMap::new();
        loop {
            // Cut by a stop at any await: an event delivered but not yet removed is delivered
            // again by the next server, which at-least-once allows.
            let next_due = tokio::select! {
                _ = server.stopping() => return,
                next_due = self.pass(&mut retries) => next_due,
            };
            let retry_due = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = server.stopping() => return,
                () = self.wake.notified() => {}
                () = retry_due => {}
            }
        }
    }

    /// Tries once each pending event that is due; when the soonest retry is due, if any.
    async fn pass(&self, retries: &mut HashMap<String, Retry>) -> Option<Instant> {
        let pending = match self.pending().await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!("Cannot read the webhook outbox: {error}.");
                Vec::new()
            }
        };
        retries.retain(|id, _| pending.iter().any(|(event, _)| &event.id == id));
        let mut next_due: Option<Instant> = None;
        for (event, now) in pending {
            match verdict(event.kind.status(), now) {
                Verdict::Wait => continue,
                Verdict::Drop => {
                    tracing::info!(event_id = %event.id, batch_id = %event.data.id, "Dropping a stale webhook event.");
                    self.remove(&event).await;
                    continue;
                }
                Verdict::Deliver => {}
            }
            let waiting = retries
                .get(&event.id)
                .map(|retry| retry.due)
                .filter(|due| *due > Instant::now());
            if let Some(due) = waiting {
                next_due = Some(next_due.map_or(due, |next| next.min(due)));
                continue;
            }
            match self.attempt(&event).await {
                Ok(()) => {
                    tracing::info!(event_id = %event.id, batch_id = %event.data.id, kind = ?event.kind, "Webhook delivered.");
                    retries.remove(&event.id);
                    self.remove(&event).await;
                }
                Err(error) => {
                    let due = failed(retries, &event.id, &error);
                    next_due = Some(next_due.map_or(due, |next| next.min(due)));
                }
            }
        }
        next_due
    }

    /// The pending events, each with its batch's status now (`None`: no such batch).
    async fn pending(&self) -> Result<Vec<(Event, Option<BatchStatus>)>, StoreError> {
        let (outbox, store) = (self.outbox.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || statuses(&outbox, &store))
            .await
            .map_err(|error| StoreError::Io {
                path: "webhooks".into(),
                cause: std::io::Error::other(error),
            })?
    }

    async fn remove(&self, event: &Event) {
        let (outbox, owned) = (self.outbox.clone(), event.clone());
        match tokio::task::spawn_blocking(move || outbox.remove(&owned)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!("Cannot remove a webhook event: {error}."),
            Err(error) => tracing::error!("Cannot remove a webhook event: {error}."),
        }
    }

    /// One signed POST of `event`.
    async fn attempt(&self, event: &Event) -> Result<(), AttemptError> {
        let body =
            serde_json::to_vec(event).map_err(|error| AttemptError::Send(error.to_string()))?;
        let timestamp = unix_now();
        let signature = self.options.secret.sign(&event.id, timestamp, &body);
        let response = self
            .client
            .post(self.options.url.clone())
            .timeout(ATTEMPT_TIMEOUT)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            // Without the URL, which may carry the receiver's own token.
            .map_err(|error| AttemptError::Send(error_chain(&error.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(response.status()))
        }
    }
}

/// Counts a failed attempt of event `id`; when it is due again.
fn failed(retries: &mut HashMap<String, Retry>, id: &str, error: &AttemptError) -> Instant {
    let retry = retries.entry(id.to_owned()).or_insert(Retry {
        failures: 0,
        due: Instant::now(),
    });
    retry.failures += 1;
    let wait = backoff(retry.failures, fastrand::f64());
    retry.due = Instant::now() + wait;
    tracing::warn!(
        event_id = %id,
        failures = retry.failures,
        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "Webhook delivery failed: {error}."
    );
    retry.due
}

/// The outbox's events with their batches' statuses (blocking).
pub(super) fn statuses(
    outbox: &Outbox,
    store: &Store,
) -> Result<Vec<(Event, Option<BatchStatus>)>, StoreError> {
    outbox
        .pending()?
        .into_iter()
        .map(|event| {
            let status = store.batch(&event.data.id)?.map(|batch| batch.status);
            Ok((event, status))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_waits_for_its_record_and_stale_ones_go() {
        use BatchStatus::*;
        assert_eq!(verdict(Completed, Some(Completed)), Verdict::Deliver);
        assert_eq!(verdict(Completed, Some(Finalizing)), Verdict::Wait);
        assert_eq!(verdict(Cancelled, Some(Cancelling)), Verdict::Wait);
        assert_eq!(verdict(Completed, Some(Failed)), Verdict::Drop);
        assert_eq!(verdict(Failed, None), Verdict::Drop);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        assert!(backoff(u32::MAX, 1.0) <= MAX_BACKOFF);
    }
}
