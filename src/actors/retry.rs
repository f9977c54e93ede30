//! When to try again: exponential backoff with full jitter, never sooner than Retry-After.

use rand::Rng;
use std::time::Duration;

/// The longest Customer.io's Retry-After is obeyed for one wait. Ten such waits stay well
/// inside RabbitMQ's 30-minute delivery acknowledgement timeout.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `attempt + 1`, after `attempt` failures (1-based).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let ceiling = exp.min(self.max);
        let jittered = rand::rng().random_range(Duration::ZERO..=ceiling);
        // Customer.io's Retry-After is a floor (capped, so a delivery is never held for long).
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_retry_after() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 1..30 {
            let d = b.delay(attempt, None);
            assert!(d <= Duration::from_secs(2));
            let ceiling = Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20));
            assert!(d <= ceiling);
        }
        assert!(b.delay(1, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
        assert!(b.delay(1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        assert_eq!(b.delay(1, Some(Duration::from_secs(600))), MAX_RETRY_AFTER);
    }
}
