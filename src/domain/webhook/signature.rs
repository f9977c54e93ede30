//! `X-CIO-Signature`: hex HMAC-SHA256, keyed by a signing secret, over
//! `v0:<X-CIO-Timestamp>:<raw body>`. Several secrets may be configured while one is rotated;
//! a signature made with any of them is accepted. Comparison is constant-time (`verify_slice`).

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
    #[error("X-CIO-Timestamp is {age_secs} s away from now, at most {tolerance_secs} s allowed")]
    Stale { age_secs: u64, tolerance_secs: u64 },
}

impl SignatureError {
    /// The `reason` label of `cio_gateway_webhooks_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Stale { .. } => "stale",
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
    ) -> Result<(), SignatureError> {
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
        let age_secs = now.abs_diff(sent_at);
        if age_secs > self.tolerance_secs {
            return Err(SignatureError::Stale {
                age_secs,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(())
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
    fn any_configured_secret_verifies() {
        let body = br#"{"event_id":"a"}"#;
        let ts = NOW.to_string();
        for secret in ["old-secret", "new-secret"] {
            let sig = sign(secret, &ts, body);
            assert_eq!(verifier().verify(Some(&ts), Some(&sig), body, NOW), Ok(()));
            let upper = sig.to_uppercase();
            assert_eq!(
                verifier().verify(Some(&ts), Some(&upper), body, NOW),
                Ok(())
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
            Err(SignatureError::Stale { .. })
        ));
        let edge = (NOW - 300).to_string();
        let sig = sign("old-secret", &edge, body);
        assert_eq!(v.verify(Some(&edge), Some(&sig), body, NOW), Ok(()));
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
                prop_assert_eq!(result.is_ok(), now.abs_diff(ts) <= tolerance);
            }
        }
    }
}
