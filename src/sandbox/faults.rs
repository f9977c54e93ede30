//! What can go wrong on purpose: injected failures and latency, and the request budget that
//! answers 429 the way Customer.io does when a workspace sends too fast.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fault injection, applied to every request on a Customer.io route before it is processed
/// (after the credentials are checked). Missing fields take their defaults when read as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests (0..=1) answered with `error_status`.
    pub error_rate: f64,
    /// The status of injected failures (`fail_first`, `error_rate`); default 503.
    pub error_status: u16,
    /// Delay before each request is processed.
    pub latency_ms: u64,
    /// Person id -> status: requests and operations about that person fail with it. In a v2
    /// batch a 4xx status fails only that person's operations, reported in a 207 the way
    /// Customer.io reports invalid operations (the rest is accepted); any other status (429,
    /// 5xx) fails the whole request, as a server-side failure would.
    pub fail_users: BTreeMap<String, u16>,
    /// The next N requests fail with `error_status` (counts down; GET shows what is left).
    pub fail_first: u32,
    /// `Retry-After` seconds sent with injected failures.
    pub retry_after_secs: Option<u64>,
    /// An outage: for `outage_ms` from when these faults are set, every request (whatever its
    /// credentials) is answered `outage_status` (401 plays a revoked key). GET shows what is left.
    pub outage_ms: u64,
    /// The status of an outage; default 503.
    pub outage_status: u16,
    /// Person ids whose every request fails as a whole: `/batch` answers 400 naming no
    /// operation (`{"errors":[{"reason":"invalid",...}]}` without `batch_index`), so the whole
    /// batch is refused; `/entity`, Track v1 and sends about them answer the same 400.
    pub reject_requests_of: BTreeSet<String>,
    /// Every request is answered with this 3xx and a `Location` on another region's host, as
    /// Customer.io redirects a workspace of the other region.
    pub redirect_status: Option<u16>,
    /// Transactional channels (`sms`, `push`, `in_app`, `inbox_message`) the workspace has not
    /// enabled: their sends are answered 403, as Customer.io answers "requests sent to a
    /// workspace without the in-app capability".
    pub disabled_channels: BTreeSet<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            latency_ms: 0,
            fail_users: BTreeMap::new(),
            fail_first: 0,
            retry_after_secs: None,
            outage_ms: 0,
            outage_status: 503,
            reject_requests_of: BTreeSet::new(),
            redirect_status: None,
            disabled_channels: BTreeSet::new(),
        }
    }
}

impl Faults {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be within 0..=1, got {}",
                self.error_rate
            ));
        }
        if let Some(status) = self.redirect_status
            && !(300..=399).contains(&status)
        {
            return Err(format!(
                "redirect_status: {status} is not a redirect (300..=399)"
            ));
        }
        for (what, status) in std::iter::once(("error_status", &self.error_status))
            .chain(std::iter::once(("outage_status", &self.outage_status)))
            .chain(self.fail_users.values().map(|s| ("fail_users", s)))
        {
            if !(400..=599).contains(status) {
                return Err(format!(
                    "{what}: {status} is not an error status (400..=599)"
                ));
            }
        }
        Ok(())
    }
}

/// A failure to answer instead of processing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Injected {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
}

#[derive(Default)]
pub(crate) struct FaultState {
    faults: Mutex<Faults>,
    outage_until: Mutex<Option<Instant>>,
}

impl FaultState {
    pub(crate) fn get(&self) -> Faults {
        let mut faults = self.faults.lock().clone();
        faults.outage_ms = self.outage_left().map_or(0, |d| d.as_millis() as u64);
        faults
    }

    pub(crate) fn set(&self, faults: Faults) {
        let until = (faults.outage_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(faults.outage_ms));
        *self.outage_until.lock() = until;
        *self.faults.lock() = faults;
    }

    fn outage_left(&self) -> Option<Duration> {
        let until = (*self.outage_until.lock())?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// The outage's answer while it lasts.
    pub(crate) fn outage(&self) -> Option<Injected> {
        self.outage_left()?;
        let faults = self.faults.lock();
        Some(Injected {
            status: faults.outage_status,
            retry_after_secs: faults.retry_after_secs,
        })
    }

    pub(crate) fn redirect(&self) -> Option<u16> {
        self.faults.lock().redirect_status
    }

    /// Whether requests containing this person are refused as a whole.
    pub(crate) fn rejects_requests_of(&self, user: &str) -> bool {
        self.faults.lock().reject_requests_of.contains(user)
    }

    /// Whether the workspace has this transactional channel turned off.
    pub(crate) fn channel_disabled(&self, channel: &str) -> bool {
        self.faults.lock().disabled_channels.contains(channel)
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.faults.lock().latency_ms)
    }

    /// Decides whether this request fails: `fail_first` first, then `error_rate`.
    pub(crate) fn inject(&self) -> Option<Injected> {
        let mut faults = self.faults.lock();
        let injected = Injected {
            status: faults.error_status,
            retry_after_secs: faults.retry_after_secs,
        };
        if faults.fail_first > 0 {
            faults.fail_first -= 1;
            return Some(injected);
        }
        (faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate).then_some(injected)
    }

    /// The status configured for a person, if requests about them fail.
    pub(crate) fn for_user(&self, user: &str) -> Option<Injected> {
        let faults = self.faults.lock();
        faults.fail_users.get(user).map(|status| Injected {
            status: *status,
            retry_after_secs: faults.retry_after_secs,
        })
    }
}

/// A token bucket per second; `None` is unlimited.
#[derive(Default)]
pub(crate) struct Budget {
    limiter: RwLock<Option<(u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl Budget {
    pub(crate) fn set(&self, rps: Option<u32>) {
        *self.limiter.write() = rps.map(|n| {
            // Zero means nothing gets through; the limiter itself needs at least one per second.
            let quota = Quota::per_second(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
            (n, Arc::new(RateLimiter::direct(quota)))
        });
    }

    pub(crate) fn rps(&self) -> Option<u32> {
        self.limiter.read().as_ref().map(|(n, _)| *n)
    }

    /// `Err(seconds)` when over budget: the whole seconds until a request fits, at least 1.
    pub(crate) fn check(&self) -> Result<(), u64> {
        let limiter = self.limiter.read().clone();
        match limiter {
            None => Ok(()),
            Some((0, _)) => Err(1),
            Some((_, limiter)) => limiter.check().map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                wait.as_secs_f64().ceil().max(1.0) as u64
            }),
        }
    }
}
