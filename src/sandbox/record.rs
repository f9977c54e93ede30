//! What the sandbox accepted, in arrival order, and the counters a test or an operator reads.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// One accepted operation. A v2 batch gives one record per operation, in batch order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Global arrival order, from 0 (restarts at 0 after a reset).
    pub seq: u64,
    /// `track_v1`, `track_v2`, `app` or `pipelines`.
    pub api: String,
    pub method: String,
    /// The request path as received (percent-encoded, with any mount prefix).
    pub path: String,
    /// The person: the id in a v1 path, the v2 `identifiers` value, the send's `identifiers`
    /// value, a merge's primary; `None` for anonymous events (see `anonymous_id`).
    pub user: Option<String>,
    /// identify, event, page, screen, delete, suppress, unsuppress, add_device, delete_device,
    /// merge, anonymous_event, send_email, send_push, send_sms (v2 object ops keep their action).
    pub action: String,
    /// The operation (v2) or the request body (v1, App); `null` for requests without a body.
    pub body: Value,
    /// The event's `id`, when it has one.
    pub event_id: Option<String>,
    /// An event whose `id` was accepted before: Customer.io ignores it, so it is not a second
    /// delivery. Recorded anyway, so a test can see the resend happened.
    pub duplicate: bool,
    /// An identify whose ordering timestamp (v1 `_timestamp`, v2 `timestamp`) is older than
    /// the last one applied to the person: Customer.io answers 200 and ignores it. Recorded,
    /// so a test can see that it was sent and dropped.
    #[serde(default)]
    pub stale: bool,
    /// The `anonymous_id` of an anonymous event, page or screen view.
    #[serde(default)]
    pub anonymous_id: Option<String>,
    /// The person an anonymous event now belongs to: Customer.io merges the anonymous events
    /// whose `anonymous_id` an identify names (the person's `anonymous_id` attribute), those
    /// received before it and up to five minutes after it.
    #[serde(default)]
    pub merged_into: Option<String>,
    /// The object of a v2 object operation: `<object_type_id>:<object_id>` (or its
    /// `cio_object_id`).
    #[serde(default)]
    pub object: Option<String>,
    /// What an App API send answered.
    pub delivery_id: Option<String>,
    /// When the sandbox accepted it, in ms since the epoch: delivery latency is measured here.
    pub received_at_ms: i64,
}

/// An operation about to be recorded (everything but the sequence number and dedup flag).
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub api: &'static str,
    pub method: String,
    pub path: String,
    pub user: Option<String>,
    pub action: String,
    pub body: Value,
    pub event_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub merges: Option<String>,
    pub object: Option<String>,
    pub delivery_id: Option<String>,
}

/// "We'll associate any events with the matching anonymous_id that we received up to five
/// minutes after your identify call" (Customer.io, Anonymous events).
const MERGE_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Loose bound on memory: past this many records the oldest tenth is dropped.
const MAX_RECORDS: usize = 2_000_000;

#[derive(Default)]
pub(crate) struct Ledger {
    records: Vec<Record>,
    event_ids: HashSet<String>,
    /// The newest ordering timestamp applied per person, as Customer.io keeps it.
    identified_at: HashMap<String, i64>,
    /// Per anonymous id: the person an identify merged it into, and when (ms).
    merged: HashMap<String, (String, i64)>,
    next_seq: u64,
}

/// An identify's ordering timestamp: v1 `_timestamp` in the body, v2 `timestamp`.
fn ordering_timestamp(op: &Accepted) -> Option<i64> {
    if op.action != "identify" {
        return None;
    }
    let key = if op.api == "track_v1" {
        "_timestamp"
    } else {
        "timestamp"
    };
    op.body.get(key).and_then(Value::as_i64)
}

impl Ledger {
    /// Records operations atomically, so a batch's records are consecutive.
    pub(crate) fn accept_all(&mut self, ops: Vec<Accepted>) -> usize {
        let mut duplicates = 0;
        let received_at_ms = chrono::Utc::now().timestamp_millis();
        for op in ops {
            let duplicate = match &op.event_id {
                Some(id) => !self.event_ids.insert(id.clone()),
                None => false,
            };
            duplicates += usize::from(duplicate);
            let stale = match (ordering_timestamp(&op), &op.user) {
                (Some(at), Some(user)) => {
                    let newest = self.identified_at.entry(user.clone()).or_insert(at);
                    let stale = at < *newest;
                    *newest = (*newest).max(at);
                    stale
                }
                _ => false,
            };
            let merged_into = match (&op.anonymous_id, &op.merges, &op.user) {
                (Some(anonymous), _, _) => self.merged_person(anonymous, received_at_ms),
                (None, Some(anonymous), Some(person)) if !stale => {
                    self.merge(anonymous, person, received_at_ms);
                    None
                }
                _ => None,
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            self.records.push(Record {
                seq,
                api: op.api.to_string(),
                method: op.method,
                path: op.path,
                user: op.user,
                action: op.action,
                body: op.body,
                event_id: op.event_id,
                duplicate,
                stale,
                anonymous_id: op.anonymous_id,
                merged_into,
                object: op.object,
                delivery_id: op.delivery_id,
                received_at_ms,
            });
        }
        if self.records.len() > MAX_RECORDS {
            self.records.drain(..MAX_RECORDS / 10);
        }
        duplicates
    }

    /// An identify naming `anonymous` merges the anonymous events received so far.
    fn merge(&mut self, anonymous: &str, person: &str, at_ms: i64) {
        self.merged
            .insert(anonymous.to_string(), (person.to_string(), at_ms));
        for record in &mut self.records {
            if record.anonymous_id.as_deref() == Some(anonymous) && record.merged_into.is_none() {
                record.merged_into = Some(person.to_string());
            }
        }
    }

    /// Whom an anonymous event received now belongs to: the person of an identify that named
    /// its anonymous id at most five minutes ago.
    fn merged_person(&self, anonymous: &str, now_ms: i64) -> Option<String> {
        let (person, at_ms) = self.merged.get(anonymous)?;
        (now_ms - at_ms <= MERGE_WINDOW_MS).then(|| person.clone())
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        self.records.clone()
    }

    pub(crate) fn records_for(&self, user: &str) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| r.user.as_deref() == Some(user))
            .cloned()
            .collect()
    }

    pub(crate) fn records_of_anonymous(&self, anonymous_id: &str) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| r.anonymous_id.as_deref() == Some(anonymous_id))
            .cloned()
            .collect()
    }

    pub(crate) fn records_of_object(&self, object: &str) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| r.object.as_deref() == Some(object))
            .cloned()
            .collect()
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests that reached a Customer.io route.
    pub requests: u64,
    /// Operations recorded (duplicates included).
    pub accepted_ops: u64,
    /// Of those, events whose `id` was seen before.
    pub duplicates: u64,
    /// 401: missing or wrong credentials.
    pub unauthorized: u64,
    /// 400 answers and per-operation errors of a 207 (invalid bodies).
    pub invalid: u64,
    /// 413: bodies over the documented size.
    pub too_large: u64,
    /// Pipelines calls answered 200 and not recorded, as the real API does over its limits
    /// (and with an invalid call outside strict mode).
    #[serde(default)]
    pub dropped: u64,
    /// 429: over the request budget.
    pub rate_limited: u64,
    /// Failures injected by `Faults` (`fail_first`, `error_rate`, `fail_users`, an outage, a
    /// disabled channel's 403).
    pub injected_failures: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub accepted_ops: AtomicU64,
    pub duplicates: AtomicU64,
    pub unauthorized: AtomicU64,
    pub invalid: AtomicU64,
    pub too_large: AtomicU64,
    pub dropped: AtomicU64,
    pub rate_limited: AtomicU64,
    pub injected_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            accepted_ops: get(&self.accepted_ops),
            duplicates: get(&self.duplicates),
            unauthorized: get(&self.unauthorized),
            invalid: get(&self.invalid),
            too_large: get(&self.too_large),
            dropped: get(&self.dropped),
            rate_limited: get(&self.rate_limited),
            injected_failures: get(&self.injected_failures),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.requests,
            &self.accepted_ops,
            &self.duplicates,
            &self.unauthorized,
            &self.invalid,
            &self.too_large,
            &self.dropped,
            &self.rate_limited,
            &self.injected_failures,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identify(api: &'static str, user: &str, body: Value) -> Accepted {
        Accepted {
            api,
            method: "PUT".into(),
            path: format!("/customers/{user}"),
            user: Some(user.into()),
            action: "identify".into(),
            body,
            event_id: None,
            anonymous_id: None,
            merges: None,
            object: None,
            delivery_id: None,
        }
    }

    fn anonymous_event(anonymous: &str) -> Accepted {
        Accepted {
            api: "track_v1",
            method: "POST".into(),
            path: "/events".into(),
            user: None,
            action: "anonymous_event".into(),
            body: json!({"name": "viewed", "anonymous_id": anonymous}),
            event_id: None,
            anonymous_id: Some(anonymous.into()),
            merges: None,
            object: None,
            delivery_id: None,
        }
    }

    #[test]
    fn an_identify_naming_an_anonymous_id_merges_its_events_before_and_after() {
        let mut ledger = Ledger::default();
        let merging = Accepted {
            merges: Some("anon-1".into()),
            ..identify("track_v1", "42", json!({"anonymous_id": "anon-1"}))
        };
        ledger.accept_all(vec![anonymous_event("anon-1"), anonymous_event("anon-2")]);
        ledger.accept_all(vec![merging, anonymous_event("anon-1")]);
        let merged: Vec<Option<&str>> = ledger
            .records
            .iter()
            .map(|r| r.merged_into.as_deref())
            .collect();
        assert_eq!(merged, [Some("42"), None, None, Some("42")]);
        // Past the window, a late anonymous event stays anonymous.
        ledger.merged.get_mut("anon-1").unwrap().1 -= MERGE_WINDOW_MS + 1;
        ledger.accept_all(vec![anonymous_event("anon-1")]);
        assert_eq!(ledger.records.last().unwrap().merged_into, None);
    }

    /// Customer.io applies an identify only if its ordering timestamp is not older than the
    /// last one applied to the person; an older one is answered 200 and ignored.
    #[test]
    fn an_identify_older_than_the_last_applied_is_stale() {
        let mut ledger = Ledger::default();
        ledger.accept_all(vec![
            identify("track_v2", "a", json!({"timestamp": 10})),
            identify("track_v1", "a", json!({"_timestamp": 5})),
            identify("track_v2", "b", json!({"timestamp": 5})),
            identify("track_v2", "a", json!({})),
            identify("track_v2", "a", json!({"timestamp": 10})),
        ]);
        let stale: Vec<bool> = ledger.records().iter().map(|r| r.stale).collect();
        assert_eq!(stale, [false, true, false, false, false]);
    }
}
