//! Correlation ids this replica delivered recently: a redelivered envelope found here is not
//! sent to Customer.io again. Bounded: the oldest ids fall out first.

use crate::domain::CorrelationId;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;

pub struct Dedup {
    seen: Mutex<LruCache<CorrelationId, ()>>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        Self {
            seen: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn contains(&self, id: &CorrelationId) -> bool {
        self.seen.lock().contains(id)
    }

    pub fn insert(&self, id: CorrelationId) {
        self.seen.lock().put(id, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let d = Dedup::new(2);
        let id = |s: &str| CorrelationId::parse(s).unwrap();
        d.insert(id("a"));
        d.insert(id("b"));
        d.insert(id("c"));
        assert!(!d.contains(&id("a")));
        assert!(d.contains(&id("b")) && d.contains(&id("c")));
    }
}
