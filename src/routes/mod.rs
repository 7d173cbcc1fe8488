//! HTTP routes: the notification listener (`webhook`) and the admin listener (`health`,
//! `metrics`), plus the JSON error body they share.

pub mod error;
pub mod health;
pub mod metrics;
pub mod webhook;
