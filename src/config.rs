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
    pub ingest: TokenSettings,
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
    pub track_url: Option<String>,
    pub app_url: Option<String>,
    pub site_id: Option<Secret>,
    pub api_key: Option<Secret>,
    pub app_api_key: Option<Secret>,
    pub track_rps: u32,
    pub app_rps: u32,
    pub timeout_ms: u64,
    /// Longest wait between two probes of an open circuit (a paused API).
    pub circuit_max_backoff_ms: u64,
    /// Consecutive failed requests (5xx, timeouts, connection errors) that open a circuit.
    pub circuit_failure_threshold: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub url: Secret,
    pub partitions: u16,
    pub prefetch: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub signing_secrets: Vec<Secret>,
    pub tolerance_secs: u64,
    /// `<object_type>.<metric>` (with `*` for any) -> action (`suppress`, `unsubscribe`, `none`).
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
pub struct ShutdownSettings {
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesSettings {
    /// `sqlite://...` or `postgres://...`; defaults to SQLite under `app.data_dir`.
    pub database_url: Option<Secret>,
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
timeout_ms = 10000
circuit_max_backoff_ms = 60000
circuit_failure_threshold = 3

[broker]
url = "memory://"
partitions = 8
prefetch = 500

[http]
addr = "127.0.0.1:8080"

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

[shutdown]
drain_secs = 25

[preferences]
[user_source]
[templates]
"#;

/// What the gateway does about reporting events unless `webhooks.rules` says otherwise.
pub const DEFAULT_WEBHOOK_RULES: [(&str, &str); 3] = [
    ("email.bounced", "suppress"),
    ("email.spammed", "suppress"),
    ("*.unsubscribed", "unsubscribe"),
];

/// Conventional secret names and the keys they fill.
const CONVENTIONAL_ENV: [(&str, &str); 5] = [
    ("CUSTOMERIO_SITE_ID", "customerio.site_id"),
    ("CUSTOMERIO_API_KEY", "customerio.api_key"),
    ("CUSTOMERIO_APP_API_KEY", "customerio.app_api_key"),
    ("AMQP_URL", "broker.url"),
    ("DATABASE_URL", "preferences.database_url"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Settings {
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
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate(&environment)?;
        Ok(settings)
    }

    /// Checks what types cannot: ranges, URLs, and what production refuses.
    fn validate(&self, environment: &str) -> Result<(), ConfigError> {
        let url = self.broker.url.expose();
        let amqp = |u: &str| u.starts_with("amqp://") || u.starts_with("amqps://");
        if !(url == "memory://" || url.split(',').map(str::trim).all(amqp)) {
            return Err(invalid(
                "broker.url",
                "must be memory://, or amqp:// / amqps:// endpoints, comma-separated",
            ));
        }
        if self.broker.partitions == 0 {
            return Err(invalid("broker.partitions", "must be at least 1"));
        }
        if self.broker.prefetch == 0 {
            return Err(invalid("broker.prefetch", "must be at least 1"));
        }
        if self.customerio.track_rps == 0 {
            return Err(invalid("customerio.track_rps", "must be at least 1"));
        }
        if self.customerio.app_rps == 0 {
            return Err(invalid("customerio.app_rps", "must be at least 1"));
        }
        if self.customerio.timeout_ms == 0 {
            return Err(invalid("customerio.timeout_ms", "must be at least 1"));
        }
        for (key, value) in [
            ("customerio.track_url", &self.customerio.track_url),
            ("customerio.app_url", &self.customerio.app_url),
        ] {
            if let Some(v) = value {
                url::Url::parse(v).map_err(|e| invalid(key_name(key), format!("{v:?}: {e}")))?;
            }
        }
        if self.delivery.max_attempts == 0 {
            return Err(invalid("delivery.max_attempts", "must be at least 1"));
        }
        if self.delivery.batch_max_ops == 0 {
            return Err(invalid("delivery.batch_max_ops", "must be at least 1"));
        }
        if self.delivery.max_in_flight_requests == 0 {
            return Err(invalid(
                "delivery.max_in_flight_requests",
                "must be at least 1",
            ));
        }
        if self.delivery.backoff_base_ms > self.delivery.backoff_max_ms {
            return Err(invalid(
                "delivery.backoff_base_ms",
                "must not exceed delivery.backoff_max_ms",
            ));
        }
        if self.warehouse.batch_size == 0 {
            return Err(invalid("warehouse.batch_size", "must be at least 1"));
        }
        for (pattern, action) in &self.webhooks.rules {
            if !matches!(
                action.as_str(),
                "suppress" | "unsuppress" | "unsubscribe" | "none"
            ) {
                return Err(invalid(
                    "webhooks.rules",
                    format!(
                        "{pattern:?} -> {action:?}: action must be suppress, unsuppress, unsubscribe or none"
                    ),
                ));
            }
        }
        if self.customerio.region != Region::Sandbox
            && (self.customerio.site_id.is_none() || self.customerio.api_key.is_none())
        {
            return Err(invalid(
                "customerio.site_id",
                "site_id and api_key are required outside the sandbox region",
            ));
        }
        if environment == "production" {
            if self.is_memory_broker() {
                return Err(invalid(
                    "broker.url",
                    "production refuses the in-process broker; set AMQP_URL",
                ));
            }
            if self.customerio.region == Region::Sandbox {
                return Err(invalid(
                    "customerio.region",
                    "production refuses the sandbox; set us or eu",
                ));
            }
        }
        Ok(())
    }

    pub fn is_memory_broker(&self) -> bool {
        self.broker.url.expose() == "memory://"
    }

    /// Local mode: nothing configured, everything in-process (docs/reference.md §2).
    pub fn is_local_mode(&self) -> bool {
        self.is_memory_broker()
    }

    /// Effective values as TOML, secrets masked: what `check-config` prints.
    pub fn masked_toml(&self) -> String {
        toml_string(self)
    }
}

fn key_name(key: &'static str) -> &'static str {
    key
}

fn toml_string(settings: &Settings) -> String {
    // serde_json keeps this dependency-free; the printed form is TOML-like `key = value` lines.
    let value = serde_json::to_value(settings).unwrap_or_default();
    let mut out = String::new();
    flatten("", &value, &mut out);
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push_str(&format!("{prefix} = {other}\n")),
    }
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
    fn gateway_variables_beat_conventional_names() {
        let s = load(&[
            ("AMQP_URL", "amqp://conventional"),
            ("GATEWAY__BROKER__URL", "amqp://explicit"),
            ("GATEWAY_ENV", "staging"),
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
        let env = env(&[("GATEWAY_ENV", "staging")]);
        let s = Settings::load_from(dir.path(), Some(&extra), &env).unwrap();
        assert_eq!(s.broker.partitions, 5);
        assert_eq!(s.broker.prefetch, 9);
        assert_eq!(s.http.addr.port(), 9000);
        std::fs::write(dir.path().join("staging.toml"), "[broker]\nparitions = 5\n").unwrap();
        let err = Settings::load_from(dir.path(), None, &env).unwrap_err();
        assert!(err.to_string().contains("paritions"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let s = load(&[
            ("CUSTOMERIO_API_KEY", "topsecret"),
            ("CUSTOMERIO_SITE_ID", "site"),
        ])
        .unwrap();
        let printed = s.masked_toml();
        assert!(!printed.contains("topsecret"));
        assert!(printed.contains("customerio.api_key = \"***\""));
    }
}
