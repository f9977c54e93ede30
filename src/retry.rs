//! The gateway's one backoff. Every wait before trying again — a Customer.io attempt, a
//! confirmed publish, a reconnect, a resubscribe, a warehouse write, a preference re-sync, a
//! circuit probe — doubles from a base up to a cap, and one constant caps how long a
//! `Retry-After` from Customer.io is obeyed.

use rand::Rng;
use std::time::Duration;

/// The longest Customer.io's `Retry-After` is obeyed for one wait, wherever it is read (a
/// message's next attempt, the rate budget's pause). Close to the circuit's probe cap, and ten
/// such waits stay well inside RabbitMQ's delivery acknowledgement timeout.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Waits that double from `base` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Each wait drawn uniformly below its doubling ceiling (full jitter): for waits that many
    /// messages or replicas would otherwise take in step.
    pub const fn jittered(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: true,
        }
    }

    /// Exactly the doubling ceiling: for a single waiter (a reconnect, a probe).
    pub const fn exact(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: false,
        }
    }

    /// The wait after `failures` failures in a row (1-based), never shorter than
    /// `retry_after` (capped at [`MAX_RETRY_AFTER`]).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
            .min(self.max);
        let wait = if self.jitter {
            rand::rng().random_range(Duration::ZERO..=ceiling)
        } else {
            ceiling
        };
        match retry_after {
            Some(after) => wait.max(after.min(MAX_RETRY_AFTER)),
            None => wait,
        }
    }

    /// A run of failures against this backoff, starting with none.
    pub const fn streak(self) -> FailureStreak {
        FailureStreak {
            backoff: self,
            failures: 0,
        }
    }
}

/// Failures in a row of one retried operation: each [`failed`](Self::failed) gives the next
/// wait; [`succeeded`](Self::succeeded) starts over from the base.
#[derive(Debug, Clone)]
pub struct FailureStreak {
    backoff: Backoff,
    failures: u32,
}

impl FailureStreak {
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures, None)
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The wait the next failure would get, without counting one.
    pub fn next_delay(&self) -> Duration {
        self.backoff.delay(self.failures.saturating_add(1), None)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_waits_grow_to_the_cap_and_honour_retry_after() {
        let b = Backoff::jittered(Duration::from_millis(100), Duration::from_secs(2));
        for failures in 1..30 {
            let d = b.delay(failures, None);
            assert!(d <= Duration::from_secs(2));
            let ceiling = Duration::from_millis(100) * 2u32.pow((failures - 1).min(20));
            assert!(d <= ceiling);
        }
        assert!(b.delay(1, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
        assert!(b.delay(1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        assert_eq!(b.delay(1, Some(Duration::from_secs(600))), MAX_RETRY_AFTER);
    }

    #[test]
    fn a_streak_doubles_exactly_and_starts_over_after_a_success() {
        let mut streak =
            Backoff::exact(Duration::from_millis(200), Duration::from_secs(1)).streak();
        assert_eq!(streak.next_delay(), Duration::from_millis(200));
        let waits: Vec<u128> = (0..5).map(|_| streak.failed().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        assert_eq!(streak.failures(), 5);
        streak.succeeded();
        assert_eq!(streak.failed(), Duration::from_millis(200));
    }
}
