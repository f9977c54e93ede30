//! The BigQuery sink with no static token authenticates with the metadata server (GKE
//! Workload Identity), through real RabbitMQ: rows land with its token; a token refused
//! mid-run (401) or about to expire is replaced and every row lands once; while the metadata
//! server fails, rows wait in the queue, then land. Nothing is dead-lettered.
//!
//! `GCE_METADATA_HOST` is process-wide, so this binary holds one test, which sets it first.

mod bigquery_support;
mod common;

use actix_web::web;
use bigquery_support::{Google, WAIT, assert_stored_once, post_event};
use cio_gateway::broker::topology::{DLQ_QUEUE, WEBHOOKS_WAREHOUSE_QUEUE};
use cio_gateway::sandbox::{self, SandboxConfig};
use common::{TestVhost, eventually};
use std::sync::atomic::Ordering;

#[actix_rt::test]
async fn metadata_server_tokens_survive_expiry_revocation_and_an_outage() {
    common::init_test_logging();
    let google = web::Data::new(Google::default());
    let (server, addr) = bigquery_support::bind(google.clone());
    actix_rt::spawn(server);
    // SAFETY: the only test of this binary, before anything it starts reads the environment.
    unsafe {
        std::env::set_var("GCE_METADATA_HOST", &addr);
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS_JSON");
    }
    let vhost = TestVhost::new("bq-auth");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = bigquery_support::start_gateway(&vhost, &sandbox, dir.path(), &addr).await;

    // 1. Rows are written with the metadata server's token, asked for with the header and
    //    the insertdata scope.
    let first: Vec<String> = futures::future::join_all((0..3).map(|_| post_event(&gateway))).await;
    assert_stored_once(&google, &first).await;
    assert_eq!(google.issued(), 1, "one token serves while it is valid");
    assert_eq!(google.without_flavor.load(Ordering::SeqCst), 0);
    assert_eq!(
        google.scopes.lock().as_slice(),
        ["https://www.googleapis.com/auth/bigquery.insertdata"]
    );
    assert_eq!(google.unauthorized.load(Ordering::SeqCst), 0);

    // 2. The token stops working mid-run (BigQuery answers 401): a new one is fetched for the
    //    retry. The new ones live 11 s, so the crate replaces each (10 s early) before
    //    BigQuery would refuse it: after the one 401, none.
    google.expires_in.store(11, Ordering::SeqCst);
    google.revoke_all();
    let mut second = Vec::new();
    while google.issued() < 4 {
        assert!(second.len() < 100, "tokens issued: {}", google.issued());
        let id = post_event(&gateway).await;
        let stored = eventually(WAIT, || google.count(&id) >= 1).await;
        assert!(stored, "row {} of the expiry phase stored", second.len());
        second.push(id);
    }
    assert_stored_once(&google, &second).await;
    assert_eq!(google.unauthorized.load(Ordering::SeqCst), 1);

    // 3. The metadata server fails (and the current token is refused): rows wait, retried,
    //    and land once it answers again.
    google.failing.store(true, Ordering::SeqCst);
    google.revoke_all();
    let before = google.token_requests.load(Ordering::SeqCst);
    let third: Vec<String> = futures::future::join_all((0..3).map(|_| post_event(&gateway))).await;
    let retried = eventually(WAIT, || {
        google.token_requests.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    assert!(
        retried,
        "the token is asked for again while the server fails"
    );
    assert!(third.iter().all(|id| google.count(id) == 0));
    let waiting = eventually(WAIT, || {
        vhost.queue_depths().get(WEBHOOKS_WAREHOUSE_QUEUE).copied() == Some(3)
    })
    .await;
    assert!(waiting, "queues: {:?}", vhost.queue_depths());
    google.failing.store(false, Ordering::SeqCst);
    assert_stored_once(&google, &third).await;

    // Nothing was dead-lettered, and nothing is left behind.
    let drained = eventually(WAIT, || {
        let depths = vhost.queue_depths();
        depths.get(WEBHOOKS_WAREHOUSE_QUEUE).copied() == Some(0)
            && depths.get(DLQ_QUEUE).copied().unwrap_or(0) == 0
    })
    .await;
    assert!(drained, "queues: {:?}", vhost.queue_depths());
    let all = first.len() + second.len() + third.len();
    assert_eq!(google.rows.lock().len(), all, "only these rows were stored");
    gateway.shutdown().await;
}
