//! The one SQL store, over sqlx, for PostgreSQL and SQLite alike: the preferences and the
//! webhook action ledger, with the same statements and the same row mapping for both.
//!
//! Generic over [`sqlx::Database`] rather than `sqlx::Any`: each backend keeps its native pool
//! and connect options (SQLite's WAL and busy timeout), its types are checked when compiling,
//! and no driver is picked at run time. What really differs per backend is [`Backend`]
//! (`postgres.rs`, `sqlite.rs`): the migration directory and how it is run, the pool size, and
//! whether the user lock is a database lock.
//!
//! The sqlx bounds the shared code needs are stated once, on the blanket implementation of
//! [`Sql`]: every statement is a method of it, so the rest of the store only says `DB: Sql`.

use super::actions::{ActionLedger, ActionRecord, Verdict};
use super::{
    PreferenceStore, Preferences, PreferencesChange, StoreError, StoredPreferences, UserLock,
};
use crate::domain::UserId;
use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the migrations of this store are recorded: a table of its own, so a database shared
/// with other sqlx users (the warehouse) keeps both histories apart.
pub(super) const MIGRATIONS_TABLE: &str = "_cio_preferences_migrations";

/// What differs between the databases the store runs on.
#[async_trait]
pub trait Backend: Database<QueryResult: RowsAffected> {
    /// Connections in the pool. User locks hold at most all but two of them (each for the
    /// length of a publish), so changes and reads never wait for a publish.
    const POOL_SIZE: u32;
    /// The statement taking the user's sync lock inside a transaction (`$1`: the user), when
    /// the database has one that every process sharing it honours. Without one, the store's
    /// lock is only the in-process lock [`super::PreferenceService`] takes first.
    const LOCK_USER: Option<&'static str>;
    /// Applies this backend's checked-in migrations.
    async fn migrate(pool: &Pool<Self>) -> Result<(), StoreError>;
}

/// The statements of the store, on one connection (a pooled one or a transaction's).
#[async_trait]
pub trait Sql: Backend {
    async fn select(
        conn: &mut Self::Connection,
        user: &str,
    ) -> Result<Option<StoredPreferences>, sqlx::Error>;
    /// Runs [`sql::APPLY`] (`at_ms`: now) or [`sql::APPLY_REMOTE`] (`at_ms`: when the change
    /// happened in Customer.io); `None` when the statement left the row as it was.
    async fn apply(
        conn: &mut Self::Connection,
        statement: &'static str,
        user: &str,
        change: &PreferencesChange,
        at_ms: i64,
    ) -> Result<Option<StoredPreferences>, sqlx::Error>;
    async fn mark_synced(
        conn: &mut Self::Connection,
        user: &str,
        version: i64,
    ) -> Result<bool, sqlx::Error>;
    async fn pending(
        conn: &mut Self::Connection,
        limit: u32,
    ) -> Result<Vec<StoredPreferences>, sqlx::Error>;
    async fn pending_count(conn: &mut Self::Connection) -> Result<i64, sqlx::Error>;
    /// Runs a statement whose one parameter is the user (the lock of [`Backend::LOCK_USER`]).
    async fn execute_for_user(
        conn: &mut Self::Connection,
        statement: &'static str,
        user: &str,
    ) -> Result<(), sqlx::Error>;
    async fn action_done(conn: &mut Self::Connection, event_id: &str) -> Result<bool, sqlx::Error>;
    async fn latest_action(
        conn: &mut Self::Connection,
        person: &str,
        kind: &str,
    ) -> Result<Option<i64>, sqlx::Error>;
    async fn record_action(
        conn: &mut Self::Connection,
        action: &ActionRecord,
        now_secs: i64,
    ) -> Result<(), sqlx::Error>;
    async fn prune_actions(
        conn: &mut Self::Connection,
        before_secs: i64,
    ) -> Result<u64, sqlx::Error>;
}

/// Plain SQL both dialects accept (`$n` parameters, `ON CONFLICT`, `RETURNING`).
mod sql {
    pub const SELECT: &str = "SELECT user_id, email, push, sms, in_app, sync_pending, version, updated_at \
         FROM user_preferences WHERE user_id = $1";
    /// $2..$5: the new user's values; $6..$9: the change (NULL keeps the stored value).
    pub const APPLY: &str = "INSERT INTO user_preferences \
           (user_id, email, push, sms, in_app, sync_pending, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5, TRUE, 1, $10) \
         ON CONFLICT (user_id) DO UPDATE SET \
           email = COALESCE($6, user_preferences.email), \
           push = COALESCE($7, user_preferences.push), \
           sms = COALESCE($8, user_preferences.sms), \
           in_app = COALESCE($9, user_preferences.in_app), \
           sync_pending = TRUE, \
           version = user_preferences.version + 1, \
           updated_at = $10 \
         RETURNING user_id, email, push, sms, in_app, sync_pending, version, updated_at";
    /// A change Customer.io reported: applied only when it happened after the row's last
    /// change (newest wins), and not marked pending (Customer.io has it already).
    pub const APPLY_REMOTE: &str = "INSERT INTO user_preferences \
           (user_id, email, push, sms, in_app, sync_pending, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5, FALSE, 1, $10) \
         ON CONFLICT (user_id) DO UPDATE SET \
           email = COALESCE($6, user_preferences.email), \
           push = COALESCE($7, user_preferences.push), \
           sms = COALESCE($8, user_preferences.sms), \
           in_app = COALESCE($9, user_preferences.in_app), \
           version = user_preferences.version + 1, \
           updated_at = $10 \
         WHERE user_preferences.updated_at < $10 \
         RETURNING user_id, email, push, sms, in_app, sync_pending, version, updated_at";
    pub const MARK_SYNCED: &str = "UPDATE user_preferences SET sync_pending = FALSE \
         WHERE user_id = $1 AND version = $2 AND sync_pending";
    pub const PENDING: &str = "SELECT user_id, email, push, sms, in_app, sync_pending, version, updated_at \
         FROM user_preferences WHERE sync_pending ORDER BY updated_at LIMIT $1";
    pub const PENDING_COUNT: &str = "SELECT COUNT(*) AS n FROM user_preferences WHERE sync_pending";

    pub const ACTION_DONE: &str = "SELECT event_id FROM webhook_actions_done WHERE event_id = $1";
    pub const LATEST_ACTION: &str =
        "SELECT event_at FROM webhook_actions_latest WHERE person = $1 AND kind = $2";
    pub const RECORD_DONE: &str = "INSERT INTO webhook_actions_done (event_id, acted_at) \
         VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING";
    /// Keeps the later event; on a tie the one applied last (it arrived later).
    pub const RECORD_LATEST: &str = "INSERT INTO webhook_actions_latest \
           (person, kind, event_at, event_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (person, kind) DO UPDATE SET \
           event_at = excluded.event_at, event_id = excluded.event_id \
         WHERE excluded.event_at >= webhook_actions_latest.event_at";
    pub const PRUNE_DONE: &str = "DELETE FROM webhook_actions_done WHERE acted_at < $1";
    pub const PRUNE_LATEST: &str = "DELETE FROM webhook_actions_latest WHERE event_at < $1";
}

fn stored_from_row<R: Row>(row: &R) -> Result<StoredPreferences, sqlx::Error>
where
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: ColumnIndex<R>,
{
    Ok(StoredPreferences {
        user_id: {
            let id: String = row.try_get("user_id")?;
            UserId::parse(&id).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?
        },
        preferences: Preferences {
            email: row.try_get("email")?,
            push: row.try_get("push")?,
            sms: row.try_get("sms")?,
            in_app: row.try_get("in_app")?,
        },
        sync_pending: row.try_get("sync_pending")?,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl<DB> Sql for DB
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> bool: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> Option<bool>: Encode<'r, DB>,
    for<'r> i64: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> &'r str: Encode<'r, DB> + Type<DB> + ColumnIndex<DB::Row>,
{
    async fn select(
        conn: &mut DB::Connection,
        user: &str,
    ) -> Result<Option<StoredPreferences>, sqlx::Error> {
        let row = sqlx::query(sql::SELECT)
            .bind(user)
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(stored_from_row).transpose()
    }

    async fn apply(
        conn: &mut DB::Connection,
        statement: &'static str,
        user: &str,
        change: &PreferencesChange,
        at_ms: i64,
    ) -> Result<Option<StoredPreferences>, sqlx::Error> {
        let new = Preferences::default().apply(change);
        let row = sqlx::query(statement)
            .bind(user)
            .bind(new.email)
            .bind(new.push)
            .bind(new.sms)
            .bind(new.in_app)
            .bind(change.email)
            .bind(change.push)
            .bind(change.sms)
            .bind(change.in_app)
            .bind(at_ms)
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(stored_from_row).transpose()
    }

    async fn mark_synced(
        conn: &mut DB::Connection,
        user: &str,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(sql::MARK_SYNCED)
            .bind(user)
            .bind(version)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn pending(
        conn: &mut DB::Connection,
        limit: u32,
    ) -> Result<Vec<StoredPreferences>, sqlx::Error> {
        let rows = sqlx::query(sql::PENDING)
            .bind(i64::from(limit))
            .fetch_all(conn)
            .await?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn pending_count(conn: &mut DB::Connection) -> Result<i64, sqlx::Error> {
        sqlx::query(sql::PENDING_COUNT)
            .fetch_one(conn)
            .await?
            .try_get("n")
    }

    async fn execute_for_user(
        conn: &mut DB::Connection,
        statement: &'static str,
        user: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(statement).bind(user).execute(conn).await?;
        Ok(())
    }

    async fn action_done(conn: &mut DB::Connection, event_id: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query(sql::ACTION_DONE)
            .bind(event_id)
            .fetch_optional(conn)
            .await?;
        Ok(row.is_some())
    }

    async fn latest_action(
        conn: &mut DB::Connection,
        person: &str,
        kind: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(sql::LATEST_ACTION)
            .bind(person)
            .bind(kind)
            .fetch_optional(conn)
            .await?;
        row.map(|r| r.try_get("event_at")).transpose()
    }

    async fn record_action(
        conn: &mut DB::Connection,
        action: &ActionRecord,
        now_secs: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql::RECORD_DONE)
            .bind(action.event_id.as_str())
            .bind(now_secs)
            .execute(&mut *conn)
            .await?;
        sqlx::query(sql::RECORD_LATEST)
            .bind(action.person.as_str())
            .bind(action.kind.as_str())
            .bind(action.event_at)
            .bind(action.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn prune_actions(
        conn: &mut DB::Connection,
        before_secs: i64,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(sql::PRUNE_DONE)
            .bind(before_secs)
            .execute(&mut *conn)
            .await?;
        let latest = sqlx::query(sql::PRUNE_LATEST)
            .bind(before_secs)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() + latest.rows_affected())
    }
}

/// The rows a statement changed, for any backend's query result (sqlx has it per backend only).
pub trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// The store over one backend's pool.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    locks: Arc<Semaphore>,
}

impl<DB: Backend> SqlStore<DB> {
    /// Migrates the database behind `pool` and keeps the pool.
    pub(super) async fn with_pool(pool: Pool<DB>) -> Result<Self, StoreError> {
        DB::migrate(&pool).await?;
        Ok(Self {
            pool,
            locks: Arc::new(Semaphore::new(
                DB::POOL_SIZE.saturating_sub(2).max(1) as usize
            )),
        })
    }
}

#[async_trait]
impl<DB: Sql> PreferenceStore for SqlStore<DB> {
    async fn get(&self, user: &UserId) -> Result<Option<StoredPreferences>, StoreError> {
        Ok(DB::select(&mut *self.pool.acquire().await?, user.as_str()).await?)
    }

    async fn apply(
        &self,
        user: &UserId,
        change: &PreferencesChange,
    ) -> Result<StoredPreferences, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let conn = &mut *self.pool.acquire().await?;
        DB::apply(conn, sql::APPLY, user.as_str(), change, now)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
    }

    async fn apply_remote(
        &self,
        user: &UserId,
        change: &PreferencesChange,
        at_ms: i64,
    ) -> Result<Option<StoredPreferences>, StoreError> {
        let conn = &mut *self.pool.acquire().await?;
        Ok(DB::apply(conn, sql::APPLY_REMOTE, user.as_str(), change, at_ms).await?)
    }

    async fn mark_synced(&self, user: &UserId, version: i64) -> Result<bool, StoreError> {
        Ok(DB::mark_synced(&mut *self.pool.acquire().await?, user.as_str(), version).await?)
    }

    async fn pending(&self, limit: u32) -> Result<Vec<StoredPreferences>, StoreError> {
        Ok(DB::pending(&mut *self.pool.acquire().await?, limit).await?)
    }

    async fn pending_count(&self) -> Result<u64, StoreError> {
        let count = DB::pending_count(&mut *self.pool.acquire().await?).await?;
        Ok(count.max(0) as u64)
    }

    async fn lock_user<'a>(
        &'a self,
        user: &'a UserId,
    ) -> Result<Box<dyn UserLock + 'a>, StoreError> {
        let permit = self
            .locks
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let held = match DB::LOCK_USER {
            // A transaction-scoped lock goes with the transaction however that ends, a dropped
            // connection included, so a dead replica never leaves a user locked.
            Some(statement) => {
                let mut tx = self.pool.begin().await?;
                DB::execute_for_user(&mut tx, statement, user.as_str()).await?;
                Held::Transaction(tx)
            }
            // No transaction: a database lock would block every writer while publishing.
            None => Held::Connection(self.pool.acquire().await?),
        };
        Ok(Box::new(SqlUserLock {
            held,
            user,
            _permit: permit,
        }))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The connection a user lock reads and marks on.
enum Held<DB: Database> {
    /// Holding the database's user lock until it commits.
    Transaction(sqlx::Transaction<'static, DB>),
    Connection(PoolConnection<DB>),
}

impl<DB: Database> Deref for Held<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            Held::Transaction(tx) => tx,
            Held::Connection(conn) => conn,
        }
    }
}

impl<DB: Database> DerefMut for Held<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Held::Transaction(tx) => tx,
            Held::Connection(conn) => conn,
        }
    }
}

/// The sync lock of one user. `apply` of other sessions is not blocked (it takes no lock).
struct SqlUserLock<'a, DB: Database> {
    held: Held<DB>,
    user: &'a UserId,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl<DB: Sql> UserLock for SqlUserLock<'_, DB> {
    async fn get(&mut self) -> Result<Option<StoredPreferences>, StoreError> {
        Ok(DB::select(&mut self.held, self.user.as_str()).await?)
    }

    async fn mark_synced(&mut self, version: i64) -> Result<bool, StoreError> {
        Ok(DB::mark_synced(&mut self.held, self.user.as_str(), version).await?)
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        let this = *self;
        if let Held::Transaction(tx) = this.held {
            tx.commit().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<DB: Sql> ActionLedger for SqlStore<DB> {
    async fn check(&self, action: &ActionRecord) -> Result<Verdict, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if DB::action_done(&mut conn, action.event_id.as_str()).await? {
            return Ok(Verdict::Duplicate);
        }
        let latest = DB::latest_action(&mut conn, &action.person, action.kind.as_str()).await?;
        Ok(match latest {
            // A tie is not older: both events are of one second, and the queue order (the order
            // Customer.io sent them) is the best evidence of which came last.
            Some(latest_at) if latest_at > action.event_at => Verdict::Superseded { latest_at },
            _ => Verdict::New,
        })
    }

    async fn record(&self, action: &ActionRecord, now_secs: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        DB::record_action(&mut tx, action, now_secs).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune(&self, before_secs: i64) -> Result<u64, StoreError> {
        Ok(DB::prune_actions(&mut *self.pool.acquire().await?, before_secs).await?)
    }
}
