//! The person a message is about; also the routing key that orders their messages.
//! An object's messages are ordered the same way, by a key of their own.

use super::identifier::identifier;
use super::limits::MAX_IDENTIFIER_BYTES;

identifier! {
    /// Customer.io's limit on an identifier applies.
    UserId { field: "userId", max_bytes: MAX_IDENTIFIER_BYTES }
}

impl UserId {
    /// The ordering key of something that is not a person (an object's
    /// `object:<type>:<id>`): it routes and orders like a user id, and may be longer than one,
    /// up to AMQP's 255-byte routing key.
    pub(crate) fn ordering_key(key: String) -> Self {
        Self(key)
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
