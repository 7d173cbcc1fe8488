//! dataloy-gateway receives Dataloy VMS change notifications and relays them, byte for byte, into
//! Kafka and RabbitMQ. It acknowledges a notification only once it is durable, deduplicates
//! Dataloy's retries by notification id, and survives broker outages, restarts and crashes.
//!
//! # Layout
//! - [`config`]: typed settings, layered (defaults, TOML file, environment), validated at start.
//! - [`startup`]: `Application::build` wires everything and binds the listeners.
//! - [`descriptors`]: fits the connection bound under the open-file limit.
//! - [`routes`]: the notification route and the admin routes (health, metrics, the OpenAPI
//!   document `openapi/dataloy-gateway.yaml`), each listener's list in one place.
//! - [`ingest`]: the path every source shares: envelope, dedup claim, spool, commit.
//! - [`envelope`]: parses and validates the envelope without building `resource`.
//! - [`dedup`]: claim / commit / release by id, behind a trait.
//! - [`spool`]: the durable local log with group commit, recovery and an ack cursor.
//! - [`id_journal`]: the accepted ids, written in the spool's group commits, from which the
//!   memory dedup table is rebuilt at start-up.
//! - [`relay`]: spool to sinks, in order, with retries; refusals for good to dead letters.
//! - [`dead_letter`]: the durable store of notifications a sink refused for good, and its
//!   forwarders to a Kafka dead-letter topic / RabbitMQ dead-letter exchange.
//! - [`sink`]: the `Sink` trait, routing templates and the sinks themselves.
//! - [`websocket`]: the gateway as Dataloy's WebSocket client, a second source.
//! - [`subscriptions`]: the keeper that makes Dataloy's webhook subscriptions match the
//!   declared ones, through [`dataloy`], the REST client (token, `WebhookSubscription`).
//! - [`cli`]: the command line (the server, and subcommands: `subscriptions plan`,
//!   `dead-letters replay`, `spool status`, …).
//! - [`tls`]: one TLS configuration shape for every client (CA, client certificate, server
//!   name) and reloadable certificates for the listeners.
//! - [`trace_context`]: W3C `traceparent`/`tracestate`, carried from the request to the queues.
//! - [`metrics`], [`telemetry`]: Prometheus metrics, structured logs and OpenTelemetry spans.
//! - `fuzzing` (hidden): the invariants the fuzz targets in `fuzz/` check, replayed by `cargo test`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod dataloy;
pub mod dead_letter;
pub mod dedup;
pub mod descriptors;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod id_journal;
pub mod ingest;
pub mod metrics;
pub mod notification;
pub mod relay;
pub mod routes;
pub mod sink;
pub mod spool;
pub mod startup;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod websocket;
