//! Publishing envelopes from Rust with the gateway's own [`Publisher`]: validated against the
//! same types the gateway parses with, a correlation id (ULID) and timestamp filled in, sent to
//! the exchange of the type with the user id as routing key, persistent, and confirmed.
//!
//! ```sh
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example publish -- 42 signup
//! ```

use cio_gateway::broker::{self, Topology};
use cio_gateway::publisher::{PublishError, Publisher};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let mut args = std::env::args().skip(1);
    let user = args.next().unwrap_or_else(|| "42".to_string());
    let event = args.next().unwrap_or_else(|| "signup".to_string());

    // Connecting declares the gateway's topology (idempotent), so this works on a fresh vhost.
    let broker = broker::connect(&url, Topology::new(8)).await?;
    let publisher = Publisher::new(broker.clone());

    // An identify, then a track of the same user: Customer.io sees them in this order.
    let identify = json!({"type": "identify", "userId": user, "payload": {"plan": "pro"}});
    let id = publisher.publish(identify).await?;
    println!("identify confirmed, correlationId {id}");

    let track = json!({"type": "track", "userId": user, "payload": {"name": event, "data": {"source": "example"}}});
    let id = publisher.publish(track).await?;
    println!("track confirmed, correlationId {id}");

    // The other kinds go the same way; the publisher routes each by its own key: an anonymous
    // visitor's screen view by the anonymousId, a company object by object:<type>:<id>.
    for envelope in [
        json!({"type": "screen", "anonymousId": format!("anon-{user}"), "payload": {"name": "Home"}}),
        json!({"type": "identify", "userId": user, "anonymousId": format!("anon-{user}"), "payload": {}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
            "payload": {"action": "identify", "relationships": [{"identifiers": {"id": user}}]}}),
    ] {
        let id = publisher.publish(envelope).await?;
        println!("confirmed, correlationId {id}");
    }

    // Invalid envelopes are refused before anything is sent, naming the field.
    match publisher
        .publish(json!({"type": "track", "userId": user, "payload": {}}))
        .await
    {
        Err(PublishError::Invalid(e)) => println!("refused as expected: {e}"),
        other => anyhow::bail!("expected a validation error, got {other:?}"),
    }

    broker.close().await;
    Ok(())
}
