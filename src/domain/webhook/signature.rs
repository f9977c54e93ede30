//! `X-CIO-Signature`: hex HMAC-SHA256, keyed by a signing secret, over
//! `v0:<X-CIO-Timestamp>:<raw body>`. Several secrets may be configured while one is rotated;
//! a signature made with any of them is accepted. Comparison is constant-time (`verify_slice`).
//!
//! Age: Customer.io retries a failed webhook for up to 7 days and its reference does not say
//! whether a retry is signed again, so an authentic timestamp is accepted up to the configured
//! horizon (`webhooks.tolerance_secs`, 7 days by default) and reported as [`Freshness::Late`]
//! beyond [`FRESH_SECS`]. A timestamp ahead of the clock by more than [`MAX_FUTURE_SKEW_SECS`]
//! is refused: no retry comes from the future. Replays inside the horizon are caught by
//! `event_id`, not by age.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature is refused; every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no webhook signing secret is configured (webhooks.signing_secrets)")]
    NoSecrets,
    #[error("missing X-CIO-Signature header")]
    MissingSignature,
    #[error("missing X-CIO-Timestamp header")]
    MissingTimestamp,
    #[error("X-CIO-Timestamp is not unix seconds")]
    BadTimestamp,
    #[error("signature does not match")]
    Mismatch,
    #[error("X-CIO-Timestamp is {age_secs} s old, at most {tolerance_secs} s allowed")]
    Stale { age_secs: u64, tolerance_secs: u64 },
    #[error(
        "X-CIO-Timestamp is {ahead_secs} s in the future, at most {MAX_FUTURE_SKEW_SECS} s allowed"
    )]
    Future { ahead_secs: u64 },
}

/// How far ahead of the gateway's clock an authentic timestamp may be (clock skew).
pub const MAX_FUTURE_SKEW_SECS: u64 = 300;
/// An authentic timestamp older than this is a retry signed long ago: accepted, but counted.
pub const FRESH_SECS: u64 = 300;

/// How old an accepted request's timestamp is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within [`FRESH_SECS`] of now (either side).
    Fresh,
    /// Authentic, older than [`FRESH_SECS`], within the horizon: likely a Customer.io retry.
    Late { age_secs: u64 },
}

impl SignatureError {
    /// The `reason` label of `cio_gateway_webhooks_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Stale { .. } => "stale",
            SignatureError::Future { .. } => "future",
            _ => "signature",
        }
    }
}

/// Verifies webhook signatures against the configured secrets.
#[derive(Clone)]
pub struct SignatureVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance_secs: u64,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl SignatureVerifier {
    pub fn new<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>, tolerance_secs: u64) -> Self {
        Self {
            secrets: secrets
                .into_iter()
                .map(|s| s.as_ref().to_vec())
                .filter(|s| !s.is_empty())
                .collect(),
            tolerance_secs,
        }
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks the headers' values against `body`, at `now` (unix seconds). The signature is
    /// checked before the age, so a stale request is only called stale when it is authentic.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Freshness, SignatureError> {
        if self.secrets.is_empty() {
            return Err(SignatureError::NoSecrets);
        }
        let signature = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingSignature)?;
        let timestamp = timestamp
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(SignatureError::MissingTimestamp)?;
        let sent_at: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let expected = hex::decode(signature).map_err(|_| SignatureError::Mismatch)?;
        // `verify_slice` compares in constant time.
        let authentic = self
            .secrets
            .iter()
            .any(|secret| mac(secret, timestamp, body).verify_slice(&expected).is_ok());
        if !authentic {
            return Err(SignatureError::Mismatch);
        }
        if sent_at > now {
            let ahead_secs = sent_at.abs_diff(now);
            if ahead_secs > MAX_FUTURE_SKEW_SECS {
                return Err(SignatureError::Future { ahead_secs });
            }
            return Ok(Freshness::Fresh);
        }
        let age_secs = now.abs_diff(sent_at);
        if age_secs > self.tolerance_secs {
            return Err(SignatureError::Stale {
                age_secs,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(if age_secs > FRESH_SECS {
            Freshness::Late { age_secs }
        } else {
            Freshness::Fresh
        })
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The `X-CIO-Signature` Customer.io sends for `body` at `timestamp`: for tests and the demo.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    hex::encode(
        mac(secret.as_bytes(), timestamp, body)
            .finalize()
            .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    fn verifier() -> SignatureVerifier {
        SignatureVerifier::new(["old-secret", "new-secret"], 300)
    }

    #[test]
    fn authentic_retries_are_accepted_up_to_the_horizon_and_never_from_the_future() {
        let week: i64 = 604_800;
        let v = SignatureVerifier::new(["s"], week as u64);
        let body = b"{}";
        let at = |offset: i64| {
            let ts = (NOW + offset).to_string();
            let sig = sign("s", &ts, body);
            v.verify(Some(&ts), Some(&sig), body, NOW)
        };
        assert_eq!(at(0), Ok(Freshness::Fresh));
        assert_eq!(at(-300), Ok(Freshness::Fresh));
        assert_eq!(at(-301), Ok(Freshness::Late { age_secs: 301 }));
        assert_eq!(at(-86_400 * 3), Ok(Freshness::Late { age_secs: 259_200 }));
        assert_eq!(at(-week), Ok(Freshness::Late { age_secs: 604_800 }));
        assert_eq!(
            at(-week - 1),
            Err(SignatureError::Stale {
                age_secs: 604_801,
                tolerance_secs: week as u64
            })
        );
        assert_eq!(at(300), Ok(Freshness::Fresh));
        assert_eq!(at(301), Err(SignatureError::Future { ahead_secs: 301 }));
        assert_eq!(at(86_400).unwrap_err().reason(), "future");
        // A forged old request is a signature failure, not "stale".
        let ts = (NOW - 86_400).to_string();
        assert_eq!(
            v.verify(Some(&ts), Some(&sign("x", &ts, body)), body, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_configured_secret_verifies() {
        let body = br#"{"event_id":"a"}"#;
        let ts = NOW.to_string();
        for secret in ["old-secret", "new-secret"] {
            let sig = sign(secret, &ts, body);
            assert!(verifier().verify(Some(&ts), Some(&sig), body, NOW).is_ok());
            let upper = sig.to_uppercase();
            assert!(
                verifier()
                    .verify(Some(&ts), Some(&upper), body, NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn refusals_are_precise() {
        let body = b"{}";
        let ts = NOW.to_string();
        let good = sign("new-secret", &ts, body);
        let v = verifier();
        assert_eq!(
            v.verify(Some(&ts), None, body, NOW),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.verify(None, Some(&good), body, NOW),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            v.verify(Some("soon"), Some(&good), body, NOW),
            Err(SignatureError::BadTimestamp)
        );
        let wrong = sign("other", &ts, body);
        assert_eq!(
            v.verify(Some(&ts), Some(&wrong), body, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(Some(&ts), Some(&good), b"{ }", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(Some(&ts), Some("zz"), body, NOW),
            Err(SignatureError::Mismatch)
        );
        // Signed for another timestamp than the header says.
        let other_ts = sign("new-secret", &(NOW - 1).to_string(), body);
        assert_eq!(
            v.verify(Some(&ts), Some(&other_ts), body, NOW),
            Err(SignatureError::Mismatch)
        );
        let old = (NOW - 301).to_string();
        let sig = sign("old-secret", &old, body);
        assert_eq!(
            v.verify(Some(&old), Some(&sig), body, NOW)
                .unwrap_err()
                .reason(),
            "stale"
        );
        let future = (NOW + 301).to_string();
        let sig = sign("old-secret", &future, body);
        assert!(matches!(
            v.verify(Some(&future), Some(&sig), body, NOW),
            Err(SignatureError::Future { .. })
        ));
        let edge = (NOW - 300).to_string();
        let sig = sign("old-secret", &edge, body);
        assert_eq!(
            v.verify(Some(&edge), Some(&sig), body, NOW),
            Ok(Freshness::Fresh)
        );
        let none = SignatureVerifier::new(Vec::<String>::new(), 300);
        assert_eq!(
            none.verify(Some(&ts), Some(&good), body, NOW),
            Err(SignatureError::NoSecrets)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics(
            timestamp in proptest::option::of(prop_oneof![".{0,24}", any::<i64>().prop_map(|t| t.to_string())]),
            signature in proptest::option::of(prop_oneof![".{0,80}", "[0-9a-f]{64}"]),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            now in any::<i64>(),
            tolerance in any::<u64>(),
        ) {
            let v = SignatureVerifier::new(["s1", "s2"], tolerance);
            let _ = v.verify(timestamp.as_deref(), signature.as_deref(), &body, now);
            // A correct signature is accepted exactly when the age is within the tolerance.
            let trimmed = timestamp.as_deref().filter(|t| *t == t.trim());
            if let Some((t, ts)) = trimmed.and_then(|t| Some((t, t.parse::<i64>().ok()?))) {
                let sig = sign("s2", t, &body);
                let result = v.verify(Some(t), Some(&sig), &body, now);
                let accepted = if ts > now {
                    ts.abs_diff(now) <= MAX_FUTURE_SKEW_SECS
                } else {
                    now.abs_diff(ts) <= tolerance
                };
                prop_assert_eq!(result.is_ok(), accepted);
            }
        }
    }
}
