//! The request budget: Customer.io's per-workspace rate limits, spent before each request.
//!
//! One budget for the Track API (v1 and v2 share it, as Customer.io counts them together) and
//! one for the App API. Waiting here, instead of collecting 429s, keeps the workspace's limit for
//! everyone sharing it. The burst is one second's worth, as governor's `per_second` quota gives.

use super::CioError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub(crate) struct Budget {
    limiter: DefaultDirectRateLimiter,
}

impl Budget {
    pub(crate) fn per_second(rps: u32, key: &str) -> Result<Self, CioError> {
        let rps = NonZeroU32::new(rps)
            .ok_or_else(|| CioError::invalid(format!("{key} must be at least 1")))?;
        Ok(Self {
            limiter: RateLimiter::direct(Quota::per_second(rps)),
        })
    }

    /// Waits until one request fits the budget.
    pub(crate) async fn acquire(&self) {
        self.limiter.until_ready().await;
    }
}
