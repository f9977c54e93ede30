//! The webhook action ledger: which reporting events were acted on, and per person and kind of
//! state the time of the newest event acted on. Kept in the preferences database (the
//! [`super::store::SqlStore`] implements it), so it survives restarts and every replica
//! sharing the database sees it. What it is for: `src/actors/webhook.rs`.

use super::StoreError;
use crate::domain::webhook::{Action, ActionKind};
use crate::domain::{EventId, ReportingEvent};
use async_trait::async_trait;

/// An action about to be taken, or taken, on a reporting event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub event_id: EventId,
    /// Whom the action's envelope targets.
    pub person: String,
    pub kind: ActionKind,
    /// Customer.io's time of the event (its `timestamp`), seconds since the epoch.
    pub event_at: i64,
}

impl ActionRecord {
    /// The record of `action` on `event`; none when there is nothing to act on (no action, or
    /// the event names no person).
    pub fn of(event: &ReportingEvent, action: Action) -> Option<Self> {
        Some(Self {
            event_id: event.event_id.clone(),
            person: event.person()?,
            kind: action.kind()?,
            event_at: event.timestamp.timestamp(),
        })
    }
}

/// What the ledger says of an action before it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen yet, and no later event of its kind was acted on: act.
    New,
    /// This event was acted on already.
    Duplicate,
    /// An event of the same kind for the same person, later than this one, was acted on.
    Superseded { latest_at: i64 },
}

#[async_trait]
pub trait ActionLedger: Send + Sync + 'static {
    async fn check(&self, action: &ActionRecord) -> Result<Verdict, StoreError>;
    /// Records the action as taken: the event as done, and the person's latest event of its
    /// kind (if later), in one transaction.
    async fn record(&self, action: &ActionRecord, now_secs: i64) -> Result<(), StoreError>;
    /// Forgets events acted on before `before_secs` (this gateway's clock) and latest times
    /// before it (event time); returns the rows removed.
    async fn prune(&self, before_secs: i64) -> Result<u64, StoreError>;
}
