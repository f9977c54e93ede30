//! Issues 12.1 and 12.6: webhook actions are taken once per event over the whole horizon, and
//! never on an event older than the person's last action of the same kind. The action ledger
//! lives in the preferences database (PostgreSQL, SQLite), so it holds across a restart of the
//! WebhookActor and across replicas. WebhookActors consume `customerio.webhooks.actions` on a
//! real RabbitMQ; the envelopes they publish stay in the partition queues (no pipeline runs),
//! where the tests read them.

mod common;

use actix::Actor;
use cio_gateway::actors::WebhookActor;
use cio_gateway::broker::topology::{WEBHOOKS_ACTIONS_QUEUE, WEBHOOKS_EXCHANGE};
use cio_gateway::broker::{self, Publish, SharedBroker, Topology};
use cio_gateway::domain::EventId;
use cio_gateway::domain::webhook::ActionKind;
use cio_gateway::preferences::{
    ActionLedger, ActionRecord, PostgresStore, PreferenceStore, SqliteStore, StoreError, Verdict,
};
use cio_gateway::publisher::Publisher;
use common::{ACTION_PATTERNS as PATTERNS, action_rules as rules};
use common::{TestDb, TestVhost, eventually, eventually_async};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn topology() -> Topology {
    Topology::with_action_patterns(2, &PATTERNS)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A reporting event as the edge puts it on `customerio.webhooks`.
fn event(event_id: &str, routing_key: &str, person: &str, timestamp: i64) -> Publish {
    let (object_type, metric) = routing_key.split_once('.').unwrap();
    let body = serde_json::to_vec(&json!({
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": timestamp,
        "data": {"customer_id": person, "identifiers": {"id": person}},
    }))
    .unwrap();
    Publish::new(WEBHOOKS_EXCHANGE, routing_key, body)
}

/// Starts a WebhookActor over a connection of its own (a replica, or a restarted process).
async fn replica(vhost: &TestVhost, ledger: Arc<dyn ActionLedger>) -> SharedBroker {
    let connection = broker::connect(&vhost.url, topology())
        .await
        .expect("RabbitMQ connects");
    WebhookActor::new(
        connection.clone(),
        Publisher::new(connection.clone()),
        rules(),
        ledger,
    )
    .start();
    connection
}

async fn consumers_of_actions(vhost: &TestVhost, n: u64) {
    assert!(
        eventually(Duration::from_secs(20), || vhost
            .consumer_counts()
            .get(WEBHOOKS_ACTIONS_QUEUE)
            == Some(&n))
        .await,
        "{n} consumer(s) on the actions queue: {:?}",
        vhost.consumer_counts()
    );
}

async fn partition_depth(broker: &SharedBroker) -> u32 {
    let mut total = 0;
    for queue in topology().partition_queues() {
        total += broker.queue_len(&queue).await.unwrap_or(0);
    }
    total
}

/// Waits until `n` envelopes are queued in all and every event on the actions queue was
/// settled (ready and unacked both zero).
async fn settled_with(vhost: &TestVhost, broker: &SharedBroker, n: u32) {
    assert!(
        eventually_async(WAIT, || async {
            partition_depth(broker).await == n
                && vhost.queue_depths().get(WEBHOOKS_ACTIONS_QUEUE) == Some(&0)
        })
        .await,
        "{n} envelope(s) published and the actions queue settled (depth {})",
        partition_depth(broker).await
    );
}

async fn envelope_types(broker: &SharedBroker, person: &str) -> Vec<String> {
    common::queued_envelopes(broker, &topology(), person)
        .await
        .iter()
        .map(|body| body["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An event acted on, the actor gone (its connection and store closed, as a process that
/// stopped), a new one on the same database: the same event again is not acted on. A marker
/// event queued behind the copy shows the copy was handled (one consumer, one at a time).
async fn acted_on_once_across_a_restart<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ActionLedger>>,
{
    let vhost = TestVhost::new("actions-restart");
    let first = replica(&vhost, open().await).await;
    consumers_of_actions(&vhost, 1).await;
    let bounce = || event("ev-restart-bounce", "email.bounced", "u-restart", now());
    first.publish(bounce()).await.unwrap();
    settled_with(&vhost, &first, 1).await;
    first.close().await;
    consumers_of_actions(&vhost, 0).await;

    let second = replica(&vhost, open().await).await;
    consumers_of_actions(&vhost, 1).await;
    second.publish(bounce()).await.unwrap();
    second
        .publish(event("ev-marker", "email.bounced", "u-marker", now()))
        .await
        .unwrap();
    settled_with(&vhost, &second, 2).await;
    // One read only: messages a read returns reach their queue's count again a little later.
    assert_eq!(
        envelope_types(&second, "u-restart").await,
        ["suppress"],
        "the copy after the restart was not acted on (the other envelope is the marker's)"
    );
    second.close().await;
}

#[actix_rt::test]
async fn postgres_an_event_is_acted_on_once_across_a_restart() {
    common::init_test_logging();
    let db = TestDb::new("actions-restart");
    let url = db.url.clone();
    acted_on_once_across_a_restart(|| {
        let url = url.clone();
        async move {
            Arc::new(PostgresStore::connect(&url).await.unwrap()) as Arc<dyn ActionLedger>
        }
    })
    .await;
}

#[actix_rt::test]
async fn sqlite_an_event_is_acted_on_once_across_a_restart() {
    common::init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preferences.db");
    acted_on_once_across_a_restart(|| {
        let path = path.clone();
        async move { Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn ActionLedger> }
    })
    .await;
}

/// Two replicas, a connection and a store each, on one database. The first consumes (the
/// queue has a single active consumer, the first to subscribe) and acts on a bounce; then it
/// goes away and the other, waiting until then, takes over and gets a copy of the bounce.
#[actix_rt::test]
async fn a_duplicate_is_not_acted_on_by_another_replica() {
    common::init_test_logging();
    let vhost = TestVhost::new("actions-replicas");
    let db = TestDb::new("actions-replicas");
    let store = || async { Arc::new(PostgresStore::connect(&db.url).await.unwrap()) };
    let a = replica(&vhost, store().await).await;
    consumers_of_actions(&vhost, 1).await;
    let b = replica(&vhost, store().await).await;
    consumers_of_actions(&vhost, 2).await;

    let bounce = || event("ev-replicas-bounce", "email.bounced", "u-replicas", now());
    b.publish(bounce()).await.unwrap();
    settled_with(&vhost, &b, 1).await;
    a.close().await;
    consumers_of_actions(&vhost, 1).await;
    b.publish(bounce()).await.unwrap();
    b.publish(event(
        "ev-replicas-marker",
        "email.bounced",
        "u-replicas-marker",
        now(),
    ))
    .await
    .unwrap();
    settled_with(&vhost, &b, 2).await;
    assert_eq!(
        envelope_types(&b, "u-replicas").await,
        ["suppress"],
        "the replica that took over did not act on the copy (the other envelope is the marker's)"
    );
    b.close().await;
}

/// `cio_gateway_webhook_actions_total{action, outcome}` in this process.
fn actions_counter(action: &str, outcome: &str) -> u64 {
    let text = cio_gateway::telemetry::metrics().render();
    let labels = [
        format!("action=\"{action}\""),
        format!("outcome=\"{outcome}\""),
    ];
    text.lines()
        .filter(|line| line.starts_with("cio_gateway_webhook_actions_total{"))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// A bounce suppresses, a later `customer.subscribed` unsuppresses; then a retry of a bounce
/// whose own time is before that unsuppress arrives (Customer.io retried it for days): it is
/// dropped and counted, and the person stays unsuppressed. A later bounce still suppresses.
#[actix_rt::test]
async fn a_late_bounce_older_than_an_applied_unsuppress_is_dropped() {
    common::init_test_logging();
    // Only this test drops an action as superseded in this binary: the counter is its own.
    let superseded = actions_counter("suppress", "superseded");
    let vhost = TestVhost::new("actions-late");
    let db = TestDb::new("actions-late");
    let broker = replica(
        &vhost,
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
    )
    .await;
    consumers_of_actions(&vhost, 1).await;
    let person = "u-late";
    let t = now() - 3 * 86_400;
    broker
        .publish(event("ev-late-bounce-1", "email.bounced", person, t))
        .await
        .unwrap();
    broker
        .publish(event(
            "ev-late-subscribed",
            "customer.subscribed",
            person,
            t + 60,
        ))
        .await
        .unwrap();
    broker
        .publish(event("ev-late-bounce-2", "email.bounced", person, t + 30))
        .await
        .unwrap();
    broker
        .publish(event("ev-late-bounce-3", "email.bounced", person, t + 60))
        .await
        .unwrap();
    settled_with(&vhost, &broker, 3).await;
    assert_eq!(
        envelope_types(&broker, person).await,
        ["suppress", "unsuppress", "suppress"],
        "the bounce of t+30 is dropped; the one of t+60 (a tie with the unsuppress) is not"
    );
    assert_eq!(
        actions_counter("suppress", "superseded"),
        superseded + 1,
        "the dropped bounce is counted"
    );
    broker.close().await;
}

/// A ledger whose database is "down" for the first `checks` checks and the first `records`
/// records: errors, as a lost connection gives.
struct Flaky {
    inner: Arc<dyn ActionLedger>,
    checks: AtomicU32,
    records: AtomicU32,
    failed: AtomicU32,
}

impl Flaky {
    fn fail(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn down(&self) -> StoreError {
        self.failed.fetch_add(1, Ordering::SeqCst);
        StoreError::Config("test: the database is down".into())
    }
}

#[async_trait::async_trait]
impl ActionLedger for Flaky {
    async fn check(&self, action: &ActionRecord) -> Result<Verdict, StoreError> {
        if Self::fail(&self.checks) {
            return Err(self.down());
        }
        self.inner.check(action).await
    }

    async fn record(&self, action: &ActionRecord, now_secs: i64) -> Result<(), StoreError> {
        if Self::fail(&self.records) {
            return Err(self.down());
        }
        self.inner.record(action, now_secs).await
    }

    async fn prune(&self, before_secs: i64) -> Result<u64, StoreError> {
        self.inner.prune(before_secs).await
    }
}

/// The database fails the first two checks of a bounce, then the record after its publish:
/// the event is never acked meanwhile, it is requeued and acted on once the database answers.
/// The record that failed costs one extra publish of the same envelope (same correlation id,
/// which the pipeline drops), never a lost action.
#[actix_rt::test]
async fn while_the_database_is_down_the_event_waits_in_the_queue() {
    common::init_test_logging();
    let vhost = TestVhost::new("actions-dbdown");
    let db = TestDb::new("actions-dbdown");
    let flaky = Arc::new(Flaky {
        inner: Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        checks: AtomicU32::new(2),
        records: AtomicU32::new(1),
        failed: AtomicU32::new(0),
    });
    let broker = replica(&vhost, flaky.clone()).await;
    consumers_of_actions(&vhost, 1).await;
    broker
        .publish(event("ev-dbdown", "email.bounced", "u-dbdown", now()))
        .await
        .unwrap();
    settled_with(&vhost, &broker, 2).await;
    assert_eq!(
        flaky.failed.load(Ordering::SeqCst),
        3,
        "every failure was met"
    );
    let queued = common::queued_envelopes(&broker, &topology(), "u-dbdown").await;
    assert_eq!(queued.len(), 2);
    assert_eq!(
        queued[0]["correlationId"], queued[1]["correlationId"],
        "the extra publish carries the same correlation id"
    );
    // Recorded in the end: a copy now is a duplicate.
    let record = ActionRecord {
        event_id: EventId::parse("ev-dbdown").unwrap(),
        person: "u-dbdown".into(),
        kind: ActionKind::Suppression,
        event_at: now(),
    };
    assert_eq!(flaky.check(&record).await.unwrap(), Verdict::Duplicate);
    broker.close().await;
}

/// The ledger itself, the same suite on both databases.
async fn ledger_suite(ledger: Arc<dyn ActionLedger>) {
    let at = 1_700_000_000;
    let record = |id: &str, kind, event_at| ActionRecord {
        event_id: EventId::parse(id).unwrap(),
        person: "p1".into(),
        kind,
        event_at,
    };
    let bounce = record("e1", ActionKind::Suppression, at);
    assert_eq!(ledger.check(&bounce).await.unwrap(), Verdict::New);
    ledger.record(&bounce, at).await.unwrap();
    ledger.record(&bounce, at).await.unwrap(); // a second record is harmless
    assert_eq!(ledger.check(&bounce).await.unwrap(), Verdict::Duplicate);
    let older = record("e0", ActionKind::Suppression, at - 1);
    assert_eq!(
        ledger.check(&older).await.unwrap(),
        Verdict::Superseded { latest_at: at }
    );
    let tie = record("e2", ActionKind::Suppression, at);
    assert_eq!(ledger.check(&tie).await.unwrap(), Verdict::New);
    let other_kind = record("e3", ActionKind::Subscription, at - 100);
    assert_eq!(ledger.check(&other_kind).await.unwrap(), Verdict::New);
    let other_person = ActionRecord {
        person: "p2".into(),
        ..older.clone()
    };
    assert_eq!(ledger.check(&other_person).await.unwrap(), Verdict::New);
    // Recording an older event never moves the latest time back.
    ledger.record(&older, at).await.unwrap();
    assert_eq!(
        ledger
            .check(&record("e4", ActionKind::Suppression, at - 1))
            .await
            .unwrap(),
        Verdict::Superseded { latest_at: at }
    );
    // Past the horizon both are forgotten.
    assert_eq!(ledger.prune(at).await.unwrap(), 0);
    assert_eq!(
        ledger.prune(at + 1).await.unwrap(),
        3,
        "e1, e0 and p1's latest"
    );
    assert_eq!(ledger.check(&bounce).await.unwrap(), Verdict::New);
    assert_eq!(ledger.check(&older).await.unwrap(), Verdict::New);
}

#[tokio::test]
async fn postgres_ledger() {
    let db = TestDb::new("actions-ledger");
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    ledger_suite(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("p.db")).await.unwrap());
    ledger_suite(store.clone()).await;
    store.close().await;
}
