//! Messages this replica delivered recently: a redelivered envelope found here is not sent to
//! Customer.io again. Keyed on (user, message type, correlationId): two users, or a track and
//! a send, that share an id never swallow each other. Bounded: the oldest keys fall out first.

use crate::domain::{CorrelationId, Envelope, MessageType, UserId};
use crate::recent::RecentSet;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    user: UserId,
    kind: MessageType,
    id: CorrelationId,
}

pub struct Dedup {
    seen: RecentSet<DedupKey>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: RecentSet::new(capacity),
        }
    }

    /// The key of an envelope; none without a correlationId (such messages are not deduplicated).
    pub fn key_of(envelope: &Envelope) -> Option<DedupKey> {
        envelope.correlation_id.clone().map(|id| DedupKey {
            user: envelope.user.clone(),
            kind: envelope.kind,
            id,
        })
    }

    pub fn contains(&self, key: &DedupKey) -> bool {
        self.seen.contains(key)
    }

    #[cfg(test)]
    fn contains_envelope(&self, envelope: &Envelope) -> bool {
        Self::key_of(envelope).is_some_and(|key| self.contains(&key))
    }

    pub fn insert(&self, key: DedupKey) {
        self.seen.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, user: &str, id: &str) -> Envelope {
        let body = serde_json::json!({
            "type": kind, "userId": user, "correlationId": id,
            "payload": {"name": "signed_up"}
        });
        Envelope::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn bounded() {
        let d = Dedup::new(2);
        let (a, b, c) = (
            envelope("track", "u", "a"),
            envelope("track", "u", "b"),
            envelope("track", "u", "c"),
        );
        for e in [&a, &b, &c] {
            d.insert(Dedup::key_of(e).unwrap());
        }
        assert!(!d.contains_envelope(&a));
        assert!(d.contains_envelope(&b) && d.contains_envelope(&c));
    }

    #[test]
    fn another_user_or_type_with_the_same_id_is_not_a_duplicate() {
        let d = Dedup::new(10);
        d.insert(Dedup::key_of(&envelope("track", "u1", "same")).unwrap());
        assert!(d.contains_envelope(&envelope("track", "u1", "same")));
        assert!(!d.contains_envelope(&envelope("track", "u2", "same")));
        assert!(!d.contains_envelope(&envelope("identify", "u1", "same")));
    }
}
