//! Messaging preferences: the reference architecture's UserMessagingRepository.
//!
//! A user's four opt-ins (`email`, `push`, `sms`, `inApp`) live in a small SQL table, SQLite by
//! default or PostgreSQL, with a `sync_pending` mark and a `version`. A change is stored first
//! (pending), then published as an identify through the ordered pipeline; the mark is cleared
//! only once RabbitMQ confirmed that identify for that very version. Whatever is still pending
//! (RabbitMQ was down, the process died) is published later by the re-sync task of
//! [`PreferenceService`], so a stored change always reaches Customer.io.
//!
//! A user's syncs (read the row, publish it, mark that version) run one at a time under the
//! user's lock ([`PreferenceStore::lock_user`]): an advisory lock in PostgreSQL, which every
//! replica sharing the database honours, and in-process only for SQLite (local mode, one
//! process). So an older version can never be published after a newer one, by any replica.
//!
//! The same database keeps the webhook action ledger ([`ActionLedger`]); both stores are one
//! [`SqlStore`] over sqlx, for either database ([`Stores`], [`open_stores`]).

mod actions;
mod postgres;
mod remote;
mod sqlite;
mod store;
mod sync;
mod user_source;

pub use actions::{ActionLedger, ActionRecord, Verdict};
pub use postgres::PostgresStore;
pub use remote::{Channel, RemoteChange, SUBSCRIPTION_PATTERNS, TopicMap};
pub use sqlite::SqliteStore;
pub use store::SqlStore;
pub use sync::{PreferenceService, ResyncTask, SyncError, Synced};
pub use user_source::{UserSource, UserSourceError};

use crate::config::Settings;
use crate::domain::UserId;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// A user's opt-ins. Users who never chose get [`Preferences::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    pub email: bool,
    pub push: bool,
    pub sms: bool,
    pub in_app: bool,
}

impl Default for Preferences {
    /// Opted in to email, push and in-app messages; opted out of SMS, which in most places
    /// needs the person's explicit consent first.
    fn default() -> Self {
        Self {
            email: true,
            push: true,
            sms: false,
            in_app: true,
        }
    }
}

impl Preferences {
    /// The identify attributes Customer.io segments on (and, with topics mapped, its
    /// subscription center's `cio_subscription_preferences`).
    pub fn attributes(&self, topics: &TopicMap) -> Map<String, Value> {
        let mut map = self.opt_in_attributes();
        if let Some(subscriptions) = topics.attribute(self) {
            map.insert("cio_subscription_preferences".into(), subscriptions);
        }
        map
    }

    /// The `*_opt_in` identify attributes.
    pub fn opt_in_attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("email_opt_in".into(), json!(self.email));
        map.insert("push_opt_in".into(), json!(self.push));
        map.insert("sms_opt_in".into(), json!(self.sms));
        map.insert("in_app_opt_in".into(), json!(self.in_app));
        map
    }

    fn apply(self, change: &PreferencesChange) -> Self {
        Self {
            email: change.email.unwrap_or(self.email),
            push: change.push.unwrap_or(self.push),
            sms: change.sms.unwrap_or(self.sms),
            in_app: change.in_app.unwrap_or(self.in_app),
        }
    }
}

/// A request to change some (PATCH) or all (PUT) of the opt-ins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreferencesChange {
    pub email: Option<bool>,
    pub push: Option<bool>,
    pub sms: Option<bool>,
    pub in_app: Option<bool>,
}

/// Read-only fields a client may send back unchanged from a GET.
const READ_ONLY_FIELDS: [&str; 3] = ["userId", "syncPending", "updatedAt"];

impl PreferencesChange {
    /// Parses a PUT (`full`: all four required) or PATCH (at least one) body; every problem is
    /// reported as `(field, reason)`.
    pub fn parse(body: &Value, full: bool) -> Result<Self, Vec<(String, String)>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![(String::new(), "body must be a JSON object".into())]);
        };
        let mut errors = Vec::new();
        let mut change = Self::default();
        for (name, slot) in [
            ("email", &mut change.email),
            ("push", &mut change.push),
            ("sms", &mut change.sms),
            ("inApp", &mut change.in_app),
        ] {
            match obj.get(name) {
                Some(Value::Bool(b)) => *slot = Some(*b),
                Some(_) => errors.push((name.to_string(), "must be a boolean".to_string())),
                None if full => errors.push((name.to_string(), "is required".to_string())),
                None => {}
            }
        }
        for name in obj.keys() {
            let known = matches!(name.as_str(), "email" | "push" | "sms" | "inApp");
            if !known && !READ_ONLY_FIELDS.contains(&name.as_str()) {
                errors.push((
                    name.clone(),
                    "unknown field (expected email, push, sms, inApp)".into(),
                ));
            }
        }
        if errors.is_empty() && change == Self::default() {
            errors.push((
                String::new(),
                "give at least one of email, push, sms, inApp".into(),
            ));
        }
        if errors.is_empty() {
            Ok(change)
        } else {
            Err(errors)
        }
    }

    /// A change that sets every opt-in.
    pub fn all(preferences: Preferences) -> Self {
        Self {
            email: Some(preferences.email),
            push: Some(preferences.push),
            sms: Some(preferences.sms),
            in_app: Some(preferences.in_app),
        }
    }
}

/// A user's row: the preferences, whether Customer.io has yet to hear of them, and the
/// version (bumped by every change) a sync confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPreferences {
    pub user_id: UserId,
    pub preferences: Preferences,
    pub sync_pending: bool,
    pub version: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("preferences store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("preferences store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("preferences.database_url: {0}")]
    Config(String),
    #[error("preferences store task: {0}")]
    Task(String),
}

/// Where preferences are kept. Every change is one statement, so concurrent changes to one
/// user never lose an update.
#[async_trait]
pub trait PreferenceStore: Send + Sync + 'static {
    /// The stored row, if the user ever chose.
    async fn get(&self, user: &UserId) -> Result<Option<StoredPreferences>, StoreError>;
    /// Applies a change (to the defaults, for a new user), marks it pending and bumps the version.
    async fn apply(
        &self,
        user: &UserId,
        change: &PreferencesChange,
    ) -> Result<StoredPreferences, StoreError>;
    /// Applies a change Customer.io reported (see `remote.rs`) if it happened at `at_ms`, after
    /// the row's last change; not marked pending. `None` when the row is newer.
    async fn apply_remote(
        &self,
        user: &UserId,
        change: &PreferencesChange,
        at_ms: i64,
    ) -> Result<Option<StoredPreferences>, StoreError>;
    /// Clears the pending mark if the row is still at `version`; false when it changed since.
    async fn mark_synced(&self, user: &UserId, version: i64) -> Result<bool, StoreError>;
    /// Rows still to publish, oldest change first.
    async fn pending(&self, limit: u32) -> Result<Vec<StoredPreferences>, StoreError>;
    /// How many rows are still to publish.
    async fn pending_count(&self) -> Result<u64, StoreError>;
    /// Takes the user's sync lock: while the returned [`UserLock`] lives, no other sync of this
    /// user reads, publishes or marks, in this process or (PostgreSQL) in any other sharing
    /// the database. Changes ([`PreferenceStore::apply`]) are not blocked by it.
    async fn lock_user<'a>(
        &'a self,
        user: &'a UserId,
    ) -> Result<Box<dyn UserLock + 'a>, StoreError>;
    /// Closes the connections.
    async fn close(&self);
}

/// A user's sync lock (see [`PreferenceStore::lock_user`]): read the row under it, publish,
/// then mark the version read. Dropping it without [`UserLock::release`] also releases it.
#[async_trait]
pub trait UserLock: Send {
    /// The user's row as it is now.
    async fn get(&mut self) -> Result<Option<StoredPreferences>, StoreError>;
    /// As [`PreferenceStore::mark_synced`]; made durable by `release`.
    async fn mark_synced(&mut self, version: i64) -> Result<bool, StoreError>;
    /// Ends the lock, keeping what `mark_synced` did.
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}

/// The gateway's database, as the two stores kept in it: one pool, one set of migrations.
#[derive(Clone)]
pub struct Stores {
    pub preferences: Arc<dyn PreferenceStore>,
    pub actions: Arc<dyn ActionLedger>,
}

impl Stores {
    fn of<S: PreferenceStore + ActionLedger>(store: S) -> Self {
        let store = Arc::new(store);
        Self {
            preferences: store.clone(),
            actions: store,
        }
    }
}

/// Opens the preference store the settings name (see [`open_stores`]).
pub async fn open(settings: &Settings) -> Result<Arc<dyn PreferenceStore>, StoreError> {
    Ok(open_stores(settings).await?.preferences)
}

/// Opens the database the settings name: PostgreSQL for a `postgres://`
/// `preferences.database_url` (or `DATABASE_URL`), an SQLite file for `sqlite:` URLs, and by
/// default `<app.data_dir>/preferences.db`. Runs the checked-in migrations.
pub async fn open_stores(settings: &Settings) -> Result<Stores, StoreError> {
    match settings
        .preferences
        .database_url
        .as_ref()
        .map(|s| s.expose())
    {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Stores::of(PostgresStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Stores::of(SqliteStore::open_url(url).await?))
        }
        Some(_) => Err(StoreError::Config(
            "must be a postgres:// or sqlite: URL".into(),
        )),
        None => {
            let dir = &settings.app.data_dir;
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Config(format!(
                    "app.data_dir {}: cannot create the directory: {e}",
                    dir.display()
                ))
            })?;
            Ok(Stores::of(
                SqliteStore::open(&dir.join("preferences.db")).await?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_needs_all_four_patch_at_least_one() {
        let full = PreferencesChange::parse(
            &json!({"email": false, "push": true, "sms": true, "inApp": false}),
            true,
        )
        .unwrap();
        assert_eq!(full.sms, Some(true));
        let errors = PreferencesChange::parse(&json!({"email": false}), true).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["push", "sms", "inApp"]);
        assert!(PreferencesChange::parse(&json!({}), false).is_err());
        let patch =
            PreferencesChange::parse(&json!({"sms": true, "syncPending": true}), false).unwrap();
        assert_eq!(patch.sms, Some(true));
        assert_eq!(patch.email, None);
        let errors =
            PreferencesChange::parse(&json!({"sms": "yes", "fax": true}), false).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(PreferencesChange::parse(&json!([true]), false).is_err());
    }

    #[test]
    fn opt_in_attributes_are_named_for_customer_io() {
        let attrs = Preferences::default().opt_in_attributes();
        assert_eq!(
            Value::Object(attrs),
            json!({"email_opt_in": true, "push_opt_in": true, "sms_opt_in": false, "in_app_opt_in": true})
        );
    }
}
