//! The Customer.io client: Track API v1 and v2, the Data Pipelines API, App API sends.
//!
//! One pooled HTTP client, the region's base URLs, the workspace credentials and the request
//! budgets live behind an `Arc`, so the client is cheap to clone into every actor. Each method
//! makes at most one request and never retries: the pipeline owns retrying, and needs to know
//! only whether an error is [`CioError::Retryable`] (and for how long to wait),
//! [`CioError::Permanent`] or [`CioError::Invalid`] (refused before sending).

mod budget;
mod circuit;
pub use circuit::CircuitStatus;
mod error;
pub mod pipelines;
mod region;
pub mod wire;

pub use error::{CioError, is_retryable_status};
pub use region::{
    BaseUrls, EU_APP_URL, EU_PIPELINES_URL, EU_TRACK_URL, US_APP_URL, US_PIPELINES_URL,
    US_TRACK_URL,
};

use crate::config::{CustomerIoSettings, DeliveryApi, Region};
use crate::domain::limits::{MAX_V2_BATCH_BYTES, MAX_V2_OPERATION_BYTES};
use crate::domain::{
    Attributes, BroadcastTrigger, Device, Event, Operation, PersonRef, TransactionalRequest,
    UserId, View,
};
use crate::sandbox::{
    SANDBOX_API_KEY, SANDBOX_APP_API_KEY, SANDBOX_PIPELINES_API_KEY, SANDBOX_SITE_ID,
};
use crate::telemetry::events;
use budget::Budget;
use circuit::{Blame, Circuit, Pass, Verdict};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

tokio::task_local! {
    /// Set by a caller whose request turns stale when the token fires (a shard that lost its
    /// partition): see [`unless_cancelled`].
    static CANCEL: CancellationToken;
}

/// Runs `call` so that, once `cancel` fires, a request still waiting for the circuit or the
/// budget is never sent: it fails as [`CioError::cancelled`] instead. A request already on the
/// wire is left to finish (its answer may already be on the way; dropping it would only make
/// the outcome unknown).
pub async fn unless_cancelled<F: Future>(cancel: CancellationToken, call: F) -> F::Output {
    CANCEL.scope(cancel, call).await
}

/// One Track API operation about one person. `user` is the ordering key; `person` is how
/// Customer.io is told who it is. `event_id` becomes the event's `id` (events and page views
/// only), so Customer.io drops a resent duplicate. `timestamp` (unix seconds) is Customer.io's
/// ordering timestamp of an identify or a page view: it drops an identify older than the last
/// one it applied. The Pipelines API names the call by `message_id` (the envelope's
/// correlationId: it de-duplicates on it) and dates it by `published_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackCall {
    pub user: UserId,
    pub person: PersonRef,
    pub operation: Operation,
    pub event_id: Option<ulid::Ulid>,
    pub timestamp: Option<i64>,
    pub message_id: Option<String>,
    pub published_ms: Option<i64>,
}

impl TrackCall {
    /// A call about the person whose id is `user`, with no event id or timestamp.
    pub fn new(user: UserId, operation: Operation) -> Self {
        Self {
            person: PersonRef::id(&user),
            user,
            operation,
            event_id: None,
            timestamp: None,
            message_id: None,
            published_ms: None,
        }
    }
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
    /// Which API people and events go through (`customerio.api`).
    api: DeliveryApi,
    /// Track API credentials; only manual segments need them when Pipelines delivers.
    track_credentials: Option<(String, String)>,
    app_api_key: Option<String>,
    pipelines_api_key: Option<String>,
    track_budget: Budget,
    app_budget: Budget,
    broadcast_budget: Budget,
    pipelines_budget: Budget,
    track_circuit: Arc<Circuit>,
    app_circuit: Arc<Circuit>,
    pipelines_circuit: Arc<Circuit>,
}

/// One API's state, as `/admin/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiStatus {
    pub api: &'static str,
    pub circuit: circuit::CircuitStatus,
    /// The adaptive request rate now, and the configured ceiling it climbs back to.
    pub rate_rps: f64,
    pub ceiling_rps: f64,
}

/// Leave to send one request: the API's circuit let it through and its budget was spent.
pub struct Permit {
    pass: Pass,
}

type BatchResults = Result<Vec<Result<(), CioError>>, CioError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    TrackV1,
    TrackV2,
    App,
    /// App API broadcast triggers: the App API's circuit and credentials, a budget of their own.
    Broadcast,
    /// The Data Pipelines API's `/batch`.
    Pipelines,
}

impl Api {
    /// The circuit and budget it shares: Track v1 and v2 count as one API.
    fn family(self) -> &'static str {
        match self {
            Api::TrackV1 | Api::TrackV2 => "track",
            Api::App | Api::Broadcast => "app",
            Api::Pipelines => "pipelines",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Api::TrackV1 => "track_v1",
            Api::TrackV2 => "track_v2",
            Api::App => "app",
            Api::Broadcast => "broadcast",
            Api::Pipelines => "pipelines",
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
        let pipelines = settings.api == DeliveryApi::Pipelines;
        // Pipelines delivery needs the Track credentials only for manual segments: without
        // them a segment change is refused (Invalid) naming the keys.
        let track_credentials = match (secret(&settings.site_id), secret(&settings.api_key)) {
            (Some(site), Some(key)) => Some((site, key)),
            (None, None) if sandbox => {
                Some((SANDBOX_SITE_ID.to_string(), SANDBOX_API_KEY.to_string()))
            }
            (None, None) if pipelines => None,
            (None, _) => return Err(CioError::invalid("customerio.site_id is required")),
            (_, None) => return Err(CioError::invalid("customerio.api_key is required")),
        };
        let pipelines_api_key = match secret(&settings.pipelines_api_key) {
            Some(key) => Some(key),
            None if sandbox => Some(SANDBOX_PIPELINES_API_KEY.to_string()),
            None if pipelines => {
                return Err(CioError::invalid(
                    "customerio.pipelines_api_key is required when customerio.api is pipelines",
                ));
            }
            None => None,
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
        // Never follow a redirect: it would drop `Authorization` (cross-host) or turn a POST into
        // a GET. A 3xx means the wrong region is configured and pauses the API like a 401.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("cio-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CioError::invalid(format!("building the HTTP client: {e}")))?;
        if settings.circuit_max_backoff_ms == 0 {
            return Err(CioError::invalid(
                "customerio.circuit_max_backoff_ms must be at least 1",
            ));
        }
        let max_backoff = Duration::from_millis(settings.circuit_max_backoff_ms);
        let threshold = settings.circuit_failure_threshold.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                urls,
                api: settings.api,
                track_credentials,
                app_api_key,
                pipelines_api_key,
                track_budget: Budget::per_second(
                    settings.track_rps,
                    "customerio.track_rps",
                    "track",
                )?,
                app_budget: Budget::per_second(settings.app_rps, "customerio.app_rps", "app")?,
                broadcast_budget: Budget::every(
                    Duration::from_millis(settings.broadcast_interval_ms.max(1)),
                    "broadcast",
                ),
                pipelines_budget: Budget::per_second(
                    settings.pipelines_rps,
                    "customerio.pipelines_rps",
                    "pipelines",
                )?,
                track_circuit: Circuit::new("track", threshold, max_backoff),
                app_circuit: Circuit::new("app", threshold, max_backoff),
                pipelines_circuit: Circuit::new("pipelines", threshold, max_backoff),
            }),
        })
    }

    /// The base URLs in use.
    pub fn urls(&self) -> &BaseUrls {
        &self.inner.urls
    }

    /// One Track v1 request.
    pub async fn perform(&self, call: &TrackCall) -> Result<(), CioError> {
        // Track v1 has no objects: they go to v2 `/entity` with the same credentials.
        if matches!(call.operation, Operation::Object(_)) {
            return self.entity(call).await;
        }
        wire::check_limits(call)?;
        let request = wire::v1_request(call)?;
        self.track_v1(request).await
    }

    /// One Track v1 request adding many people to a manual segment, or removing them, with the
    /// permit already held: at most [`MAX_SEGMENT_IDS`](crate::domain::limits::MAX_SEGMENT_IDS)
    /// ids, all of `change.id_type`.
    pub async fn change_segment(
        &self,
        permit: Permit,
        change: &wire::SegmentChange,
        ids: &[&str],
    ) -> Result<(), CioError> {
        let request = wire::segment_request(change, ids);
        let body =
            serde_json::to_vec(&request.body).map_err(|e| CioError::invalid(e.to_string()))?;
        let url = format!("{}{}", self.inner.urls.track_v1, request.path);
        self.execute_with(
            permit,
            Api::TrackV1,
            request.method,
            url,
            Some(body),
            ids.len(),
        )
        .await?
        .success()
        .map(drop)
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
        self.execute(Api::TrackV2, Method::POST, url, Some(body), 1)
            .await?
            .success()
            .map(drop)
    }

    /// One Track v2 `/batch` request for many operations (more when the batch must be split).
    ///
    /// The outer `Err` means the whole request failed (workspace, retryable), or the batch as
    /// a whole breaks the 500 KB limit. Otherwise there is one result per call, in input order:
    /// - a call that breaks a limit (e.g. an op over 32 KB) is `Invalid` and is left out of the
    ///   request; the others are sent;
    /// - `200`: every sent op is `Ok`;
    /// - `207 Multi-Status` (documented: "at least one object in the batch was invalid; all other
    ///   requests are accepted", body `{"errors": [{"batch_index", "reason", "field",
    ///   "message"}]}`): each op named by a `batch_index` is `Permanent` with status 400 (what
    ///   `/entity` answers for the same op alone) and the error entry as body; all others `Ok`;
    /// - a 4xx (not 401/408/429) whose `errors` name `batch_index`es: the named ops are
    ///   `Permanent` with that status; the others, of which nothing was accepted, are sent again
    ///   without them;
    /// - a 4xx naming no operation (a whole-batch 400 or 413): the batch is bisected until the
    ///   offending operation is alone, so it alone is `Permanent` and the others are delivered.
    ///   Every request of the split passes the circuit and spends the budget.
    ///
    /// With `customerio.api = pipelines` the same calls go to the Pipelines API's `/batch`
    /// instead (see [`CustomerIo::pipelines_batch`]).
    pub async fn batch(&self, calls: &[TrackCall]) -> BatchResults {
        let permit = self.batch_permit().await?;
        self.batch_with(permit, calls).await
    }

    /// Whether people and events go through the Data Pipelines API.
    pub fn delivers_by_pipelines(&self) -> bool {
        self.inner.api == DeliveryApi::Pipelines
    }

    /// [`CustomerIo::track_permit`] for the API batches go to: Track v2, or Pipelines.
    pub async fn batch_permit(&self) -> Result<Permit, CioError> {
        self.permit(self.batch_api()).await
    }

    fn batch_api(&self) -> Api {
        match self.inner.api {
            DeliveryApi::Track => Api::TrackV2,
            DeliveryApi::Pipelines => Api::Pipelines,
        }
    }

    /// `call` as the API batches go to takes it, encoded once: a batcher cuts batches under
    /// the 500 KB limit by these bytes, and the request is built from them. A call over
    /// Customer.io's limits, or one the API cannot express, is encoded as its error.
    pub fn encode(&self, call: &TrackCall) -> EncodedCall {
        let encoded = wire::check_limits(call).and_then(|()| match self.inner.api {
            DeliveryApi::Track => {
                let op = wire::v2_operation(call)?;
                let bytes =
                    serde_json::to_vec(&op).map_err(|e| CioError::invalid(e.to_string()))?;
                if bytes.len() > MAX_V2_OPERATION_BYTES {
                    return Err(op_too_large(bytes.len()));
                }
                Ok(vec![bytes])
            }
            DeliveryApi::Pipelines => pipelines::encoded_calls(call),
        });
        EncodedCall(encoded)
    }

    /// Waits until the Track API's circuit admits one request and the budget has room, and
    /// spends it. A batcher calls this before it cuts a batch, so operations keep joining while
    /// it waits. `Err` (a workspace failure) when the circuit stayed open for its longest
    /// backoff: the caller gives its messages back rather than hold them for a whole outage.
    pub async fn track_permit(&self) -> Result<Permit, CioError> {
        self.permit(Api::TrackV2).await
    }

    /// Whether the API's circuit is open (delivery paused): `"track"` or `"app"`.
    pub fn circuit_open(&self, api: &str) -> bool {
        match api {
            "app" => self.inner.app_circuit.is_open(),
            "pipelines" => self.inner.pipelines_circuit.is_open(),
            _ => self.inner.track_circuit.is_open(),
        }
    }

    /// Each API's circuit and adaptive rate, for `/admin/status`.
    pub fn status(&self) -> Vec<ApiStatus> {
        let inner = &self.inner;
        let pipelines = (inner.api == DeliveryApi::Pipelines).then_some((
            "pipelines",
            &inner.pipelines_circuit,
            &inner.pipelines_budget,
        ));
        [
            ("track", &inner.track_circuit, &inner.track_budget),
            ("app", &inner.app_circuit, &inner.app_budget),
        ]
        .into_iter()
        .chain(pipelines)
        .map(|(api, circuit, budget)| ApiStatus {
            api,
            circuit: circuit.status(),
            rate_rps: budget.rate(),
            ceiling_rps: budget.ceiling(),
        })
        .collect()
    }

    /// The current adaptive request rate (requests per second) of `"track"` or `"app"`.
    pub fn request_rate(&self, api: &str) -> f64 {
        match api {
            "app" => self.inner.app_budget.rate(),
            "pipelines" => self.inner.pipelines_budget.rate(),
            _ => self.inner.track_budget.rate(),
        }
    }

    fn split<'a>(
        &'a self,
        calls: Vec<TrackCall>,
    ) -> Pin<Box<dyn Future<Output = BatchResults> + Send + 'a>> {
        Box::pin(async move { self.batch(&calls).await })
    }

    /// [`CustomerIo::batch`] for a request whose [`Permit`] is already held.
    pub async fn batch_with(&self, permit: Permit, calls: &[TrackCall]) -> BatchResults {
        let encoded = calls.iter().map(|call| self.encode(call)).collect();
        self.batch_encoded(permit, calls, encoded).await
    }

    /// [`CustomerIo::batch_with`] for calls already encoded by [`CustomerIo::encode`], one
    /// each, in the same order.
    pub async fn batch_encoded(
        &self,
        permit: Permit,
        calls: &[TrackCall],
        encoded: Vec<EncodedCall>,
    ) -> BatchResults {
        let sendable = Sendable::of(encoded);
        if sendable.positions.is_empty() {
            return Ok(sendable.results);
        }
        match self.inner.api {
            DeliveryApi::Track => self.track_batch(permit, calls, sendable).await,
            DeliveryApi::Pipelines => self.pipelines_batch(permit, calls, sendable).await,
        }
    }

    /// One Pipelines `/batch` request for many operations (more when it must be split).
    ///
    /// Pipelines answers 200 and drops what breaks its limits, and documents no per-call
    /// errors, so nothing is sent that it would drop: a call over 32 KB, or one the Pipelines
    /// API cannot express, is `Invalid` and left out. The request is sent with `X-Strict-Mode:
    /// 1`, under which a call that fails validation is a 400 instead of a silent 200; a 4xx
    /// that is the request's own fault is bisected until the offending operation is alone, so it
    /// alone is `Permanent` and the others are delivered. A body over 500 KB (the batcher cuts
    /// below it by these very bytes) is split in two rather than sent.
    async fn pipelines_batch(
        &self,
        permit: Permit,
        calls: &[TrackCall],
        sendable: Sendable,
    ) -> BatchResults {
        let Sendable {
            mut results,
            positions,
            body,
        } = sendable;
        if body.len() > pipelines::MAX_BATCH_BYTES {
            if positions.len() == 1 {
                results[positions[0]] = Err(CioError::invalid(format!(
                    "the operation's Pipelines calls take {} bytes, over the {} bytes of a batch",
                    body.len(),
                    pipelines::MAX_BATCH_BYTES
                )));
                return Ok(results);
            }
            drop(permit);
            return self.resend_halves(calls, &positions, results).await;
        }
        let users: std::collections::BTreeSet<&UserId> =
            positions.iter().map(|&i| &calls[i].user).collect();
        let url = format!("{}/batch", self.pipelines_url()?);
        let answer = self
            .execute_with(
                permit,
                Api::Pipelines,
                Method::POST,
                url,
                Some(body),
                users.len(),
            )
            .await?;
        if (200..300).contains(&answer.status) {
            return Ok(results);
        }
        // A 4xx about the request itself (the circuit took the rest).
        if positions.len() == 1 {
            results[positions[0]] = Err(CioError::Permanent {
                status: answer.status,
                body: answer.body,
            });
            return Ok(results);
        }
        events::batch_split(answer.status, positions.len());
        self.resend_halves(calls, &positions, results).await
    }

    /// Sends the calls at `positions` again in two requests, in order, and fills their results.
    async fn resend_halves(
        &self,
        calls: &[TrackCall],
        positions: &[usize],
        mut results: Vec<Result<(), CioError>>,
    ) -> BatchResults {
        let (left, right) = positions.split_at(positions.len() / 2);
        for part in [left, right] {
            let sub: Vec<TrackCall> = part.iter().map(|&i| calls[i].clone()).collect();
            match self.split(sub).await {
                Ok(sub_results) => {
                    for (&i, result) in part.iter().zip(sub_results) {
                        results[i] = result;
                    }
                }
                Err(e) => {
                    for &i in part {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
        Ok(results)
    }

    fn pipelines_url(&self) -> Result<&str, CioError> {
        self.inner.urls.pipelines.as_deref().ok_or_else(|| {
            CioError::invalid("customerio.pipelines_url is not resolved: customerio.api is track")
        })
    }

    /// One Track v2 `/batch` request; see [`CustomerIo::batch`].
    async fn track_batch(
        &self,
        permit: Permit,
        calls: &[TrackCall],
        sendable: Sendable,
    ) -> BatchResults {
        // One v2 operation per call: request position -> input position.
        let Sendable {
            mut results,
            positions,
            body,
        } = sendable;
        if body.len() > MAX_V2_BATCH_BYTES {
            return Err(CioError::invalid(format!(
                "batch is {} bytes, Customer.io allows at most {MAX_V2_BATCH_BYTES}",
                body.len()
            )));
        }
        let users: std::collections::BTreeSet<&UserId> =
            positions.iter().map(|&i| &calls[i].user).collect();
        let url = format!("{}/batch", self.inner.urls.track_v2);
        let answer = self
            .execute_with(
                permit,
                Api::TrackV2,
                Method::POST,
                url,
                Some(body),
                users.len(),
            )
            .await?;
        let failed = op_errors(&answer.body, positions.len());
        let status = answer.status;
        if (200..300).contains(&status) {
            if status == 207 {
                for (index, entry) in failed {
                    results[positions[index]] = Err(CioError::Permanent {
                        status: 400,
                        body: entry.to_string(),
                    });
                }
            }
            return Ok(results);
        }
        // What is left is a 4xx about the request itself (the circuit took the rest).
        let resend: Vec<usize> = if failed.is_empty() {
            if positions.len() == 1 {
                results[positions[0]] = Err(CioError::Permanent {
                    status,
                    body: answer.body,
                });
                return Ok(results);
            }
            positions.clone()
        } else {
            let named: std::collections::BTreeMap<usize, Value> = failed.into_iter().collect();
            for (index, entry) in &named {
                results[positions[*index]] = Err(CioError::Permanent {
                    status,
                    body: entry.to_string(),
                });
            }
            (0..positions.len())
                .filter(|i| !named.contains_key(i))
                .map(|i| positions[i])
                .collect()
        };
        if resend.is_empty() {
            return Ok(results);
        }
        // Nothing of this request was accepted: send the innocent part again, split in two when
        // the answer named nobody, so the offending operation ends up alone.
        let parts: Vec<&[usize]> = if resend.len() == positions.len() {
            events::batch_split(status, resend.len());
            let (left, right) = resend.split_at(resend.len() / 2);
            vec![left, right]
        } else {
            vec![&resend[..]]
        };
        for part in parts {
            let sub: Vec<TrackCall> = part.iter().map(|&i| calls[i].clone()).collect();
            match self.split(sub).await {
                Ok(sub_results) => {
                    for (&i, result) in part.iter().zip(sub_results) {
                        results[i] = result;
                    }
                }
                Err(e) => {
                    for &i in part {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
        Ok(results)
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
            .execute(Api::App, Method::POST, url, Some(body), 1)
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

    /// `POST /v1/campaigns/{id}/triggers`: an API-triggered broadcast, at most one per
    /// `customerio.broadcast_interval_ms`.
    pub async fn trigger_broadcast(&self, trigger: &BroadcastTrigger) -> Result<(), CioError> {
        if self.inner.app_api_key.is_none() {
            return Err(CioError::invalid(
                "customerio.app_api_key is not configured; broadcasts need it",
            ));
        }
        let body =
            serde_json::to_vec(&trigger.body).map_err(|e| CioError::invalid(e.to_string()))?;
        let url = format!("{}{}", self.inner.urls.app, wire::broadcast_path(trigger));
        self.execute(Api::Broadcast, Method::POST, url, Some(body), 1)
            .await?
            .success()
            .map(drop)
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
        anonymous_id: &UserId,
        event: &Event,
        id: Option<ulid::Ulid>,
    ) -> Result<(), CioError> {
        let call = TrackCall {
            person: PersonRef::anonymous(anonymous_id),
            ..call(anonymous_id, Operation::Track(event.clone()), id)
        };
        self.perform(&call).await
    }

    pub async fn page(
        &self,
        user: &UserId,
        page: &View,
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
        self.execute(Api::TrackV1, request.method, url, body, 1)
            .await?
            .success()
            .map(drop)
    }

    fn circuit(&self, api: Api) -> &Arc<Circuit> {
        match api {
            Api::TrackV1 | Api::TrackV2 => &self.inner.track_circuit,
            Api::App | Api::Broadcast => &self.inner.app_circuit,
            Api::Pipelines => &self.inner.pipelines_circuit,
        }
    }

    fn budget(&self, api: Api) -> &Budget {
        match api {
            Api::TrackV1 | Api::TrackV2 => &self.inner.track_budget,
            Api::App => &self.inner.app_budget,
            Api::Broadcast => &self.inner.broadcast_budget,
            Api::Pipelines => &self.inner.pipelines_budget,
        }
    }

    /// Refuses (`Invalid`) a request whose API has no credentials configured.
    fn check_credentials(&self, api: Api) -> Result<(), CioError> {
        let inner = &self.inner;
        let missing = match api {
            Api::TrackV1 | Api::TrackV2 => inner.track_credentials.is_none(),
            Api::App | Api::Broadcast => inner.app_api_key.is_none(),
            Api::Pipelines => inner.pipelines_api_key.is_none(),
        };
        if !missing {
            return Ok(());
        }
        Err(CioError::invalid(match api {
            Api::TrackV1 | Api::TrackV2 => {
                "customerio.site_id and customerio.api_key are not configured; manual segments \
                 are Track API calls and need them"
            }
            Api::App | Api::Broadcast => "customerio.app_api_key is not configured",
            Api::Pipelines => "customerio.pipelines_api_key is not configured",
        }))
    }

    async fn permit(&self, api: Api) -> Result<Permit, CioError> {
        match CANCEL.try_with(CancellationToken::clone) {
            Ok(cancel) => tokio::select! {
                permit = self.wait_for_permit(api) => permit,
                () = cancel.cancelled() => Err(CioError::cancelled()),
            },
            Err(_) => self.wait_for_permit(api).await,
        }
    }

    async fn wait_for_permit(&self, api: Api) -> Result<Permit, CioError> {
        let circuit = self.circuit(api);
        let Some(pass) = circuit.admit().await else {
            let reason = circuit
                .reason()
                .unwrap_or_else(|| format!("the {} circuit was open", api.family()));
            return Err(CioError::workspace(reason, None, None));
        };
        self.budget(api).acquire().await;
        Ok(Permit { pass })
    }

    /// Passes the circuit, spends the budget, sends, and reads the whole answer. `Err` when no
    /// response came or the answer is the workspace's failure or a retryable one; `users` is
    /// how many people the request is about (a failure across users is the workspace's).
    async fn execute(
        &self,
        api: Api,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        users: usize,
    ) -> Result<Answer, CioError> {
        let permit = self.permit(api).await?;
        self.execute_with(permit, api, method, url, body, users)
            .await
    }

    /// [`CustomerIo::execute`] with the permit already held.
    async fn execute_with(
        &self,
        permit: Permit,
        api: Api,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        users: usize,
    ) -> Result<Answer, CioError> {
        // Refused before sending: the permit's pass is dropped without a verdict.
        self.check_credentials(api)?;
        let path = url::Url::parse(&url).map_or_else(|_| url.clone(), |u| u.path().to_string());
        let result = self.send_request(api, method, url, body).await;
        self.judge(permit.pass, api, &path, result, users)
    }

    /// Tells the workspace's failures from the request's: settles the circuit and the budget.
    fn judge(
        &self,
        pass: Pass,
        api: Api,
        path: &str,
        result: Result<Answer, CioError>,
        users: usize,
    ) -> Result<Answer, CioError> {
        let budget = self.budget(api);
        let (verdict, error) = match result {
            Err(e) => (transient(users, e.to_string()), e),
            Ok(answer) => {
                let status = answer.status;
                if status != 429 {
                    budget.on_success();
                }
                match classify(api, path, status) {
                    Class::Request => {
                        pass.settle(Verdict::Healthy);
                        return Ok(answer);
                    }
                    Class::RateLimited => {
                        let wait = error::retry_after(&answer.headers);
                        budget.on_throttled(wait);
                        pass.settle(Verdict::Neutral);
                        return Err(CioError::workspace(
                            format!("rate limited: {} answered 429", api.family()),
                            Some(429),
                            wait,
                        ));
                    }
                    Class::Workspace(reason) => {
                        let location = answer
                            .headers
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .map(|l| format!(" (to {l})"))
                            .unwrap_or_default();
                        let reason = format!("{reason}{location}");
                        pass.settle(Verdict::Workspace(reason.clone()));
                        return Err(CioError::workspace(reason, Some(status), None));
                    }
                    Class::Transient => {
                        let e = CioError::from_response(status, &answer.headers, answer.body);
                        (transient(users, e.to_string()), e)
                    }
                }
            }
        };
        let reason = match &verdict {
            Verdict::Workspace(r) | Verdict::Transient(r) => r.clone(),
            _ => String::new(),
        };
        match pass.settle(verdict) {
            Blame::Workspace => Err(CioError::workspace(
                reason,
                error.status(),
                error.retry_after(),
            )),
            Blame::Message => Err(error),
        }
    }

    /// Sends and reads the whole answer; the caller holds the permit.
    async fn send_request(
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
                let (site_id, api_key) = match &inner.track_credentials {
                    Some((site_id, api_key)) => (site_id.as_str(), Some(api_key)),
                    None => ("", None),
                };
                builder = builder.basic_auth(site_id, api_key);
            }
            Api::App | Api::Broadcast => {
                let key = inner.app_api_key.as_deref().unwrap_or_default();
                builder = builder.bearer_auth(key);
            }
            Api::Pipelines => {
                // "basic authentication with your API key as the username and a blank
                // password"; strict mode turns a validation failure from a 200 into a 400.
                let key = inner.pipelines_api_key.as_deref().unwrap_or_default();
                builder = builder
                    .basic_auth(key, Some(""))
                    .header("X-Strict-Mode", HeaderValue::from_static("1"));
            }
        }
        if let Some(body) = body {
            builder = builder
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }
        // A client span per request, named by its API (OpenTelemetry's HTTP conventions).
        let span = tracing::info_span!(
            "customerio",
            "otel.name" = format!("{method} customerio.{}", api.as_str()),
            "otel.kind" = "client",
            "http.request.method" = %method,
            "url.full" = %url,
            "http.response.status_code" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
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
        .instrument(span.clone())
        .await;
        match &result {
            Ok(answer) => span.record("http.response.status_code", answer.status),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        let elapsed = started.elapsed();
        let status_label = match &result {
            Ok(answer) => answer.status.to_string(),
            Err(_) => "error".to_string(),
        };
        let path = url::Url::parse(&url).map_or_else(|_| url.clone(), |u| u.path().to_string());
        events::customerio_request(api.as_str(), &method, &path, &status_label, elapsed);
        result.map_err(|e| CioError::from_transport(&e))
    }
}

/// What an answer's status says, before the body is read for per-operation errors.
#[derive(Debug, PartialEq)]
enum Class {
    /// About the request: 2xx, or a 4xx that is the request's own fault.
    Request,
    RateLimited,
    /// The workspace fails whatever is sent.
    Workspace(String),
    /// 408, 5xx: the request's or the workspace's, depending on what else fails.
    Transient,
}

fn classify(api: Api, path: &str, status: u16) -> Class {
    match status {
        200..=299 => Class::Request,
        429 => Class::RateLimited,
        300..=399 => Class::Workspace(format!(
            "wrong region configured (customerio.region): Customer.io answered {status} redirecting"
        )),
        401 => Class::Workspace(format!(
            "Customer.io refused the {} credentials (401)",
            api.family()
        )),
        // "Requests sent to a workspace without the in-app capability return 403" (likewise
        // SMS and push): the channel is off for the whole workspace.
        403 if api == Api::App
            && [
                "/send/sms",
                "/send/push",
                "/send/in_app",
                "/send/inbox_message",
            ]
            .iter()
            .any(|channel| path.ends_with(channel)) =>
        {
            Class::Workspace(format!(
                "the channel of {path} is not enabled for the workspace (403)"
            ))
        }
        s if is_retryable_status(s) => Class::Transient,
        _ => Class::Request,
    }
}

/// A 5xx, timeout or connection error: the workspace's at once when the request was about
/// several people, else counted toward the circuit's threshold.
fn transient(users: usize, reason: String) -> Verdict {
    if users > 1 {
        Verdict::Workspace(format!("a request for {users} users failed: {reason}"))
    } else {
        Verdict::Transient(reason)
    }
}

fn call(user: &UserId, operation: Operation, event_id: Option<ulid::Ulid>) -> TrackCall {
    TrackCall {
        event_id,
        ..TrackCall::new(user.clone(), operation)
    }
}

/// `{"batch":[...]}` around calls already serialized: what is measured is what is sent.
/// A call encoded for a batch body (its parts: one for Track v2, one or more Pipelines calls),
/// or why it cannot be sent.
pub struct EncodedCall(Result<Vec<Vec<u8>>, CioError>);

impl EncodedCall {
    /// Bytes it takes in a batch body (0 if it cannot be sent: it is refused, not sent).
    pub fn size(&self) -> usize {
        self.0.as_ref().map_or(0, |parts| {
            parts.iter().map(Vec::len).sum::<usize>() + parts.len().saturating_sub(1)
        })
    }
}

/// What of a batch's calls goes into the request, and its body.
struct Sendable {
    /// Each call's result so far: its error, or `Ok` while it is sent.
    results: Vec<Result<(), CioError>>,
    /// The input positions the request carries.
    positions: Vec<usize>,
    body: Vec<u8>,
}

impl Sendable {
    fn of(encoded: Vec<EncodedCall>) -> Self {
        let mut results = Vec::with_capacity(encoded.len());
        let mut positions = Vec::with_capacity(encoded.len());
        let mut parts = Vec::with_capacity(encoded.len());
        for (i, EncodedCall(call)) in encoded.into_iter().enumerate() {
            match call {
                Ok(call_parts) => {
                    results.push(Ok(()));
                    parts.extend(call_parts);
                    positions.push(i);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        Self {
            results,
            positions,
            body: batch_body(&parts),
        }
    }
}

fn batch_body(calls: &[Vec<u8>]) -> Vec<u8> {
    let size = calls.iter().map(Vec::len).sum::<usize>() + calls.len() + 12;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(br#"{"batch":["#);
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(call);
    }
    body.extend_from_slice(b"]}");
    body
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
