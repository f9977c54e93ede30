//! The PostgreSQL preference store: what several gateway replicas share in production.

use super::{
    PreferenceStore, PreferencesChange, StoreError, StoredPreferences, UserLock, apply_binds, sql,
    stored_from_row,
};
use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const POOL_SIZE: u32 = 8;
/// User locks held at once. Each holds a connection for the length of a publish; the rest of
/// the pool stays free for changes and reads, which must never wait for a publish.
const MAX_LOCKS: usize = 6;

pub struct PostgresStore {
    pool: PgPool,
    locks: Arc<Semaphore>,
}

impl PostgresStore {
    /// Connects to `url` and migrates the database (under an advisory lock, so replicas
    /// starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/preferences/postgres");
        migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        Ok(Self {
            pool,
            locks: Arc::new(Semaphore::new(MAX_LOCKS)),
        })
    }
}

#[async_trait]
impl PreferenceStore for PostgresStore {
    async fn get(&self, user: &str) -> Result<Option<StoredPreferences>, StoreError> {
        let row = sqlx::query(sql::SELECT)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| stored_from_row!(r)).transpose()?)
    }

    async fn apply(
        &self,
        user: &str,
        change: &PreferencesChange,
    ) -> Result<StoredPreferences, StoreError> {
        let (new, change, now) = apply_binds(change);
        let row = sqlx::query(sql::APPLY)
            .bind(user)
            .bind(new.email)
            .bind(new.push)
            .bind(new.sms)
            .bind(new.in_app)
            .bind(change.email)
            .bind(change.push)
            .bind(change.sms)
            .bind(change.in_app)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(stored_from_row!(row)?)
    }

    async fn mark_synced(&self, user: &str, version: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::MARK_SYNCED)
            .bind(user)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn pending(&self, limit: u32) -> Result<Vec<StoredPreferences>, StoreError> {
        let rows = sqlx::query(sql::PENDING)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| stored_from_row!(r))
            .collect::<Result<_, _>>()?)
    }

    async fn pending_count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(sql::PENDING_COUNT)
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn lock_user<'a>(&'a self, user: &'a str) -> Result<Box<dyn UserLock + 'a>, StoreError> {
        // A transaction-scoped advisory lock: it goes with the transaction however that ends,
        // a dropped connection included, so a dead replica never leaves a user locked.
        let permit = self
            .locks
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::LOCK_USER)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgUserLock {
            tx,
            user,
            _permit: permit,
        }))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The sync lock of one user: a transaction holding the advisory lock. The row is read and
/// marked inside it; `apply` of other sessions is not blocked (it takes no advisory lock).
struct PgUserLock<'a> {
    tx: Transaction<'static, Postgres>,
    user: &'a str,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl UserLock for PgUserLock<'_> {
    async fn get(&mut self) -> Result<Option<StoredPreferences>, StoreError> {
        let row = sqlx::query(sql::SELECT)
            .bind(self.user)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| stored_from_row!(r)).transpose()?)
    }

    async fn mark_synced(&mut self, version: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::MARK_SYNCED)
            .bind(self.user)
            .bind(version)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}
