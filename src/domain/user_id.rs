//! The person a message is about; also the routing key that orders their messages.

use super::identifier::identifier;
use super::limits::MAX_IDENTIFIER_BYTES;

identifier! {
    /// Customer.io's limit on an identifier applies.
    UserId { field: "userId", max_bytes: MAX_IDENTIFIER_BYTES }
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
