//! Issue 11.5: two gateway replicas sharing one PostgreSQL preferences store publish a user's
//! opt-ins in the order they were stored. Replica A's publish of the older version is held
//! back (as a slow RabbitMQ connection would) while replica B stores and syncs the newer one;
//! what Customer.io hears last must be the newest version, and the row must be marked synced
//! only at that version.

mod common;

use cio_gateway::broker::{MemoryBroker, SharedBroker, Topology};
use cio_gateway::preferences::{PostgresStore, PreferenceService, PreferencesChange};
use cio_gateway::publisher::Publisher;
use common::{HookedBroker, TestDb, eventually_async};
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A broker whose next publish waits, after telling the test it arrived, until the test
/// releases it; every other call goes straight through. Returns the broker, a receiver that
/// fires when the held publish arrives, and the sender that lets it through.
fn held_broker(inner: SharedBroker) -> (SharedBroker, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (arrived_tx, arrived_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let hold = Mutex::new(Some((arrived_tx, release_rx)));
    let broker = HookedBroker::new(
        inner,
        Box::new(move |_| {
            let held = hold.lock().take();
            Box::pin(async move {
                if let Some((arrived, release)) = held {
                    let _ = arrived.send(());
                    // A dropped sender (the test gave up) lets the publish through too.
                    let _ = release.await;
                }
                Ok(())
            })
        }),
    );
    (broker, arrived_rx, release_tx)
}

fn email(opt_in: bool) -> PreferencesChange {
    PreferencesChange {
        email: Some(opt_in),
        ..PreferencesChange::default()
    }
}

/// The identify bodies queued for `user`, in queue order (what Customer.io receives, in order).
async fn queued_identifies(broker: &SharedBroker, topology: &Topology, user: &str) -> Vec<Value> {
    let queued = common::queued_envelopes(broker, topology, user).await;
    queued
        .into_iter()
        .filter(|body| body["type"] == "identify")
        .collect()
}

/// Whether some session of `db` waits for an advisory lock.
async fn advisory_lock_waiter(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_published_late_by_one_replica_does_not_win() {
    common::init_test_logging();
    let db = TestDb::new("prefs-replicas");
    let topology = Topology::new(2);
    let shared: SharedBroker = Arc::new(MemoryBroker::new());
    shared.declare(&topology).await.unwrap();
    let (held, arrived, release) = held_broker(shared.clone());

    // Two replicas: their own store connections and publishers, one database, one broker.
    let replica_a = PreferenceService::new(
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        Publisher::new(held),
        None,
    );
    let replica_b = PreferenceService::new(
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        Publisher::new(shared.clone()),
        None,
    );
    let observer = sqlx::PgPool::connect(&db.url).await.unwrap();
    let user = cio_gateway::domain::UserId::parse("compliance-7").unwrap();

    // A stores "opted in" (version 1) and starts publishing it; the publish is held.
    let a = {
        let (replica, user) = (replica_a.clone(), user.clone());
        tokio::spawn(async move { replica.change(&user, email(true)).await })
    };
    tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .expect("replica A's publish arrived")
        .unwrap();

    // B stores "opted out" (version 2) and syncs it. Either it finishes (nothing orders it
    // after A) or it waits for A's lock on this user; in both cases A may go on now.
    let b = {
        let (replica, user) = (replica_b.clone(), user.clone());
        tokio::spawn(async move { replica.change(&user, email(false)).await })
    };
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            b.is_finished() || advisory_lock_waiter(&observer).await
        })
        .await,
        "replica B neither finished nor waited for the user's lock"
    );
    release.send(()).unwrap();
    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    assert_eq!((a.version, b.version), (1, 2));

    let identifies = queued_identifies(&shared, &topology, user.as_str()).await;
    let opt_ins: Vec<&Value> = identifies
        .iter()
        .map(|i| &i["payload"]["email_opt_in"])
        .collect();
    assert_eq!(
        opt_ins.last(),
        Some(&&Value::Bool(false)),
        "Customer.io must end with the newest choice (opted out); identifies in order: {opt_ins:?}"
    );
    let row = replica_a.store().get(&user).await.unwrap().unwrap();
    assert_eq!(row.version, 2);
    assert!(!row.preferences.email);
    assert!(!row.sync_pending, "synced at the newest version");

    replica_a.close().await;
    replica_b.close().await;
    observer.close().await;
}
