//! The RabbitMQ topology of the gateway, as data: declared at start, printed by `topology`,
//! and compared with `deploy/rabbitmq/definitions.json` in the tests.
//!
//! Producers publish to three fanout exchanges with the user id as routing key. All three are
//! bound into one `x-modulus-hash` exchange (plugin `rabbitmq_sharding`), which keeps the
//! routing key and so sends every message of a user to the same partition queue, whatever
//! exchange it came through. Each partition is a quorum queue with single-active-consumer: one
//! replica at a time consumes it, which is what keeps a user's order across replicas.
//!
//! Why modulus and not `x-consistent-hash`: a user must keep their partition across a RabbitMQ
//! restart, or messages queued before it race newer ones in another partition. The modulus
//! exchange is stateless (`phash2(routing key) rem N`, over the bound queues in name order), so
//! its mapping is the same after every boot; the consistent-hash exchange keeps its ring in RAM
//! and rebuilds it at boot in binding-recovery order (3.10.8 here: `0,1,2,3` became `0,2,3,1`).

use crate::domain::Route;
use crate::preferences::SUBSCRIPTION_PATTERNS;
use serde::Serialize;

pub const IDENTIFY_EXCHANGE: &str = "customerio.identify";
pub const TRACK_EXCHANGE: &str = "customerio.track";
pub const TRANSACTIONAL_EXCHANGE: &str = "customerio.transactional";
pub const PARTITIONER_EXCHANGE: &str = "customerio.partitioner";
pub const PROCESSED_EXCHANGE: &str = "customerio.processed";
pub const DLQ_EXCHANGE: &str = "customerio.dlq";
pub const DLQ_QUEUE: &str = "customerio.dlq";
pub const WEBHOOKS_EXCHANGE: &str = "customerio.webhooks";
pub const WEBHOOKS_WAREHOUSE_QUEUE: &str = "customerio.webhooks.warehouse";
pub const WEBHOOKS_ACTIONS_QUEUE: &str = "customerio.webhooks.actions";
pub const PARTITION_QUEUE_PREFIX: &str = "customerio.partition.";
/// `broker.partitioner = builtin`: where the producer exchanges deliver, for the gateway to
/// forward to the partitions.
pub const INTAKE_QUEUE: &str = "customerio.intake";

/// Headers a message forwarded from the intake queue carries (`builtin`): the exchange and
/// routing key its producer published with, which its delivery reports as its own.
pub const HEADER_FORWARDED_EXCHANGE: &str = "x-cio-exchange";
pub const HEADER_FORWARDED_ROUTING_KEY: &str = "x-cio-routing-key";
/// Header naming the exchange a dead letter was first published to.
pub const HEADER_ORIGINAL_EXCHANGE: &str = "x-original-exchange";
/// Header naming the routing key a dead letter was first published with.
pub const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Header holding when a message was dead-lettered, in milliseconds since the epoch.
pub const HEADER_DEAD_LETTERED_AT: &str = "x-cio-dead-lettered-at";

pub fn exchange_for(route: Route) -> &'static str {
    match route {
        Route::Identify => IDENTIFY_EXCHANGE,
        Route::Track => TRACK_EXCHANGE,
        Route::Transactional => TRANSACTIONAL_EXCHANGE,
    }
}

pub fn partition_queue(index: u16) -> String {
    format!("{PARTITION_QUEUE_PREFIX}{index}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExchangeKind {
    Fanout,
    Topic,
    #[serde(rename = "x-modulus-hash")]
    ModulusHash,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::ModulusHash => "x-modulus-hash",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Replicated; `single_active` makes one consumer at a time receive everything.
    Quorum { single_active: bool },
    /// Allows `basic.get` browsing and requeue in place: the dead-letter queue.
    Classic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSpec {
    pub name: String,
    pub kind: QueueKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingSpec {
    pub source: String,
    pub destination: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub partitions: u16,
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub exchange_bindings: Vec<BindingSpec>,
    pub queue_bindings: Vec<BindingSpec>,
}

impl Topology {
    /// The topology for the default webhook rules.
    pub fn new(partitions: u16) -> Self {
        let rules = crate::config::DEFAULT_WEBHOOK_RULES.map(|(pattern, _)| pattern);
        let mut patterns = rules.to_vec();
        patterns.extend(SUBSCRIPTION_PATTERNS);
        Self::with_action_patterns(partitions, &patterns)
    }

    /// The topology a gateway with these settings declares.
    pub fn for_settings(settings: &crate::config::Settings) -> Self {
        let patterns: Vec<&str> = settings
            .webhooks
            .rules
            .iter()
            .filter(|(_, action)| action.as_str() != "none")
            .map(|(pattern, _)| pattern.as_str())
            .chain(SUBSCRIPTION_PATTERNS)
            .collect();
        let mut topology = Self::with_action_patterns(settings.broker.partitions, &patterns);
        // The in-process broker partitions by itself, whatever the setting.
        if settings.broker.partitioner == super::partitioner::Partitioner::Builtin
            && settings.broker.url.expose() != "memory://"
        {
            topology = topology.routed_by_gateway();
        }
        if let Some(queue) = &settings.broker.processed_queue {
            topology.add_processed_queue(queue);
        }
        topology
    }

    /// A durable (quorum) queue bound to `customerio.processed`: one processed event per
    /// delivered envelope stays there until someone consumes it (`broker.processed_queue`).
    pub fn add_processed_queue(&mut self, name: &str) {
        self.queues.push(QueueSpec {
            name: name.to_string(),
            kind: QueueKind::Quorum {
                single_active: false,
            },
        });
        self.queue_bindings.push(BindingSpec {
            source: PROCESSED_EXCHANGE.to_string(),
            destination: name.to_string(),
            routing_key: String::new(),
        });
    }

    /// Reporting events reach the actions queue only when a rule may act on them (or they
    /// carry a subscription change the preferences follow), so the
    /// broker stores most events (opens, clicks, deliveries) once, for the warehouse alone.
    pub fn with_action_patterns(partitions: u16, rule_patterns: &[&str]) -> Self {
        let exchange = |name: &str, kind| ExchangeSpec {
            name: name.to_string(),
            kind,
        };
        let bind = |source: &str, destination: &str, key: &str| BindingSpec {
            source: source.to_string(),
            destination: destination.to_string(),
            routing_key: key.to_string(),
        };
        let quorum = |name: &str, single_active| QueueSpec {
            name: name.to_string(),
            kind: QueueKind::Quorum { single_active },
        };

        let producer_exchanges = [IDENTIFY_EXCHANGE, TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE];
        let mut exchanges: Vec<_> = producer_exchanges
            .iter()
            .map(|name| exchange(name, ExchangeKind::Fanout))
            .collect();
        exchanges.push(exchange(PARTITIONER_EXCHANGE, ExchangeKind::ModulusHash));
        exchanges.push(exchange(PROCESSED_EXCHANGE, ExchangeKind::Fanout));
        exchanges.push(exchange(DLQ_EXCHANGE, ExchangeKind::Fanout));
        exchanges.push(exchange(WEBHOOKS_EXCHANGE, ExchangeKind::Topic));

        let exchange_bindings = producer_exchanges
            .iter()
            .map(|source| bind(source, PARTITIONER_EXCHANGE, ""))
            .collect();

        let mut queues = Vec::new();
        let mut queue_bindings = Vec::new();
        for index in 0..partitions {
            let name = partition_queue(index);
            // The modulus exchange ignores binding keys; one key for all keeps the bound
            // queues ordered by name alone, which is the order it indexes them in.
            queue_bindings.push(bind(PARTITIONER_EXCHANGE, &name, ""));
            queues.push(quorum(&name, true));
        }
        queues.push(QueueSpec {
            name: DLQ_QUEUE.to_string(),
            kind: QueueKind::Classic,
        });
        queue_bindings.push(bind(DLQ_EXCHANGE, DLQ_QUEUE, ""));
        queues.push(quorum(WEBHOOKS_WAREHOUSE_QUEUE, false));
        queue_bindings.push(bind(WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE, "#"));
        // One consumer at a time across replicas: a person's bounce and a later unsuppress
        // are acted on in the order they arrived, never side by side.
        queues.push(quorum(WEBHOOKS_ACTIONS_QUEUE, true));
        let mut keys: Vec<String> = rule_patterns.iter().map(|p| topic_pattern(p)).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            queue_bindings.push(bind(WEBHOOKS_EXCHANGE, WEBHOOKS_ACTIONS_QUEUE, &key));
        }

        Self {
            partitions,
            exchanges,
            queues,
            exchange_bindings,
            queue_bindings,
        }
    }

    /// The same topology for `broker.partitioner = builtin`: no `x-modulus-hash` exchange; the
    /// producer exchanges feed [`INTAKE_QUEUE`] (quorum, single active consumer), which the
    /// gateway forwards to the partitions.
    pub fn routed_by_gateway(mut self) -> Self {
        self.exchanges
            .retain(|e| e.kind != ExchangeKind::ModulusHash);
        self.exchange_bindings
            .retain(|b| b.destination != PARTITIONER_EXCHANGE);
        self.queue_bindings
            .retain(|b| b.source != PARTITIONER_EXCHANGE);
        if !self.has_intake() {
            self.queues.insert(
                0,
                QueueSpec {
                    name: INTAKE_QUEUE.to_string(),
                    kind: QueueKind::Quorum {
                        single_active: true,
                    },
                },
            );
            for source in [IDENTIFY_EXCHANGE, TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE] {
                self.queue_bindings.insert(
                    0,
                    BindingSpec {
                        source: source.to_string(),
                        destination: INTAKE_QUEUE.to_string(),
                        routing_key: String::new(),
                    },
                );
            }
        }
        self
    }

    /// Whether the gateway forwards an intake queue to the partitions (`builtin`).
    pub fn has_intake(&self) -> bool {
        self.queues.iter().any(|q| q.name == INTAKE_QUEUE)
    }

    /// Whether a partitioner exchange of type `x-modulus-hash` is declared.
    pub fn uses_modulus_hash(&self) -> bool {
        self.exchanges
            .iter()
            .any(|e| e.kind == ExchangeKind::ModulusHash)
    }

    pub fn partition_queues(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.partitions).map(partition_queue)
    }

    /// A human-readable listing, for `cio-gateway topology`.
    pub fn describe(&self) -> String {
        let mut out = String::from("exchanges:\n");
        for e in &self.exchanges {
            out += &format!("  {:<32} {}\n", e.name, e.kind.as_str());
        }
        out += "queues:\n";
        for q in &self.queues {
            let kind = match q.kind {
                QueueKind::Quorum {
                    single_active: true,
                } => "quorum, single-active-consumer",
                QueueKind::Quorum { .. } => "quorum",
                QueueKind::Classic => "classic",
            };
            out += &format!("  {:<32} {kind}\n", q.name);
        }
        out += "bindings:\n";
        for b in self.exchange_bindings.iter().chain(&self.queue_bindings) {
            out += &format!(
                "  {:<32} -> {:<32} key {:?}\n",
                b.source, b.destination, b.routing_key
            );
        }
        out
    }
}

/// A rule pattern (`*` = any run of characters) as an AMQP topic binding key. A segment that
/// is exactly `*` is one word in both; anything else with a `*` widens to `#` (all events):
/// the actions queue may receive more than the rules act on, never less.
fn topic_pattern(rule: &str) -> String {
    let segments: Vec<&str> = rule.split('.').collect();
    let exact = segments.len() == 2 && segments.iter().all(|s| *s == "*" || !s.contains('*'));
    if exact {
        rule.to_string()
    } else {
        "#".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_patterns_become_topic_keys() {
        assert_eq!(topic_pattern("email.bounced"), "email.bounced");
        assert_eq!(topic_pattern("*.unsubscribed"), "*.unsubscribed");
        assert_eq!(topic_pattern("*"), "#");
        assert_eq!(topic_pattern("em*.bounced"), "#");
    }

    #[test]
    fn actions_have_one_consumer_at_a_time() {
        let t = Topology::new(2);
        let kind = |name: &str| t.queues.iter().find(|q| q.name == name).unwrap().kind;
        assert_eq!(
            kind(WEBHOOKS_ACTIONS_QUEUE),
            QueueKind::Quorum {
                single_active: true
            }
        );
        assert_eq!(
            kind(WEBHOOKS_WAREHOUSE_QUEUE),
            QueueKind::Quorum {
                single_active: false
            },
            "the warehouse de-duplicates on event_id; order does not matter there"
        );
    }

    #[test]
    fn every_partition_is_bound_once() {
        let t = Topology::new(4);
        assert_eq!(t.partition_queues().count(), 4);
        for q in t.partition_queues() {
            assert_eq!(
                t.queue_bindings
                    .iter()
                    .filter(|b| b.destination == q)
                    .count(),
                1
            );
        }
    }

    #[test]
    fn builtin_needs_no_plugin_and_feeds_one_intake_queue() {
        let t = Topology::new(4).routed_by_gateway();
        assert!(!t.uses_modulus_hash() && t.has_intake());
        assert!(t.exchange_bindings.is_empty(), "{:?}", t.exchange_bindings);
        let intake: Vec<_> = t
            .queue_bindings
            .iter()
            .filter(|b| b.destination == INTAKE_QUEUE)
            .map(|b| b.source.as_str())
            .collect();
        assert_eq!(
            intake,
            [TRANSACTIONAL_EXCHANGE, TRACK_EXCHANGE, IDENTIFY_EXCHANGE]
        );
        assert_eq!(t.partition_queues().count(), 4);
        for q in t.partition_queues() {
            assert!(
                t.queue_bindings.iter().all(|b| b.destination != q),
                "partitions are fed by the gateway only"
            );
        }
        assert_eq!(t.clone().routed_by_gateway(), t, "idempotent");
    }
}
