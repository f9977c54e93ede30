//! Publishing preferences to Customer.io: after every change, on `POST /sync`, and from the
//! re-sync task that retries whatever is still pending, with backoff, until RabbitMQ confirms.
//!
//! One user's syncs run one at a time and always publish the row as read under the user's lock,
//! so two quick changes can never reach Customer.io in the wrong order: the later publish
//! carries the later state. The lock is a stripe in this process, then the store's own
//! ([`PreferenceStore::lock_user`]: an advisory lock in PostgreSQL, so replicas sharing the
//! database wait for each other too). The pending mark is cleared only for the version
//! published, under the same lock.

use super::{
    PreferenceStore, Preferences, PreferencesChange, StoreError, StoredPreferences, TopicMap,
    UserLock, UserSource, UserSourceError,
};
use crate::broker::BrokerError;
use crate::config::Settings;
use crate::domain::{ParseError, UserId};
use crate::publisher::{PublishError, Publisher};
use crate::retry::Backoff;
use crate::telemetry::events;
use serde_json::{Map, Value, json};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// How long one publish may wait for RabbitMQ before the change is left to the re-sync task.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-sync backoff after a failure.
const RESYNC_BACKOFF: Backoff = Backoff::exact(Duration::from_millis(500), Duration::from_secs(30));
/// With nothing known to be pending, the re-sync task still looks this often (another
/// replica may have died with rows pending).
const RESYNC_IDLE: Duration = Duration::from_secs(30);
/// Rows taken per re-sync round.
const RESYNC_BATCH: u32 = 200;
const LOCK_STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    UserSource(#[from] UserSourceError),
    #[error("user {0:?} is not in the user source")]
    UnknownUser(String),
    #[error("the user's attributes are not a valid identify: {0}")]
    Invalid(ParseError),
    #[error(transparent)]
    Broker(BrokerError),
    #[error("RabbitMQ did not confirm within {0:?}")]
    Timeout(Duration),
}

impl From<PublishError> for SyncError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid(e) => Self::Invalid(e),
            PublishError::Broker(e) => Self::Broker(e),
        }
    }
}

/// What a sync published.
#[derive(Debug, Clone)]
pub struct Synced {
    pub correlation_id: String,
    /// The identify's attribute names.
    pub attributes: Vec<String>,
    /// Whether attributes came from the user source (false when none is configured).
    pub from_user_source: bool,
}

pub struct PreferenceService {
    store: Arc<dyn PreferenceStore>,
    publisher: Publisher,
    users: Option<UserSource>,
    /// Channels mapped to Customer.io subscription topics (`preferences.subscription_topics`).
    topics: TopicMap,
    locks: Vec<Mutex<()>>,
    wake: Notify,
    /// The runtime that owns the database connections: all store I/O runs there, whatever
    /// HTTP worker thread asked for it.
    runtime: tokio::runtime::Handle,
}

impl PreferenceService {
    /// Opens the store (migrating it) and the user source named by the settings.
    pub async fn open(settings: &Settings, publisher: Publisher) -> anyhow::Result<Arc<Self>> {
        let store = super::open(settings).await?;
        Self::with_store(store, settings, publisher)
    }

    /// Over a store already open, with the user source named by the settings.
    pub fn with_store(
        store: Arc<dyn PreferenceStore>,
        settings: &Settings,
        publisher: Publisher,
    ) -> anyhow::Result<Arc<Self>> {
        let users = UserSource::from_settings(&settings.user_source)?;
        let topics = TopicMap::parse(&settings.preferences.subscription_topics).map_err(|e| {
            anyhow::anyhow!("configuration key `preferences.subscription_topics`: {e}")
        })?;
        Ok(Self::with_topics(store, publisher, users, topics))
    }

    pub fn topics(&self) -> &TopicMap {
        &self.topics
    }

    pub fn new(
        store: Arc<dyn PreferenceStore>,
        publisher: Publisher,
        users: Option<UserSource>,
    ) -> Arc<Self> {
        Self::with_topics(store, publisher, users, TopicMap::default())
    }

    fn with_topics(
        store: Arc<dyn PreferenceStore>,
        publisher: Publisher,
        users: Option<UserSource>,
        topics: TopicMap,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            publisher,
            users,
            topics,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            wake: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn store(&self) -> &Arc<dyn PreferenceStore> {
        &self.store
    }

    /// The user's preferences and whether they are stored and still pending.
    /// Changes not yet synced to Customer.io, for `/admin/status`.
    pub async fn pending_count(self: &Arc<Self>) -> Result<u64, StoreError> {
        let this = self.clone();
        self.runtime
            .spawn(async move { this.store.pending_count().await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    pub async fn get(self: &Arc<Self>, user: &UserId) -> Result<StoredPreferences, StoreError> {
        let user = user.clone();
        let this = self.clone();
        self.runtime
            .spawn(async move {
                Ok(this
                    .store
                    .get(&user)
                    .await?
                    .unwrap_or_else(|| StoredPreferences {
                        user_id: user,
                        preferences: Preferences::default(),
                        sync_pending: false,
                        version: 0,
                        updated_at: 0,
                    }))
            })
            .await
            .unwrap_or_else(|e| Err(task_failed(e)))
    }

    /// Stores a change, then tries to publish it. The store must succeed (else the error);
    /// the publish may fail, and the returned row then still says `sync_pending`.
    pub async fn change(
        self: &Arc<Self>,
        user: &UserId,
        change: PreferencesChange,
    ) -> Result<StoredPreferences, StoreError> {
        let user = user.clone();
        let this = self.clone();
        self.runtime
            .spawn(async move {
                let stored = this.store.apply(&user, &change).await?;
                this.update_gauge().await;
                match this.sync_preferences(&user).await {
                    Ok(Some(synced)) => Ok(synced),
                    Ok(None) => Ok(stored),
                    Err(e) => {
                        tracing::warn!(user = %user, error = %e, "preferences stored, sync deferred");
                        this.wake.notify_one();
                        Ok(stored)
                    }
                }
            })
            .await
            .unwrap_or_else(|e| Err(task_failed(e)))
    }

    /// Reads the user from the user source, merges the preferences and publishes one identify.
    /// Without a configured user source, publishes the preferences alone.
    pub async fn sync_user(self: &Arc<Self>, user: &UserId) -> Result<Synced, SyncError> {
        let user = user.clone();
        let this = self.clone();
        self.runtime
            .spawn(async move { this.sync_user_here(&user).await })
            .await
            .unwrap_or_else(|e| Err(task_failed(e).into()))
    }

    async fn sync_user_here(&self, user: &UserId) -> Result<Synced, SyncError> {
        let attributes = match &self.users {
            Some(source) => source
                .fetch(user.as_str())
                .await?
                .ok_or_else(|| SyncError::UnknownUser(user.to_string()))?,
            None => Map::new(),
        };
        let (correlation_id, names, marked) = {
            let _guard = self.lock(user).await;
            let mut lock = self.store.lock_user(user).await?;
            let published = self.publish_locked(&mut *lock, user, attributes).await;
            lock.release().await?;
            published?
        };
        if marked.is_some() {
            self.update_gauge().await;
        }
        Ok(Synced {
            correlation_id,
            attributes: names,
            from_user_source: self.users.is_some(),
        })
    }

    /// Under the user's lock: publishes `attributes` plus the stored preferences, and clears
    /// the pending mark of the version read. Returns the correlation id, the attribute names
    /// and, when the row was pending, whether the mark was cleared.
    async fn publish_locked(
        &self,
        lock: &mut dyn UserLock,
        user: &UserId,
        mut attributes: Map<String, Value>,
    ) -> Result<(String, Vec<String>, Option<bool>), SyncError> {
        let stored = lock.get().await?;
        let preferences = stored.as_ref().map(|s| s.preferences).unwrap_or_default();
        attributes.extend(preferences.attributes(&self.topics));
        let names = attributes.keys().cloned().collect();
        let correlation_id = self.publish_identify(user, attributes).await?;
        let marked = match stored.filter(|s| s.sync_pending) {
            Some(stored) => Some(lock.mark_synced(stored.version).await?),
            None => None,
        };
        Ok((correlation_id, names, marked))
    }

    /// Publishes the user's stored preferences as they are now; on confirm clears the pending
    /// mark for that version. Returns the row as it was published (`None` if there is none).
    async fn sync_preferences(
        &self,
        user: &UserId,
    ) -> Result<Option<StoredPreferences>, SyncError> {
        let synced = {
            let _guard = self.lock(user).await;
            let mut lock = self.store.lock_user(user).await?;
            let synced = self.sync_locked(&mut *lock, user).await;
            // Released before anything else touches the pool: a lock holds a connection.
            lock.release().await?;
            synced?
        };
        if synced.as_ref().is_some_and(|(_, published)| *published) {
            self.update_gauge().await;
        }
        Ok(synced.map(|(stored, _)| stored))
    }

    /// Under the user's lock: the row, and whether it was published (it was pending).
    async fn sync_locked(
        &self,
        lock: &mut dyn UserLock,
        user: &UserId,
    ) -> Result<Option<(StoredPreferences, bool)>, SyncError> {
        let Some(mut stored) = lock.get().await? else {
            return Ok(None);
        };
        if !stored.sync_pending {
            return Ok(Some((stored, false)));
        }
        self.publish_identify(user, stored.preferences.attributes(&self.topics))
            .await?;
        // False when the row changed since it was read: that change's own sync, waiting for
        // this lock, publishes it.
        if lock.mark_synced(stored.version).await? {
            stored.sync_pending = false;
        }
        Ok(Some((stored, true)))
    }

    async fn publish_identify(
        &self,
        user: &UserId,
        attributes: Map<String, Value>,
    ) -> Result<String, SyncError> {
        let envelope = json!({"type": "identify", "userId": user, "payload": attributes});
        let id = tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(envelope))
            .await
            .map_err(|_| SyncError::Timeout(PUBLISH_TIMEOUT))??;
        Ok(id.as_str().to_string())
    }

    async fn lock(&self, user: &UserId) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        self.locks[(hasher.finish() % LOCK_STRIPES as u64) as usize]
            .lock()
            .await
    }

    async fn update_gauge(&self) {
        if let Ok(count) = self.store.pending_count().await {
            events::preferences_pending(count);
        }
    }

    /// One re-sync round: publishes pending rows, oldest first, until one fails. Returns how
    /// many are still pending.
    pub async fn resync_pending(&self) -> Result<u64, SyncError> {
        let pending = self.store.pending(RESYNC_BATCH).await?;
        let mut result = Ok(());
        for row in &pending {
            if let Err(e) = self.sync_preferences(&row.user_id).await {
                result = Err(e);
                break;
            }
        }
        let left = self.store.pending_count().await?;
        events::preferences_pending(left);
        result.map(|_| left)
    }

    /// Starts the re-sync task on the current runtime: at once (rows left pending by an earlier
    /// run), after every deferred change, and every 30 s; failing rounds back off 0.5 s .. 30 s.
    pub fn spawn_resync(self: &Arc<Self>) -> ResyncTask {
        let stop = CancellationToken::new();
        let this = self.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut delay = Duration::ZERO;
            let mut failures = RESYNC_BACKOFF.streak();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    _ = this.wake.notified() => {
                        // A change could not be published just now: give RabbitMQ a moment.
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(failures.next_delay()) => {}
                        }
                    }
                }
                match this.resync_pending().await {
                    Ok(0) => {
                        delay = RESYNC_IDLE;
                        failures.succeeded();
                    }
                    Ok(_) => {
                        // More than one round's worth, or rows changed while publishing.
                        delay = Duration::from_millis(100);
                        failures.succeeded();
                    }
                    Err(e) => {
                        delay = failures.failed();
                        events::preferences_resync_failed(&e, delay);
                    }
                }
            }
        });
        ResyncTask { stop, task }
    }

    pub async fn close(&self) {
        self.store.close().await;
        if let Some(users) = &self.users {
            users.close().await;
        }
    }
}

/// The running re-sync task.
pub struct ResyncTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ResyncTask {
    /// Stops the task, letting a round in progress finish (up to the publish timeout); what
    /// it did not publish stays pending for the next start.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(PUBLISH_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// A store task that panicked (or was cancelled): the request fails as the store would (503),
/// instead of the panic reaching the HTTP worker.
fn task_failed(e: tokio::task::JoinError) -> StoreError {
    tracing::error!(error = %e, "preference task failed");
    StoreError::Task(e.to_string())
}
