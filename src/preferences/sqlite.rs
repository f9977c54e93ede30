//! The SQLite preference store: local mode's default, a file under `app.data_dir`.

use super::{
    PreferenceStore, PreferencesChange, StoreError, StoredPreferences, UserLock, apply_binds, sql,
    stored_from_row,
};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::with_options(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens an `sqlite:` URL (`sqlite://path/to.db`, `sqlite::memory:`) and migrates it.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/preferences/sqlite");
        migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
        // SQLite has no migration lock: two gateways of one process (tests, `demo`) opening
        // the same file would both apply version 1. Serialise here; a process racing us from
        // outside is caught by the retry, which finds the migration applied.
        static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _guard = MIGRATING.lock().await;
        if let Err(first) = migrator.run(&pool).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            migrator.run(&pool).await.map_err(|_| first)?;
        }
        Ok(Self { pool })
    }
}

#[async_trait]
impl PreferenceStore for SqliteStore {
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
        // One process owns the file (local mode): the service's in-process lock, taken before
        // this, is the whole lock. A database lock would block every writer while publishing.
        Ok(Box::new(SqliteUserLock { store: self, user }))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

struct SqliteUserLock<'a> {
    store: &'a SqliteStore,
    user: &'a str,
}

#[async_trait]
impl UserLock for SqliteUserLock<'_> {
    async fn get(&mut self) -> Result<Option<StoredPreferences>, StoreError> {
        self.store.get(self.user).await
    }

    async fn mark_synced(&mut self, version: i64) -> Result<bool, StoreError> {
        self.store.mark_synced(self.user, version).await
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}
