//! WarehouseActor: writes reporting events from `customerio.webhooks.warehouse` to the sink.
//!
//! Deliveries are buffered into batches of `warehouse.batch_size`, or whatever arrived within
//! `warehouse.flush_ms` of the first one. A batch is acked, message by message, only after the
//! sink committed it; a failed write keeps the batch (unacked) and retries it with backoff,
//! and a crash or lost connection returns it to the queue. Since every sink de-duplicates on
//! `event_id`, a batch written twice is stored once.
//!
//! A failure that writing again cannot cure (a value the sink's column cannot hold, a row
//! BigQuery calls invalid) must not hold back every later event: the batch is split in halves
//! until the rows at fault are alone, those are dead-lettered to `customerio.dlq` with
//! `errorKind: warehouse_rejected` and the sink's message, and the rest is written. Rows a
//! sink names itself (BigQuery `insertErrors`) are dead-lettered without splitting.
//!
//! An unparseable body (the edge validated it, so this is a bug or a foreign publisher) is
//! dead-lettered to `customerio.dlq` with `errorKind: invalid` instead of blocking the batch.

use super::DlqActor;
use super::consumer::{self, QueueConsumer, Resubscribe};
use super::messages::{DeadLetter, Drain, ErrorKind};
use crate::broker::topology::{WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE};
use crate::broker::{Acker, Delivery, SharedBroker};
use crate::domain::{ReportingEvent, Row};
use crate::http::webhooks::HEADER_RECEIVED_AT;
use crate::retry::{Backoff, FailureStreak};
use crate::telemetry::events;
use crate::warehouse::{SharedSink, SinkError};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Between writes of a batch the sink refused for now (it is down, or busy).
const WRITE_BACKOFF: Backoff = Backoff::exact(Duration::from_millis(200), Duration::from_secs(10));

pub struct WarehouseActor {
    broker: SharedBroker,
    sink: SharedSink,
    dlq: Addr<DlqActor>,
    batch_size: usize,
    flush_after: Duration,
    prefetch: u16,
    buffer: Vec<Pending>,
    flush_timer: Option<SpawnHandle>,
    /// A write failed; the next attempt waits for its timer.
    backing_off: bool,
    write_failures: FailureStreak,
    /// The write failure last logged: a run of the same one (an outage, retried with
    /// backoff) is logged once, not once per retry.
    last_error: Option<String>,
    resubscribe: Resubscribe,
    draining: bool,
}

/// One event waiting to be written, with what dead-lettering it needs.
struct Pending {
    row: Row,
    body: Vec<u8>,
    routing_key: String,
    acker: Acker,
}

/// A batch the sink refused for now, handed back for another attempt.
type Refused = (SinkError, Vec<Pending>);

impl WarehouseActor {
    pub fn new(
        broker: SharedBroker,
        sink: SharedSink,
        dlq: Addr<DlqActor>,
        batch_size: usize,
        flush_after: Duration,
    ) -> Self {
        let batch_size = batch_size.max(1);
        Self {
            broker,
            sink,
            dlq,
            batch_size,
            flush_after,
            // Room for a full batch being written and the next one filling.
            prefetch: batch_size.saturating_mul(2).min(u16::MAX as usize) as u16,
            buffer: Vec::new(),
            flush_timer: None,
            backing_off: false,
            write_failures: WRITE_BACKOFF.streak(),
            last_error: None,
            resubscribe: Resubscribe::default(),
            draining: false,
        }
    }

    fn receive(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let event = match ReportingEvent::parse(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "unparseable webhook event; dead-lettering");
                let letter = DeadLetter {
                    correlation_id: None,
                    body: delivery.body,
                    // Not the delivery's exchange: a replay to the warehouse queue comes through
                    // the default one, and replay knows only `customerio.webhooks`.
                    original_exchange: WEBHOOKS_EXCHANGE.to_string(),
                    original_routing_key: delivery.routing_key,
                    error: e.to_string(),
                    kind: ErrorKind::Invalid,
                    attempts: 0,
                    processing_time_ms: 0,
                    acker: delivery.acker,
                };
                let dlq = self.dlq.clone();
                actix::spawn(async move {
                    match dlq.send(letter).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "dead letter not confirmed; left unacked")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "DLQ actor unavailable; left unacked")
                        }
                    }
                });
                return;
            }
        };
        let received_at = delivery
            .headers
            .get(HEADER_RECEIVED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        self.buffer.push(Pending {
            row: Row::new(&event, received_at),
            body: delivery.body,
            routing_key: delivery.routing_key,
            acker: delivery.acker,
        });
        if self.backing_off {
            return;
        }
        if self.buffer.len() >= self.batch_size {
            self.flush(ctx);
        } else if self.flush_timer.is_none() {
            self.flush_timer = Some(ctx.run_later(self.flush_after, |act, ctx| {
                act.flush_timer = None;
                act.flush(ctx);
            }));
        }
    }

    /// Writes one batch; the actor takes no other message until it is settled.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.flush_timer.take() {
            ctx.cancel_future(timer);
        }
        if self.buffer.is_empty() {
            return;
        }
        let take = self.buffer.len().min(self.batch_size);
        let batch: Vec<_> = self.buffer.drain(..take).collect();
        ctx.wait(write(self.sink.clone(), self.dlq.clone(), batch).into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(_) => {
                    act.backing_off = false;
                    act.write_failures.succeeded();
                    if let Some(error) = act.last_error.take() {
                        tracing::info!(sink = act.sink.name(), %error, "warehouse writes succeed again");
                    }
                    if act.draining {
                        return;
                    }
                    if act.buffer.len() >= act.batch_size {
                        act.flush(ctx);
                    } else if !act.buffer.is_empty() {
                        act.flush_timer = Some(ctx.run_later(act.flush_after, |act, ctx| {
                            act.flush_timer = None;
                            act.flush(ctx);
                        }));
                    }
                }
                Err((e, batch)) => {
                    let delay = act.write_failures.failed();
                    let error = e.to_string();
                    let repeated = act.last_error.as_deref() == Some(error.as_str());
                    events::warehouse_write_failed(
                        act.sink.name(),
                        batch.len(),
                        &error,
                        delay,
                        repeated,
                    );
                    if !repeated {
                        act.last_error = Some(error);
                    }
                    act.buffer.splice(0..0, batch);
                    if act.draining {
                        return;
                    }
                    act.backing_off = true;
                    act.flush_timer = Some(ctx.run_later(delay, |act, ctx| {
                        act.flush_timer = None;
                        act.flush(ctx);
                    }));
                }
            }
        }));
    }
}

/// Writes the rows, then acks each message. Rows the sink refuses for good are found (by
/// halving) and dead-lettered; a transient failure hands back everything not yet written.
async fn write(
    sink: SharedSink,
    dlq: Addr<DlqActor>,
    batch: Vec<Pending>,
) -> Result<usize, Refused> {
    let mut written = 0;
    // Parts still to write, the next one last.
    let mut parts = vec![batch];
    while let Some(mut part) = parts.pop() {
        let rows: Vec<Row> = part.iter().map(|p| p.row.clone()).collect();
        match sink.write(&rows).await {
            Ok(new) => {
                written += new;
                events::warehouse_written(sink.name(), rows.len(), new);
                for pending in &part {
                    if let Err(e) = pending.acker.ack().await {
                        // The channel is gone: the rest return to the queue with it, and are
                        // skipped as duplicates by the sink when redelivered.
                        tracing::warn!(error = %e, "ack after warehouse write failed");
                        break;
                    }
                }
            }
            Err(SinkError::RowsRejected { rows: bad, .. }) if !bad.is_empty() => {
                let mut reasons: std::collections::HashMap<usize, String> =
                    bad.into_iter().collect();
                let mut rest = Vec::new();
                for (index, pending) in part.into_iter().enumerate() {
                    match reasons.remove(&index) {
                        Some(reason) => {
                            let error = format!("{} sink refused the row: {reason}", sink.name());
                            if let Err(pending) = dead_letter(&dlq, pending, error).await {
                                rest.push(pending);
                            }
                        }
                        None => rest.push(pending),
                    }
                }
                if !rest.is_empty() {
                    parts.push(rest);
                }
            }
            Err(e) if e.is_permanent() && part.len() > 1 => {
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Err(e) if e.is_permanent() => {
                let pending = part.pop().expect("one row");
                tracing::error!(sink = sink.name(), event_id = %pending.row.event_id, error = %e,
                    "the warehouse refuses this row for good; dead-lettering it");
                if let Err(pending) = dead_letter(&dlq, pending, e.to_string()).await {
                    parts.push(vec![pending]);
                    return Err((e, parts.into_iter().rev().flatten().collect()));
                }
            }
            Err(e) => {
                parts.push(part);
                return Err((e, parts.into_iter().rev().flatten().collect()));
            }
        }
    }
    Ok(written)
}

/// Dead-letters one row's event (the DLQ actor acks it once the dead letter is confirmed);
/// hands it back when that could not be done, so it is retried with the batch.
async fn dead_letter(dlq: &Addr<DlqActor>, pending: Pending, error: String) -> Result<(), Pending> {
    events::warehouse_row_dead_lettered();
    let letter = DeadLetter {
        correlation_id: None,
        body: pending.body.clone(),
        original_exchange: WEBHOOKS_EXCHANGE.to_string(),
        original_routing_key: pending.routing_key.clone(),
        error,
        kind: ErrorKind::WarehouseRejected,
        attempts: 1,
        processing_time_ms: 0,
        acker: pending.acker.clone(),
    };
    match dlq.send(letter).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "dead letter not confirmed; the row stays in the batch");
            Err(pending)
        }
        Err(e) => {
            tracing::warn!(error = %e, "DLQ actor unavailable; the row stays in the batch");
            Err(pending)
        }
    }
}

impl Actor for WarehouseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // After a restart the old stream is gone and the broker redelivers what was buffered.
        self.buffer.clear();
        self.flush_timer = None;
        self.backing_off = false;
        if !self.draining {
            // The sink is prepared (schema, directories) before anything is taken from the queue.
            let sink = self.sink.clone();
            let ready = async move {
                let prepared = sink.prepare().await;
                prepared.map_err(|e| format!("preparing the {} sink: {e}", sink.name()))
            };
            let (broker, queue) = (self.broker.clone(), WEBHOOKS_WAREHOUSE_QUEUE.to_string());
            consumer::subscribe(self, ctx, broker, queue, self.prefetch, ready);
        }
    }
}

impl Supervised for WarehouseActor {}

impl QueueConsumer for WarehouseActor {
    fn resubscribe(&mut self) -> &mut Resubscribe {
        &mut self.resubscribe
    }
}

impl StreamHandler<Delivery> for WarehouseActor {
    fn handle(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        if self.draining {
            // Left unacked: it returns to the queue when the connection closes.
            return;
        }
        self.receive(delivery, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        consumer::stream_ended(ctx, WEBHOOKS_WAREHOUSE_QUEUE, self.draining);
    }
}

impl Handler<Drain> for WarehouseActor {
    type Result = ResponseActFuture<Self, ()>;

    /// Stops taking deliveries and makes one last attempt to write what is buffered.
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        if let Some(timer) = self.flush_timer.take() {
            ctx.cancel_future(timer);
        }
        let batch = std::mem::take(&mut self.buffer);
        let (sink, dlq) = (self.sink.clone(), self.dlq.clone());
        Box::pin(
            async move {
                if batch.is_empty() {
                    return;
                }
                if let Err((e, batch)) = write(sink, dlq, batch).await {
                    tracing::warn!(rows = batch.len(), error = %e,
                        "warehouse write failed while draining; the batch will be redelivered");
                }
            }
            .into_actor(self),
        )
    }
}
