//! The in-process broker of local mode: the same routing, confirm and ack semantics as the
//! RabbitMQ topology, kept in memory. The modulus-hash exchange is a stable hash of the routing
//! key over the bound queues; single-active-consumer is honoured (one stream per queue at a time).

use super::topology::{ExchangeKind, Topology};
use super::{Acker, Broker, BrokerError, Delivery, DeliveryStream, Headers, Publish, QueueBacklog};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
struct Message {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    headers: Headers,
    redelivered: bool,
    /// Times returned to the queue, as RabbitMQ's `x-delivery-count` counts them.
    delivery_count: u32,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<(u64, Message)>,
    unacked: BTreeMap<u64, (u64, Message)>,
    next_tag: u64,
    active_consumer: Option<u64>,
    next_consumer: u64,
}

#[derive(Default)]
struct MemoryQueue {
    state: Mutex<QueueState>,
    changed: Notify,
}

impl MemoryQueue {
    fn push(&self, message: Message) {
        let mut state = self.state.lock();
        state.next_tag += 1;
        let tag = state.next_tag;
        state.ready.push_back((tag, message));
        drop(state);
        self.changed.notify_waiters();
    }

    /// Returns unacked messages to the front of the queue in their original order.
    fn requeue(&self, tags: impl IntoIterator<Item = u64>) {
        let mut state = self.state.lock();
        let mut back: Vec<(u64, Message)> = tags
            .into_iter()
            .filter_map(|tag| {
                state.unacked.remove(&tag).map(|(_, mut m)| {
                    m.redelivered = true;
                    m.delivery_count += 1;
                    (tag, m)
                })
            })
            .collect();
        back.sort_by_key(|(tag, _)| *tag);
        for item in back.into_iter().rev() {
            state.ready.push_front(item);
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

#[derive(Clone)]
pub struct MemoryAcker {
    queue: Arc<MemoryQueue>,
    tag: u64,
}

impl MemoryAcker {
    pub(super) fn ack(&self) -> Result<(), BrokerError> {
        let removed = self.queue.state.lock().unacked.remove(&self.tag);
        self.queue.changed.notify_waiters();
        removed
            .map(drop)
            .ok_or_else(|| BrokerError::Unavailable("delivery already settled".into()))
    }

    pub(super) fn requeue(&self) -> Result<(), BrokerError> {
        self.queue.requeue([self.tag]);
        Ok(())
    }
}

#[derive(Default)]
struct Routes {
    kinds: HashMap<String, ExchangeKind>,
    /// exchange -> (destination, routing key, is an exchange)
    bindings: HashMap<String, Vec<(String, String, bool)>>,
}

#[derive(Default)]
pub struct MemoryBroker {
    routes: Mutex<Routes>,
    queues: Mutex<HashMap<String, Arc<MemoryQueue>>>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Result<Arc<MemoryQueue>, BrokerError> {
        self.queues
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::Protocol(format!("no queue {name:?}")))
    }

    /// The queues a message reaches from `exchange`, following exchange-to-exchange bindings.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        // AMQP's default exchange: straight to the queue the routing key names.
        if exchange.is_empty() {
            return Ok(self
                .queues
                .lock()
                .contains_key(routing_key)
                .then(|| routing_key.to_string())
                .into_iter()
                .collect());
        }
        let routes = self.routes.lock();
        let mut found = Vec::new();
        let mut pending = vec![exchange.to_string()];
        while let Some(current) = pending.pop() {
            let kind = *routes
                .kinds
                .get(&current)
                .ok_or_else(|| BrokerError::Protocol(format!("no exchange {current:?}")))?;
            let bindings = routes.bindings.get(&current).cloned().unwrap_or_default();
            let targets: Vec<_> = match kind {
                ExchangeKind::Fanout => bindings,
                ExchangeKind::Topic => bindings
                    .into_iter()
                    .filter(|(_, pattern, _)| topic_matches(pattern, routing_key))
                    .collect(),
                ExchangeKind::ModulusHash if bindings.is_empty() => bindings,
                ExchangeKind::ModulusHash => {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    routing_key.hash(&mut hasher);
                    let index = (hasher.finish() % bindings.len() as u64) as usize;
                    vec![bindings[index].clone()]
                }
            };
            for (destination, _, is_exchange) in targets {
                if is_exchange {
                    pending.push(destination);
                } else {
                    found.push(destination);
                }
            }
        }
        Ok(found)
    }
}

/// AMQP topic matching: `*` is one word, `#` zero or more.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// Gives the queue back when a consumer goes: unacked deliveries return, another may take over.
struct ConsumerGuard {
    queue: Arc<MemoryQueue>,
    id: u64,
}

impl super::StreamGuard for ConsumerGuard {
    fn release(&mut self) -> futures::future::BoxFuture<'static, ()> {
        // The requeue happens synchronously when the guard drops, right after this.
        Box::pin(futures::future::ready(()))
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let tags: Vec<u64> = {
            let mut state = self.queue.state.lock();
            if state.active_consumer == Some(self.id) {
                state.active_consumer = None;
            }
            state
                .unacked
                .iter()
                .filter(|(_, (owner, _))| *owner == self.id)
                .map(|(tag, _)| *tag)
                .collect()
        };
        self.queue.requeue(tags);
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let mut routes = self.routes.lock();
        for e in &topology.exchanges {
            routes.kinds.insert(e.name.clone(), e.kind);
        }
        let mut add = |b: &super::topology::BindingSpec, is_exchange: bool| {
            let list = routes.bindings.entry(b.source.clone()).or_default();
            let entry = (b.destination.clone(), b.routing_key.clone(), is_exchange);
            if !list.contains(&entry) {
                list.push(entry);
            }
        };
        for b in &topology.exchange_bindings {
            add(b, true);
        }
        for b in &topology.queue_bindings {
            add(b, false);
        }
        let mut queues = self.queues.lock();
        for q in &topology.queues {
            queues.entry(q.name.clone()).or_default();
        }
        Ok(())
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        let targets = self.route(&message.exchange, &message.routing_key)?;
        if targets.is_empty() && message.mandatory {
            return Err(BrokerError::Unroutable(message.exchange));
        }
        for name in targets {
            self.queue(&name)?.push(Message {
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                body: message.body.clone(),
                headers: message.headers.clone(),
                redelivered: false,
                delivery_count: 0,
            });
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        let queue = self.queue(queue)?;
        let id = {
            let mut state = queue.state.lock();
            state.next_consumer += 1;
            state.next_consumer
        };
        let guard = ConsumerGuard {
            queue: queue.clone(),
            id,
        };
        let stream = futures::stream::unfold(queue, move |queue| async move {
            let shared = queue.clone();
            loop {
                let notified = shared.changed.notified();
                {
                    let mut state = queue.state.lock();
                    if state.active_consumer.is_none() {
                        state.active_consumer = Some(id);
                    }
                    let mine = state.unacked.values().filter(|(o, _)| *o == id).count();
                    let may_take = state.active_consumer == Some(id) && mine < prefetch as usize;
                    if may_take && let Some((tag, message)) = state.ready.pop_front() {
                        state.unacked.insert(tag, (id, message.clone()));
                        drop(state);
                        let delivery = Delivery {
                            body: message.body,
                            exchange: message.exchange,
                            routing_key: message.routing_key,
                            headers: message.headers,
                            redelivered: message.redelivered,
                            delivery_count: message.delivery_count,
                            acker: Acker::Memory(MemoryAcker {
                                queue: queue.clone(),
                                tag,
                            }),
                        };
                        return Some((delivery, queue));
                    }
                }
                notified.await;
            }
        });
        Ok(DeliveryStream::new(Box::pin(stream), guard))
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        Ok(self.queue(queue)?.state.lock().ready.len() as u32)
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn volatile_backlog(&self) -> Option<Vec<QueueBacklog>> {
        let queues = self.queues.lock();
        let mut backlog: Vec<QueueBacklog> = queues
            .iter()
            .map(|(name, queue)| {
                let state = queue.state.lock();
                QueueBacklog {
                    queue: name.clone(),
                    ready: state.ready.len() as u64,
                    unacked: state.unacked.len() as u64,
                }
            })
            .collect();
        backlog.sort_by(|a, b| a.queue.cmp(&b.queue));
        Some(backlog)
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::topology::{DLQ_QUEUE, IDENTIFY_EXCHANGE, TRACK_EXCHANGE};
    use futures::StreamExt;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("#", "email.bounced"));
        assert!(topic_matches("email.*", "email.bounced"));
        assert!(!topic_matches("email.*", "push.bounced"));
        assert!(topic_matches("*.unsubscribed", "sms.unsubscribed"));
    }

    #[tokio::test]
    async fn same_user_lands_in_one_partition_and_unacked_return_in_order() {
        let broker = MemoryBroker::new();
        let topology = Topology::new(4);
        broker.declare(&topology).await.unwrap();
        for i in 0..3 {
            let exchange = if i % 2 == 0 {
                IDENTIFY_EXCHANGE
            } else {
                TRACK_EXCHANGE
            };
            broker
                .publish(Publish::new(exchange, "user-7", vec![i]))
                .await
                .unwrap();
        }
        let mut lens = Vec::new();
        for q in topology.partition_queues() {
            lens.push(broker.queue_len(&q).await.unwrap());
        }
        assert_eq!(lens.iter().filter(|l| **l == 3).count(), 1, "{lens:?}");
        let queue = topology
            .partition_queues()
            .zip(lens)
            .find(|(_, l)| *l == 3)
            .unwrap()
            .0;
        let mut stream = broker.consume(&queue, 10).await.unwrap();
        let first = stream.next().await.unwrap();
        let _second = stream.next().await.unwrap();
        first.acker.ack().await.unwrap();
        drop(stream);
        let mut stream = broker.consume(&queue, 10).await.unwrap();
        let again = stream.next().await.unwrap();
        assert_eq!(again.body, vec![1]);
        assert!(again.redelivered);
        assert_eq!(stream.next().await.unwrap().body, vec![2]);
        assert!(
            broker
                .publish(Publish::new("customerio.processed", "x", vec![]))
                .await
                .is_err()
        );
        assert_eq!(broker.queue_len(DLQ_QUEUE).await.unwrap(), 0);
    }
}
