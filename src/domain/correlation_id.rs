//! The producer's idempotency key. A ULID doubles as Customer.io's event `id`.

use super::{ParseError, limits::MAX_CORRELATION_ID_BYTES};
use std::fmt;
use ulid::Ulid;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CorrelationId(String);

impl CorrelationId {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.is_empty() {
            return Err(ParseError::new("correlationId", "must not be empty"));
        }
        if value.len() > MAX_CORRELATION_ID_BYTES {
            return Err(ParseError::new(
                "correlationId",
                format!("must be at most {MAX_CORRELATION_ID_BYTES} bytes"),
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// A fresh ULID, for messages that arrive without one.
    pub fn generate() -> Self {
        Self(Ulid::new().to_string())
    }

    /// The ULID form, when the id is one: it becomes the Customer.io event `id`.
    pub fn as_ulid(&self) -> Option<Ulid> {
        Ulid::from_string(&self.0).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_is_recognised() {
        let id = CorrelationId::parse("01JDZ5X3Q8W2V6T9N4M7K1P0RA").unwrap();
        assert!(id.as_ulid().is_some());
        assert!(CorrelationId::parse("order-7").unwrap().as_ulid().is_none());
        assert!(CorrelationId::parse("").is_err());
    }
}
