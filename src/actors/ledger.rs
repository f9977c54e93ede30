//! Failed attempts per message, kept by the process across its reconnects: a message the broker
//! redelivers after a lost channel goes on counting where it stopped, so an undeliverable one is
//! dead-lettered after `delivery.max_attempts` however often the connection drops. (Across a
//! process restart the count starts again; `delivery.max_redeliveries` bounds that case.)
//! Keyed like the dedup window; messages without a correlationId are not tracked.

use super::dedup::DedupKey;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;

#[derive(Debug, Clone, PartialEq)]
pub struct Failures {
    pub count: u32,
    pub last_error: String,
}

pub struct AttemptLedger {
    failures: Mutex<LruCache<DedupKey, Failures>>,
}

impl AttemptLedger {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        Self {
            failures: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn get(&self, key: &DedupKey) -> Option<Failures> {
        self.failures.lock().get(key).cloned()
    }

    /// Records that attempt number `attempt` failed; an older attempt reporting late never
    /// lowers the count.
    pub fn failed(&self, key: DedupKey, attempt: u32, error: &str) {
        let mut failures = self.failures.lock();
        let known = failures.get(&key).map_or(0, |f| f.count);
        if attempt >= known {
            failures.put(
                key,
                Failures {
                    count: attempt,
                    last_error: error.to_string(),
                },
            );
        }
    }

    /// The message has its outcome: nothing more to count.
    pub fn forget(&self, key: &DedupKey) {
        self.failures.lock().pop(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::Dedup;
    use crate::domain::Envelope;

    fn key(id: &str) -> DedupKey {
        let body = serde_json::json!({"type": "track", "userId": "u", "correlationId": id,
            "payload": {"name": "e"}});
        Dedup::key_of(&Envelope::parse(&serde_json::to_vec(&body).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn counts_survive_and_late_reports_do_not_lower_them() {
        let ledger = AttemptLedger::new(10);
        ledger.failed(key("a"), 2, "second");
        ledger.failed(key("a"), 1, "first, reported late");
        assert_eq!(
            ledger.get(&key("a")),
            Some(Failures {
                count: 2,
                last_error: "second".into()
            })
        );
        ledger.forget(&key("a"));
        assert_eq!(ledger.get(&key("a")), None);
    }
}
