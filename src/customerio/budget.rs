//! The request budget: an adaptive rate limit spent before each request.
//!
//! One budget for the Track API (v1 and v2 share it, as Customer.io counts them together) and
//! one for the App API. The configured `track_rps` / `app_rps` is a ceiling: other clients of
//! the same workspace spend the same budget, so the real one can be lower. Like Vector's
//! adaptive request concurrency, a 429 halves the rate (at most once per second, so one burst of
//! 429s counts once) and pauses the API for its `Retry-After`; then every second without a 429
//! adds back a fiftieth of the ceiling. Requests are spaced by the current rate, with a quarter
//! second's worth of burst after idling. A request that reserved its slot before a 429 takes a
//! new one: many requests waiting at the old rate would otherwise all go out into the pause and
//! keep the workspace answering 429.

use super::CioError;
use crate::telemetry::events;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Never below one request per second: a probe of the real budget must keep going.
const MIN_RPS: f64 = 1.0;
/// After idling, this much time's worth of requests may go at once.
const BURST: Duration = Duration::from_millis(250);
/// Decreases are at least this far apart.
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

pub(crate) struct Budget {
    api: &'static str,
    ceiling: f64,
    /// A 429 never lowers the rate below this.
    floor: f64,
    state: Mutex<State>,
}

struct State {
    rps: f64,
    /// Theoretical arrival time of the next request (GCRA).
    next: Instant,
    last_increase: Instant,
    last_decrease: Option<Instant>,
    /// Counts 429s: a slot reserved under an older count is void.
    throttles: u64,
    /// The end of the latest Retry-After pause.
    paused_until: Instant,
}

impl Budget {
    pub(crate) fn per_second(rps: u32, key: &str, api: &'static str) -> Result<Self, CioError> {
        if rps == 0 {
            return Err(CioError::invalid(format!("{key} must be at least 1")));
        }
        Ok(Self::new(api, f64::from(rps), MIN_RPS))
    }

    /// One request per `interval`, never less often (API-triggered broadcasts: "1 request every
    /// 10 seconds"); a 429 still pauses for its `Retry-After`.
    pub(crate) fn every(interval: Duration, api: &'static str) -> Self {
        let ceiling = 1.0 / interval.as_secs_f64().max(0.001);
        Self::new(api, ceiling, ceiling)
    }

    fn new(api: &'static str, ceiling: f64, floor: f64) -> Self {
        let now = Instant::now();
        events::request_rate(api, ceiling);
        Self {
            api,
            ceiling,
            floor: floor.min(ceiling),
            state: Mutex::new(State {
                rps: ceiling,
                // A fresh budget has its burst available, as after idling.
                next: now.checked_sub(BURST).unwrap_or(now),
                last_increase: now,
                last_decrease: None,
                throttles: 0,
                paused_until: now,
            }),
        }
    }

    /// Waits until one request fits the budget, and spends it.
    pub(crate) async fn acquire(&self) {
        loop {
            let (at, throttles) = self.reserve();
            tokio::time::sleep_until(at).await;
            if self.state.lock().throttles == throttles {
                return;
            }
        }
    }

    /// The next slot at the current rate, and the 429 count it was reserved under.
    fn reserve(&self) -> (Instant, u64) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / state.rps);
        // A burst is BURST's worth of requests, not one more; and at least one request, so a
        // slow budget (one per 10 s) sends its first at once.
        let earliest = (now + interval)
            .checked_sub(BURST.max(interval))
            .unwrap_or(now);
        let base = state.next.max(earliest);
        state.next = base + interval;
        (base.max(now), state.throttles)
    }

    /// The current rate, requests per second.
    pub(crate) fn rate(&self) -> f64 {
        self.state.lock().rps
    }

    /// The configured rate the adaptive one never exceeds.
    pub(crate) fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// A request got an answer that was not a 429: climb back toward the ceiling.
    pub(crate) fn on_success(&self) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let since = now.duration_since(state.last_increase);
        if since < Duration::from_millis(100) {
            return;
        }
        state.last_increase = now;
        if state.rps >= self.ceiling {
            return;
        }
        let step = self.ceiling / 50.0 * since.as_secs_f64().min(1.0);
        state.rps = (state.rps + step).min(self.ceiling);
        events::request_rate(self.api, state.rps);
    }

    /// Customer.io answered 429: halve the rate and wait for `retry_after` (1 s if not said).
    pub(crate) fn on_throttled(&self, retry_after: Option<Duration>) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let pause = retry_after.unwrap_or(Duration::from_secs(1));
        state.throttles += 1;
        // Every waiting request reserves again, from the end of the pause.
        state.paused_until = state.paused_until.max(now + pause);
        state.next = state.paused_until;
        state.last_increase = now + pause;
        let recent = state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < DECREASE_COOLDOWN);
        if !recent {
            state.last_decrease = Some(now);
            state.rps = (state.rps / 2.0).max(self.floor);
            events::request_rate_lowered(self.api, state.rps, pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rps: u32) -> Budget {
        Budget::per_second(rps, "test_rps", "test").unwrap()
    }

    #[test]
    fn zero_is_refused() {
        assert!(Budget::per_second(0, "customerio.track_rps", "track").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_by_the_rate_after_a_burst() {
        let b = budget(10);
        let started = Instant::now();
        for _ in 0..30 {
            b.acquire().await;
        }
        // A quarter second's burst at once, then the rest at 10/s.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2650) && took <= Duration::from_millis(2850),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_of_one_per_interval_sends_the_first_at_once_then_one_per_interval() {
        let b = Budget::every(Duration::from_secs(10), "broadcast");
        let started = Instant::now();
        b.acquire().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the first at once");
        b.acquire().await;
        b.acquire().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(20),
            "then one per 10 s"
        );
        b.on_throttled(None);
        assert_eq!(
            b.rate(),
            0.1,
            "a 429 never makes it rarer than its interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_halves_once_per_burst_and_pauses() {
        let b = budget(100);
        b.acquire().await;
        b.on_throttled(Some(Duration::from_secs(2)));
        b.on_throttled(Some(Duration::from_secs(2)));
        b.on_throttled(None);
        assert_eq!(b.rate(), 50.0, "a burst of 429s counts once");
        let started = Instant::now();
        b.acquire().await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "Retry-After honoured"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        b.on_throttled(None);
        assert_eq!(b.rate(), 25.0);
        for _ in 0..20 {
            b.on_throttled(None);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(b.rate(), MIN_RPS, "never below the floor");
    }

    /// Requests already waiting at the old rate when a 429 comes do not go out into the pause:
    /// they take new slots, from its end, at the lowered rate.
    #[tokio::test(start_paused = true)]
    async fn waiting_requests_respect_a_later_429() {
        let b = std::sync::Arc::new(budget(100));
        let started = Instant::now();
        let waiting: Vec<_> = (0..100)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.acquire().await;
                    started.elapsed()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.on_throttled(Some(Duration::from_secs(1)));
        let mut sent: Vec<Duration> = Vec::new();
        for task in waiting {
            sent.push(task.await.unwrap());
        }
        let paused = Duration::from_millis(100)..Duration::from_millis(1100);
        let during = sent.iter().filter(|t| paused.contains(*t)).count();
        assert_eq!(during, 0, "none sent during the Retry-After pause");
        let last = sent.iter().max().unwrap();
        // About 65 left (a burst and 100 ms went before the 429), at 50 rps after the pause.
        assert!(*last >= Duration::from_millis(2200), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn climbs_back_additively_to_the_ceiling_and_no_further() {
        let b = budget(100);
        b.on_throttled(Some(Duration::ZERO));
        assert_eq!(b.rate(), 50.0);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            b.on_success();
        }
        let after_10s = b.rate();
        assert!(
            (after_10s - 70.0).abs() < 0.5,
            "2 rps per second: {after_10s}"
        );
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            b.on_success();
        }
        assert_eq!(b.rate(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn converges_near_a_lower_real_budget() {
        // A workspace that really allows 40 rps while 100 are configured: the sawtooth stays
        // between half of it and a little over it, and 429s stay rare.
        let b = budget(100);
        let real = 40.0;
        let (mut sent, mut throttled) = (0u32, 0u32);
        let mut window = (Instant::now(), 0u32);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            b.acquire().await;
            sent += 1;
            if window.0.elapsed() >= Duration::from_secs(1) {
                window = (Instant::now(), 0);
            }
            window.1 += 1;
            if f64::from(window.1) > real {
                throttled += 1;
                b.on_throttled(Some(Duration::from_secs(1)));
            } else {
                b.on_success();
            }
        }
        let rate = f64::from(sent) / 120.0;
        assert!(rate > real * 0.5 && rate <= real * 1.05, "{rate} req/s");
        assert!(
            f64::from(throttled) < f64::from(sent) * 0.05,
            "{throttled} of {sent}"
        );
    }
}
