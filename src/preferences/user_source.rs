//! The user source of `POST /v1/users/{id}/sync`: a query over the company's own database
//! (`user_source.database_url`, `user_source.query` with `$1` = the user id) whose one row
//! becomes Customer.io attributes.
//!
//! Columns map by type: timestamps and dates become unix seconds, booleans, numbers and text
//! stay what they are in JSON, JSON columns are passed through, NULLs are left out (an identify
//! never erases an attribute by accident). On PostgreSQL the row is converted by the server
//! (`row_to_json`), so every type it knows (NUMERIC, UUID, arrays...) comes out as JSON.

use crate::config::UserSourceSettings;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum UserSourceError {
    #[error("user_source: {0}")]
    Config(String),
    #[error("user source query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// What the PostgreSQL query looks like, learnt once by preparing it.
#[derive(Debug)]
struct PgShape {
    /// Bind the id as a number: `$1` is an integer column.
    numeric_id: bool,
    /// Columns whose JSON text is a timestamp or date, to turn into unix seconds.
    time_columns: Vec<String>,
}

/// A configured user source.
pub struct UserSource(Backend);

enum Backend {
    Postgres {
        pool: PgPool,
        query: String,
        shape: OnceCell<PgShape>,
    },
    Sqlite {
        pool: SqlitePool,
        query: String,
    },
}

impl UserSource {
    /// The configured source, if any. Connections are opened lazily: a user database that is
    /// down does not stop the gateway, only the sync requests (503).
    pub fn from_settings(settings: &UserSourceSettings) -> Result<Option<Self>, UserSourceError> {
        let url = settings
            .database_url
            .as_ref()
            .map(|s| s.expose().to_string());
        let query = settings.query.clone().filter(|q| !q.trim().is_empty());
        let (url, query) = match (url, query) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(UserSourceError::Config(
                    "user_source.query is required when user_source.database_url is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(UserSourceError::Config(
                    "user_source.database_url is required when user_source.query is set".into(),
                ));
            }
            (Some(url), Some(query)) => (url, query.trim().trim_end_matches(';').to_string()),
        };
        if !query.contains("$1") {
            return Err(UserSourceError::Config(
                "user_source.query must select one user by `$1` (the user id)".into(),
            ));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                .map_err(|e| UserSourceError::Config(format!("user_source.database_url: {e}")))?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options);
            Ok(Some(Self(Backend::Postgres {
                pool,
                query,
                shape: OnceCell::new(),
            })))
        } else if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .map_err(|e| UserSourceError::Config(format!("user_source.database_url: {e}")))?
                .read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options);
            Ok(Some(Self(Backend::Sqlite { pool, query })))
        } else {
            Err(UserSourceError::Config(
                "user_source.database_url must be a postgres:// or sqlite: URL".into(),
            ))
        }
    }

    /// The user's attributes, or `None` when the query returns no row.
    pub async fn fetch(&self, user: &str) -> Result<Option<Map<String, Value>>, UserSourceError> {
        match &self.0 {
            Backend::Postgres { pool, query, shape } => {
                let shape = shape.get_or_try_init(|| pg_shape(pool, query)).await?;
                let wrapped = format!("SELECT row_to_json(q)::text FROM ({query}) AS q LIMIT 1");
                let statement = sqlx::query_scalar::<_, String>(AssertSqlSafe(wrapped));
                let row = if shape.numeric_id {
                    // A user id that is not a number cannot match an integer key.
                    let Ok(id) = user.parse::<i64>() else {
                        return Ok(None);
                    };
                    statement.bind(id).fetch_optional(pool).await?
                } else {
                    statement.bind(user).fetch_optional(pool).await?
                };
                let Some(text) = row else {
                    return Ok(None);
                };
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
                    return Err(UserSourceError::Config(
                        "user_source.query returned a row that is not an object".into(),
                    ));
                };
                Ok(Some(pg_attributes(map, &shape.time_columns)))
            }
            Backend::Sqlite { pool, query } => {
                let row = sqlx::query(AssertSqlSafe(query.clone()))
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(|row| sqlite_attributes(&row)))
            }
        }
    }

    pub async fn close(&self) {
        match &self.0 {
            Backend::Postgres { pool, .. } => pool.close().await,
            Backend::Sqlite { pool, .. } => pool.close().await,
        }
    }
}

async fn pg_shape(pool: &PgPool, query: &str) -> Result<PgShape, UserSourceError> {
    let statement = pool
        .prepare(AssertSqlSafe(query.to_string()).into_sql_str())
        .await?;
    let numeric_id = match statement.parameters() {
        Some(sqlx::Either::Left(types)) => types
            .first()
            .is_some_and(|t| matches!(t.name(), "INT2" | "INT4" | "INT8")),
        _ => false,
    };
    let time_columns = statement
        .columns()
        .iter()
        .filter(|c| matches!(c.type_info().name(), "TIMESTAMPTZ" | "TIMESTAMP" | "DATE"))
        .map(|c| c.name().to_string())
        .collect();
    Ok(PgShape {
        numeric_id,
        time_columns,
    })
}

fn pg_attributes(map: Map<String, Value>, time_columns: &[String]) -> Map<String, Value> {
    map.into_iter()
        .filter(|(_, v)| !v.is_null())
        .filter_map(|(k, v)| {
            if time_columns.contains(&k) {
                let seconds = v.as_str().and_then(unix_seconds)?;
                Some((k, Value::from(seconds)))
            } else {
                Some((k, v))
            }
        })
        .collect()
}

fn sqlite_attributes(row: &sqlx::sqlite::SqliteRow) -> Map<String, Value> {
    let mut map = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let Ok(raw) = row.try_get_raw(i) else {
            continue;
        };
        if raw.is_null() {
            continue;
        }
        let declared = column.type_info().name().to_ascii_uppercase();
        let stored = raw.type_info().name().to_ascii_uppercase();
        let is_time = declared.contains("DATE") || declared.contains("TIME");
        let value = match stored.as_str() {
            "INTEGER" if declared.contains("BOOL") => {
                row.try_get::<bool, _>(i).ok().map(Value::from)
            }
            "INTEGER" => row.try_get::<i64, _>(i).ok().map(Value::from),
            "REAL" => row.try_get::<f64, _>(i).ok().map(Value::from),
            "TEXT" if is_time => row
                .try_get::<String, _>(i)
                .ok()
                .and_then(|s| unix_seconds(&s))
                .map(Value::from),
            "TEXT" => row.try_get::<String, _>(i).ok().map(|s| {
                if declared.contains("JSON") {
                    serde_json::from_str(&s).unwrap_or(Value::String(s))
                } else {
                    Value::String(s)
                }
            }),
            // Blobs have no attribute form.
            _ => None,
        };
        if let Some(value) = value {
            map.insert(column.name().to_string(), value);
        }
    }
    map
}

/// A timestamp or date as written by PostgreSQL's JSON or stored as SQLite text, in unix
/// seconds; zone-less values are taken as UTC.
fn unix_seconds(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.timestamp());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_in_the_forms_databases_write() {
        assert_eq!(
            unix_seconds("2024-01-01T00:00:00+00:00"),
            Some(1_704_067_200)
        );
        assert_eq!(
            unix_seconds("2024-01-01T01:00:00.5+01:00"),
            Some(1_704_067_200)
        );
        assert_eq!(unix_seconds("2024-01-01T00:00:00"), Some(1_704_067_200));
        assert_eq!(unix_seconds("2024-01-01 00:00:00"), Some(1_704_067_200));
        assert_eq!(unix_seconds("2024-01-01 02:00:00+02"), Some(1_704_067_200));
        assert_eq!(unix_seconds("2024-01-01"), Some(1_704_067_200));
        assert_eq!(unix_seconds("infinity"), None);
    }

    #[test]
    fn pg_rows_drop_nulls_and_convert_time_columns() {
        let row = json!({"email": "a@example.com", "created_at": "2024-01-01T00:00:00+00:00",
            "plan": null, "score": 1.5, "active": true});
        let Value::Object(map) = row else {
            unreachable!()
        };
        let attrs = pg_attributes(map, &["created_at".to_string()]);
        assert_eq!(
            Value::Object(attrs),
            json!({"email": "a@example.com", "created_at": 1_704_067_200, "score": 1.5, "active": true})
        );
    }

    #[test]
    fn half_a_configuration_names_the_missing_key() {
        let only_url = UserSourceSettings {
            database_url: Some(crate::config::Secret::new("postgres://h/db")),
            query: None,
        };
        let err = UserSource::from_settings(&only_url).err().unwrap();
        assert!(err.to_string().contains("user_source.query"), "{err}");
        let none = UserSourceSettings {
            database_url: None,
            query: None,
        };
        assert!(UserSource::from_settings(&none).unwrap().is_none());
    }
}
