//! Where the BigQuery sink's bearer token comes from, in this order:
//!
//! 1. `warehouse.bigquery.token`, when set and not empty: sent as it is (tests, and users who
//!    mint tokens themselves; nothing refreshes it).
//! 2. Application Default Credentials, through the `gcloud-auth` crate:
//!    - a credentials file: `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key, whose
//!      `token_uri` is used), `GOOGLE_APPLICATION_CREDENTIALS_JSON`, or gcloud's
//!      `~/.config/gcloud/application_default_credentials.json`;
//!    - otherwise the metadata server (GCE, GKE Workload Identity, Cloud Run) at
//!      `GCE_METADATA_HOST`, by default `169.254.169.254`.
//!
//! The crate caches a token and fetches a new one 10 s before it expires. A 401 from BigQuery
//! (a token revoked, or expired early by clock skew) drops the cached source, so the retry
//! builds a new one and with it a fresh token. Failing to get a token is never about the rows:
//! it is a transient [`SinkError::Credentials`], the batch stays unacked and is retried.

use super::SinkError;
use crate::telemetry::events;
use gcloud_auth::credentials::CredentialsFile;
use gcloud_auth::project::{
    Config, Project, ProjectInfo, create_token_source_from_credentials,
    create_token_source_from_project,
};
use gcloud_auth::token_source::TokenSource;
use std::sync::Arc;

/// Enough to call `tabledata.insertAll`, and no more.
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery.insertdata";
const SCOPES: &[&str] = &[SCOPE];

pub enum BigQueryAuth {
    Static(String),
    Adc(Adc),
}

impl BigQueryAuth {
    /// The static `token` if it is set and not empty, else Application Default Credentials.
    pub fn new(token: Option<&str>) -> Self {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => Self::Static(token.to_string()),
            None => Self::Adc(Adc::default()),
        }
    }

    /// The bearer token for the next request.
    pub async fn token(&self) -> Result<String, SinkError> {
        match self {
            Self::Static(token) => Ok(token.clone()),
            Self::Adc(adc) => adc.token().await,
        }
    }

    /// What happens after a 401, for the sink's error.
    pub fn on_refusal(&self) -> &'static str {
        match self {
            Self::Static(_) => {
                "the static warehouse.bigquery.token: replace it, or unset it for Application Default Credentials"
            }
            Self::Adc(_) => "retried with a new token",
        }
    }

    /// BigQuery refused the token (401): the next [`BigQueryAuth::token`] is a fresh one.
    pub fn refused(&self) {
        events::bigquery_unauthorized();
        // A static token cannot be renewed here: the sink's error says so, once per change.
        if let Self::Adc(adc) = self {
            adc.refused();
        }
    }
}

/// Application Default Credentials: the crate's caching token source, built on first use and
/// again after a 401 or a failed build.
#[derive(Default)]
pub struct Adc {
    source: tokio::sync::Mutex<Option<Arc<dyn TokenSource>>>,
    /// The failure last logged: each new one is logged once, not once per retry.
    failing: parking_lot::Mutex<Option<String>>,
}

impl Adc {
    async fn token(&self) -> Result<String, SinkError> {
        let result = self.fetch().await;
        self.note(&result);
        result.map_err(|e| {
            events::bigquery_token_failed();
            SinkError::Credentials(e)
        })
    }

    async fn fetch(&self) -> Result<String, String> {
        let source = {
            // Held while building, so one build (and one token request) at a time.
            let mut slot = self.source.lock().await;
            match slot.as_ref() {
                Some(source) => source.clone(),
                None => {
                    let (source, from) = build().await?;
                    tracing::info!(credentials = from, "BigQuery access token obtained");
                    slot.insert(source).clone()
                }
            }
        };
        let token = source.token().await.map_err(|e| e.to_string())?;
        Ok(token.access_token)
    }

    fn refused(&self) {
        tracing::warn!("BigQuery refused the access token (401); fetching a new one for the retry");
        // Not awaited: the only other holder is a build in progress, which yields a new source.
        if let Ok(mut slot) = self.source.try_lock() {
            *slot = None;
        }
    }

    /// Logs a failure once per change of its message, and the recovery after one.
    fn note(&self, result: &Result<String, String>) {
        let mut failing = self.failing.lock();
        match result {
            Ok(_) => {
                if let Some(error) = failing.take() {
                    tracing::info!(%error, "BigQuery credentials work again");
                }
            }
            Err(error) if failing.as_deref() != Some(error.as_str()) => {
                tracing::warn!(%error, "no BigQuery access token; rows wait in the queue and are retried");
                *failing = Some(error.clone());
            }
            Err(error) => tracing::debug!(%error, "still no BigQuery access token"),
        }
    }
}

/// A token source from a credentials file if there is one, else from the metadata server; it
/// has already fetched its first token.
async fn build() -> Result<(Arc<dyn TokenSource>, &'static str), String> {
    let config = Config::default().with_scopes(SCOPES);
    let named = [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    match CredentialsFile::new().await {
        Ok(file) => {
            let source = create_token_source_from_credentials(&file, &config)
                .await
                .map_err(|e| format!("credentials file ({} account): {e}", file.tp))?;
            Ok((Arc::from(source), "credentials file"))
        }
        // A file named but unreadable is an error to report, not a reason to try elsewhere.
        Err(e) if named => Err(format!("credentials file: {e}")),
        Err(gcloud_auth::error::Error::CredentialsIOError(e))
            if e.kind() == std::io::ErrorKind::NotFound =>
        {
            metadata_server(config).await
        }
        Err(gcloud_auth::error::Error::NoHomeDirectoryFound) => metadata_server(config).await,
        Err(e) => Err(format!("gcloud application default credentials: {e}")),
    }
}

async fn metadata_server(
    config: Config<'_>,
) -> Result<(Arc<dyn TokenSource>, &'static str), String> {
    // Straight to the metadata server: the crate's own "are we on GCE" probe would remember a
    // "no" for good if the server were down at the first attempt.
    let project = Project::FromMetadataServer(ProjectInfo { project_id: None });
    let source = create_token_source_from_project(&project, config)
        .await
        .map_err(|e| format!("metadata server: {e}"))?;
    Ok((Arc::from(source), "metadata server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_static_token_wins_and_an_empty_one_means_adc() {
        let auth = BigQueryAuth::new(Some("t0k"));
        assert_eq!(auth.token().await.unwrap(), "t0k");
        assert!(matches!(
            BigQueryAuth::new(Some("  ")),
            BigQueryAuth::Adc(_)
        ));
        assert!(matches!(BigQueryAuth::new(None), BigQueryAuth::Adc(_)));
    }

    #[test]
    fn a_failure_is_logged_once_per_change() {
        let adc = Adc::default();
        adc.note(&Err("down".into()));
        assert_eq!(adc.failing.lock().as_deref(), Some("down"));
        adc.note(&Err("down".into()));
        adc.note(&Err("refused".into()));
        assert_eq!(adc.failing.lock().as_deref(), Some("refused"));
        adc.note(&Ok("token".into()));
        assert_eq!(*adc.failing.lock(), None);
    }
}
