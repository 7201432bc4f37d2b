//! The retry schedule: exponential backoff with jitter, capped, and expiry at `max_age`.

use std::time::Duration;

/// Retry settings (`[queue]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub retry_interval: Duration,
    /// Cap on the delay.
    pub max_retry_interval: Duration,
    /// A message whose next retry would fall after this age expires instead.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// Delay after the `attempts`-th failed attempt: `retry_interval × 2^(attempts-1)`,
    /// capped at `max_retry_interval`, then ±10 % jitter (`jitter` in [-1, 1]) so messages
    /// deferred together do not all come back in the same instant.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let base = self.retry_interval.as_secs_f64()
            * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.max_retry_interval.as_secs_f64());
        Duration::from_secs_f64((capped * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0))).max(0.0))
    }

    /// Next due time after a failure at `now_ms`, or `None` when that would be past `max_age`
    /// (counting from `created_ms`, less `held_ms` spent held by a suspension).
    pub fn next_due(
        &self,
        attempts: u32,
        now_ms: u64,
        created_ms: u64,
        held_ms: u64,
        jitter: f64,
    ) -> Option<u64> {
        let due = now_ms + self.delay(attempts, jitter).as_millis() as u64;
        let age_then = due.saturating_sub(created_ms).saturating_sub(held_ms);
        (age_then <= self.max_age.as_millis() as u64).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        retry_interval: Duration::from_secs(60),
        max_retry_interval: Duration::from_secs(600),
        max_age: Duration::from_secs(3600),
    };

    #[test]
    fn doubles_and_caps() {
        let secs: Vec<u64> = (1..=6).map(|a| P.delay(a, 0.0).as_secs()).collect();
        assert_eq!(secs, vec![60, 120, 240, 480, 600, 600]);
        assert_eq!(P.delay(1, 1.0).as_secs(), 66);
        assert_eq!(P.delay(1, -1.0).as_secs(), 54);
    }

    #[test]
    fn expires_past_max_age_not_counting_held_time() {
        assert_eq!(P.next_due(1, 1000, 0, 0, 0.0), Some(61_000));
        assert_eq!(P.next_due(5, 3_100_000, 0, 0, 0.0), None);
        assert_eq!(P.next_due(5, 3_100_000, 0, 1_000_000, 0.0), Some(3_700_000));
    }
}
