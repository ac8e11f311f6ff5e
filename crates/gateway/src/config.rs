//! Gateway configuration, loaded with figment in this order (later wins): built-in
//! defaults <- `configs/default.toml` (when present in the working directory) <-
//! `--config FILE` <- `ADFLOW_SECTION__KEY` environment variables. Every struct denies
//! unknown keys (figment would silently ignore a typo otherwise) and `validate` checks
//! ranges, so a bad value stops the gateway at start with the key named. A later layer
//! hides what an earlier one says about the same key (even an invalid value), so
//! `--print-config` (`Config::explain`) prints every value with the layer it came from
//! and what it overrode.

use adflow_domain::analytics::Retention;
use adflow_domain::validate::Limits;
use adflow_queue::QueueConfig;
use adflow_store::StorageConfig;
use adflow_telemetry::TracingConfig;
use adflow_worker::analysis::AnalysisConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod servers;
pub use servers::{MongoServer, RedisServer};

/// The shipped defaults file, merged when it exists in the working directory.
pub const DEFAULT_FILE: &str = "configs/default.toml";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` names a file that does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type or an unknown key was given (figment names the key).
    #[error("invalid configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    /// A value is outside its allowed range.
    #[error("invalid configuration: {key} {problem}")]
    Invalid {
        /// Dotted key, e.g. `ingest.max_batch_events`.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The whole gateway configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network and runtime settings.
    pub server: ServerConfig,
    /// The ingest pipeline.
    pub ingest: IngestConfig,
    /// Limits every event must respect.
    pub validation: Limits,
    /// Analytics counters retention.
    pub analytics: Retention,
    /// The Redis server shared by events, counters, dedup and the queue (`[redis]`).
    pub redis: RedisServer,
    /// The MongoDB database shared by events, counters and the queue (`[mongodb]`).
    pub mongodb: MongoServer,
    /// Where events are stored.
    pub storage: StorageConfig,
    /// Checkpoints of analytics and the dedup window (bounded restart time).
    pub checkpoint: crate::checkpoint::CheckpointConfig,
    /// The ad queue.
    pub queue: QueueConfig,
    /// Workers run inside the gateway.
    pub workers: WorkersConfig,
    /// Ad analysis rules (used by the in-process workers).
    pub analysis: AnalysisConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry traces over OTLP.
    pub tracing: TracingConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// Access control.
    pub auth: crate::auth::AuthConfig,
    /// The plain-language operator agent.
    pub agent: AgentConfig,
    /// The web dashboard.
    pub dashboard: crate::dashboard::DashboardConfig,
}

/// `[agent]`: optional LLM translation of operator commands (the parser always works).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// OpenAI-compatible chat-completions URL (empty: parser only).
    pub llm_url: String,
    /// Model name sent to it.
    pub llm_model: String,
    /// Environment variable holding its API key (default "ADFLOW_AGENT_LLM_API_KEY").
    pub llm_api_key_env: String,
    /// Timeout of one LLM call, ms (default 3000); on timeout the parser decides.
    pub llm_timeout_ms: u64,
    /// A command that would change more ads than this answers with a preview and a
    /// confirmation token instead of running (default 20; 0: every change of an ad).
    /// Pausing a partition, scaling workers to 0 and purging always ask.
    pub confirm_above_ads: u64,
    /// How long a confirmation token stays valid, seconds (default 120; 0 is read as 1).
    pub confirm_ttl_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            llm_url: String::new(),
            llm_model: "gpt-4o-mini".into(),
            llm_api_key_env: "ADFLOW_AGENT_LLM_API_KEY".into(),
            llm_timeout_ms: 3000,
            confirm_above_ads: 20,
            confirm_ttl_seconds: 120,
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint (default "127.0.0.1:9464"; empty: off).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into() }
    }
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (default "127.0.0.1:50051").
    pub listen: SocketAddr,
    /// Largest accepted gRPC message, in bytes (default 16 MiB).
    pub max_message_bytes: usize,
    /// Tokio worker threads; 0 means one per CPU core (default 0).
    pub worker_threads: usize,
    /// Longest wait for open requests and streams at shutdown, in ms (default 10000).
    pub shutdown_grace_ms: u64,
    /// Most concurrent HTTP/2 streams per connection (default 1024).
    pub max_concurrent_streams: u32,
    /// Most requests served at once per connection (default 1024).
    pub concurrency_limit_per_connection: usize,
    /// HTTP/2 flow-control window per connection, in KiB: what one client connection may
    /// push ahead of the gateway reading it (default 1024).
    pub http2_connection_window_kib: u32,
    /// HTTP/2 flow-control window per stream (call), in KiB (default 512). A stream moves
    /// at most this much per round trip: raise both for far-away clients sending large
    /// batches, at the cost of memory under overload.
    pub http2_stream_window_kib: u32,
    /// Most connections open at once; beyond it new ones are closed (default 10000).
    pub max_connections: usize,
    /// A new connection must send its first bytes (HTTP/2 preface or TLS hello) within
    /// this many ms, or it is closed (default 10000).
    pub handshake_timeout_ms: u64,
    /// PEM certificate chain for TLS (empty: plain text).
    pub tls_cert_path: String,
    /// PEM private key for TLS.
    pub tls_key_path: String,
    /// Name the in-process workers verify in the certificate (default "localhost").
    pub tls_domain: String,
    /// PEM certificate(s) of the CA that signed `tls_cert_path`, which the in-process
    /// workers trust (empty: they trust `tls_cert_path` itself, which only works for a
    /// self-signed end-entity certificate).
    pub tls_ca_path: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 16 << 20,
            worker_threads: 0,
            shutdown_grace_ms: 10_000,
            max_concurrent_streams: 1024,
            concurrency_limit_per_connection: 1024,
            http2_connection_window_kib: 1024,
            http2_stream_window_kib: 512,
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
            tls_domain: "localhost".into(),
            tls_ca_path: String::new(),
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// When the gateway answers an ingest request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the batch holding the events is committed by the store.
    #[default]
    Durable,
    /// Once the events are validated, deduplicated and queued.
    Accepted,
}

/// `[ingest]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Ack mode for requests that leave it UNSPECIFIED (default "durable").
    pub ack_mode: AckMode,
    /// Most events in one request or streamed batch (default 10000).
    pub max_events_per_request: usize,
    /// Events that may wait between the RPC handlers and the store; beyond it requests
    /// get RESOURCE_EXHAUSTED (default 65536; an event holds its encoded size, ~160 B
    /// typical, at most ~12 KiB under the default validation limits).
    pub queue_capacity_events: usize,
    /// The batcher writes once this many events are gathered (default 8192).
    pub max_batch_events: usize,
    /// ...or once the first gathered event has waited this long, in ms (default 0: write
    /// as soon as the previous commit ends; whatever arrived during it joins the batch).
    pub max_batch_delay_ms: u64,
    /// How long a unary or batch request may wait in line for room when the pipeline is
    /// full before it is refused with RESOURCE_EXHAUSTED, in ms (default 100). Streams
    /// wait in the same first-come line without a limit (HTTP/2 flow control).
    pub admission_wait_ms: u64,
    /// Batches a StreamEvents call may have awaiting their ack (default 32).
    pub stream_max_inflight: usize,
    /// Store commits in flight at once (0, the default: 1 for the file backend, whose
    /// commits are fsync-bound, 4 for remote backends, whose commits are round-trip-bound).
    pub commits_in_flight: u32,
    /// Store write attempts before durable requests fail with UNAVAILABLE (default 5).
    pub store_retry_attempts: u32,
    /// First retry backoff in ms, doubled per attempt with jitter (default 20).
    pub store_retry_base_ms: u64,
    /// Longest retry backoff in ms (default 2000).
    pub store_retry_max_ms: u64,
    /// Deduplication by event id.
    pub dedup: DedupConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            ack_mode: AckMode::Durable,
            max_events_per_request: 10_000,
            queue_capacity_events: 65_536,
            max_batch_events: 8_192,
            max_batch_delay_ms: 0,
            admission_wait_ms: 100,
            stream_max_inflight: 32,
            commits_in_flight: 0,
            store_retry_attempts: 5,
            store_retry_base_ms: 20,
            store_retry_max_ms: 2_000,
            dedup: DedupConfig::default(),
        }
    }
}

/// `[ingest.dedup]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Deduplicate by event id (default true).
    pub enabled: bool,
    /// How long an accepted id is remembered, in seconds (default 600).
    pub window_secs: u64,
    /// Keep the ids in Redis (`storage.redis`), shared by every gateway, instead of in this
    /// gateway's memory. Unset (the default): on exactly when the storage backend is redis.
    pub shared: Option<bool>,
    /// Memory budget of the window in MiB (default 256: 22.4M ids, 12-18 bytes each, i.e.
    /// the full window up to 37k events/s sustained, ~32 s at 690k events/s). When full,
    /// the oldest ids are forgotten early: counted, logged (WARN) and reported as
    /// `dedup_effective_window_seconds` and on /healthz.
    pub max_memory_mb: usize,
    /// How long a claim of a shared (Redis) id may stay pending without its commit
    /// settling it, in seconds (default 30): a gateway that dies mid-commit holds its
    /// ids at most this long; a repeat waits at most this long before UNAVAILABLE.
    pub claim_secs: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { enabled: true, shared: None, window_secs: 600, max_memory_mb: 256, claim_secs: 30 }
    }
}

/// `[workers]`: the in-process workers (the same code as the `adflow-worker` binary,
/// connected to this gateway over loopback).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// How many to run (default 2; 0 turns them off).
    pub in_process: usize,
    /// Leases each may hold (default 64).
    pub concurrency: u32,
    /// Priorities they serve (default: all).
    pub partitions: Vec<u32>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self { in_process: 2, concurrency: 64, partitions: Vec::new() }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Text or JSON (default "text").
    pub format: LogFormat,
    /// tracing filter directives (default "info"); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

impl Config {
    /// Loads defaults <- `configs/default.toml` <- `file` <- environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(merged(&layers(file)?))
    }

    /// Loads like `load` and renders the result as TOML with one `key = value` line per
    /// setting and a comment naming the layer it came from, and the values it overrode in
    /// earlier layers (what `--print-config` prints). The text loads back as a config file.
    pub fn explain(file: Option<&Path>) -> Result<String, ConfigError> {
        let layers = layers(file)?;
        let cfg = Self::from_figment(merged(&layers))?;
        let mut leaves = Vec::new();
        flatten("", &serde_json::to_value(&cfg).unwrap_or_default(), &mut leaves);
        let mut out = String::from(
            "# adflow-gateway effective configuration: built-in defaults <- configs/default.toml\n\
             # <- --config FILE <- ADFLOW_SECTION__KEY environment variables (later wins).\n",
        );
        for (key, value) in leaves {
            let from: Vec<(&Layer, figment::value::Value)> =
                layers.iter().filter_map(|l| Some((l, l.figment.find_value(&key).ok()?))).collect();
            let source = match from.last() {
                Some((l, _)) => l.describe(&key),
                None => "built-in default".into(),
            };
            let mut comment = format!("from {source}");
            // What the winning layer hid (the defaults are implied).
            for (l, v) in from.iter().rev().skip(1).filter(|(l, _)| l.kind != LayerKind::Defaults) {
                let v = toml_value(&serde_json::to_value(v).unwrap_or_default());
                let v = adflow_domain::validate::trunc(&v);
                comment += &format!("; overrides {v} from {}", l.describe(&key));
            }
            match value {
                serde_json::Value::Null => out += &format!("# {key} is unset  # {comment}\n"),
                v => out += &format!("{key} = {}  # {comment}\n", toml_value(&v)),
            }
        }
        Ok(out)
    }

    /// Extracts and validates a configuration from any figment (used by tests too).
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        servers::apply(&cfg.redis, &cfg.mongodb, &mut cfg.storage, &mut cfg.queue)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let i = &self.ingest;
        if i.max_events_per_request == 0 {
            return Err(invalid("ingest.max_events_per_request", "must be > 0"));
        }
        if i.queue_capacity_events < i.max_events_per_request || i.queue_capacity_events > u32::MAX as usize {
            return Err(invalid(
                "ingest.queue_capacity_events",
                format!("must be >= ingest.max_events_per_request ({}) and < 2^32", i.max_events_per_request),
            ));
        }
        if i.max_batch_events == 0 {
            return Err(invalid("ingest.max_batch_events", "must be > 0"));
        }
        if i.commits_in_flight > 64 {
            return Err(invalid("ingest.commits_in_flight", "must be at most 64"));
        }
        if i.stream_max_inflight == 0 {
            return Err(invalid("ingest.stream_max_inflight", "must be > 0"));
        }
        if i.store_retry_attempts == 0 {
            return Err(invalid("ingest.store_retry_attempts", "must be > 0"));
        }
        if i.dedup.enabled
            && (i.dedup.window_secs == 0 || i.dedup.max_memory_mb == 0 || i.dedup.claim_secs == 0)
        {
            return Err(invalid(
                "ingest.dedup",
                "window_secs, max_memory_mb and claim_secs must be > 0 when enabled",
            ));
        }
        // The shared dedup looks an id up in two window-long generations: a claim must end
        // inside them, or an id still being committed would be forgotten.
        let shared_ids = i.dedup.shared.unwrap_or(self.storage.backend == adflow_store::Backend::Redis);
        if i.dedup.enabled && shared_ids && i.dedup.claim_secs > i.dedup.window_secs {
            return Err(invalid(
                "ingest.dedup.claim_secs",
                format!("must be at most window_secs ({})", i.dedup.window_secs),
            ));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1024"));
        }
        // HTTP/2 allows windows of 64 KiB (its default) up to 2^31 - 1 bytes.
        for (key, kib) in [
            ("server.http2_connection_window_kib", self.server.http2_connection_window_kib),
            ("server.http2_stream_window_kib", self.server.http2_stream_window_kib),
        ] {
            if !(64..=2_097_151).contains(&kib) {
                return Err(invalid(key, "must be between 64 and 2097151 (KiB)"));
            }
        }
        if self.validation.max_event_id_len == 0 {
            return Err(invalid("validation.max_event_id_len", "must be > 0"));
        }
        if !(1..=366).contains(&self.analytics.retention_days) {
            return Err(invalid("analytics.retention_days", "must be 1..=366"));
        }
        // Shared counters read one key per bucket: these bound the keys of one query.
        if self.analytics.minute_retention_hours > 168 {
            return Err(invalid("analytics.minute_retention_hours", "must be at most 168 (7 days)"));
        }
        if self.validation.max_future_skew_secs > 86_400 {
            return Err(invalid("validation.max_future_skew_secs", "must be at most 86400 (1 day)"));
        }
        if self.storage.file.segment_bytes < 4096 {
            return Err(invalid("storage.file.segment_bytes", "must be at least 4096"));
        }
        if let Err((key, problem)) = self.dashboard.check() {
            return Err(invalid(key, problem));
        }
        let policy = self.queue.policy();
        if let Err((field, problem)) = adflow_queue::policy::check(&policy) {
            let key = match field {
                "max_wait_seconds" => "queue.max_wait_seconds",
                "aging_step_seconds" => "queue.aging_step_seconds",
                "max_attempts" => "queue.max_attempts",
                _ => "queue.lease_seconds",
            };
            return Err(invalid(key, problem));
        }
        if let Err((key, problem)) = self.queue.redis.check() {
            return Err(invalid(key, problem));
        }
        if !(1..=10_000).contains(&self.workers.concurrency) {
            return Err(invalid("workers.concurrency", "must be 1..=10000"));
        }
        if self.workers.partitions.iter().any(|p| adflow_queue::Priority::new(*p).is_err()) {
            return Err(invalid("workers.partitions", "entries must be 1..=5"));
        }
        if self.server.tls_cert_path.is_empty() != self.server.tls_key_path.is_empty() {
            return Err(invalid(
                "server.tls_cert_path",
                "tls_cert_path and tls_key_path must be set together",
            ));
        }
        if self.auth.enabled && self.auth.keys.is_empty() {
            return Err(invalid("auth.keys", "auth is enabled but no key is configured"));
        }
        if let Some(k) = self
            .auth
            .keys
            .iter()
            .find(|k| k.sha256.len() != 64 || !k.sha256.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "auth.keys",
                format!("key {:?}: sha256 must be 64 hex digits (adflow-gateway --hash-key)", k.name),
            ));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!("{:?} is not an address like 127.0.0.1:9464", self.metrics.listen),
            ));
        }
        if !(0.0..=1.0).contains(&self.tracing.sampling_ratio) {
            return Err(invalid("tracing.sampling_ratio", "must be within 0..=1"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid("log.level", format!("{:?} is not a valid tracing filter", self.log.level)));
        }
        Ok(())
    }
}

/// What a configuration layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayerKind {
    Defaults,
    File,
    Env,
}

/// One configuration layer and its name in `--print-config`.
struct Layer {
    kind: LayerKind,
    name: String,
    figment: Figment,
}

impl Layer {
    /// Where `key` comes from when this layer sets it.
    fn describe(&self, key: &str) -> String {
        match self.kind {
            LayerKind::Defaults => "built-in default".into(),
            LayerKind::File => self.name.clone(),
            LayerKind::Env => format!("environment {}", env_var(key)),
        }
    }
}

/// The layers, lowest precedence first.
fn layers(file: Option<&Path>) -> Result<Vec<Layer>, ConfigError> {
    let layer = |kind, name: &str, figment| Layer { kind, name: name.to_owned(), figment };
    let mut out = vec![layer(
        LayerKind::Defaults,
        "built-in default",
        Figment::from(Serialized::defaults(Config::default())),
    )];
    if Path::new(DEFAULT_FILE).exists() {
        out.push(layer(LayerKind::File, DEFAULT_FILE, Figment::from(Toml::file(DEFAULT_FILE))));
    }
    if let Some(f) = file {
        if !f.exists() {
            return Err(ConfigError::MissingFile(f.to_path_buf()));
        }
        out.push(layer(LayerKind::File, &f.display().to_string(), Figment::from(Toml::file(f))));
    }
    out.push(layer(LayerKind::Env, "environment", Figment::from(env())));
    Ok(out)
}

fn merged(layers: &[Layer]) -> Figment {
    layers.iter().fold(Figment::new(), |fig, l| fig.merge(l.figment.clone()))
}

/// The environment variable that sets `key` (`ingest.dedup.window_secs` ->
/// `ADFLOW_INGEST__DEDUP__WINDOW_SECS`).
fn env_var(key: &str) -> String {
    format!("ADFLOW_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Dotted keys and values of every setting (arrays are single settings).
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        v => out.push((prefix.to_owned(), v.clone())),
    }
}

/// A value as a TOML literal (inline arrays and tables; JSON string escapes are TOML's).
fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "\"\"".into(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => v.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let bare =
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    let k = if bare { k.clone() } else { Value::String(k.clone()).to_string() };
                    format!("{k} = {}", toml_value(v))
                })
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    }
}

/// `ADFLOW_SECTION__KEY=value` variables. Only names with `__` are read: every key lives
/// in a section, and other `ADFLOW_*` variables (e.g. test settings) are not config.
fn env() -> Env {
    Env::prefixed("ADFLOW_").filter(|k| k.as_str().contains("__")).split("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name)
    }

    #[test]
    fn a_shared_dedup_claim_longer_than_the_window_is_refused_by_name() {
        let mut cfg = Config::default();
        cfg.ingest.dedup.window_secs = 10;
        assert!(cfg.validate().is_ok(), "the local window has no claims");
        cfg.ingest.dedup.shared = Some(true);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("ingest.dedup.claim_secs"), "{err}");
        cfg.ingest.dedup.claim_secs = 10;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn http2_windows_outside_what_http2_allows_are_refused_by_name() {
        let mut cfg = Config::default();
        cfg.server.http2_stream_window_kib = 32;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("server.http2_stream_window_kib"), "{err}");
        cfg.server.http2_stream_window_kib = 64;
        cfg.server.http2_connection_window_kib = 2_097_152;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("server.http2_connection_window_kib"), "{err}");
        cfg.server.http2_connection_window_kib = 4096;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn the_shipped_default_file_loads_and_equals_the_built_in_defaults() {
        let fig =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(shipped("default.toml")));
        assert_eq!(Config::from_figment(fig).unwrap(), Config::default());
    }

    #[test]
    fn the_docker_config_loads() {
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(shipped("default.toml")))
            .merge(Toml::file(shipped("docker.toml")));
        let cfg = Config::from_figment(fig).unwrap();
        assert_eq!(cfg.server.listen.port(), 50051);
        assert_eq!(cfg.tracing.otlp_endpoint, "http://jaeger:4317");
        assert_eq!(cfg.workers.in_process, 0);
        assert_eq!(cfg.storage.backend, adflow_store::Backend::Redis, "compose runs on its Redis");
        assert_eq!(cfg.storage.redis.url, "redis://redis:6379/", "[redis] names it once");
        assert!(cfg.auth.enabled);
        let authz = crate::auth::Authz::new(&cfg.auth, &[]);
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer dev-operator-key".parse().unwrap());
        assert!(
            authz.check("/adflow.v1.QueueControl/GetStats", &h, None).is_ok(),
            "the documented dev key matches its hash"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[ingest]\nmax_batch_events = \"many\""));
        let err = Config::from_figment(fig).unwrap_err().to_string();
        assert!(err.contains("max_batch_events"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[ingest]\nbatch_size = 5"));
        let err = Config::from_figment(fig).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn an_out_of_range_value_names_the_key() {
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[ingest]\nqueue_capacity_events = 10"));
        let err = Config::from_figment(fig).unwrap_err().to_string();
        assert!(err.contains("ingest.queue_capacity_events"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn print_config_names_each_values_source_and_what_it_hid() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "my.toml",
                "[ingest]\nmax_batch_events = \"many\"\nmax_batch_delay_ms = 3\n\
                 [auth]\nkeys = [{ name = \"ops\", role = \"operator\", sha256 = \"%s\" }]\n"
                    .replace("%s", &crate::auth::hash_key("k"))
                    .as_str(),
            )?;
            jail.set_env("ADFLOW_INGEST__MAX_BATCH_EVENTS", "10");
            let text = Config::explain(Some(Path::new("my.toml"))).map_err(|e| e.to_string())?;
            let line = |key: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{key} = ")))
                    .unwrap_or_else(|| panic!("{key}: {text}"))
            };
            assert_eq!(
                line("ingest.max_batch_events"),
                "ingest.max_batch_events = 10  # from environment ADFLOW_INGEST__MAX_BATCH_EVENTS; \
                 overrides \"many\" from my.toml"
            );
            assert_eq!(line("ingest.max_batch_delay_ms"), "ingest.max_batch_delay_ms = 3  # from my.toml");
            assert_eq!(line("server.listen"), "server.listen = \"127.0.0.1:50051\"  # from built-in default");
            assert!(line("auth.keys").contains("{ name = \"ops\", role = \"operator\", sha256 = "), "{text}");
            assert!(text.contains("# ingest.dedup.shared is unset  # from built-in default"), "{text}");
            // What it prints loads back as a config file, to the same configuration.
            let back = Config::from_figment(
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(&text)),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(back, Config::load(Some(Path::new("my.toml"))).map_err(|e| e.to_string())?);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_overrides_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ADFLOW_SERVER__LISTEN", "127.0.0.1:6000");
            jail.set_env("ADFLOW_INGEST__DEDUP__WINDOW_SECS", "42");
            jail.set_env("ADFLOW_TEST_REDIS_URL", "redis://ignored");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.listen.port(), 6000);
            assert_eq!(cfg.ingest.dedup.window_secs, 42);
            Ok(())
        });
    }
}
