//! How long to wait before the next attempt: exponential backoff with full jitter, overridden
//! by the server's `Retry-After`. Whether to retry at all is the backend's call
//! (`FailureKind::is_retryable`).

use std::time::Duration;

/// Retry limits and backoff shape.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Upper bound of the first backoff; doubles with each failure.
    pub base_delay: Duration,
    /// No backoff is longer than this.
    pub max_delay: Duration,
    /// A server asking for a longer `Retry-After` gets this much.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failed_attempts` failures. Full jitter (uniform in `[0, cap]`) spreads
    /// many clients' retries instead of having them hit a recovering server in step.
    pub fn delay(&self, failed_attempts: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_retry_after);
        }
        let doublings = failed_attempts.saturating_sub(1).min(30);
        let cap = self
            .base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_cap() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            assert!(policy.delay(1, None) <= Duration::from_millis(100));
            assert!(policy.delay(2, None) <= Duration::from_millis(200));
            assert!(policy.delay(9, None) <= Duration::from_millis(350));
        }
        let spread: Vec<Duration> = (0..50).map(|_| policy.delay(3, None)).collect();
        assert!(
            spread.iter().any(|delay| *delay != spread[0]),
            "jitter varies"
        );
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600))),
            policy.max_retry_after
        );
    }
}
