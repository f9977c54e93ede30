//! PostgreSQL under the store: what several gateway replicas share in production.

use super::StoreError;
use super::store::{Backend, MIGRATIONS_TABLE, SqlStore};
use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub type PostgresStore = SqlStore<Postgres>;

#[async_trait]
impl Backend for Postgres {
    const POOL_SIZE: u32 = 8;
    /// Held until the transaction ends. The first key keeps these locks apart from other
    /// advisory locks of the database (sqlx's migration lock); two users whose ids hash alike
    /// only wait for each other.
    const LOCK_USER: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(1667854192, hashtext($1))");

    /// Under sqlx's advisory lock, so replicas starting together migrate once.
    async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("migrations/preferences/postgres");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(pool).await?;
        Ok(())
    }
}

impl SqlStore<Postgres> {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(Postgres::POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::with_pool(pool).await
    }
}
