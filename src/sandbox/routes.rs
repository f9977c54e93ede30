//! The Customer.io paths: Track v1, Track v2, App API sends.
//!
//! Every request goes through the same steps, in this order: injected latency, read the body
//! (at most 1 MiB raw), credentials (401), request budget (429 + `Retry-After`), injected
//! failures (`fail_first`, `error_rate`), the documented size limit of the route (413), body
//! validation (400; per operation in a 207 for v2 batches), `fail_users`, and only then is
//! anything recorded. A request that fails records nothing (but a 207 records the operations
//! it accepted).

use super::faults::Injected;
use super::record::{Accepted, Counters};
use super::validate::{self, OpInfo, Rejection};
use super::{Sandbox, State};
use crate::domain::limits::{MAX_V2_BATCH_BYTES, MAX_V2_OPERATION_BYTES};
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use bytes::BytesMut;
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

/// Raw bodies beyond this are refused before parsing (413).
pub const MAX_RAW_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    TrackV1,
    TrackV2,
    App,
    Pipelines,
}

impl Api {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Api::TrackV1 => "track_v1",
            Api::TrackV2 => "track_v2",
            Api::App => "app",
            Api::Pipelines => "pipelines",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Identify,
    Delete,
    Event,
    AnonymousEvent,
    Suppress,
    Unsuppress,
    AddDevice,
    DeleteDevice,
    Merge,
    /// A manual segment's `add_customers` (true) or `remove_customers`.
    Segment(bool),
    Entity,
    /// `POST /v1/campaigns/{broadcast_id}/triggers`.
    Broadcast,
    Batch,
    Send(&'static str),
}

impl Route {
    fn api(self) -> Api {
        match self {
            Route::Entity | Route::Batch => Api::TrackV2,
            Route::Send(_) | Route::Broadcast => Api::App,
            _ => Api::TrackV1,
        }
    }
}

macro_rules! to {
    ($route:expr) => {
        |req: HttpRequest, body: web::Payload, sandbox: web::Data<Sandbox>| {
            handle($route, req, body, sandbox)
        }
    };
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig, sandbox: &Sandbox) {
    let data = web::Data::new(sandbox.clone());
    let resource = |path: &str| web::resource(path).app_data(data.clone());
    cfg.service(
        resource("/api/v1/customers/{id}")
            .route(web::put().to(to!(Route::Identify)))
            .route(web::delete().to(to!(Route::Delete))),
    )
    .service(resource("/api/v1/customers/{id}/events").route(web::post().to(to!(Route::Event))))
    .service(
        resource("/api/v1/customers/{id}/suppress").route(web::post().to(to!(Route::Suppress))),
    )
    .service(
        resource("/api/v1/customers/{id}/unsuppress").route(web::post().to(to!(Route::Unsuppress))),
    )
    .service(resource("/api/v1/customers/{id}/devices").route(web::put().to(to!(Route::AddDevice))))
    .service(
        resource("/api/v1/customers/{id}/devices/{token}")
            .route(web::delete().to(to!(Route::DeleteDevice))),
    )
    .service(resource("/api/v1/events").route(web::post().to(to!(Route::AnonymousEvent))))
    .service(
        resource("/api/v1/segments/{segment_id}/add_customers")
            .route(web::post().to(to!(Route::Segment(true)))),
    )
    .service(
        resource("/api/v1/segments/{segment_id}/remove_customers")
            .route(web::post().to(to!(Route::Segment(false)))),
    )
    .service(resource("/api/v1/merge_customers").route(web::post().to(to!(Route::Merge))))
    .service(resource("/api/v2/entity").route(web::post().to(to!(Route::Entity))))
    .service(resource("/api/v2/batch").route(web::post().to(to!(Route::Batch))))
    .service(resource("/v1/send/email").route(web::post().to(to!(Route::Send("email")))))
    .service(resource("/v1/send/push").route(web::post().to(to!(Route::Send("push")))))
    .service(resource("/v1/send/sms").route(web::post().to(to!(Route::Send("sms")))))
    .service(
        resource("/v1/campaigns/{broadcast_id}/triggers")
            .route(web::post().to(to!(Route::Broadcast))),
    )
    .service(resource("/v1/send/in_app").route(web::post().to(to!(Route::Send("in_app")))))
    .service(
        resource("/v1/send/inbox_message").route(web::post().to(to!(Route::Send("inbox_message")))),
    );
}

/// Why a request stops before (or instead of) being recorded.
enum Stop {
    Reject(Rejection),
    Inject(Injected),
    /// Over a documented rate: 429, retry after this many seconds.
    Throttle(u64),
}

impl From<Rejection> for Stop {
    fn from(r: Rejection) -> Self {
        Stop::Reject(r)
    }
}

enum Outcome {
    /// Record these operations; answer `200 {}`.
    Accept(Vec<Accepted>),
    /// Record some operations; answer `207` with the others' errors.
    Partial(Vec<Accepted>, Vec<Value>),
    /// Record the send; answer its receipt.
    Sent(Box<Accepted>, String, i64),
    /// Record the broadcast trigger; answer its id.
    Triggered(Box<Accepted>, u64),
}

/// The request as the recorder needs it.
struct Ctx<'a> {
    api: Api,
    req: &'a HttpRequest,
    state: &'a State,
}

impl Ctx<'_> {
    fn accepted(&self, info: OpInfo, body: Value) -> Accepted {
        Accepted {
            api: self.api.as_str(),
            method: self.req.method().to_string(),
            path: self.req.uri().path().to_string(),
            user: info.user,
            action: info.action,
            body,
            event_id: info.event_id,
            anonymous_id: info.anonymous_id,
            merges: info.merges,
            object: info.object,
            delivery_id: None,
        }
    }

    /// The person in the path, percent-decoded.
    fn path_user(&self) -> Result<String, Stop> {
        let id = self.segment("id")?;
        Ok(validate::path_identifier(&id)?)
    }

    fn segment(&self, name: &str) -> Result<String, Stop> {
        let raw = self.req.match_info().get(name).unwrap_or_default();
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| Stop::Reject(Rejection::invalid(name, "path is not valid UTF-8")))
    }

    /// `fail_users`: requests about this person fail with the configured status.
    fn fail_user(&self, user: &str) -> Result<(), Stop> {
        if self.state.faults.rejects_requests_of(user) {
            return Err(Stop::Reject(whole_request_rejected(user)));
        }
        match self.state.faults.for_user(user) {
            Some(injected) => Err(Stop::Inject(injected)),
            None => Ok(()),
        }
    }
}

/// `reject_requests_of`: a 400 for the whole request that names no operation.
fn whole_request_rejected(user: &str) -> Rejection {
    Rejection {
        status: 400,
        reason: "invalid",
        field: String::new(),
        message: format!("sandbox: every request about {user:?} is refused"),
    }
}

async fn handle(
    route: Route,
    req: HttpRequest,
    payload: web::Payload,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let state = &*sandbox.state;
    let api = route.api();
    arrive(state).await;
    let body = read_body(payload, MAX_RAW_BODY_BYTES).await;
    if let Some(response) = after_body(state, api, &req) {
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return reject(state, api, rejection),
    };
    let ctx = Ctx {
        api,
        req: &req,
        state,
    };
    let outcome = match route {
        Route::Entity => entity(&ctx, &body),
        Route::Batch => batch(&ctx, &body),
        Route::Send(channel) => send(&ctx, channel, &body),
        Route::Broadcast => broadcast(&ctx, &body),
        _ => track_v1(&ctx, route, &body),
    };
    match outcome {
        Ok(outcome) => finish(state, api, outcome),
        Err(Stop::Reject(rejection)) => reject(state, api, rejection),
        Err(Stop::Inject(injected)) => {
            Counters::add(&state.counters.injected_failures, 1);
            injected_response(api, injected)
        }
        Err(Stop::Throttle(seconds)) => throttled(state, api, seconds, "over the documented rate"),
    }
}

/// What every request goes through before its body is read: it is counted, and waits out the
/// injected latency.
pub(crate) async fn arrive(state: &State) {
    Counters::add(&state.counters.requests, 1);
    let latency = state.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// What every request goes through once its body is read, in order: an injected redirect or
/// outage, credentials (401), the request budget (429), injected failures. `Some` is the answer.
pub(crate) fn after_body(state: &State, api: Api, req: &HttpRequest) -> Option<HttpResponse> {
    if let Some(status) = state.faults.redirect() {
        Counters::add(&state.counters.injected_failures, 1);
        return Some(redirect(api, status, req.uri().path()));
    }
    if let Some(outage) = state.faults.outage() {
        Counters::add(&state.counters.injected_failures, 1);
        return Some(injected_response(api, outage));
    }
    if !state.authorized(api, req) {
        Counters::add(&state.counters.unauthorized, 1);
        return Some(error(
            api,
            StatusCode::UNAUTHORIZED,
            &Rejection {
                status: 401,
                reason: "unauthorized",
                field: String::new(),
                message: "Unauthorized request. Make sure that you provided the right credentials."
                    .into(),
            },
        ));
    }
    if let Err(seconds) = state.budget.check() {
        return Some(throttled(state, api, seconds, "over the request budget"));
    }
    if let Some(injected) = state.faults.inject() {
        Counters::add(&state.counters.injected_failures, 1);
        return Some(injected_response(api, injected));
    }
    None
}

fn track_v1(ctx: &Ctx<'_>, route: Route, body: &[u8]) -> Result<Outcome, Stop> {
    let op = match route {
        Route::Identify => {
            let user = ctx.path_user()?;
            let map = validate::object_body(body, true)?;
            validate::attributes("", &map)?;
            ctx.fail_user(&user)?;
            let info = OpInfo {
                merges: validate::merged_anonymous_id(Some(&map)),
                ..OpInfo::new(Some(user), "identify", None)
            };
            ctx.accepted(info, Value::Object(map))
        }
        Route::Event => {
            let user = ctx.path_user()?;
            let map = validate::object_body(body, false)?;
            let (action, id) = validate::v1_event(&map, false)?;
            ctx.fail_user(&user)?;
            ctx.accepted(OpInfo::new(Some(user), &action, id), Value::Object(map))
        }
        Route::AnonymousEvent => {
            let map = validate::object_body(body, false)?;
            let (action, id) = validate::v1_event(&map, true)?;
            let info = OpInfo {
                anonymous_id: map
                    .get("anonymous_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ..OpInfo::new(None, &action, id)
            };
            ctx.accepted(info, Value::Object(map))
        }
        Route::AddDevice => {
            let user = ctx.path_user()?;
            let map = validate::object_body(body, false)?;
            validate::v1_device(&map)?;
            ctx.fail_user(&user)?;
            ctx.accepted(
                OpInfo::new(Some(user), "add_device", None),
                Value::Object(map),
            )
        }
        Route::DeleteDevice => {
            let user = ctx.path_user()?;
            let token = ctx.segment("token")?;
            if token.is_empty() {
                return Err(Rejection::required("device_id").into());
            }
            ctx.fail_user(&user)?;
            ctx.accepted(OpInfo::new(Some(user), "delete_device", None), Value::Null)
        }
        Route::Merge => {
            let map = validate::object_body(body, false)?;
            let (primary, secondary) = validate::merge(&map)?;
            ctx.fail_user(&primary)?;
            ctx.fail_user(&secondary)?;
            ctx.accepted(
                OpInfo::new(Some(primary), "merge", None),
                Value::Object(map),
            )
        }
        Route::Delete | Route::Suppress | Route::Unsuppress => {
            let user = ctx.path_user()?;
            let action = match route {
                Route::Delete => "delete",
                Route::Suppress => "suppress",
                _ => "unsuppress",
            };
            ctx.fail_user(&user)?;
            ctx.accepted(OpInfo::new(Some(user), action, None), Value::Null)
        }
        Route::Segment(add) => return segment(ctx, add, body),
        Route::Entity | Route::Batch | Route::Send(_) | Route::Broadcast => {
            unreachable!("not a v1 route")
        }
    };
    Ok(Outcome::Accept(vec![op]))
}

/// `POST /segments/{segment_id}/add_customers` (or `remove_customers`) `?id_type=`: one record
/// per person in `ids` whose value fits `id_type`; Customer.io ignores the others.
fn segment(ctx: &Ctx<'_>, add: bool, body: &[u8]) -> Result<Outcome, Stop> {
    let segment_id = ctx.segment("segment_id")?;
    if !segment_id.parse::<u32>().is_ok_and(|id| id >= 1) {
        return Err(Rejection::invalid("segment_id", "segment_id must be an integer").into());
    }
    let id_type = query_value(ctx.req.query_string(), "id_type").unwrap_or_else(|| "id".into());
    let map = validate::object_body(body, false)?;
    let people = validate::segment_ids(&map, &id_type)?;
    let action = if add {
        "add_to_segment"
    } else {
        "remove_from_segment"
    };
    let mut ops = Vec::with_capacity(people.len());
    for person in people {
        ctx.fail_user(&person)?;
        let body = json!({"segment_id": segment_id, "id_type": id_type});
        ops.push(ctx.accepted(OpInfo::new(Some(person), action, None), body));
    }
    Ok(Outcome::Accept(ops))
}

/// One parameter of a query string, percent-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn parse_json(body: &[u8]) -> Result<Value, Stop> {
    serde_json::from_slice(body)
        .map_err(|e| Stop::Reject(Rejection::invalid("", format!("invalid JSON: {e}"))))
}

/// `/api/v2/entity`: one operation, at most 32 KB.
fn entity(ctx: &Ctx<'_>, body: &[u8]) -> Result<Outcome, Stop> {
    if body.len() > MAX_V2_OPERATION_BYTES {
        return Err(Rejection::too_large(
            "",
            format!(
                "request is {} bytes, /entity allows at most {MAX_V2_OPERATION_BYTES}",
                body.len()
            ),
        )
        .into());
    }
    let op = parse_json(body)?;
    let info = validate::v2_operation(&op)?;
    if let Some(user) = &info.user {
        ctx.fail_user(user)?;
    }
    Ok(Outcome::Accept(vec![ctx.accepted(info, op)]))
}

/// `/api/v2/batch`: at most 500 KB, each operation at most 32 KB. Invalid operations are
/// reported in a 207 by `batch_index` and the rest is accepted, as documented.
fn batch(ctx: &Ctx<'_>, body: &[u8]) -> Result<Outcome, Stop> {
    if body.len() > MAX_V2_BATCH_BYTES {
        return Err(Rejection::too_large(
            "",
            format!(
                "request is {} bytes, /batch allows at most {MAX_V2_BATCH_BYTES}",
                body.len()
            ),
        )
        .into());
    }
    let map = validate::object_body(body, false)?;
    let ops = match map.get("batch") {
        Some(Value::Array(ops)) => ops,
        None | Some(Value::Null) => return Err(Rejection::required("batch").into()),
        Some(_) => return Err(Rejection::invalid("batch", "batch must be an array").into()),
    };
    let mut accepted = Vec::with_capacity(ops.len());
    let mut errors = Vec::new();
    let mut injected_ops = 0;
    for (index, op) in ops.iter().enumerate() {
        let size = validate::json_len(op);
        let checked = if size > MAX_V2_OPERATION_BYTES {
            Err(Rejection::too_large(
                "",
                format!("operation is {size} bytes, at most {MAX_V2_OPERATION_BYTES} allowed"),
            ))
        } else {
            validate::v2_operation(op)
        };
        let info = match checked {
            Ok(info) => info,
            Err(rejection) => {
                errors.push(batch_error(index, &rejection));
                continue;
            }
        };
        if let Some(user) = info
            .user
            .as_deref()
            .filter(|u| ctx.state.faults.rejects_requests_of(u))
        {
            return Err(Stop::Reject(whole_request_rejected(user)));
        }
        if let Some(injected) = info
            .user
            .as_deref()
            .and_then(|u| ctx.state.faults.for_user(u))
        {
            if is_client_error(injected.status) {
                injected_ops += 1;
                let rejection = Rejection {
                    status: injected.status,
                    reason: "rejected",
                    field: "identifiers".into(),
                    message: format!(
                        "injected failure ({}) for {}",
                        injected.status,
                        info.user.as_deref().unwrap_or_default()
                    ),
                };
                errors.push(batch_error(index, &rejection));
                continue;
            }
            // A server-side failure is the whole request's, and nothing of it is kept.
            return Err(Stop::Inject(injected));
        }
        accepted.push(ctx.accepted(info, op.clone()));
    }
    if errors.is_empty() {
        return Ok(Outcome::Accept(accepted));
    }
    Counters::add(&ctx.state.counters.injected_failures, injected_ops);
    Counters::add(
        &ctx.state.counters.invalid,
        errors.len() as u64 - injected_ops,
    );
    Ok(Outcome::Partial(accepted, errors))
}

fn is_client_error(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
}

fn batch_error(index: usize, rejection: &Rejection) -> Value {
    json!({
        "batch_index": index,
        "reason": rejection.reason,
        "field": rejection.field,
        "message": rejection.message,
    })
}

/// `/v1/send/{email,push,sms}`.
fn send(ctx: &Ctx<'_>, channel: &'static str, body: &[u8]) -> Result<Outcome, Stop> {
    if ctx.state.faults.channel_disabled(channel) {
        return Err(Rejection {
            status: 403,
            reason: "forbidden",
            field: String::new(),
            message: format!("the {channel} channel is not enabled for this workspace"),
        }
        .into());
    }
    let map: Map<String, Value> = validate::object_body(body, false)?;
    let user = validate::send(channel, &map)?;
    ctx.fail_user(&user)?;
    let delivery_id = ulid::Ulid::new().to_string();
    let queued_at = chrono::Utc::now().timestamp();
    let mut op = ctx.accepted(
        OpInfo::new(Some(user), &format!("send_{channel}"), None),
        Value::Object(map),
    );
    op.delivery_id = Some(delivery_id.clone());
    Ok(Outcome::Sent(Box::new(op), delivery_id, queued_at))
}

fn finish(state: &State, api: Api, outcome: Outcome) -> HttpResponse {
    let record = |ops: Vec<Accepted>| {
        let n = ops.len() as u64;
        let duplicates = state.ledger.lock().accept_all(ops);
        Counters::add(&state.counters.accepted_ops, n);
        Counters::add(&state.counters.duplicates, duplicates as u64);
    };
    match outcome {
        Outcome::Accept(ops) => {
            record(ops);
            HttpResponse::Ok().json(json!({}))
        }
        Outcome::Partial(ops, errors) => {
            record(ops);
            HttpResponse::build(StatusCode::MULTI_STATUS).json(json!({ "errors": errors }))
        }
        Outcome::Sent(op, delivery_id, queued_at) => {
            debug_assert_eq!(api, Api::App);
            record(vec![*op]);
            HttpResponse::Ok().json(json!({"delivery_id": delivery_id, "queued_at": queued_at}))
        }
        Outcome::Triggered(op, id) => {
            record(vec![*op]);
            HttpResponse::Ok().json(json!({ "id": id }))
        }
    }
}

pub(crate) fn reject(state: &State, api: Api, rejection: Rejection) -> HttpResponse {
    let counter = match rejection.status {
        413 => &state.counters.too_large,
        // Only `Faults::disabled_channels` answers 403.
        403 => &state.counters.injected_failures,
        _ => &state.counters.invalid,
    };
    Counters::add(counter, 1);
    let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
    error(api, status, &rejection)
}

pub(crate) fn injected_response(api: Api, injected: Injected) -> HttpResponse {
    let status = StatusCode::from_u16(injected.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error(
        api,
        status,
        &Rejection {
            status: injected.status,
            reason: "injected",
            field: String::new(),
            message: format!("sandbox: injected failure ({})", injected.status),
        },
    );
    if let Some(seconds) = injected.retry_after_secs {
        set_retry_after(&mut response, seconds);
    }
    response
}

/// Customer.io-like error bodies. Track v1 documents `{"meta": {"errors": [..]}}` for most
/// routes and `{"meta": {"error": ".."}}` for merges, and the App API answers the latter; both
/// keys are sent so either reader finds its message. Track v2 documents `{"errors": [{"reason",
/// "field", "message"}]}`.
fn error(api: Api, status: StatusCode, rejection: &Rejection) -> HttpResponse {
    let body = match api {
        Api::TrackV2 => json!({"errors": [{
            "reason": rejection.reason,
            "field": rejection.field,
            "message": rejection.message,
        }]}),
        Api::Pipelines => {
            json!({"errors": [{"field": rejection.field, "message": rejection.message}]})
        }
        Api::TrackV1 | Api::App => json!({"meta": {
            "error": rejection.message,
            "errors": [rejection.message],
        }}),
    };
    HttpResponse::build(status).json(body)
}

/// What Customer.io answers a workspace of the other region: a redirect to its hosts.
fn redirect(api: Api, status: u16, path: &str) -> HttpResponse {
    let host = match api {
        Api::App => "https://api-eu.customer.io",
        Api::TrackV1 | Api::TrackV2 => "https://track-eu.customer.io",
        Api::Pipelines => "https://cdp-eu.customer.io",
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    HttpResponse::build(status)
        .insert_header((actix_web::http::header::LOCATION, format!("{host}{path}")))
        .finish()
}

/// A 429 with `Retry-After`, counted.
fn throttled(state: &State, api: Api, seconds: u64, why: &str) -> HttpResponse {
    Counters::add(&state.counters.rate_limited, 1);
    let mut response = error(
        api,
        StatusCode::TOO_MANY_REQUESTS,
        &Rejection {
            status: 429,
            reason: "rate_limited",
            field: String::new(),
            message: format!("Too many requests: {why}"),
        },
    );
    set_retry_after(&mut response, seconds);
    response
}

/// `POST /v1/campaigns/{broadcast_id}/triggers`: validated as documented, at most one per
/// `broadcast_interval` (a sooner one is a 429, and is not recorded); answers the trigger id.
fn broadcast(ctx: &Ctx<'_>, body: &[u8]) -> Result<Outcome, Stop> {
    let broadcast_id = ctx.segment("broadcast_id")?;
    if !broadcast_id.parse::<u32>().is_ok_and(|id| id >= 1) {
        return Err(Rejection::invalid("broadcast_id", "broadcast_id must be an integer").into());
    }
    let map = validate::object_body(body, true)?;
    validate::broadcast_trigger(&map)?;
    let id = {
        let mut last = ctx.state.broadcasts.lock();
        let now = std::time::Instant::now();
        if let Some(at) = last.0 {
            let since = now.duration_since(at);
            if since < ctx.state.broadcast_interval {
                let wait = (ctx.state.broadcast_interval - since).as_secs_f64().ceil() as u64;
                return Err(Stop::Throttle(wait.max(1)));
            }
        }
        *last = (Some(now), last.1 + 1);
        last.1
    };
    let op = ctx.accepted(
        OpInfo::new(None, "trigger_broadcast", None),
        json!({"broadcast_id": broadcast_id, "trigger": map}),
    );
    Ok(Outcome::Triggered(Box::new(op), id))
}

fn set_retry_after(response: &mut HttpResponse, seconds: u64) {
    if let Ok(value) = seconds.to_string().parse() {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
}

pub(crate) async fn read_body(
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, Rejection> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Rejection::invalid("", format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Rejection::too_large(
                "",
                format!("request body over {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl State {
    /// Basic `site_id:api_key` for Track, `Bearer <app key>` for the App API.
    fn authorized(&self, api: Api, req: &HttpRequest) -> bool {
        let Some(header) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, credentials)) = header.trim().split_once(' ') else {
            return false;
        };
        let credentials = credentials.trim();
        match api {
            Api::TrackV1 | Api::TrackV2 => {
                scheme.eq_ignore_ascii_case("basic")
                    && base64::engine::general_purpose::STANDARD
                        .decode(credentials)
                        .is_ok_and(|decoded| {
                            decoded == format!("{}:{}", self.site_id, self.api_key).as_bytes()
                        })
            }
            Api::App => scheme.eq_ignore_ascii_case("bearer") && credentials == self.app_api_key,
            // The key as the user name, a blank password.
            Api::Pipelines => {
                scheme.eq_ignore_ascii_case("basic")
                    && base64::engine::general_purpose::STANDARD
                        .decode(credentials)
                        .is_ok_and(|decoded| {
                            decoded == format!("{}:", self.pipelines_api_key).as_bytes()
                        })
            }
        }
    }
}
