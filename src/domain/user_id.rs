//! The person a message is about; also the routing key that orders their messages.

use super::{ParseError, limits::MAX_IDENTIFIER_BYTES};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.trim().is_empty() {
            return Err(ParseError::new("userId", "must not be empty"));
        }
        if value.len() > MAX_IDENTIFIER_BYTES {
            return Err(ParseError::new(
                "userId",
                format!(
                    "is {} bytes, Customer.io allows at most {MAX_IDENTIFIER_BYTES}",
                    value.len()
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ParseError::new(
                "userId",
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("  ").is_err());
        assert!(UserId::parse(&"x".repeat(151)).is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert_eq!(UserId::parse("42").unwrap().as_str(), "42");
        assert!(UserId::parse(&"é".repeat(75)).is_ok());
    }
}
