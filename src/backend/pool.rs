//! Several backends serving one batch. Each attempt goes to the least-loaded healthy backend
//! (in-flight requests relative to its own worker limit); a backend whose attempts keep failing
//! is taken out for a while and the retries land on the others.
//!
//! When preflight learned each backend's models, a request goes only to backends that have
//! its model, so servers holding different models can share one batch.
//!
//! With one backend the pool is a thin wrapper, so the stage always talks to a pool.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::http::HttpBackend;
use super::preflight::ModelCatalog;
use super::{AttemptFailure, Backend, FailureKind};
use crate::item::{HttpReply, Request};

/// Failures in a row that take a backend out.
const EJECT_AFTER: u32 = 3;
/// How long an ejected backend stays out.
const EJECTION: Duration = Duration::from_secs(15);

/// One backend's share of the work, for the summary and the stats file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendFigures {
    pub url: String,
    pub attempts: u64,
    pub failures: u64,
    pub ejections: u64,
    pub in_flight: u64,
}

struct Member {
    backend: HttpBackend,
    /// The most attempts this backend gets at once while others have room.
    limit: u64,
    in_flight: AtomicU64,
    consecutive_failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    attempts: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    /// What preflight found on this backend; unknown without preflight.
    models: OnceLock<Arc<ModelCatalog>>,
}

impl Member {
    fn available(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| until <= now)
    }

    fn load(&self) -> f64 {
        self.in_flight.load(Ordering::Relaxed) as f64 / self.limit.max(1) as f64
    }

    /// Whether this backend can serve `model`, as far as is known.
    fn serves(&self, model: Option<&str>) -> bool {
        match (model, self.models.get()) {
            (Some(model), Some(catalog)) => catalog.has(model),
            _ => true,
        }
    }
}

/// Backends sharing a batch.
pub struct BackendPool {
    members: Vec<Member>,
}

/// Whether a failure says something about the backend's health (rather than the request's).
fn unhealthy(kind: FailureKind) -> bool {
    match kind {
        FailureKind::Connection | FailureKind::Timeout => true,
        FailureKind::Status(status) => status >= 500,
        FailureKind::InvalidBody | FailureKind::TooLarge | FailureKind::ModelNotFound => false,
    }
}

impl BackendPool {
    /// `limit` is each backend's worker count.
    pub fn new(backends: Vec<HttpBackend>, limit: usize) -> BackendPool {
        let members = backends
            .into_iter()
            .map(|backend| Member {
                backend,
                limit: limit as u64,
                in_flight: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until: Mutex::new(None),
                attempts: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
                models: OnceLock::new(),
            })
            .collect();
        BackendPool { members }
    }

    pub fn backends(&self) -> impl Iterator<Item = &HttpBackend> {
        self.members.iter().map(|member| &member.backend)
    }

    /// Records what preflight found on backend `index` (in [`BackendPool::backends`] order).
    pub fn learn_models(&self, index: usize, models: Arc<ModelCatalog>) {
        if let Some(member) = self.members.get(index) {
            let _ = member.models.set(models);
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The backend for the next attempt: among those that have `model` (all, if none is known
    /// to) and are not taken out (all of those, if every one is), those without a failure
    /// streak first, then the least loaded.
    fn pick(&self, now: Instant, model: Option<&str>) -> &Member {
        if let [only] = self.members.as_slice() {
            return only;
        }
        let any_serves = self.members.iter().any(|member| member.serves(model));
        let eligible = |member: &&Member| !any_serves || member.serves(model);
        let any_available = self
            .members
            .iter()
            .filter(eligible)
            .any(|member| member.available(now));
        self.members
            .iter()
            .filter(eligible)
            .filter(|member| !any_available || member.available(now))
            .min_by(|a, b| {
                let streak =
                    |member: &Member| member.consecutive_failures.load(Ordering::Relaxed) > 0;
                streak(a)
                    .cmp(&streak(b))
                    .then(a.load().total_cmp(&b.load()))
            })
            .expect("a pool has at least one backend")
    }

    fn record(&self, member: &Member, failure: Option<FailureKind>) {
        match failure {
            Some(kind) if unhealthy(kind) => {
                member.failures.fetch_add(1, Ordering::Relaxed);
                let streak = member.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= EJECT_AFTER && self.members.len() > 1 {
                    member.consecutive_failures.store(0, Ordering::Relaxed);
                    member.ejections.fetch_add(1, Ordering::Relaxed);
                    *member
                        .ejected_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + EJECTION);
                    tracing::warn!(
                        "Backend {} failed {streak} times in a row; sending to the others for {}s.",
                        member.backend.base_url(),
                        EJECTION.as_secs()
                    );
                }
            }
            Some(_) => {}
            None => member.consecutive_failures.store(0, Ordering::Relaxed),
        }
    }

    /// Whether each backend looks healthy at `now`, in [`BackendPool::figures`] order: not taken
    /// out, and not in a streak of failures long enough to take it out (a lone backend is
    /// never taken out, since there is nowhere else to send its requests).
    pub fn health(&self, now: Instant) -> Vec<bool> {
        self.members
            .iter()
            .map(|member| {
                member.available(now)
                    && member.consecutive_failures.load(Ordering::Relaxed) < EJECT_AFTER
            })
            .collect()
    }

    pub fn figures(&self) -> Vec<BackendFigures> {
        self.members
            .iter()
            .map(|member| BackendFigures {
                url: member.backend.base_url().to_owned(),
                attempts: member.attempts.load(Ordering::Relaxed),
                failures: member.failures.load(Ordering::Relaxed),
                ejections: member.ejections.load(Ordering::Relaxed),
                in_flight: member.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Counts an attempt in flight on a member however it ends.
struct Busy<'a>(&'a Member);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend for BackendPool {
    async fn send(&self, request: &Request) -> Result<HttpReply, AttemptFailure> {
        let member = self.pick(Instant::now(), request.model.as_deref());
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        member.attempts.fetch_add(1, Ordering::Relaxed);
        let _busy = Busy(member);
        let result = member.backend.send(request).await;
        self.record(member, result.as_ref().err().map(|failure| failure.kind));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::http::HttpBackendConfig;

    fn pool(urls: &[&str]) -> BackendPool {
        let backends = urls
            .iter()
            .map(|url| {
                HttpBackend::new(HttpBackendConfig {
                    base_url: (*url).to_owned(),
                    api_key: None,
                    timeout: Duration::from_secs(1),
                    connect_timeout: Duration::from_secs(1),
                    max_response_bytes: 1 << 20,
                    pool_size: 1,
                })
                .expect("a backend")
            })
            .collect();
        BackendPool::new(backends, 1)
    }

    #[test]
    fn a_backend_is_unhealthy_while_taken_out_or_in_a_long_failure_streak() {
        let now = Instant::now();
        let two = pool(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        for _ in 0..EJECT_AFTER {
            two.record(&two.members[0], Some(FailureKind::Connection));
        }
        assert_eq!(two.health(now), vec![false, true], "taken out");
        let after = Instant::now() + EJECTION;
        assert_eq!(two.health(after), vec![true, true], "back in");

        let one = pool(&["http://127.0.0.1:1"]);
        one.record(&one.members[0], Some(FailureKind::Status(404)));
        for _ in 1..EJECT_AFTER {
            one.record(&one.members[0], Some(FailureKind::Timeout));
        }
        assert_eq!(
            one.health(now),
            vec![true],
            "a 404 says nothing of the server"
        );
        one.record(&one.members[0], Some(FailureKind::Timeout));
        assert_eq!(
            one.health(now),
            vec![false],
            "never taken out, still unwell"
        );
        one.record(&one.members[0], None);
        assert_eq!(one.health(now), vec![true]);
    }
}
