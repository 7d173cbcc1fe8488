//! Typed settings, loaded in layers (built-in defaults, then a TOML file, then
//! `DATALOY_GATEWAY__SECTION__KEY` environment variables) and validated once at start-up, so a
//! mistake is reported with the key that holds it instead of surfacing as a runtime failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::sink::template::Template;

mod cloudevents;
mod dataloy;
mod dead_letter_forward;
mod log;
mod tls;
mod traces;
pub use cloudevents::{parse_time_zone, CloudEventsSettings, MAX_ATTRIBUTE_LEN};
pub use dataloy::{DataloySettings, ExtraMembers, SubscriptionSettings, MANAGED_MEMBERS};
pub use dead_letter_forward::{
    DeadLetterForwardSettings, KafkaForwardSettings, RabbitMqForwardSettings,
};
pub use log::{LogFormat, LogSettings};
pub use tls::{ListenerTlsSettings, TlsSettings};
pub use traces::{OtlpSettings, TracingSettings};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DATALOY_GATEWAY";
/// Longest `spool.commit_interval` accepted: the interval adds up to itself to answers under load.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// Why the configuration cannot be used; every variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A TOML syntax error, told by position and toml's message only: toml's own report quotes
    /// the source line, which may hold `dataloy.client_secret`.
    #[error("cannot load configuration: {file}: TOML syntax error at line {line}, column {column}{}: {message}", key_suffix(.key))]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        /// The key set on that line, when the line has one.
        key: Option<String>,
        message: String,
    },
    #[error("invalid configuration: `{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" (key `{k}`)"))
        .unwrap_or_default()
}

/// Parses `text` (the contents of `file`) as TOML only to report a syntax error without quoting the
/// file; `config` then reads it again.
fn check_toml_syntax(file: &str, text: &str) -> Result<(), ConfigError> {
    let Err(error) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let mut offset = error.span().map_or(0, |span| span.start).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let source_line = text[line_start..].lines().next().unwrap_or("");
    // Only bare keys (the characters TOML allows in one) are named: never part of a value.
    let bare = |key: &str| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let key = source_line.split_once('=').and_then(|(key, _)| {
        let key = key.trim();
        bare(key).then(|| match table {
            Some(table) if bare(table) => format!("{table}.{key}"),
            _ => key.to_owned(),
        })
    });
    Err(ConfigError::Syntax {
        file: file.to_owned(),
        line,
        column,
        key,
        message: error.message().trim().to_owned(),
    })
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub dedup: DedupSettings,
    #[serde(default)]
    pub spool: SpoolSettings,
    #[serde(default)]
    pub relay: RelaySettings,
    #[serde(default)]
    pub dead_letters: DeadLetterSettings,
    #[serde(default)]
    pub sinks: SinksSettings,
    #[serde(default)]
    pub sources: SourcesSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// OpenTelemetry spans and their export (off unless `[tracing.otlp]` is present).
    #[serde(default)]
    pub tracing: TracingSettings,
    /// How to reach Dataloy's REST API (for the subscription keeper and its commands).
    pub dataloy: Option<DataloySettings>,
    /// Webhook subscriptions the gateway keeps alive in Dataloy: `[subscriptions.NAME]`.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, SubscriptionSettings>,
}

/// `[dead_letters]`: where notifications a sink refused for good are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    /// The store's directory; by default `dead-letters` inside `spool.dir`.
    pub dir: Option<PathBuf>,
    /// Bound on the store's size; when full, a refused notification is retried instead (it
    /// holds its sink back; alert `DataloyGatewayDeadLettersStoreFull`).
    pub max_bytes: ByteSize,
    /// Copies of every entry on the operators' brokers: `[dead_letters.forward.kafka]`,
    /// `[dead_letters.forward.rabbitmq]` (none by default).
    pub forward: DeadLetterForwardSettings,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: ByteSize(256 * 1024 * 1024),
            forward: DeadLetterForwardSettings::default(),
        }
    }
}

impl Settings {
    /// The dead-letter store's directory.
    pub fn dead_letter_dir(&self) -> PathBuf {
        self.dead_letters
            .dir
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("dead-letters"))
    }
}

/// Sources besides the webhook listener.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SourcesSettings {
    /// Named Dataloy WebSocket subscriptions: `[sources.websocket.NAME]`.
    #[serde(default)]
    pub websocket: BTreeMap<String, WebSocketSourceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSourceSettings {
    /// `ws://` or `wss://` Dataloy WebSocket URL; it ends with the token, so it is never logged.
    pub url: SecretString,
    /// JSON field selection sent on every connect (`{}` for all fields).
    pub fields: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// Keepalive ping period.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection counts as lost.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// `/health/ready` fails while this source is disconnected.
    pub required_for_readiness: bool,
    /// Whom to trust and what to present on a `wss://` URL.
    pub tls: Option<TlsSettings>,
}

impl Default for WebSocketSourceSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from(""),
            fields: None,
            connect_timeout: Duration::from_secs(10),
            reconnect_initial_backoff: Duration::from_millis(500),
            reconnect_max_backoff: Duration::from_secs(30),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            required_for_readiness: false,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address of the notification listener.
    pub bind: String,
    /// HTTP worker threads; defaults to the number of cores.
    pub workers: Option<usize>,
    /// Largest accepted body; larger ones get 413.
    pub max_body_bytes: ByteSize,
    /// How long a client may take to send its headers and body.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `Retry-After` seconds sent with 503 answers.
    pub retry_after_seconds: u32,
    /// Notifications processed at once; past this the gateway answers 503 at once instead of
    /// queueing requests until they time out.
    pub max_in_flight: usize,
    /// Bytes of request bodies held in memory at once, over all connections; a body that would
    /// go past it is answered 503. Memory follows the bytes received, never a declared length.
    pub max_buffered_bytes: ByteSize,
    /// Open connections on the notification listener, over all workers; past this new
    /// connections wait in the kernel's backlog, so the spool and the admin listener always
    /// keep file descriptors (README, Operations).
    pub max_connections: usize,
    /// HTTPS on the notification listener (otherwise plain HTTP, e.g. behind an ingress).
    pub tls: Option<ListenerTlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: None,
            max_body_bytes: ByteSize(1024 * 1024),
            client_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            retry_after_seconds: 5,
            max_in_flight: 1024,
            max_buffered_bytes: ByteSize(64 * 1024 * 1024),
            max_connections: 1024,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener (`/metrics`, `/health/*`).
    pub bind: String,
    /// HTTPS on the admin listener.
    pub tls: Option<ListenerTlsSettings>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:9090".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Basic,
    Bearer,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// `basic` mode user name.
    pub username: Option<String>,
    /// `basic` mode password.
    pub password: Option<SecretString>,
    /// `bearer` mode token.
    pub token: Option<SecretString>,
    /// Allows `mode = "none"` on a listener that is reachable beyond loopback.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DedupBackend {
    #[default]
    Memory,
    Redis,
}

/// What the gateway does when the shared dedup backend fails.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Answer 503 with `Retry-After`: without dedup the gateway cannot promise "once".
    #[default]
    Reject,
    /// Deduplicate in this process's memory meanwhile (with a warning and a metric).
    FallbackMemory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSettings {
    pub backend: DedupBackend,
    /// How long an accepted id is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a claim stays valid while its notification is being made durable.
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    /// How long a request waits for another in-flight request with the same id to finish.
    #[serde(with = "humantime_serde")]
    pub in_flight_wait: Duration,
    /// Most ids the memory backend remembers; the oldest are evicted first (within each shard
    /// of a large table, see `dedup::memory`).
    pub max_entries: usize,
    /// Memory backend with the spool: keep the accepted ids in the id journal beside the spool
    /// and rebuild the table from it at start-up, so a restart forgets nothing within `ttl`.
    pub journal: bool,
    /// May hold a password (`redis://:secret@host`): never logged or printed.
    pub redis_url: SecretString,
    /// Prefix of the Redis keys, so several gateways (or environments) can share one Redis.
    pub redis_key_prefix: String,
    /// Longest a Redis connection attempt or command may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Start (with an error in the log) on a Redis whose `maxmemory-policy` evicts keys; by
    /// default such a Redis is refused, since an evicted id is accepted and published again.
    pub redis_allow_eviction: bool,
    pub on_backend_error: OnBackendError,
    /// Whom to trust and what to present on a `rediss://` URL.
    pub tls: Option<TlsSettings>,
}

impl DedupSettings {
    /// Whether accepted ids are kept in the id journal and the memory table rebuilt from it:
    /// memory backend, `journal` on, and a spool for it to live beside (without the spool a
    /// restart forgets; Redis remembers by itself).
    pub fn remembers_across_restarts(&self, spool_enabled: bool) -> bool {
        self.backend == DedupBackend::Memory && self.journal && spool_enabled
    }
}

impl Default for DedupSettings {
    fn default() -> Self {
        Self {
            backend: DedupBackend::Memory,
            ttl: Duration::from_secs(24 * 3600),
            claim_lease: Duration::from_secs(30),
            in_flight_wait: Duration::from_secs(2),
            max_entries: 1_000_000,
            journal: true,
            redis_url: SecretString::from("redis://127.0.0.1:6379"),
            redis_key_prefix: "dataloy-gateway:dedup:".into(),
            redis_timeout: Duration::from_millis(500),
            redis_allow_eviction: false,
            on_backend_error: OnBackendError::Reject,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Without the spool, a notification is accepted only once every sink confirmed it.
    pub enabled: bool,
    pub dir: PathBuf,
    /// Disk the spool may use; when full, new notifications get 503.
    pub max_bytes: ByteSize,
    /// Size at which the spool starts a new segment file.
    pub segment_bytes: ByteSize,
    /// Under concurrent load, the least time between the starts of two group commits: appends
    /// arriving meanwhile share the next fsync. A lone sender is never held back. `0s` turns it
    /// off (every group is written as soon as the previous fsync ends).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// When a cursor is missing beside records in the spool: `refuse` to start, or
    /// `start_from_end` (relay only what arrives from now on).
    pub missing_cursor: crate::spool::MissingCursor,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("data/spool"),
            max_bytes: ByteSize(1024 * 1024 * 1024),
            segment_bytes: ByteSize(64 * 1024 * 1024),
            commit_interval: Duration::from_micros(250),
            missing_cursor: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// Most notifications handed to the sinks at once.
    pub batch_max_records: usize,
    /// First retry delay after a failed publish; doubles up to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_max_records: 512,
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(30),
        }
    }
}

/// A sink is on when its table is present.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinksSettings {
    pub file: Option<FileSinkSettings>,
    pub kafka: Option<KafkaSinkSettings>,
    pub rabbitmq: Option<RabbitMqSinkSettings>,
}

impl SinksSettings {
    /// The names of the sinks that are on, as the sinks call themselves (cursor files, labels).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.file.is_some() {
            names.push("file");
        }
        if self.kafka.is_some() {
            names.push("kafka");
        }
        if self.rabbitmq.is_some() {
            names.push("rabbitmq");
        }
        names
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RabbitMqExchangeKind {
    Direct,
    Fanout,
    #[default]
    Topic,
    Headers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqSinkSettings {
    /// `amqp://` or `amqps://` URI, credentials included; never logged.
    pub uri: SecretString,
    pub exchange: String,
    pub exchange_kind: RabbitMqExchangeKind,
    /// Declare the exchange (durable) on connect; switch off for brokers where the gateway's
    /// user may not declare.
    pub declare_exchange: bool,
    /// Routing key template, e.g. `{objectType}.{eventType}`.
    pub routing_key: String,
    /// How often an idle sink checks (and re-opens) its connection.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Longest time to open a connection and its channel; a broker that accepts TCP but never
    /// answers counts as down after it.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the broker to confirm a batch; past it the connection is dropped, the
    /// sink is down and the batch is retried.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// What to do with a notification no queue is bound for (returned by the broker).
    pub unroutable: UnroutablePolicy,
    /// Whom to trust and what to present on an `amqps://` URI.
    pub tls: Option<TlsSettings>,
    /// CloudEvents binary mode (`cloudEvents_*` headers); off unless the table is present.
    pub cloudevents: Option<CloudEventsSettings>,
}

/// `sinks.rabbitmq.unroutable`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnroutablePolicy {
    /// Store it in dead letters (reason `unroutable`) and go on with the next.
    #[default]
    DeadLetter,
    /// Count it (`dataloy_gateway_sink_dropped_total`), log it, and go on: it is lost.
    Drop,
    /// Retry it until a queue is bound; every later notification waits behind it.
    Retry,
}

impl Default for RabbitMqSinkSettings {
    fn default() -> Self {
        Self {
            uri: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: "dataloy".into(),
            exchange_kind: RabbitMqExchangeKind::default(),
            declare_exchange: true,
            routing_key: "{objectType}.{eventType}".into(),
            health_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            unroutable: UnroutablePolicy::default(),
            tls: None,
            cloudevents: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl KafkaCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Topic template, e.g. `dataloy.{objectType}`.
    pub topic: String,
    /// Key template; the default keeps one object's events in one partition, in order.
    pub key: String,
    pub compression: KafkaCompression,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest batch librdkafka sends to one partition at once.
    pub batch_size: ByteSize,
    /// How long librdkafka tries to deliver before reporting a failure (the relay then retries).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How often the broker is probed for `/health/ready`.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How long a missing topic is retried (it may be being created) before its notifications
    /// go to dead letters with reason `unknown_topic`.
    #[serde(with = "humantime_serde")]
    pub missing_topic_grace: Duration,
    /// Any other librdkafka property (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`…).
    /// Values may be secrets (`sasl.password`): they are never logged or printed.
    pub properties: BTreeMap<String, SecretString>,
    /// CloudEvents binary mode (`ce_*` headers); off unless the table is present.
    pub cloudevents: Option<CloudEventsSettings>,
}

impl Default for KafkaSinkSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "dataloy.{objectType}".into(),
            key: "{objectType}:{dataloyObject}".into(),
            compression: KafkaCompression::default(),
            linger: Duration::from_millis(5),
            batch_size: ByteSize(1_000_000),
            message_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            missing_topic_grace: Duration::from_secs(300),
            properties: BTreeMap::new(),
            cloudevents: None,
        }
    }
}

/// Room for the record's key, headers and framing on top of the largest body, in the Kafka
/// producer's `message.max.bytes`.
pub const KAFKA_MESSAGE_OVERHEAD: u64 = 64 * 1024;

impl KafkaSinkSettings {
    /// The producer's `message.max.bytes`: the configured one, or enough for the largest body
    /// the gateway accepts (`server.max_body_bytes`) with its key and headers.
    pub fn message_max_bytes(&self, max_body_bytes: u64) -> u64 {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.expose_secret().trim().parse().ok())
            .unwrap_or(max_body_bytes + KAFKA_MESSAGE_OVERHEAD)
    }
}

/// Shortest `dedup.claim_lease`: shorter leases expire under an ordinary fsync stall or Redis
/// hiccup, and a second copy of the notification would be accepted meanwhile.
pub const MIN_CLAIM_LEASE: Duration = Duration::from_secs(5);

/// librdkafka properties the gateway's guarantees depend on; they cannot be overridden.
const KAFKA_FIXED_PROPERTIES: &[&str] = &["enable.idempotence", "acks", "bootstrap.servers"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSettings {
    pub path: PathBuf,
    /// fsync after every batch, so a confirmed notification survives a power loss.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Before a batch would take the file past this size it is renamed to `PATH.1` (older
    /// ones move to `.2`, `.3`…) and a new file is started; 0 never rotates.
    #[serde(default = "default_file_rotate_bytes")]
    pub rotate_bytes: ByteSize,
    /// Rotated files kept; the oldest beyond this many is deleted.
    #[serde(default = "default_file_keep_rotated")]
    pub keep_rotated: usize,
}

impl FileSinkSettings {
    /// A file sink at `path` with the default fsync and rotation.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            fsync: true,
            rotate_bytes: default_file_rotate_bytes(),
            keep_rotated: default_file_keep_rotated(),
        }
    }
}

fn default_file_rotate_bytes() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}

fn default_file_keep_rotated() -> usize {
    4
}

fn default_true() -> bool {
    true
}

/// A size in bytes, written as an integer or with a unit (`64MiB`, `1GiB`, `512KB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    fn parse(text: &str) -> Option<ByteSize> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1024 * 1024 * 1024,
            _ => return None,
        };
        number.checked_mul(multiplier).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a size (use bytes or a unit: KiB, MiB, GiB)"
                ))
            }),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (if given), then environment overrides, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given explicitly (tests use this).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        if let Some(path) = file {
            // Unreadable: `config` says why below.
            if let Ok(text) = std::fs::read_to_string(path) {
                check_toml_syntax(&path.display().to_string(), &text)?;
            }
        }
        let file = file.map(|path| config::File::from(path).required(true));
        Self::load_from(file, env)
    }

    /// Like [`Settings::load_with_env`], with the file's TOML text given (the fuzzer uses this).
    pub fn load_toml_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        check_toml_syntax("the configuration", toml)?;
        Self::load_from(
            Some(config::File::from_str(toml, config::FileFormat::Toml)),
            env,
        )
    }

    fn load_from(
        file: Option<impl config::Source + Send + Sync + 'static>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            // Values stay text until serde asks for a type: `try_parsing` would turn a secret
            // such as `007` or `1e5` into a number and back into other text.
            .source(Some(env.into_iter().collect()));
        let settings: Settings = builder.add_source(env_source).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: addresses, credentials, bounds and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let server_bind = parse_bind("server.bind", &self.server.bind)?;
        parse_bind("admin.bind", &self.admin.bind)?;
        if let Some(tls) = &self.server.tls {
            tls.validate(crate::tls::SERVER_KEYS)?;
        }
        if let Some(tls) = &self.admin.tls {
            tls.validate(crate::tls::ADMIN_KEYS)?;
        }
        if self.server.workers == Some(0) {
            return Err(invalid("server.workers", "must be at least 1"));
        }
        if self.server.max_in_flight == 0 {
            return Err(invalid("server.max_in_flight", "must be at least 1"));
        }
        if self.server.max_body_bytes.bytes() == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        if self.server.max_buffered_bytes.bytes() < self.server.max_body_bytes.bytes() {
            return Err(invalid(
                "server.max_buffered_bytes",
                "must be at least server.max_body_bytes",
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        // Zero would turn the protection off rather than make it strict: no timeout for slow
        // senders, no grace for in-flight requests, `Retry-After: 0` (an immediate retry storm).
        if self.server.client_timeout.is_zero() {
            return Err(invalid("server.client_timeout", "must be greater than 0"));
        }
        if self.server.shutdown_timeout.is_zero() {
            return Err(invalid("server.shutdown_timeout", "must be greater than 0"));
        }
        if self.server.retry_after_seconds == 0 {
            return Err(invalid("server.retry_after_seconds", "must be at least 1"));
        }
        if self.dead_letters.max_bytes.bytes() < self.server.max_body_bytes.bytes() + 64 * 1024 {
            return Err(invalid(
                "dead_letters.max_bytes",
                "must hold at least one body of server.max_body_bytes (plus 64 KiB)",
            ));
        }
        self.validate_auth(server_bind)?;
        if self.dedup.ttl.is_zero() {
            return Err(invalid("dedup.ttl", "must be greater than 0"));
        }
        if self.dedup.claim_lease < MIN_CLAIM_LEASE {
            return Err(invalid(
                "dedup.claim_lease",
                "must be at least 5s: a claim must outlive a slow durable write (it is renewed \
                 while the write runs, every third of the lease)",
            ));
        }
        if self.dedup.claim_lease <= self.dedup.in_flight_wait {
            return Err(invalid(
                "dedup.claim_lease",
                "must be longer than dedup.in_flight_wait",
            ));
        }
        if self.dedup.max_entries == 0 {
            return Err(invalid("dedup.max_entries", "must be at least 1"));
        }
        if self.dedup.backend == DedupBackend::Redis {
            validate_redis(&self.dedup)?;
        }
        if self.spool.enabled {
            if self.spool.dir.as_os_str().is_empty() {
                return Err(invalid("spool.dir", "must not be empty"));
            }
            let segment = self.spool.segment_bytes.bytes();
            if segment < 4096 {
                return Err(invalid("spool.segment_bytes", "must be at least 4096"));
            }
            if self.spool.commit_interval > MAX_COMMIT_INTERVAL {
                return Err(invalid(
                    "spool.commit_interval",
                    "must be at most 100ms (it delays answers under load)",
                ));
            }
            if self.spool.max_bytes.bytes() < segment.saturating_mul(2) {
                return Err(invalid(
                    "spool.max_bytes",
                    "must be at least twice spool.segment_bytes",
                ));
            }
            if self.spool.max_bytes.bytes() < self.server.max_body_bytes.bytes() * 2 {
                return Err(invalid(
                    "spool.max_bytes",
                    "must hold at least two bodies of server.max_body_bytes",
                ));
            }
        }
        if self.relay.batch_max_records == 0 {
            return Err(invalid("relay.batch_max_records", "must be at least 1"));
        }
        if self.relay.retry_initial_backoff.is_zero()
            || self.relay.retry_initial_backoff > self.relay.retry_max_backoff
        {
            return Err(invalid(
                "relay.retry_initial_backoff",
                "must be greater than 0 and at most relay.retry_max_backoff",
            ));
        }
        if let Some(file) = &self.sinks.file {
            if file.path.as_os_str().is_empty() {
                return Err(invalid("sinks.file.path", "must not be empty"));
            }
            if file.rotate_bytes.bytes() > 0 && file.keep_rotated == 0 {
                return Err(invalid(
                    "sinks.file.keep_rotated",
                    "must be at least 1 while sinks.file.rotate_bytes rotates the file",
                ));
            }
        }
        if let Some(kafka) = &self.sinks.kafka {
            validate_kafka(kafka, self.server.max_body_bytes.bytes())?;
        }
        if let Some(rabbitmq) = &self.sinks.rabbitmq {
            validate_rabbitmq(rabbitmq)?;
        }
        for (name, source) in &self.sources.websocket {
            validate_websocket(name, source)?;
        }
        self.dead_letters.forward.validate(&self.sinks)?;
        dataloy::validate(self.dataloy.as_ref(), &self.subscriptions)?;
        self.log.validate()?;
        self.tracing.validate()?;
        if !self.sinks.any() {
            return Err(invalid(
                "sinks",
                "no sink is configured; add a [sinks.file], [sinks.kafka] or [sinks.rabbitmq] table",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self, server_bind: SocketAddr) -> Result<(), ConfigError> {
        let auth = &self.auth;
        match auth.mode {
            AuthMode::None => {
                if !server_bind.ip().is_loopback() && !auth.allow_unauthenticated {
                    return Err(invalid(
                        "auth.mode",
                        "is `none` but server.bind is reachable beyond loopback; configure \
                         `basic` or `bearer`, or set auth.allow_unauthenticated = true",
                    ));
                }
            }
            AuthMode::Basic => {
                if auth.username.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        "auth.username",
                        "is required when auth.mode = \"basic\"",
                    ));
                }
                if auth.username.as_deref().is_some_and(|u| u.contains(':')) {
                    return Err(invalid("auth.username", "must not contain ':'"));
                }
                if !has_secret(&auth.password) {
                    return Err(invalid(
                        "auth.password",
                        "is required when auth.mode = \"basic\"",
                    ));
                }
            }
            AuthMode::Bearer => {
                if !has_secret(&auth.token) {
                    return Err(invalid(
                        "auth.token",
                        "is required when auth.mode = \"bearer\"",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The validated notification listener address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server.bind.parse().expect("validated at load")
    }

    /// The validated admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.bind.parse().expect("validated at load")
    }
}

impl SinksSettings {
    pub fn any(&self) -> bool {
        self.file.is_some() || self.kafka.is_some() || self.rabbitmq.is_some()
    }
}

fn validate_kafka(kafka: &KafkaSinkSettings, max_body_bytes: u64) -> Result<(), ConfigError> {
    if kafka.brokers.split(',').all(|b| b.trim().is_empty()) {
        return Err(invalid(
            "sinks.kafka.brokers",
            "must list at least one host:port",
        ));
    }
    let topic =
        Template::parse(&kafka.topic).map_err(|e| invalid("sinks.kafka.topic", e.to_string()))?;
    if !topic.renders_valid_topic_names() {
        return Err(invalid(
            "sinks.kafka.topic",
            "may contain only letters, digits, '.', '_', '-' and the placeholders \
             {objectType}, {eventType}, {dataloyObject}, {subscriptionKey}, {action}",
        ));
    }
    Template::parse(&kafka.key).map_err(|e| invalid("sinks.kafka.key", e.to_string()))?;
    if kafka.message_timeout.is_zero() {
        return Err(invalid(
            "sinks.kafka.message_timeout",
            "must be greater than 0",
        ));
    }
    if kafka.health_interval.is_zero() {
        return Err(invalid(
            "sinks.kafka.health_interval",
            "must be greater than 0",
        ));
    }
    if let Some(fixed) = kafka
        .properties
        .keys()
        .find(|k| KAFKA_FIXED_PROPERTIES.contains(&k.as_str()))
    {
        return Err(invalid(
            "sinks.kafka.properties",
            format!("cannot set `{fixed}`: the gateway relies on its own value"),
        ));
    }
    if let Some(value) = kafka.properties.get("message.max.bytes") {
        let needed = max_body_bytes + KAFKA_MESSAGE_OVERHEAD;
        match value.expose_secret().trim().parse::<u64>() {
            Ok(bytes) if bytes >= needed => {}
            _ => {
                return Err(invalid(
                    "sinks.kafka.properties",
                    format!(
                        "`message.max.bytes` must be at least {needed} (server.max_body_bytes \
                         {max_body_bytes} plus {KAFKA_MESSAGE_OVERHEAD} for key and headers), or \
                         lower server.max_body_bytes: a body the gateway accepts must fit a message"
                    ),
                ));
            }
        }
    }
    if kafka.missing_topic_grace > Duration::from_secs(24 * 3600) {
        return Err(invalid(
            "sinks.kafka.missing_topic_grace",
            "must be at most 24h: past it the notifications go to dead letters",
        ));
    }
    if let Some(cloudevents) = &kafka.cloudevents {
        cloudevents.validate(&cloudevents::KAFKA_KEYS)?;
    }
    Ok(())
}

fn validate_redis(dedup: &DedupSettings) -> Result<(), ConfigError> {
    // The URL may hold a password: no message repeats it.
    let target = crate::dedup::RedisTarget::parse(dedup.redis_url.expose_secret())
        .map_err(|problem| invalid("dedup.redis_url", problem))?;
    if dedup.redis_timeout.is_zero() {
        return Err(invalid("dedup.redis_timeout", "must be greater than 0"));
    }
    match (&dedup.tls, target.tls) {
        (Some(tls), true) => tls.validate(&crate::tls::DEDUP_KEYS, None)?,
        (Some(_), false) => {
            return Err(invalid(
                "dedup.tls",
                "is set but dedup.redis_url is not rediss://: use rediss:// for TLS, or remove \
                 [dedup.tls]",
            ))
        }
        (None, _) => {}
    }
    Ok(())
}

fn validate_rabbitmq(rabbitmq: &RabbitMqSinkSettings) -> Result<(), ConfigError> {
    let uri = rabbitmq.uri.expose_secret();
    if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
        // The URI may hold a password: the message does not repeat it.
        return Err(invalid(
            "sinks.rabbitmq.uri",
            "must start with amqp:// or amqps://",
        ));
    }
    if uri.parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(invalid("sinks.rabbitmq.uri", "is not a valid AMQP URI"));
    }
    match (&rabbitmq.tls, uri.starts_with("amqps://")) {
        (Some(tls), true) => tls.validate(&crate::tls::RABBITMQ_KEYS, None)?,
        (Some(_), false) => {
            return Err(invalid(
                "sinks.rabbitmq.tls",
                "is set but sinks.rabbitmq.uri is not amqps://: use amqps:// for TLS, or remove \
                 [sinks.rabbitmq.tls]",
            ))
        }
        (None, _) => {}
    }
    if rabbitmq.exchange.is_empty() && rabbitmq.declare_exchange {
        return Err(invalid(
            "sinks.rabbitmq.exchange",
            "is empty (the default exchange cannot be declared; set declare_exchange = false)",
        ));
    }
    if rabbitmq.exchange.len() > 255 {
        return Err(invalid(
            "sinks.rabbitmq.exchange",
            "is longer than 255 bytes (an AMQP short string)",
        ));
    }
    Template::parse(&rabbitmq.routing_key)
        .map_err(|e| invalid("sinks.rabbitmq.routing_key", e.to_string()))?;
    for (key, value) in [
        ("sinks.rabbitmq.health_interval", rabbitmq.health_interval),
        ("sinks.rabbitmq.connect_timeout", rabbitmq.connect_timeout),
        ("sinks.rabbitmq.confirm_timeout", rabbitmq.confirm_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be greater than 0"));
        }
    }
    if let Some(cloudevents) = &rabbitmq.cloudevents {
        cloudevents.validate(&cloudevents::RABBITMQ_KEYS)?;
    }
    Ok(())
}

fn validate_websocket(name: &str, source: &WebSocketSourceSettings) -> Result<(), ConfigError> {
    let named = |what: &str| format!("(source `{name}`) {what}");
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(invalid(
            "sources.websocket",
            format!("has a source named `{name}`; use letters, digits, '_' and '-'"),
        ));
    }
    let url = source.url.expose_secret();
    if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() < 8 {
        return Err(invalid(
            "sources.websocket.url",
            named("must start with ws:// or wss://"),
        ));
    }
    match (&source.tls, url.starts_with("wss://")) {
        (Some(tls), true) => tls.validate(&crate::tls::WEBSOCKET_KEYS, Some(name))?,
        (Some(_), false) => {
            return Err(invalid(
                "sources.websocket.tls",
                named(
                    "is set but the url is not wss://: use wss:// for TLS, or remove the tls table",
                ),
            ))
        }
        (None, _) => {}
    }
    if let Some(fields) = &source.fields {
        if serde_json::from_str::<serde_json::Value>(fields).map_or(true, |v| !v.is_object()) {
            return Err(invalid(
                "sources.websocket.fields",
                named("must be a JSON object"),
            ));
        }
    }
    for (key, value) in [
        ("sources.websocket.connect_timeout", source.connect_timeout),
        (
            "sources.websocket.reconnect_initial_backoff",
            source.reconnect_initial_backoff,
        ),
        ("sources.websocket.ping_interval", source.ping_interval),
        ("sources.websocket.pong_timeout", source.pong_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, named("must be greater than 0")));
        }
    }
    if source.reconnect_max_backoff < source.reconnect_initial_backoff {
        return Err(invalid(
            "sources.websocket.reconnect_max_backoff",
            named("must be at least reconnect_initial_backoff"),
        ));
    }
    Ok(())
}

fn has_secret(secret: &Option<SecretString>) -> bool {
    secret
        .as_ref()
        .is_some_and(|s| !s.expose_secret().is_empty())
}

fn parse_bind(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not a socket address such as 127.0.0.1:8080"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Some(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("1 GiB"), Some(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("512KB"), Some(ByteSize(512_000)));
        assert_eq!(ByteSize::parse("12"), Some(ByteSize(12)));
        assert_eq!(ByteSize::parse("12 parsecs"), None);
        assert_eq!(ByteSize::parse(""), None);
    }
}
