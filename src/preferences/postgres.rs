//! The PostgreSQL preference store: what several gateway replicas share in production.

use super::{
    PreferenceStore, PreferencesChange, StoreError, StoredPreferences, apply_binds, sql,
    stored_from_row,
};
use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and migrates the database (under an advisory lock, so replicas
    /// starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/preferences/postgres");
        migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        Ok(Self { pool })
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

    async fn close(&self) {
        self.pool.close().await;
    }
}
