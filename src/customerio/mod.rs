//! The Customer.io client: Track API v1 and v2, App API sends, nothing else.
//!
//! One pooled HTTP client, the region's base URLs, the workspace credentials and the request
//! budgets live behind an `Arc`, so the client is cheap to clone into every actor. Each method
//! makes at most one request and never retries: the pipeline owns retrying, and needs to know
//! only whether an error is [`CioError::Retryable`] (and for how long to wait),
//! [`CioError::Permanent`] or [`CioError::Invalid`] (refused before sending).

mod budget;
mod error;
mod region;
pub mod wire;

pub use error::{CioError, MAX_RETRY_AFTER, is_retryable_status};
pub use region::{BaseUrls, EU_APP_URL, EU_TRACK_URL, US_APP_URL, US_TRACK_URL};

use crate::config::{CustomerIoSettings, Region};
use crate::domain::limits::{MAX_V2_BATCH_BYTES, MAX_V2_OPERATION_BYTES};
use crate::domain::{
    Attributes, Device, Event, Operation, Page, PersonRef, TransactionalRequest, UserId,
};
use crate::sandbox::{SANDBOX_API_KEY, SANDBOX_APP_API_KEY, SANDBOX_SITE_ID};
use budget::Budget;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One Track API operation about one person. `event_id` becomes the event's `id` (events and
/// page views only), so Customer.io drops a resent duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackCall {
    pub user: UserId,
    pub operation: Operation,
    pub event_id: Option<ulid::Ulid>,
}

/// What the App API answers for an accepted send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendReceipt {
    pub delivery_id: String,
    pub queued_at: i64,
}

#[derive(Clone)]
pub struct CustomerIo {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    urls: BaseUrls,
    site_id: String,
    api_key: String,
    app_api_key: Option<String>,
    track_budget: Budget,
    app_budget: Budget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    TrackV1,
    TrackV2,
    App,
}

impl Api {
    fn as_str(self) -> &'static str {
        match self {
            Api::TrackV1 => "track_v1",
            Api::TrackV2 => "track_v2",
            Api::App => "app",
        }
    }
}

/// A response that arrived, whatever its status.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn success(self) -> Result<Self, CioError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(CioError::from_response(
                self.status,
                &self.headers,
                self.body,
            ))
        }
    }
}

impl CustomerIo {
    /// Builds the client from `[customerio]`. The sandbox region needs `track_url` and
    /// `app_url`, and uses the sandbox credentials when none are configured.
    pub fn new(settings: &CustomerIoSettings) -> Result<Self, CioError> {
        let urls = BaseUrls::resolve(settings)?;
        let sandbox = settings.region == Region::Sandbox;
        let secret = |s: &Option<crate::config::Secret>| s.as_ref().map(|v| v.expose().to_string());
        let (site_id, api_key) = match (secret(&settings.site_id), secret(&settings.api_key)) {
            (Some(site), Some(key)) => (site, key),
            (None, None) if sandbox => (SANDBOX_SITE_ID.to_string(), SANDBOX_API_KEY.to_string()),
            (None, _) => return Err(CioError::invalid("customerio.site_id is required")),
            (_, None) => return Err(CioError::invalid("customerio.api_key is required")),
        };
        // Without an App API key the Track side still works; sends are refused (Invalid) naming
        // the key, so a deployment that never sends transactional messages needs none.
        let app_api_key = secret(&settings.app_api_key)
            .or_else(|| sandbox.then(|| SANDBOX_APP_API_KEY.to_string()));
        if settings.timeout_ms == 0 {
            return Err(CioError::invalid(
                "customerio.timeout_ms must be at least 1",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("cio-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CioError::invalid(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                urls,
                site_id,
                api_key,
                app_api_key,
                track_budget: Budget::per_second(settings.track_rps, "customerio.track_rps")?,
                app_budget: Budget::per_second(settings.app_rps, "customerio.app_rps")?,
            }),
        })
    }

    /// The base URLs in use.
    pub fn urls(&self) -> &BaseUrls {
        &self.inner.urls
    }

    /// One Track v1 request.
    pub async fn perform(&self, call: &TrackCall) -> Result<(), CioError> {
        wire::check_limits(call)?;
        let request = wire::v1_request(call)?;
        self.track_v1(request).await
    }

    /// One Track v2 `/entity` request.
    pub async fn entity(&self, call: &TrackCall) -> Result<(), CioError> {
        wire::check_limits(call)?;
        let op = wire::v2_operation(call)?;
        let body = serde_json::to_vec(&op).map_err(|e| CioError::invalid(e.to_string()))?;
        if body.len() > MAX_V2_OPERATION_BYTES {
            return Err(op_too_large(body.len()));
        }
        let url = format!("{}/entity", self.inner.urls.track_v2);
        self.execute(Api::TrackV2, Method::POST, url, Some(body))
            .await?
            .success()
            .map(drop)
    }

    /// One Track v2 `/batch` request for many operations.
    ///
    /// The outer `Err` means the whole request failed (retryable or permanent), or the batch as
    /// a whole breaks the 500 KB limit. Otherwise there is one result per call, in input order:
    /// - a call that breaks a limit (e.g. an op over 32 KB) is `Invalid` and is left out of the
    ///   request; the others are sent;
    /// - `200`: every sent op is `Ok`;
    /// - `207 Multi-Status` (documented: "at least one object in the batch was invalid; all other
    ///   requests are accepted", body `{"errors": [{"batch_index", "reason", "field",
    ///   "message"}]}`): each op named by a `batch_index` is `Permanent` with status 400 (what
    ///   `/entity` answers for the same op alone) and the error entry as body; all others `Ok`;
    /// - a 4xx (not 408/429) whose `errors` name `batch_index`es (not documented; handled in case
    ///   Customer.io rejects a whole batch for a few bad ops): the named ops are `Permanent` with
    ///   that status, the others `Retryable`, as nothing of the request was accepted;
    /// - any other non-2xx is the outer `Err`.
    pub async fn batch(&self, calls: &[TrackCall]) -> Result<Vec<Result<(), CioError>>, CioError> {
        self.spend_track_budget().await;
        self.batch_prepaid(calls).await
    }

    /// Waits until one Track request fits the budget and spends it. A batcher calls this
    /// before it cuts a batch, so operations keep joining while it waits.
    pub async fn spend_track_budget(&self) {
        self.inner.track_budget.acquire().await;
    }

    /// [`CustomerIo::batch`] for a request whose budget [`CustomerIo::spend_track_budget`]
    /// already spent.
    pub async fn batch_prepaid(
        &self,
        calls: &[TrackCall],
    ) -> Result<Vec<Result<(), CioError>>, CioError> {
        let mut results: Vec<Result<(), CioError>> = Vec::with_capacity(calls.len());
        let mut ops = Vec::with_capacity(calls.len());
        // Request position -> input position.
        let mut positions = Vec::with_capacity(calls.len());
        for (i, call) in calls.iter().enumerate() {
            let op = wire::check_limits(call).and_then(|()| wire::v2_operation(call));
            match op {
                Ok(op) if wire::json_len(&op) > MAX_V2_OPERATION_BYTES => {
                    results.push(Err(op_too_large(wire::json_len(&op))));
                }
                Ok(op) => {
                    results.push(Ok(()));
                    ops.push(op);
                    positions.push(i);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if ops.is_empty() {
            return Ok(results);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "batch": ops }))
            .map_err(|e| CioError::invalid(e.to_string()))?;
        if body.len() > MAX_V2_BATCH_BYTES {
            return Err(CioError::invalid(format!(
                "batch is {} bytes, Customer.io allows at most {MAX_V2_BATCH_BYTES}",
                body.len()
            )));
        }
        let url = format!("{}/batch", self.inner.urls.track_v2);
        let answer = self
            .execute_prepaid(Api::TrackV2, Method::POST, url, Some(body))
            .await?;
        let failed = op_errors(&answer.body, positions.len());
        match answer.status {
            207 => {
                for (index, entry) in failed {
                    results[positions[index]] = Err(CioError::Permanent {
                        status: 400,
                        body: entry.to_string(),
                    });
                }
                Ok(results)
            }
            200..=299 => Ok(results),
            status
                if (400..500).contains(&status)
                    && !is_retryable_status(status)
                    && !failed.is_empty() =>
            {
                let named: std::collections::BTreeMap<usize, Value> = failed.into_iter().collect();
                for (index, position) in positions.iter().enumerate() {
                    results[*position] = Err(match named.get(&index) {
                        Some(entry) => CioError::Permanent {
                            status,
                            body: entry.to_string(),
                        },
                        None => CioError::Retryable {
                            status: Some(status),
                            retry_after: None,
                            message: "not accepted: another operation of the batch was invalid"
                                .into(),
                        },
                    });
                }
                Ok(results)
            }
            _ => Err(CioError::from_response(
                answer.status,
                &answer.headers,
                answer.body,
            )),
        }
    }

    /// One App API send. `message_id` is the resolved `transactional_message_id` (`None` for an
    /// inline email; for `TemplateRef::Id` the template's own id is used when `None`).
    pub async fn send(
        &self,
        request: &TransactionalRequest,
        message_id: Option<&Value>,
    ) -> Result<SendReceipt, CioError> {
        if self.inner.app_api_key.is_none() {
            return Err(CioError::invalid(
                "customerio.app_api_key is not configured; transactional sends need it",
            ));
        }
        let body = wire::send_body(request, message_id)?;
        let body = serde_json::to_vec(&body).map_err(|e| CioError::invalid(e.to_string()))?;
        let url = format!(
            "{}{}",
            self.inner.urls.app,
            wire::send_path(request.channel)
        );
        let answer = self
            .execute(Api::App, Method::POST, url, Some(body))
            .await?
            .success()?;
        // The send was accepted: an answer we cannot read must not turn into a retry (that would
        // send the message twice), so it yields an empty receipt instead.
        Ok(serde_json::from_str(&answer.body).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unreadable App API send answer");
            SendReceipt {
                delivery_id: String::new(),
                queued_at: 0,
            }
        }))
    }

    /// Serialized bytes of the v2 operation of `call` (0 if it has none), so a batcher can cut
    /// batches under the 500 KB limit.
    pub fn v2_operation_size(call: &TrackCall) -> usize {
        wire::v2_operation(call).map_or(0, |op| wire::json_len(&op))
    }

    // Thin wrappers, one per Track operation (v1).

    pub async fn identify(&self, user: &UserId, attributes: &Attributes) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Identify(attributes.clone()), None))
            .await
    }

    pub async fn delete(&self, user: &UserId) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Delete, None)).await
    }

    pub async fn track(
        &self,
        user: &UserId,
        event: &Event,
        id: Option<ulid::Ulid>,
    ) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Track(event.clone()), id))
            .await
    }

    /// `POST /events`: an event of someone not identified yet.
    pub async fn track_anonymous(
        &self,
        anonymous_id: &str,
        event: &Event,
        id: Option<ulid::Ulid>,
    ) -> Result<(), CioError> {
        let request = wire::v1_anonymous(anonymous_id, event, id)?;
        self.track_v1(request).await
    }

    pub async fn page(
        &self,
        user: &UserId,
        page: &Page,
        id: Option<ulid::Ulid>,
    ) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Page(page.clone()), id))
            .await
    }

    pub async fn suppress(&self, user: &UserId) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Suppress, None)).await
    }

    pub async fn unsuppress(&self, user: &UserId) -> Result<(), CioError> {
        self.perform(&call(user, Operation::Unsuppress, None)).await
    }

    pub async fn add_device(&self, user: &UserId, device: &Device) -> Result<(), CioError> {
        self.perform(&call(user, Operation::AddDevice(device.clone()), None))
            .await
    }

    pub async fn delete_device(&self, user: &UserId, token: &str) -> Result<(), CioError> {
        self.perform(&call(
            user,
            Operation::DeleteDevice(token.to_string()),
            None,
        ))
        .await
    }

    /// Merges `secondary` into `primary`; `user` is only the ordering key of the caller.
    pub async fn merge(
        &self,
        user: &UserId,
        primary: &PersonRef,
        secondary: &PersonRef,
    ) -> Result<(), CioError> {
        let operation = Operation::Merge {
            primary: primary.clone(),
            secondary: secondary.clone(),
        };
        self.perform(&call(user, operation, None)).await
    }

    async fn track_v1(&self, request: wire::V1Request) -> Result<(), CioError> {
        let body = match &request.body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| CioError::invalid(e.to_string()))?),
            None => None,
        };
        let url = format!("{}{}", self.inner.urls.track_v1, request.path);
        self.execute(Api::TrackV1, request.method, url, body)
            .await?
            .success()
            .map(drop)
    }

    /// Spends the budget, sends, and reads the whole answer. `Err` only when no response came.
    async fn execute(
        &self,
        api: Api,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, CioError> {
        match api {
            Api::TrackV1 | Api::TrackV2 => self.inner.track_budget.acquire().await,
            Api::App => self.inner.app_budget.acquire().await,
        }
        self.execute_prepaid(api, method, url, body).await
    }

    /// Sends and reads the whole answer; the caller spent the budget.
    async fn execute_prepaid(
        &self,
        api: Api,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, CioError> {
        let inner = &self.inner;
        let mut builder = inner.http.request(method.clone(), &url);
        match api {
            Api::TrackV1 | Api::TrackV2 => {
                builder = builder.basic_auth(&inner.site_id, Some(&inner.api_key));
            }
            Api::App => {
                let key = inner.app_api_key.as_deref().unwrap_or_default();
                builder = builder.bearer_auth(key);
            }
        }
        if let Some(body) = body {
            builder = builder
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }
        let started = Instant::now();
        let result = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.text().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                headers,
                body,
            })
        }
        .await;
        let elapsed = started.elapsed();
        let status_label = match &result {
            Ok(answer) => answer.status.to_string(),
            Err(_) => "error".to_string(),
        };
        metrics::counter!(
            "cio_gateway_customerio_requests_total",
            "api" => api.as_str(),
            "status" => status_label.clone()
        )
        .increment(1);
        metrics::histogram!(
            "cio_gateway_customerio_request_duration_seconds",
            "api" => api.as_str()
        )
        .record(elapsed.as_secs_f64());
        let path = url::Url::parse(&url).map_or_else(|_| url.clone(), |u| u.path().to_string());
        tracing::debug!(
            api = api.as_str(),
            method = %method,
            path = %path,
            status = %status_label,
            elapsed_ms = elapsed.as_millis() as u64,
            "customer.io request"
        );
        result.map_err(|e| CioError::from_transport(&e))
    }
}

fn call(user: &UserId, operation: Operation, event_id: Option<ulid::Ulid>) -> TrackCall {
    TrackCall {
        user: user.clone(),
        operation,
        event_id,
    }
}

fn op_too_large(size: usize) -> CioError {
    CioError::invalid(format!(
        "v2 operation is {size} bytes, Customer.io allows at most {MAX_V2_OPERATION_BYTES}"
    ))
}

/// `(request index, error entry)` for every error of a v2 answer that names a valid
/// `batch_index`; entries without one cannot be attributed and are only logged.
fn op_errors(body: &str, sent: usize) -> Vec<(usize, Value)> {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let Some(errors) = value.get("errors").and_then(Value::as_array) else {
        return Vec::new();
    };
    errors
        .iter()
        .filter_map(|entry| {
            let index = entry.get("batch_index").and_then(Value::as_u64);
            match index {
                Some(i) if (i as usize) < sent => Some((i as usize, entry.clone())),
                _ => {
                    tracing::warn!(error = %entry, "v2 error names no operation of the batch");
                    None
                }
            }
        })
        .collect()
}
