//! Dead-letter tooling (issue 5) against the real RabbitMQ: five rejected messages in
//! `customerio.dlq`; `cio-gateway dlq list` twice shows all five both times (reading loses
//! nothing); `show` finds one; `replay --correlation-id X` delivers X once and leaves four; the
//! admin routes peek and replay the same way; `purge` needs `--yes`.

mod common;

use actix_web::test as web_test;
use actix_web::{App, web};
use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::broker::{self, SharedBroker, Topology};
use cio_gateway::http;
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, RunningSandbox, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

const ADMIN: &str = "admin-secret";
const PARTITIONS: &str = "4";

async fn start_gateway(
    vhost: &TestVhost,
    sandbox: &RunningSandbox,
    data: &tempfile::TempDir,
) -> Gateway {
    let vars: Vec<(&str, String)> = vec![
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", PARTITIONS.into()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
        ("GATEWAY__ADMIN__TOKEN", ADMIN.into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
        ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "100".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "5".into()),
    ];
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start(common::settings(&pairs))
        .await
        .expect("gateway starts")
}

/// Runs the built binary against the test's vhost.
async fn cli(vhost: &TestVhost, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("AMQP_URL", &vhost.url)
        .env("GATEWAY__BROKER__PARTITIONS", PARTITIONS)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("the binary runs")
}

fn json_out(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn correlation_ids(listing: &Value) -> BTreeSet<String> {
    listing["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["correlationId"].as_str().unwrap().to_string())
        .collect()
}

async fn dlq_len(broker: &SharedBroker) -> u32 {
    broker.queue_len(DLQ_QUEUE).await.unwrap()
}

#[actix_rt::test]
async fn list_show_replay_and_purge_without_losing_a_message() {
    let vhost = TestVhost::new("dlq-tooling");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let users: Vec<String> = (0..5).map(|i| format!("dlq-user-{i}")).collect();
    sandbox.sandbox.set_faults(Faults {
        fail_users: users
            .iter()
            .map(|u| (u.clone(), 400))
            .collect::<BTreeMap<_, _>>(),
        ..Faults::default()
    });
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&vhost, &sandbox, &data).await;
    let producer = broker::connect(&vhost.url, Topology::new(4)).await.unwrap();

    // Five messages Customer.io rejects (400): dead-lettered as `rejected`.
    let publisher = Publisher::new(producer.clone());
    let mut ids = Vec::new();
    for user in &users {
        let id = ulid::Ulid::new().to_string();
        publisher
            .publish(json!({"type": "track", "userId": user, "correlationId": id,
                "payload": {"name": "order_failed", "data": {"n": 1}}}))
            .await
            .unwrap();
        ids.push(id);
    }
    let all_in = eventually_async(Duration::from_secs(30), || async {
        dlq_len(&producer).await == 5
    })
    .await;
    assert!(
        all_in,
        "the five rejected messages are dead letters: {} in the queue",
        dlq_len(&producer).await
    );
    // From now on Customer.io accepts them.
    sandbox.sandbox.set_faults(Faults::default());

    // `list` twice: the same five, and still five in the queue.
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    for round in 0..2 {
        let listing = json_out(&cli(&vhost, &["dlq", "list", "--json"]).await);
        assert_eq!(listing["total"], 5, "round {round}: {listing}");
        assert_eq!(correlation_ids(&listing), all, "round {round}");
        for letter in listing["deadLetters"].as_array().unwrap() {
            assert_eq!(letter["errorKind"], "rejected");
            assert_eq!(letter["originalExchange"], "customerio.track");
            assert_eq!(letter["originalRoutingKey"], letter["userId"]);
        }
        assert_eq!(
            dlq_len(&producer).await,
            5,
            "round {round}: listing removed nothing"
        );
    }
    // The table form, with a limit.
    let table = cli(&vhost, &["dlq", "list", "--limit", "2"]).await;
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CORRELATION ID"), "{table}");
    assert!(table.contains("2 shown of 5 matching"), "{table}");
    assert!(table.contains("by errorKind: rejected 5"), "{table}");
    assert_eq!(dlq_len(&producer).await, 5);

    // `show` one in full.
    let x = &ids[2];
    let shown = json_out(&cli(&vhost, &["dlq", "show", "--correlation-id", x]).await);
    assert_eq!(shown["correlationId"], x.as_str());
    assert_eq!(shown["body"]["status"], "failed");
    assert_eq!(shown["body"]["payload"]["name"], "order_failed");
    let missing = cli(&vhost, &["dlq", "show", "--correlation-id", "no-such-id"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(dlq_len(&producer).await, 5);

    // `replay` X: delivered once, four left.
    let report = json_out(&cli(&vhost, &["dlq", "replay", "--correlation-id", x]).await);
    assert_eq!(report["replayed"], json!([x]), "{report}");
    assert_eq!(report["remaining"], 4);
    let user_x = &users[2];
    let delivered = eventually(Duration::from_secs(30), || {
        sandbox
            .sandbox
            .records_for(user_x)
            .iter()
            .any(|r| r.event_id.as_deref() == Some(x.as_str()))
    })
    .await;
    assert!(delivered, "the replayed message reached Customer.io");
    // A later message of the same user: a second copy of the replay would be delivered
    // before it (one partition, in order), so once it is there every copy is.
    publisher
        .publish(json!({"type": "track", "userId": user_x, "payload": {"name": "after_replay"}}))
        .await
        .unwrap();
    let after = eventually(Duration::from_secs(30), || {
        sandbox
            .sandbox
            .records_for(user_x)
            .iter()
            .any(|r| r.body["name"] == "after_replay")
    })
    .await;
    assert!(after, "the message after the replay arrived");
    let deliveries = sandbox
        .sandbox
        .records_for(user_x)
        .iter()
        .filter(|r| r.event_id.as_deref() == Some(x.as_str()) && !r.duplicate)
        .count();
    assert_eq!(deliveries, 1, "delivered exactly once");
    for (user, id) in users.iter().zip(&ids).filter(|(_, id)| *id != x) {
        assert!(
            !sandbox
                .sandbox
                .records_for(user)
                .iter()
                .any(|r| r.event_id.as_deref() == Some(id.as_str())),
            "{id} was not replayed"
        );
    }
    assert_eq!(dlq_len(&producer).await, 4);
    let listing = json_out(&cli(&vhost, &["dlq", "list", "--json"]).await);
    assert!(!correlation_ids(&listing).contains(x));
    assert_eq!(listing["total"], 4);

    // Bad replay requests.
    let neither = cli(&vhost, &["dlq", "replay"]).await;
    assert_eq!(neither.status.code(), Some(2));
    let unknown = cli(&vhost, &["dlq", "replay", "--correlation-id", "no-such-id"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(dlq_len(&producer).await, 4);

    // The admin routes.
    let http = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);
    let response = http.get(format!("{base}/admin/dlq")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let admin_listing = |query: &str| {
        let request = http
            .get(format!("{base}/admin/dlq{query}"))
            .bearer_auth(ADMIN);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let listing = admin_listing("?limit=2").await;
    assert_eq!(listing["total"], 4);
    assert_eq!(listing["deadLetters"].as_array().unwrap().len(), 2);
    // In one process, back to back: every peek has put everything back before it answers.
    for round in 0..5 {
        let listing = admin_listing("").await;
        assert_eq!(listing["total"], 4, "round {round}");
        assert_eq!(
            listing["deadLetters"].as_array().unwrap().len(),
            4,
            "round {round}"
        );
        assert_eq!(dlq_len(&producer).await, 4, "round {round}");
    }
    let replay = |body: Value| {
        http.post(format!("{base}/admin/dlq/replay"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let response = replay(json!({"count": 1})).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(report["remaining"], 3);
    let replayed = report["replayed"][0].as_str().unwrap().to_string();
    let user_r = &users[ids.iter().position(|i| *i == replayed).unwrap()];
    assert!(
        eventually(Duration::from_secs(30), || {
            sandbox
                .sandbox
                .records_for(user_r)
                .iter()
                .any(|r| r.event_id.as_deref() == Some(replayed.as_str()))
        })
        .await
    );
    assert_eq!(
        replay(json!({"correlationId": "no-such-id"}))
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        replay(json!({"count": 0})).await.unwrap().status().as_u16(),
        400
    );
    assert_eq!(
        replay(json!({"everything": true}))
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    assert_eq!(dlq_len(&producer).await, 3);

    // `purge` only with --yes.
    let refused = cli(&vhost, &["dlq", "purge"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(dlq_len(&producer).await, 3);
    let purged = json_out(&cli(&vhost, &["dlq", "purge", "--yes"]).await);
    assert_eq!(purged["purged"], 3);
    assert_eq!(dlq_len(&producer).await, 0);
    let listing = json_out(&cli(&vhost, &["dlq", "list", "--json"]).await);
    assert_eq!(listing["total"], 0);

    gateway.shutdown().await;
    producer.close().await;
    sandbox.stop().await;
}

#[actix_rt::test]
async fn the_cli_refuses_the_in_process_broker() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args(["dlq", "list"])
        .env_remove("AMQP_URL")
        .env("GATEWAY__BROKER__URL", "memory://")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs RabbitMQ"));
}

#[actix_rt::test]
async fn admin_routes_are_off_without_a_token() {
    let state = common::routes_state(&[]).await;
    let app = web_test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .configure(http::configure),
    )
    .await;
    let response = web_test::call_service(
        &app,
        web_test::TestRequest::get()
            .uri("/admin/dlq")
            .insert_header(("authorization", "Bearer anything"))
            .to_request(),
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
    let response = web_test::call_service(
        &app,
        web_test::TestRequest::post()
            .uri("/admin/dlq/replay")
            .set_json(json!({"count": 1}))
            .to_request(),
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
}

/// Anyone able to publish to `customerio.dlq` writes the headers a replay reads. A forged dead
/// letter naming `customerio.webhooks` must not reach the actions queue (a suppress without a
/// signature), one naming an exchange that does not exist must not break the replay or the
/// publisher channel, and a genuine one still goes back to its producer exchange.
#[actix_rt::test]
async fn replay_publishes_only_to_allowed_exchanges() {
    use cio_gateway::broker::Publish;
    use cio_gateway::broker::topology::{
        DLQ_EXCHANGE, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY, TRACK_EXCHANGE,
        WEBHOOKS_ACTIONS_QUEUE, WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE,
    };
    use cio_gateway::dlq_admin::{Selection, replay};

    let vhost = TestVhost::new("dlq-allow-list");
    let broker = broker::connect(&vhost.url, Topology::new(4)).await.unwrap();
    let letter = |exchange: &str, key: &str, body: Value| {
        Publish::new(DLQ_EXCHANGE, key, serde_json::to_vec(&body).unwrap())
            .header(HEADER_ORIGINAL_EXCHANGE, exchange)
            .header(HEADER_ORIGINAL_ROUTING_KEY, key)
    };
    let bounce = json!({"event_id": "forged-1", "object_type": "email", "metric": "bounced",
        "timestamp": 1_700_000_000, "data": {"customer_id": "victim"}});
    for message in [
        letter(WEBHOOKS_EXCHANGE, "email.bounced", bounce),
        letter(
            "no.such.exchange",
            "victim",
            json!({"type": "track", "userId": "victim",
            "correlationId": "forged-2", "payload": {"name": "x"}}),
        ),
        letter(
            "customerio.partitioner",
            "victim",
            json!({"type": "track",
            "userId": "victim", "correlationId": "forged-3", "payload": {"name": "x"}}),
        ),
        letter(
            TRACK_EXCHANGE,
            "u1",
            json!({"type": "track", "userId": "u1",
            "correlationId": "genuine", "payload": {"name": "x"}, "status": "failed",
            "error": "e", "errorKind": "rejected", "attempts": 1, "processingTime": 1}),
        ),
    ] {
        broker.publish(message).await.unwrap();
    }

    let report = replay(&broker, &Selection::count(10)).await.unwrap();
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(
        report.replayed,
        [None, Some("genuine".to_string())],
        "{report:?}"
    );
    assert_eq!(
        report.skipped,
        [Some("forged-2".to_string()), Some("forged-3".to_string())]
    );
    assert_eq!(report.remaining, 2, "the refused ones stay for a human");
    assert_eq!(broker.queue_len(WEBHOOKS_ACTIONS_QUEUE).await.unwrap(), 0);
    assert_eq!(broker.queue_len(WEBHOOKS_WAREHOUSE_QUEUE).await.unwrap(), 1);
    let partitions: u32 = futures::future::join_all(
        Topology::new(4)
            .partition_queues()
            .map(|q| {
                let b = broker.clone();
                async move { b.queue_len(&q).await.unwrap() }
            })
            .collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .sum();
    assert_eq!(partitions, 1, "the genuine letter is back in the pipeline");
    // The publisher channel survived: publishing still works.
    let again = replay(&broker, &Selection::count(10)).await.unwrap();
    assert_eq!(again.error, None);
    broker.close().await;
}

/// Issue 13.8: a replay or purge over many dead letters shows how far it got, then a summary.
#[actix_rt::test]
async fn replay_and_purge_of_many_show_progress_and_a_summary() {
    use cio_gateway::broker::Publish;
    use cio_gateway::broker::topology::{
        DLQ_EXCHANGE, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY, TRACK_EXCHANGE,
    };

    let vhost = TestVhost::new("dlq-progress");
    let broker = broker::connect(&vhost.url, Topology::new(4)).await.unwrap();
    let publish_letters = |n: usize| {
        let broker = broker.clone();
        async move {
            let letters = (0..n).map(|i| {
                let user = format!("u{i}");
                let body = json!({"type": "track", "userId": user, "correlationId": format!("c{i}"),
                    "payload": {"name": "x"}, "status": "failed", "error": "e",
                    "errorKind": "rejected", "attempts": 1, "processingTime": 1});
                let message = Publish::new(DLQ_EXCHANGE, &user, serde_json::to_vec(&body).unwrap())
                    .header(HEADER_ORIGINAL_EXCHANGE, TRACK_EXCHANGE)
                    .header(HEADER_ORIGINAL_ROUTING_KEY, user.as_str());
                let broker = broker.clone();
                async move { broker.publish(message).await.unwrap() }
            });
            futures::future::join_all(letters).await;
        }
    };

    publish_letters(2500).await;
    let output = cli(&vhost, &["dlq", "replay", "--count", "2500"]).await;
    let report = json_out(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(report["replayed"].as_array().unwrap().len(), 2500);
    for line in [
        "replay: 1000 of 2500",
        "replay: 2000 of 2500",
        "replay: 2500 of 2500",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in: {stderr}");
    }
    assert!(
        stderr.contains("replay: 2500 replayed, 0 skipped (not replayable); 0 dead letter(s) left"),
        "{stderr}"
    );
    assert_eq!(dlq_len(&broker).await, 0);

    publish_letters(1500).await;
    let output = cli(&vhost, &["dlq", "purge", "--yes"]).await;
    assert_eq!(json_out(&output)["purged"], 1500);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in [
        "purge: 1000 of 1500",
        "purge: 1500 of 1500",
        "purge: 1500 dead letter(s) deleted",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in: {stderr}");
    }
    assert_eq!(dlq_len(&broker).await, 0);
    broker.close().await;
}

/// Issue 23, item 2: dead letters selected by errorKind, type and user through the CLI and the
/// admin routes; a purge of a selection deletes exactly it and leaves the rest in order.
#[actix_rt::test]
async fn dead_letters_are_selected_by_kind_type_and_user() {
    use cio_gateway::broker::Publish;
    use cio_gateway::broker::topology::{
        DLQ_EXCHANGE, HEADER_DEAD_LETTERED_AT, HEADER_ORIGINAL_EXCHANGE,
        HEADER_ORIGINAL_ROUTING_KEY, IDENTIFY_EXCHANGE, TRACK_EXCHANGE,
    };

    let vhost = TestVhost::new("dlq-filters");
    let broker = broker::connect(&vhost.url, Topology::new(4)).await.unwrap();
    // c0..c8: identify for i % 3 == 0, else track; invalid for odd i, else rejected.
    for i in 0..9 {
        let (kind, exchange) = if i % 3 == 0 {
            ("identify", IDENTIFY_EXCHANGE)
        } else {
            ("track", TRACK_EXCHANGE)
        };
        let error_kind = if i % 2 == 1 { "invalid" } else { "rejected" };
        let body = json!({"type": kind, "userId": format!("u{i}"), "correlationId": format!("c{i}"),
            "payload": {"name": "x"}, "status": "failed", "error": "e", "errorKind": error_kind,
            "attempts": 1, "processingTime": 1});
        let message = Publish::new(
            DLQ_EXCHANGE,
            &format!("u{i}"),
            serde_json::to_vec(&body).unwrap(),
        )
        .header(HEADER_DEAD_LETTERED_AT, (1_000 * i).to_string())
        .header(HEADER_ORIGINAL_EXCHANGE, exchange)
        .header(HEADER_ORIGINAL_ROUTING_KEY, format!("u{i}"));
        broker.publish(message).await.unwrap();
    }

    let listing = json_out(
        &cli(
            &vhost,
            &["dlq", "list", "--json", "--error-kind", "invalid"],
        )
        .await,
    );
    assert_eq!(listing["matched"], 4);
    assert_eq!(
        listing["summary"]["byType"],
        json!({"identify": 1, "track": 3})
    );
    let listing = json_out(
        &cli(
            &vhost,
            &[
                "dlq", "list", "--json", "--type", "identify", "--until", "4000",
            ],
        )
        .await,
    );
    assert_eq!(
        correlation_ids(&listing),
        BTreeSet::from(["c0".to_string(), "c3".to_string()])
    );
    let refused = cli(&vhost, &["dlq", "purge", "--error-kind", "invalid"]).await;
    assert_eq!(refused.status.code(), Some(2), "purge needs --yes");
    let purged = json_out(
        &cli(
            &vhost,
            &["dlq", "purge", "--yes", "--error-kind", "invalid"],
        )
        .await,
    );
    assert_eq!(purged["purged"], 4);
    assert_eq!(dlq_len(&broker).await, 5);

    // The same over HTTP, against a gateway on the vhost.
    let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&vhost, &sb, &data).await;
    let base = format!("http://{}", gateway.addr);
    let http = reqwest::Client::new();
    let listing: Value = http
        .get(format!("{base}/admin/dlq?user=u4&type=track"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        correlation_ids(&listing),
        BTreeSet::from(["c4".to_string()])
    );
    let purged = http
        .post(format!("{base}/admin/dlq/purge"))
        .bearer_auth(ADMIN)
        .json(&json!({"type": "identify"}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status().as_u16(), 200);
    assert_eq!(purged.json::<Value>().await.unwrap()["purged"], 2);
    let listing: Value = http
        .get(format!("{base}/admin/dlq"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let left: Vec<&str> = listing["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["correlationId"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["c2", "c4", "c8"], "the rest, in its order");
    let refused = http
        .post(format!("{base}/admin/dlq/purge"))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        400,
        "an empty selection is not 'all'"
    );

    // The contract's spellings: `--errorKind`, and `--limit` on purge (the oldest that match).
    let listing = json_out(
        &cli(
            &vhost,
            &["dlq", "list", "--json", "--errorKind", "rejected"],
        )
        .await,
    );
    assert_eq!(listing["matched"], 3);
    let purged = json_out(&cli(&vhost, &["dlq", "purge", "--yes", "--limit", "1"]).await);
    assert_eq!(purged["purged"], 1);
    let listing = json_out(&cli(&vhost, &["dlq", "list", "--json"]).await);
    assert_eq!(
        correlation_ids(&listing),
        BTreeSet::from(["c4".to_string(), "c8".to_string()])
    );
    gateway.shutdown().await;
    broker.close().await;
}
