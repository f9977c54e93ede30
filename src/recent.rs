//! The one bounded "seen recently" set: keys remembered up to a capacity, the least recently
//! used falling out first, safe to share between tasks. It backs the pipeline's delivery dedup
//! and the webhook edge's answer to Customer.io's retries; durable dedup lives elsewhere (the
//! warehouse's `event_id` key, the action ledger).

use lru::LruCache;
use parking_lot::Mutex;
use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroUsize;

pub struct RecentSet<K: Hash + Eq> {
    seen: Mutex<LruCache<K, ()>>,
}

impl<K: Hash + Eq> RecentSet<K> {
    /// Remembers at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        Self {
            seen: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.seen.lock().contains(key)
    }

    pub fn insert(&self, key: K) {
        self.seen.lock().put(key, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_seen_falls_out_first() {
        let recent = RecentSet::new(2);
        recent.insert("a".to_string());
        recent.insert("b".to_string());
        assert!(recent.contains("a"), "looking refreshes a");
        recent.insert("c".to_string());
        assert!(recent.contains("a") && recent.contains("c"));
        assert!(!recent.contains("b"));
    }
}
