//! SQLite under the store: local mode's default, a file under `app.data_dir`.

use super::StoreError;
use super::store::{Backend, MIGRATIONS_TABLE, SqlStore};
use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub type SqliteStore = SqlStore<Sqlite>;

#[async_trait]
impl Backend for Sqlite {
    const POOL_SIZE: u32 = 4;
    /// One process owns the file (local mode): the service's in-process lock is the whole lock.
    /// A database lock would block every writer while publishing.
    const LOCK_USER: Option<&'static str> = None;

    async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("migrations/preferences/sqlite");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        // SQLite has no migration lock: two gateways of one process (tests, `demo`) opening
        // the same file would both apply version 1. Serialise here; a process racing us from
        // outside is caught by the retry, which finds the migration applied.
        static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _guard = MIGRATING.lock().await;
        if let Err(first) = migrator.run(pool).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            migrator.run(pool).await.map_err(|_| first)?;
        }
        Ok(())
    }
}

impl SqlStore<Sqlite> {
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
        // Two first connections to a new file race to switch it to WAL, and the loser gets
        // SQLITE_BUSY at once (no busy wait for that): stores of one process connect in turn.
        static CONNECTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let connecting = CONNECTING.lock().await;
        let pool = SqlitePoolOptions::new()
            .max_connections(Sqlite::POOL_SIZE)
            .connect_with(options)
            .await?;
        drop(connecting);
        Self::with_pool(pool).await
    }
}
