//! The subscription keeper. After five failed deliveries Dataloy deactivates a webhook
//! subscription for good, and every later event is silently missed. The gateway therefore keeps
//! the subscriptions that feed it declared in its configuration (`[subscriptions.NAME]`) and
//! makes Dataloy match them: [`desired`] says how a declared one is recognised, [`plan`] what
//! differs, [`keeper`] reconciles at start-up and every `dataloy.reconcile_interval`.

pub mod desired;
pub mod keeper;
pub mod plan;

use crate::config::Settings;
use crate::dataloy::DataloyError;
use crate::metrics::Metrics;
pub use keeper::{ChangeResult, Keeper, MissedWindow, Report};
pub use plan::{Action, Plan};

/// The keeper, when `[dataloy]` and at least one subscription are configured.
pub fn keeper_if_configured(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Option<Keeper>, DataloyError> {
    match &settings.dataloy {
        Some(dataloy) if !settings.subscriptions.is_empty() => Ok(Some(Keeper::new(
            dataloy,
            &settings.subscriptions,
            metrics.clone(),
        )?)),
        _ => Ok(None),
    }
}
