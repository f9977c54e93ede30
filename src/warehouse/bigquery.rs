//! The BigQuery sink: `tabledata.insertAll` with `insertId` = `event_id`, so BigQuery's
//! best-effort de-duplication drops a batch written twice. With `skipInvalidRows` off, any
//! `insertErrors` mean nothing of the batch was stored: rows whose errors include reason
//! `invalid` are named as refused for good (they are dead-lettered, the rest written again);
//! other reasons (`stopped`, `backendError`, `timeout`) retry the whole batch. The JSON
//! columns `identifiers` and `raw` are sent as JSON text, which BigQuery accepts for `JSON`
//! and `STRING` columns alike; the campaign/action/... ids as integers, as the schema in
//! `deploy/bigquery/delivery_events.json` declares them. The bearer token comes from
//! [`BigQueryAuth`] (a static token, else Application Default Credentials); a 401 is a
//! transient error whose retry uses a fresh token.

use super::bigquery_auth::BigQueryAuth;
use super::{Sink, SinkError};
use crate::config::BigQuerySettings;
use crate::domain::Row;
use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::{Value, json};
use std::time::Duration;

/// Columns of type `JSON`, sent as JSON text.
const JSON_COLUMNS: [&str; 2] = ["identifiers", "raw"];
/// Columns of type `INTEGER`. Customer.io sends these ids as numbers; one that is not (it
/// would fail the whole batch, forever) is sent as null; `raw` still holds it.
const INTEGER_COLUMNS: [&str; 5] = [
    "campaign_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
];

pub struct BigQuerySink {
    client: reqwest::Client,
    url: String,
    auth: BigQueryAuth,
}

impl BigQuerySink {
    pub fn new(settings: &BigQuerySettings) -> anyhow::Result<Self> {
        let project = settings.project.as_deref().context(
            "configuration key `warehouse.bigquery.project`: required for the bigquery sink",
        )?;
        let dataset = settings.dataset.as_deref().context(
            "configuration key `warehouse.bigquery.dataset`: required for the bigquery sink",
        )?;
        let base = settings.base_url.trim_end_matches('/');
        url::Url::parse(base).context("configuration key `warehouse.bigquery.base_url`")?;
        let url = format!(
            "{base}/projects/{}/datasets/{}/tables/{}/insertAll",
            encode(project),
            encode(dataset),
            encode(&settings.table)
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the BigQuery HTTP client")?;
        Ok(Self {
            client,
            url,
            auth: BigQueryAuth::new(settings.token.as_ref().map(|t| t.expose())),
        })
    }

    /// The `tabledata.insertAll` request body for `rows`.
    pub fn request_body(rows: &[Row]) -> Value {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                let mut value = serde_json::to_value(row).unwrap_or_default();
                for column in JSON_COLUMNS {
                    if let Some(v) = value.get_mut(column).filter(|v| !v.is_null()) {
                        *v = Value::String(v.to_string());
                    }
                }
                for column in INTEGER_COLUMNS {
                    if let Some(v) = value.get_mut(column) {
                        *v = v
                            .as_str()
                            .and_then(|s| s.parse::<i64>().ok())
                            .map_or(Value::Null, Value::from);
                    }
                }
                json!({"insertId": row.event_id, "json": value})
            })
            .collect();
        json!({
            "kind": "bigquery#tableDataInsertAllRequest",
            "skipInvalidRows": false,
            "ignoreUnknownValues": false,
            "rows": rows,
        })
    }
}

/// The rows of an `insertErrors` list BigQuery will never take (reason `invalid`), with the
/// message it gave.
fn invalid_rows(errors: &[Value], len: usize) -> Vec<(usize, String)> {
    errors
        .iter()
        .filter_map(|entry| {
            let index = usize::try_from(entry.get("index")?.as_u64()?).ok()?;
            let invalid = entry
                .get("errors")?
                .as_array()?
                .iter()
                .find(|e| e.get("reason").and_then(Value::as_str) == Some("invalid"))?;
            let message = invalid
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("invalid");
            (index < len).then(|| (index, format!("insertErrors: {message}")))
        })
        .collect()
}

/// Path segments: unreserved characters as they are (BigQuery ids use `_` and `-`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

#[async_trait]
impl Sink for BigQuerySink {
    fn name(&self) -> &'static str {
        "bigquery"
    }

    async fn write(&self, rows: &[Row]) -> Result<usize, SinkError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let token = self.auth.token().await?;
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .json(&Self::request_body(rows));
        let failed = |e: reqwest::Error| SinkError::BigQuery(e.without_url().to_string());
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let text = response.text().await.map_err(failed)?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // The token, not the rows: retried (never dead-lettered) with a fresh one.
            self.auth.refused();
            return Err(SinkError::BigQuery(format!(
                "insertAll answered {status}: the access token was refused ({})",
                self.auth.on_refusal()
            )));
        }
        if !status.is_success() {
            let excerpt: String = text.chars().take(300).collect();
            return Err(SinkError::BigQuery(format!(
                "insertAll answered {status}: {excerpt}"
            )));
        }
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| SinkError::BigQuery(format!("insertAll answer is not JSON: {e}")))?;
        match answer.get("insertErrors") {
            Some(Value::Array(errors)) if !errors.is_empty() => {
                let invalid = invalid_rows(errors, rows.len());
                if !invalid.is_empty() {
                    return Err(SinkError::RowsRejected {
                        sink: "bigquery",
                        rows: invalid,
                    });
                }
                let excerpt: String = Value::Array(errors.clone())
                    .to_string()
                    .chars()
                    .take(300)
                    .collect();
                Err(SinkError::BigQuery(format!(
                    "insertAll refused {} rows: {excerpt}",
                    errors.len()
                )))
            }
            _ => Ok(rows.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReportingEvent;

    #[test]
    fn rows_match_the_deployed_schema() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/bigquery/delivery_events.json"
        );
        let schema: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let event = ReportingEvent::from_value(json!({"event_id": "e1", "object_type": "email",
            "metric": "sent", "timestamp": 1_700_000_000,
            "data": {"customer_id": "1", "campaign_id": 23, "action_id": "not-a-number",
                "identifiers": {"id": "1"}}}))
        .unwrap();
        let body = BigQuerySink::request_body(&[Row::new(&event, chrono::Utc::now())]);
        let row = body["rows"][0]["json"].as_object().unwrap();
        assert_eq!(row.len(), schema.len());
        for column in &schema {
            let name = column["name"].as_str().unwrap();
            let value = row.get(name).unwrap_or_else(|| panic!("no column {name}"));
            match column["type"].as_str().unwrap() {
                "INTEGER" => {
                    assert!(INTEGER_COLUMNS.contains(&name), "{name}");
                    assert!(value.is_i64() || value.is_null(), "{name}: {value}");
                }
                "JSON" => assert!(JSON_COLUMNS.contains(&name) && !value.is_object(), "{name}"),
                _ => assert!(value.is_string() || value.is_null(), "{name}: {value}"),
            }
            if column["mode"] == "REQUIRED" {
                assert!(!value.is_null(), "{name} is required");
            }
        }
        assert_eq!(row["campaign_id"], 23);
        assert_eq!(row["action_id"], Value::Null);
        assert_eq!(body["rows"][0]["insertId"], "e1");
    }

    #[test]
    fn only_invalid_rows_are_refused_for_good() {
        let errors = json!([
            {"index": 1, "errors": [{"reason": "invalid", "message": "no such field: x"}]},
            {"index": 0, "errors": [{"reason": "stopped"}]},
            {"index": 2, "errors": [{"reason": "backendError"}]},
            {"index": 9, "errors": [{"reason": "invalid"}]},
        ]);
        let rows = invalid_rows(errors.as_array().unwrap(), 3);
        assert_eq!(rows, [(1, "insertErrors: no such field: x".to_string())]);
    }
}
