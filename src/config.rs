//! Configuration (docs/reference.md §3): layered files, environment overrides, validation
//! that names the key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A credential: never printed, never logged.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
    Sandbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    File,
    Postgres,
    Bigquery,
}

/// Which Track API the pipeline uses: v2 batches many users per request, v1 is one call each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackApi {
    V1,
    V2,
}

/// Which Customer.io API people and events are delivered through: the Track API, or the Data
/// Pipelines API (`cdp.customer.io/v1`). Sends, broadcasts and manual segments keep the App and
/// Track APIs either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryApi {
    #[default]
    Track,
    Pipelines,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub app: AppSettings,
    pub customerio: CustomerIoSettings,
    pub broker: BrokerSettings,
    pub http: HttpSettings,
    pub webhooks: WebhookSettings,
    pub warehouse: WarehouseSettings,
    pub delivery: DeliverySettings,
    pub admin: TokenSettings,
    pub ingest: IngestSettings,
    pub shutdown: ShutdownSettings,
    pub preferences: PreferencesSettings,
    pub user_source: UserSourceSettings,
    /// Template name -> Customer.io transactional message id, for the current environment.
    pub templates: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub environment: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerIoSettings {
    pub region: Region,
    #[serde(default)]
    pub api: DeliveryApi,
    pub track_url: Option<String>,
    pub app_url: Option<String>,
    /// The Pipelines API's base URL (`.../v1`), overriding the region's.
    #[serde(default)]
    pub pipelines_url: Option<String>,
    pub site_id: Option<Secret>,
    pub api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    /// The Pipelines API key: HTTP Basic user name, empty password.
    #[serde(default)]
    pub pipelines_api_key: Option<Secret>,
    pub track_rps: u32,
    pub app_rps: u32,
    /// Pipelines requests per second: "3000 requests per 3 seconds" is 1000.
    #[serde(default = "default_pipelines_rps")]
    pub pipelines_rps: u32,
    /// Least time between two API-triggered broadcasts ("1 request every 10 seconds"): their
    /// own budget, so broadcasts never spend the transactional one.
    pub broadcast_interval_ms: u64,
    pub timeout_ms: u64,
    /// Longest wait between two probes of an open circuit (a paused API).
    pub circuit_max_backoff_ms: u64,
    /// Consecutive failed requests (5xx, timeouts, connection errors) that open a circuit.
    pub circuit_failure_threshold: u32,
}

fn default_pipelines_rps() -> u32 {
    1000
}

/// The built-in defaults (the sandbox region, no credentials), for code that builds a client
/// without loading a configuration.
impl Default for CustomerIoSettings {
    fn default() -> Self {
        Self {
            region: Region::Sandbox,
            api: DeliveryApi::Track,
            track_url: None,
            app_url: None,
            pipelines_url: None,
            site_id: None,
            api_key: None,
            app_api_key: None,
            pipelines_api_key: None,
            track_rps: 100,
            app_rps: 100,
            pipelines_rps: default_pipelines_rps(),
            broadcast_interval_ms: 10_000,
            timeout_ms: 10_000,
            circuit_max_backoff_ms: 60_000,
            circuit_failure_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub url: Secret,
    pub partitions: u16,
    pub prefetch: u16,
    /// AMQP heartbeat asked for (`?heartbeat=` in an endpoint's URL wins); 0 = off.
    pub heartbeat_secs: u16,
    /// How long one endpoint may take to connect before the next is tried.
    pub connect_timeout_ms: u64,
    pub partitioner: crate::broker::partitioner::Partitioner,
    /// A durable queue bound to `customerio.processed`, declared when set.
    pub processed_queue: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// When set, `/admin/*`, `/metrics` and `/openapi.json` are served here only.
    pub admin_addr: Option<SocketAddr>,
    /// How long a client may take to send a request's head (actix `client_request_timeout`).
    pub client_request_timeout_ms: u64,
    /// How long a closing connection may take to shut down (actix `client_disconnect_timeout`).
    pub client_disconnect_timeout_ms: u64,
    /// How long a client may take to send a whole request body.
    pub body_timeout_ms: u64,
    /// Open connections per worker (the server runs 2); more wait to be accepted.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub signing_secrets: Vec<Secret>,
    pub tolerance_secs: u64,
    /// `<object_type>.<metric>` (with `*` for any) -> action (`mark_bounced`, `unsubscribe`,
    /// `unsuppress`, `suppress`, `none`).
    pub rules: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSettings {
    pub sink: SinkKind,
    pub path: PathBuf,
    pub database_url: Option<Secret>,
    pub batch_size: usize,
    pub flush_ms: u64,
    pub rotate_bytes: u64,
    pub bigquery: BigQuerySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BigQuerySettings {
    pub base_url: String,
    pub project: Option<String>,
    pub dataset: Option<String>,
    pub table: String,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub max_attempts: u32,
    /// Returns to the queue (the broker's delivery count) after which a message that never
    /// reached an outcome is dead-lettered: bounds a message that keeps killing its consumer.
    pub max_redeliveries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub track_api: TrackApi,
    pub batch_max_ops: usize,
    pub batch_linger_ms: u64,
    pub max_in_flight_requests: usize,
    pub dedup_window: usize,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub token: Option<Secret>,
    /// Largest request body of the inbound Pipelines API (`/v1/batch`, `/v1/track`, ...): 413
    /// above.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesSettings {
    /// `sqlite://...` or `postgres://...`; defaults to SQLite under `app.data_dir`.
    pub database_url: Option<Secret>,
    /// Channel (`email`, `push`, `sms`, `in_app`) -> Customer.io subscription topic id: synced
    /// both ways as `cio_subscription_preferences` topics besides the `*_opt_in` attributes.
    #[serde(default)]
    pub subscription_topics: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSourceSettings {
    pub database_url: Option<Secret>,
    /// Returns one row for `$1` = user id; columns become attributes.
    pub query: Option<String>,
}

const DEFAULTS: &str = r#"
[app]
environment = "development"
data_dir = "./data"

[customerio]
region = "sandbox"
track_rps = 100
app_rps = 100
broadcast_interval_ms = 10000
timeout_ms = 10000
circuit_max_backoff_ms = 60000
circuit_failure_threshold = 3

[broker]
url = "memory://"
partitions = 8
prefetch = 500
heartbeat_secs = 10
connect_timeout_ms = 5000
partitioner = "auto"

[http]
addr = "127.0.0.1:8080"
client_request_timeout_ms = 5000
client_disconnect_timeout_ms = 1000
body_timeout_ms = 30000
max_connections = 1024

[webhooks]
signing_secrets = []
tolerance_secs = 604800

[warehouse]
sink = "file"
path = "./data/warehouse"
batch_size = 500
flush_ms = 1000
rotate_bytes = 67108864

[warehouse.bigquery]
base_url = "https://bigquery.googleapis.com/bigquery/v2"
table = "delivery_events"

[delivery]
max_attempts = 10
max_redeliveries = 100
backoff_base_ms = 200
backoff_max_ms = 30000
track_api = "v2"
batch_max_ops = 1000
batch_linger_ms = 5
max_in_flight_requests = 32
dedup_window = 100000

[admin]
[ingest]
max_body_bytes = 1048576

[shutdown]
drain_secs = 25

[preferences]
[user_source]
[templates]
"#;

/// What the gateway does about reporting events unless `webhooks.rules` says otherwise.
pub use crate::domain::webhook::DEFAULT_RULES as DEFAULT_WEBHOOK_RULES;

/// Conventional secret names and the keys they fill.
const CONVENTIONAL_ENV: [(&str, &str); 7] = [
    ("CUSTOMERIO_SITE_ID", "customerio.site_id"),
    ("CUSTOMERIO_API_KEY", "customerio.api_key"),
    ("CUSTOMERIO_APP_API_KEY", "customerio.app_api_key"),
    (
        "CUSTOMERIO_PIPELINES_API_KEY",
        "customerio.pipelines_api_key",
    ),
    ("AMQP_URL", "broker.url"),
    ("DATABASE_URL", "preferences.database_url"),
    // The postgres warehouse sink's too, so `check-config` shows what the sink will use.
    ("DATABASE_URL", "warehouse.database_url"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// More than one problem, each on a line of its own.
    #[error("configuration has {} problems:\n{}", .0.len(), lines(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// None for no problem, the problem itself for one, [`ConfigError::Several`] for more.
    fn of(mut problems: Vec<ConfigError>) -> Option<Self> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(Self::Several(problems)),
        }
    }
}

fn lines(problems: &[ConfigError]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    lines.join("\n")
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Problems reported in one run at most: past that, the rest are likely the same mistake.
const MAX_PROBLEMS: usize = 50;

/// Deserializes the merged layers, naming every key that does not fit (unknown, or of the
/// wrong type) instead of the first only: each is set aside (an unknown key dropped, a known
/// one given its default) and the rest tried again; then what validation finds in the rest.
fn deserialize_every_key(
    merged: config::Config,
    environment: &str,
) -> Result<Settings, Vec<ConfigError>> {
    let mut tree: config::Map<String, config::Value> =
        merged.try_deserialize().map_err(|e| vec![e.into()])?;
    let defaults: config::Map<String, config::Value> = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| vec![e.into()])?;
    let mut found = Vec::new();
    while found.len() < MAX_PROBLEMS {
        let value = config::Value::new(None, tree.clone());
        let error = match serde_path_to_error::deserialize::<_, Settings>(value) {
            Ok(settings) => {
                found.extend(settings.problems(environment));
                if found.is_empty() {
                    return Ok(settings);
                }
                break;
            }
            Err(error) => error,
        };
        let key = error.path().to_string();
        let reason = error.into_inner().to_string();
        // The path is named once, by the key.
        let reason = match reason.rsplit_once(" for key `") {
            Some((reason, _)) => reason.to_string(),
            None => reason,
        };
        let set_aside = match lookup(&defaults, &key) {
            Some(default) => replace_key(&mut tree, &key, default.clone()),
            None => remove_key(&mut tree, &key),
        };
        found.push(invalid(&key, reason));
        if !set_aside {
            break;
        }
    }
    Err(found)
}

type Tree = config::Map<String, config::Value>;

/// The value at `a.b.c`, if there is one.
fn lookup<'t>(tree: &'t Tree, key: &str) -> Option<&'t config::Value> {
    match key.split_once('.') {
        None => tree.get(key),
        Some((section, rest)) => match &tree.get(section)?.kind {
            config::ValueKind::Table(inner) => lookup(inner, rest),
            _ => None,
        },
    }
}

/// The table holding `a.b.c`, and the last segment `c`.
fn parent_of<'t>(tree: &'t mut Tree, key: &'t str) -> Option<(&'t mut Tree, &'t str)> {
    match key.split_once('.') {
        None => Some((tree, key)),
        Some((section, rest)) => match &mut tree.get_mut(section)?.kind {
            config::ValueKind::Table(inner) => parent_of(inner, rest),
            _ => None,
        },
    }
}

/// Removes `a.b.c` from the tree; false if there is no such key.
fn remove_key(tree: &mut Tree, key: &str) -> bool {
    parent_of(tree, key).is_some_and(|(table, last)| table.remove(last).is_some())
}

/// Sets `a.b.c`, which exists, to `value`; false if there is no such key.
fn replace_key(tree: &mut Tree, key: &str, value: config::Value) -> bool {
    parent_of(tree, key)
        .is_some_and(|(table, last)| table.insert(last.to_string(), value).is_some())
}

impl Settings {
    /// What is valid but costs users data, for `check-config` and `serve` to say.
    pub fn warnings(&self) -> Vec<String> {
        self.webhooks
            .rules
            .iter()
            .filter(|(_, action)| action.as_str() == "suppress")
            .map(|(pattern, _)| {
                format!(
                    "webhooks.rules: {pattern:?} -> \"suppress\" deletes the person's profile in \
                     Customer.io for good (\"you cannot recover a profile after you suppress it\"); \
                     \"unsubscribe\" or \"mark_bounced\" stop or mark messaging without losing data"
                )
            })
            .collect()
    }

    /// Loads the layers of docs/reference.md §3 from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(Path::new("config"), file, &env)
    }

    /// Loads with an explicit config directory and environment, for tests.
    pub fn load_from(
        dir: &Path,
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let environment = env
            .get("GATEWAY_ENV")
            .cloned()
            .unwrap_or_else(|| "development".into());
        // GATEWAY_ENV names the environment; files may still set app.environment themselves.
        let environment_layer = config::Config::builder()
            .set_override("app.environment", environment.clone())?
            .build()?;
        let default_rules: config::Map<String, String> = DEFAULT_WEBHOOK_RULES
            .iter()
            .map(|(pattern, action)| (pattern.to_string(), action.to_string()))
            .collect();
        let mut builder = config::Config::builder()
            .set_default("webhooks.rules", default_rules)?
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(environment_layer)
            .add_source(config::File::from(dir.join("default.toml")).required(false))
            .add_source(
                config::File::from(dir.join(format!("{environment}.toml"))).required(false),
            );
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        // Conventional secret names sit below GATEWAY__ variables, above every file.
        let mut conventional = config::Config::builder();
        for (var, key) in CONVENTIONAL_ENV {
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                conventional = conventional.set_override(key, value.clone())?;
            }
        }
        if let Some(secrets) = env
            .get("CUSTOMERIO_WEBHOOK_SECRET")
            .filter(|v| !v.is_empty())
        {
            let list: Vec<String> = secrets.split(',').map(|s| s.trim().to_string()).collect();
            conventional = conventional.set_override("webhooks.signing_secrets", list)?;
        }
        builder = builder.add_source(conventional.build()?);
        let gateway_env: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("GATEWAY__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("webhooks.signing_secrets")
                .source(Some(gateway_env)),
        );
        deserialize_every_key(builder.build()?, &environment)
            .map_err(|found| ConfigError::of(found).expect("a failure names its problems"))
    }

    /// What types cannot check: ranges, URLs, and what production refuses. Every problem, not
    /// only the first, so that one `check-config` run lists all there is to fix.
    fn problems(&self, environment: &str) -> Vec<ConfigError> {
        let mut found = Vec::new();
        let url = self.broker.url.expose();
        let amqp = |u: &str| u.starts_with("amqp://") || u.starts_with("amqps://");
        if !(url == "memory://" || url.split(',').map(str::trim).all(amqp)) {
            found.push(invalid(
                "broker.url",
                "must be memory://, or amqp:// / amqps:// endpoints, comma-separated",
            ));
        }
        if self.broker.partitions == 0 {
            found.push(invalid("broker.partitions", "must be at least 1"));
        }
        if self.broker.prefetch == 0 {
            found.push(invalid("broker.prefetch", "must be at least 1"));
        }
        if self.broker.connect_timeout_ms == 0 {
            found.push(invalid("broker.connect_timeout_ms", "must be at least 1"));
        }
        if let Some(queue) = &self.broker.processed_queue
            && (queue.is_empty() || queue.starts_with("amq."))
        {
            found.push(invalid(
                "broker.processed_queue",
                "must be a queue name (not empty, not starting with amq.)",
            ));
        }
        if self.customerio.track_rps == 0 {
            found.push(invalid("customerio.track_rps", "must be at least 1"));
        }
        if self.customerio.broadcast_interval_ms == 0 {
            found.push(invalid(
                "customerio.broadcast_interval_ms",
                "must be at least 1",
            ));
        }
        if self.customerio.app_rps == 0 {
            found.push(invalid("customerio.app_rps", "must be at least 1"));
        }
        if self.customerio.pipelines_rps == 0 {
            found.push(invalid("customerio.pipelines_rps", "must be at least 1"));
        }
        if self.customerio.timeout_ms == 0 {
            found.push(invalid("customerio.timeout_ms", "must be at least 1"));
        }
        for (key, value) in [
            ("customerio.track_url", &self.customerio.track_url),
            ("customerio.app_url", &self.customerio.app_url),
            ("customerio.pipelines_url", &self.customerio.pipelines_url),
        ] {
            if let Some(v) = value
                && let Err(e) = url::Url::parse(v)
            {
                found.push(invalid(key, format!("{v:?}: {e}")));
            }
        }
        if self.ingest.max_body_bytes == 0 {
            found.push(invalid("ingest.max_body_bytes", "must be at least 1"));
        }
        if self.delivery.max_attempts == 0 {
            found.push(invalid("delivery.max_attempts", "must be at least 1"));
        }
        if self.delivery.batch_max_ops == 0 {
            found.push(invalid("delivery.batch_max_ops", "must be at least 1"));
        }
        if self.delivery.max_in_flight_requests == 0 {
            found.push(invalid(
                "delivery.max_in_flight_requests",
                "must be at least 1",
            ));
        }
        if self.delivery.backoff_base_ms > self.delivery.backoff_max_ms {
            found.push(invalid(
                "delivery.backoff_base_ms",
                "must not exceed delivery.backoff_max_ms",
            ));
        }
        for (key, value) in [
            (
                "http.client_request_timeout_ms",
                self.http.client_request_timeout_ms,
            ),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
        ] {
            if value == 0 {
                found.push(invalid(key, "must be at least 1"));
            }
        }
        if self.http.admin_addr == Some(self.http.addr) && self.http.addr.port() != 0 {
            found.push(invalid("http.admin_addr", "must differ from http.addr"));
        }
        if self.warehouse.batch_size == 0 {
            found.push(invalid("warehouse.batch_size", "must be at least 1"));
        }
        for (pattern, action) in &self.webhooks.rules {
            if crate::domain::webhook::Action::parse(action).is_none() {
                found.push(invalid(
                    "webhooks.rules",
                    format!(
                        "{pattern:?} -> {action:?}: action must be one of {}",
                        crate::domain::webhook::Action::NAMES
                    ),
                ));
            }
        }
        if let Err(e) = crate::preferences::TopicMap::parse(&self.preferences.subscription_topics) {
            found.push(invalid("preferences.subscription_topics", e));
        }
        let outside_sandbox = self.customerio.region != Region::Sandbox;
        match self.customerio.api {
            DeliveryApi::Track
                if outside_sandbox
                    && (self.customerio.site_id.is_none() || self.customerio.api_key.is_none()) =>
            {
                found.push(invalid(
                    "customerio.site_id",
                    "site_id and api_key are required outside the sandbox region",
                ));
            }
            DeliveryApi::Pipelines
                if outside_sandbox && self.customerio.pipelines_api_key.is_none() =>
            {
                found.push(invalid(
                    "customerio.pipelines_api_key",
                    "is required when customerio.api is pipelines (or CUSTOMERIO_PIPELINES_API_KEY)",
                ));
            }
            _ => {}
        }
        found.extend(self.open_route_problems());
        if environment == "production" {
            if self.is_memory_broker() {
                found.push(invalid(
                    "broker.url",
                    "production refuses the in-process broker; set AMQP_URL",
                ));
            }
            if self.customerio.region == Region::Sandbox {
                found.push(invalid(
                    "customerio.region",
                    "production refuses the sandbox; set us or eu",
                ));
            }
        }
        found
    }

    /// Routes that local mode leaves unauthenticated are allowed in development only: a
    /// sidecar proxy (Envoy, Istio) connects from loopback, and the embedded sandbox's
    /// `/sandbox/requests` (recorded payloads) and `/sandbox/faults` have no auth at all.
    fn open_route_problems(&self) -> Vec<ConfigError> {
        let mut found = Vec::new();
        if self.is_development() {
            return found;
        }
        let no_token = self
            .ingest
            .token
            .as_ref()
            .is_none_or(|t| t.expose().is_empty());
        if self.is_memory_broker() && no_token {
            found.push(invalid(
                "ingest.token",
                "required with broker.url = memory:// outside app.environment = development \
                 (without it /v1/events and the preference routes are open to loopback peers)",
            ));
        }
        if self.runs_embedded_sandbox() {
            found.push(invalid(
                "customerio.region",
                "the embedded sandbox (unauthenticated /sandbox/requests and /sandbox/faults) \
                 runs only in app.environment = development; set us or eu, or point \
                 customerio.track_url at a sandbox of its own",
            ));
        }
        found
    }

    /// `app.environment = development`: where local mode's open routes are allowed.
    pub fn is_development(&self) -> bool {
        self.app.environment == "development"
    }

    /// In the sandbox region without a `customerio.track_url`, the gateway serves the sandbox
    /// itself, on its own HTTP server.
    pub fn runs_embedded_sandbox(&self) -> bool {
        self.customerio.region == Region::Sandbox && self.customerio.track_url.is_none()
    }

    pub fn is_memory_broker(&self) -> bool {
        self.broker.url.expose() == "memory://"
    }

    /// Local mode: nothing configured, everything in-process (docs/reference.md §2).
    pub fn is_local_mode(&self) -> bool {
        self.is_memory_broker()
    }

    /// Effective values, secrets masked: what `check-config` prints, as a TOML file the
    /// gateway would load, or as JSON.
    pub fn masked(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Toml => toml::to_string(self).unwrap_or_else(|e| format!("# {e}\n")),
            OutputFormat::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
        }
    }
}

/// How `check-config` prints the effective values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Toml,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(Path::new("/nonexistent"), None, &env(pairs))
    }

    #[test]
    fn a_rule_that_deletes_people_is_valid_but_warned_about() {
        let defaults = load(&[]).unwrap();
        assert!(defaults.warnings().is_empty(), "the defaults delete no one");
        assert_eq!(defaults.webhooks.rules["email.bounced"], "mark_bounced");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(
            &file,
            "[webhooks.rules]\n\"email.bounced\" = \"suppress\"\n",
        )
        .unwrap();
        let opted = Settings::load_from(Path::new("/nonexistent"), Some(&file), &env(&[])).unwrap();
        let warnings = opted.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("email.bounced") && warnings[0].contains("deletes"));
        std::fs::write(&file, "[webhooks.rules]\n\"email.bounced\" = \"delete\"\n").unwrap();
        let err = Settings::load_from(Path::new("/nonexistent"), Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("webhooks.rules") && err.contains("mark_bounced"),
            "{err}"
        );
        let err = load(&[("GATEWAY__PREFERENCES__SUBSCRIPTION_TOPICS__FAX", "3")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("preferences.subscription_topics"), "{err}");
    }

    #[test]
    fn defaults_are_local_mode() {
        let s = load(&[]).unwrap();
        assert!(s.is_local_mode());
        assert_eq!(s.customerio.region, Region::Sandbox);
        assert_eq!(s.broker.partitions, 8);
        assert_eq!(s.delivery.max_attempts, 10);
        assert_eq!(s.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.app.environment, "development");
    }

    #[test]
    fn env_overrides_and_conventional_names() {
        let s = load(&[
            ("GATEWAY__BROKER__PARTITIONS", "4"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("CUSTOMERIO_WEBHOOK_SECRET", "a,b"),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "7"),
        ])
        .unwrap();
        assert_eq!(s.broker.partitions, 4);
        assert_eq!(s.customerio.track_rps, 7);
        assert!(!s.is_local_mode());
        assert_eq!(s.webhooks.signing_secrets.len(), 2);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = load(&[("GATEWAY__CUSTOMERIO__TRACK_RPS", "many")]).unwrap_err();
        assert!(err.to_string().contains("track_rps"), "{err}");
        let err = load(&[("GATEWAY__BROKER__URL", "http://x")]).unwrap_err();
        assert!(err.to_string().contains("broker.url"), "{err}");
        let err = load(&[("GATEWAY__CUSTOMERIO__REGION", "us")]).unwrap_err();
        assert!(err.to_string().contains("customerio.site_id"), "{err}");
    }

    #[test]
    fn production_refuses_local_parts() {
        let err = load(&[("GATEWAY_ENV", "production")]).unwrap_err();
        assert!(err.to_string().contains("broker.url"), "{err}");
        let err = load(&[("GATEWAY_ENV", "production"), ("AMQP_URL", "amqp://h")]).unwrap_err();
        assert!(err.to_string().contains("customerio.region"), "{err}");
    }

    #[test]
    fn database_url_fills_the_warehouse_key_too() {
        let s = load(&[("DATABASE_URL", "postgres://h/db")]).unwrap();
        let url = s.warehouse.database_url.as_ref().map(Secret::expose);
        assert_eq!(url, Some("postgres://h/db"));
        let printed: toml::Table = s.masked(OutputFormat::Toml).parse().unwrap();
        assert_eq!(printed["warehouse"]["database_url"].as_str(), Some("***"));
        let s = load(&[
            ("DATABASE_URL", "postgres://h/db"),
            ("GATEWAY__WAREHOUSE__DATABASE_URL", "postgres://other/db"),
        ])
        .unwrap();
        let url = s.warehouse.database_url.as_ref().map(Secret::expose);
        assert_eq!(url, Some("postgres://other/db"));
    }

    #[test]
    fn open_routes_only_in_development() {
        let err = load(&[("GATEWAY_ENV", "staging")]).unwrap_err();
        assert!(err.to_string().contains("`ingest.token`"), "{err}");
        let err = load(&[("GATEWAY_ENV", "staging"), ("GATEWAY__INGEST__TOKEN", "t")]).unwrap_err();
        assert!(err.to_string().contains("`customerio.region`"), "{err}");
        let s = load(&[
            ("GATEWAY_ENV", "staging"),
            ("GATEWAY__INGEST__TOKEN", "t"),
            (
                "GATEWAY__CUSTOMERIO__TRACK_URL",
                "http://127.0.0.1:9/api/v1",
            ),
        ])
        .unwrap();
        assert!(!s.is_development() && !s.runs_embedded_sandbox());
        let s = load(&[]).unwrap();
        assert!(s.is_development() && s.runs_embedded_sandbox() && s.ingest.token.is_none());
    }

    #[test]
    fn gateway_variables_beat_conventional_names() {
        let s = load(&[
            ("AMQP_URL", "amqp://conventional"),
            ("GATEWAY__BROKER__URL", "amqp://explicit"),
            ("GATEWAY_ENV", "staging"),
            (
                "GATEWAY__CUSTOMERIO__TRACK_URL",
                "http://127.0.0.1:9/api/v1",
            ),
        ])
        .unwrap();
        assert_eq!(s.broker.url.expose(), "amqp://explicit");
        assert_eq!(s.app.environment, "staging");
    }

    #[test]
    fn files_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[broker]\npartitions = 3\nprefetch = 9\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("staging.toml"),
            "[broker]\npartitions = 5\n",
        )
        .unwrap();
        let extra = dir.path().join("extra.toml");
        std::fs::write(&extra, "[http]\naddr = \"0.0.0.0:9000\"\n").unwrap();
        let env = env(&[
            ("GATEWAY_ENV", "staging"),
            ("GATEWAY__INGEST__TOKEN", "t"),
            (
                "GATEWAY__CUSTOMERIO__TRACK_URL",
                "http://127.0.0.1:9/api/v1",
            ),
        ]);
        let s = Settings::load_from(dir.path(), Some(&extra), &env).unwrap();
        assert_eq!(s.broker.partitions, 5);
        assert_eq!(s.broker.prefetch, 9);
        assert_eq!(s.http.addr.port(), 9000);
        std::fs::write(dir.path().join("staging.toml"), "[broker]\nparitions = 5\n").unwrap();
        let err = Settings::load_from(dir.path(), None, &env).unwrap_err();
        assert!(err.to_string().contains("paritions"), "{err}");
    }

    /// The repository's own config files: sample templates only in development.
    #[test]
    fn sample_templates_ship_only_in_development() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let development = Settings::load_from(&dir, None, &env(&[])).unwrap();
        assert_eq!(development.templates["welcome"], 1);
        assert_eq!(development.templates["password_reset"], 2);
        // Outside development the open local routes and the embedded sandbox need these.
        let staging = Settings::load_from(
            &dir,
            None,
            &env(&[
                ("GATEWAY_ENV", "staging"),
                ("GATEWAY__INGEST__TOKEN", "t"),
                (
                    "GATEWAY__CUSTOMERIO__TRACK_URL",
                    "http://127.0.0.1:9/api/v1",
                ),
            ]),
        );
        assert!(staging.unwrap().templates.is_empty());
    }

    #[test]
    fn broker_defaults_and_the_processed_queue() {
        let s = load(&[]).unwrap();
        assert_eq!(s.broker.heartbeat_secs, 10);
        assert_eq!(s.broker.connect_timeout_ms, 5000);
        assert_eq!(
            s.broker.partitioner,
            crate::broker::partitioner::Partitioner::Auto
        );
        assert_eq!(s.broker.processed_queue, None);
        let s = load(&[
            ("GATEWAY__BROKER__PARTITIONER", "modulus-hash"),
            ("GATEWAY__BROKER__PROCESSED_QUEUE", "audit.processed"),
        ])
        .unwrap();
        assert_eq!(
            s.broker.partitioner,
            crate::broker::partitioner::Partitioner::ModulusHash
        );
        let builtin = load(&[
            ("GATEWAY__BROKER__PARTITIONER", "builtin"),
            ("GATEWAY__BROKER__URL", "amqp://127.0.0.1:5672/%2f"),
        ])
        .unwrap();
        assert!(crate::broker::Topology::for_settings(&builtin).has_intake());
        let topology = crate::broker::Topology::for_settings(&s);
        assert!(
            topology
                .queue_bindings
                .iter()
                .any(|b| b.source == crate::broker::topology::PROCESSED_EXCHANGE
                    && b.destination == "audit.processed")
        );
        let err = load(&[("GATEWAY__BROKER__PROCESSED_QUEUE", "amq.x")]).unwrap_err();
        assert!(err.to_string().contains("broker.processed_queue"), "{err}");
        let err = load(&[("GATEWAY__BROKER__PARTITIONER", "consistent")]).unwrap_err();
        assert!(err.to_string().contains("partitioner"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let s = load(&[
            ("CUSTOMERIO_API_KEY", "topsecret"),
            ("CUSTOMERIO_SITE_ID", "site"),
        ])
        .unwrap();
        for format in [OutputFormat::Toml, OutputFormat::Json] {
            let printed = s.masked(format);
            assert!(!printed.contains("topsecret"), "{printed}");
        }
        let json: serde_json::Value = serde_json::from_str(&s.masked(OutputFormat::Json)).unwrap();
        assert_eq!(json["customerio"]["api_key"], "***");
    }

    #[test]
    fn the_printed_toml_is_a_config_file_that_loads_the_same_values() {
        let s = load(&[
            ("GATEWAY__BROKER__PARTITIONS", "12"),
            ("GATEWAY__WEBHOOKS__SIGNING_SECRETS", "a,b"),
        ])
        .unwrap();
        let mut printed: toml::Table = s.masked(OutputFormat::Toml).parse().unwrap();
        // Secrets are printed masked: put the one that has a value back.
        printed["broker"]["url"] = "memory://".into();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, toml::to_string(&printed).unwrap()).unwrap();
        let again = Settings::load_from(Path::new("/nonexistent"), Some(&file), &env(&[])).unwrap();
        assert_eq!(
            again.masked(OutputFormat::Json),
            s.masked(OutputFormat::Json)
        );
        assert_eq!(again.broker.partitions, 12);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(&[
            ("GATEWAY__BROKER__PARTITONS", "8"),
            ("GATEWAY__BROKER__PREFETCH", "lots"),
            ("GATEWAY__DELIVERY__RETRIES", "3"),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "0"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for key in ["broker.partitons", "broker.prefetch", "delivery.retries"] {
            assert!(text.contains(&format!("`{key}`")), "{key} in {text}");
        }
        // The rest is validated too, with defaults in place of the keys set aside.
        assert!(text.contains("`customerio.track_rps`"), "{text}");
        assert!(
            matches!(&err, ConfigError::Several(p) if p.len() == 4),
            "{text}"
        );

        // Keys that deserialize but fail validation are all listed too.
        let err = load(&[
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "0"),
            ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "0"),
            ("GATEWAY__BROKER__URL", "http://nope"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "customerio.track_rps",
            "delivery.max_attempts",
            "broker.url",
        ] {
            assert!(text.contains(&format!("`{key}`")), "{key} in {text}");
        }
    }
}
