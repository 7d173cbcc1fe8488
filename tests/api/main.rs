//! Integration tests: the real server on port 0, real files, the real binary where a test needs
//! a process to kill.

mod admin;
mod config;
mod crash;
mod dead_letters_cli;
mod dedup;
mod durability;
mod envelope_properties;
mod fake_dataloy;
mod file_sink;
mod helpers;
mod hostile;
mod kafka;
mod kafka_broker;
mod kafka_publish;
mod rabbitmq;
mod rabbitmq_broker;
mod relay_per_sink;
mod shared_dedup;
mod spool;
mod spool_damage;
mod spool_operator;
mod spool_progress;
mod spool_reader;
mod subscription_loop;
mod subscriptions;
mod subscriptions_cli;
mod validation;
mod webhook;
mod websocket;
mod websocket_flow;
