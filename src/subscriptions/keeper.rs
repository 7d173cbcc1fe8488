//! One reconcile (list, then create, re-create, update and, with `prune`, delete) and the loop
//! that runs it at start-up and every `reconcile_interval`, retrying sooner with backoff after a
//! failure. It runs beside the webhook path and shares nothing with it but the metrics registry.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::desired::DesiredSubscription;
use super::plan::{Action, Plan};
use crate::config::{DataloySettings, SubscriptionSettings};
use crate::dataloy::{DataloyClient, DataloyError, Operation, RemoteSubscription, SubscriptionKey};
use crate::metrics::Metrics;

pub struct Keeper {
    client: DataloyClient,
    desired: Vec<DesiredSubscription>,
    prune: bool,
    time_zone: FixedOffset,
    interval: Duration,
    retry_initial_backoff: Duration,
    metrics: Metrics,
    /// When each declared subscription was last seen active: the start of its missed window if
    /// Dataloy deactivates it without an `unsubscriptionDate`.
    last_seen_active: parking_lot::Mutex<HashMap<String, SystemTime>>,
    /// `(key, attribute)` of members Dataloy still listed as `null` after an update set them:
    /// it writes members it does not show as `null`, so they are no longer compared (else
    /// every reconcile would update the subscription again).
    unreported: parking_lot::Mutex<HashSet<(SubscriptionKey, &'static str)>>,
}

/// What one reconcile found and did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub plan: Plan,
    pub changes: Vec<ChangeResult>,
    /// After changes: what still differs when Dataloy was listed again (`None` when nothing was
    /// changed, or the second list failed).
    pub remaining: Option<Plan>,
    /// Why the second list failed.
    pub check_error: Option<String>,
}

/// The outcome of one change.
#[derive(Debug, Serialize)]
pub struct ChangeResult {
    /// `subscription NAME`, or `undeclared subscription KEY`.
    pub subject: String,
    pub action: &'static str,
    /// Why it failed; `None` when Dataloy took the change.
    pub error: Option<String>,
    /// For a re-creation: the window whose notifications Dataloy never sent.
    pub missed: Option<MissedWindow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MissedWindow {
    /// Dataloy's `unsubscriptionDate` as it gave it, else when this process last saw the
    /// subscription active; `None` if neither is known.
    pub from: Option<String>,
    /// When the new subscription was created (UTC).
    pub until: String,
    pub seconds: Option<u64>,
}

/// The label of `subscription_reconcile_errors_total` counting reconciles after which Dataloy,
/// listed again, still did not match the configuration although every change was accepted.
pub const VERIFY: &str = "verify";

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &ChangeResult> {
        self.changes.iter().filter(|c| c.error.is_some())
    }

    /// What differs after the reconcile: the plan made after the changes (the first one when
    /// nothing was changed); `None` when the second list failed.
    pub fn after(&self) -> Option<&Plan> {
        if self.changes.is_empty() {
            Some(&self.plan)
        } else {
            self.remaining.as_ref()
        }
    }

    /// Whether Dataloy matches the configuration after this reconcile: every change was
    /// accepted and the list made afterwards shows nothing left to change.
    pub fn matches(&self) -> bool {
        self.failures().next().is_none() && self.after().is_some_and(|plan| plan.changes() == 0)
    }

    /// Each subscription that failed or still differs, once, as `subject (action)`.
    pub fn unmatched(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .failures()
            .map(|f| format!("{} ({})", f.subject, f.action))
            .collect();
        if let Some(plan) = self.after() {
            for pending in plan.pending() {
                let subject = pending.split(" (").next().unwrap_or_default();
                if !names.iter().any(|n| n.split(" (").next() == Some(subject)) {
                    names.push(pending);
                }
            }
        }
        if let Some(e) = &self.check_error {
            names.push(format!("checking the result: {e}"));
        }
        names
    }
}

impl Keeper {
    pub fn new(
        settings: &DataloySettings,
        subscriptions: &std::collections::BTreeMap<String, SubscriptionSettings>,
        metrics: Metrics,
    ) -> Result<Keeper, DataloyError> {
        metrics.subscriptions().declare(
            subscriptions.keys().map(String::as_str),
            Operation::ALL.iter().map(|o| o.as_str()).chain([VERIFY]),
        );
        Ok(Keeper {
            client: DataloyClient::new(
                settings,
                subscriptions
                    .values()
                    .flat_map(|s| strings_in(&serde_json::Value::Object(s.extra.0.clone()))),
            )?,
            desired: subscriptions
                .iter()
                .map(|(name, s)| DesiredSubscription::new(name, s))
                .collect(),
            prune: settings.prune,
            time_zone: settings.time_zone(),
            interval: settings.reconcile_interval,
            retry_initial_backoff: settings.retry_initial_backoff,
            metrics,
            last_seen_active: parking_lot::Mutex::default(),
            unreported: parking_lot::Mutex::default(),
        })
    }

    /// Every subscription Dataloy lists.
    pub async fn list(&self) -> Result<Vec<RemoteSubscription>, DataloyError> {
        self.client.list_subscriptions().await.inspect_err(|e| {
            self.metrics
                .subscriptions()
                .reconcile_failed(e.operation().map_or("list", |o| o.as_str()));
        })
    }

    /// The name of the declaration `remote` is an instance of, if any.
    pub fn declared_name_of(&self, remote: &RemoteSubscription) -> Option<&str> {
        self.desired
            .iter()
            .find(|d| d.matches(remote))
            .map(|d| d.name.as_str())
    }

    /// What a reconcile would change now; changes nothing.
    pub async fn plan(&self) -> Result<Plan, DataloyError> {
        Ok(self.plan_for(&self.list().await?))
    }

    /// Lists Dataloy's subscriptions and makes them match the declared ones. `Err` when the list
    /// failed; a failed change is in the report (the others are still made).
    pub async fn reconcile(&self) -> Result<Report, DataloyError> {
        let remote = self.list().await?;
        let plan = self.plan_for(&remote);
        let mut changes = Vec::new();
        for (desired, planned) in self.desired.iter().zip(&plan.subscriptions) {
            let name = desired.name.as_str();
            let subject = format!("subscription {name}");
            let active = match &planned.action {
                Action::Unchanged { .. } => true,
                Action::Update { key, .. } => {
                    let body = desired.request.body(&desired.extra, true);
                    let result = match key {
                        Some(key) => self.client.update_subscription(key, &body).await,
                        None => Err(keyless(Operation::Update)),
                    };
                    changes.push(self.finish(subject, "update", result, None));
                    true
                }
                Action::Create => {
                    let body = desired.request.body(&desired.extra, false);
                    let result = self.client.create_subscription(&body).await;
                    let created = result.is_ok();
                    changes.push(self.finish(subject, "create", result, None));
                    created
                }
                Action::Recreate {
                    deactivated_key,
                    unsubscription_date,
                } => {
                    let body = desired.request.body(&desired.extra, false);
                    let result = self.client.create_subscription(&body).await;
                    let created = result.is_ok();
                    let missed = created.then(|| {
                        self.report_missed_window(
                            name,
                            deactivated_key.as_ref(),
                            unsubscription_date.as_deref(),
                        )
                    });
                    changes.push(self.finish(subject, "recreate", result, missed));
                    created
                }
            };
            if active {
                self.last_seen_active
                    .lock()
                    .insert(name.to_owned(), SystemTime::now());
            }
            self.metrics.subscriptions().set_active(name, active);
        }
        for undeclared in &plan.undeclared {
            let key = undeclared.key.as_ref();
            let subject = format!(
                "undeclared subscription {}",
                key.map_or("(no key)", |k| k.0.as_str())
            );
            if !undeclared.delete {
                tracing::debug!(
                    key = key.map(|k| k.0.as_str()),
                    url = %undeclared.url,
                    "an undeclared subscription delivers to this gateway; left alone (dataloy.prune is off)"
                );
                continue;
            }
            let result = match key {
                Some(key) => self.client.delete_subscription(key).await,
                None => Err(keyless(Operation::Delete)),
            };
            changes.push(self.finish(subject, "delete", result, None));
        }
        let mut report = Report {
            plan,
            changes,
            remaining: None,
            check_error: None,
        };
        if !report.changes.is_empty() {
            self.check(&mut report).await;
        }
        if report.matches() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.metrics.subscriptions().reconciled(now.as_secs_f64());
        }
        Ok(report)
    }

    /// The plan for `remote`, without drift in members Dataloy was seen not to report.
    fn plan_for(&self, remote: &[RemoteSubscription]) -> Plan {
        let mut plan = Plan::new(&self.desired, remote, self.prune);
        self.forgive(&mut plan);
        plan
    }

    fn forgive(&self, plan: &mut Plan) {
        let unreported = self.unreported.lock();
        if unreported.is_empty() {
            return;
        }
        for planned in &mut plan.subscriptions {
            if let Action::Update {
                key: Some(key),
                drift,
            } = &mut planned.action
            {
                drift.retain(|d| !unreported.contains(&(key.clone(), d.attribute)));
                if drift.is_empty() {
                    planned.action = Action::Unchanged {
                        key: Some(key.clone()),
                    };
                }
            }
        }
    }

    /// A `json` or `expression` this reconcile's update set, which Dataloy, listed again, still
    /// gives as `null`: Dataloy does not show it. Warned about once, and no longer compared.
    fn learn_unreported(&self, report: &Report, after: &mut Plan, remote: &[RemoteSubscription]) {
        for planned in &after.subscriptions {
            let Action::Update {
                key: Some(key),
                drift,
            } = &planned.action
            else {
                continue;
            };
            let subject = format!("subscription {}", planned.name);
            let updated = report
                .changes
                .iter()
                .any(|c| c.subject == subject && c.action == "update" && c.error.is_none());
            let Some(found) = remote.iter().find(|r| r.key.as_ref() == Some(key)) else {
                continue;
            };
            for d in drift {
                let null = match d.attribute {
                    "json" => found.json == Some(None),
                    "expression" => found.expression == Some(None),
                    _ => false,
                };
                if updated && null && self.unreported.lock().insert((key.clone(), d.attribute)) {
                    tracing::warn!(
                        subscription = planned.name.as_str(),
                        key = key.0.as_str(),
                        attribute = d.attribute,
                        "Dataloy still lists this member as null after the update set it: it \
                         does not show it, so it is no longer compared"
                    );
                }
            }
        }
    }

    /// Lists Dataloy again after changes: a change Dataloy accepted but did not make (a create
    /// that never shows in the list) would otherwise be made again at every reconcile, each
    /// time counted as a success. What still differs is counted (`verify`) and warned about.
    async fn check(&self, report: &mut Report) {
        let remote = match self.list().await {
            Ok(remote) => remote,
            Err(e) => {
                report.check_error = Some(e.to_string());
                return;
            }
        };
        let mut after = Plan::new(&self.desired, &remote, self.prune);
        self.learn_unreported(report, &mut after, &remote);
        self.forgive(&mut after);
        for planned in &after.subscriptions {
            if matches!(planned.action, Action::Create | Action::Recreate { .. }) {
                self.metrics
                    .subscriptions()
                    .set_active(&planned.name, false);
            }
        }
        let accepted = report.failures().next().is_none();
        report.remaining = Some(after);
        if accepted && !report.matches() {
            self.metrics.subscriptions().reconcile_failed(VERIFY);
            tracing::warn!(
                still_differing = report.unmatched().join("; "),
                "Dataloy accepted every change but, listed again, still does not match the \
                 configuration"
            );
        }
    }

    /// Logs and counts one change's outcome.
    fn finish(
        &self,
        subject: String,
        action: &'static str,
        result: Result<(), DataloyError>,
        missed: Option<MissedWindow>,
    ) -> ChangeResult {
        let error = match result {
            Ok(()) => {
                if action != "recreate" {
                    self.metrics.subscriptions().changed(action);
                }
                tracing::info!(subject, action, "changed a Dataloy subscription");
                None
            }
            Err(e) => {
                self.metrics
                    .subscriptions()
                    .reconcile_failed(e.operation().map_or(action, |o| o.as_str()));
                tracing::warn!(subject, action, error = %e, "could not change a Dataloy subscription");
                Some(e.to_string())
            }
        };
        ChangeResult {
            subject,
            action,
            error,
            missed,
        }
    }

    /// A deactivated subscription was just created anew: the notifications between its
    /// deactivation and now were never sent. Warns with the window (so an operator knows what
    /// to backfill) and counts it.
    fn report_missed_window(
        &self,
        name: &str,
        deactivated_key: Option<&SubscriptionKey>,
        unsubscription_date: Option<&str>,
    ) -> MissedWindow {
        let now = SystemTime::now();
        let from = match unsubscription_date {
            Some(date) => parse_dataloy_time(date, self.time_zone),
            None => self.last_seen_active.lock().get(name).copied(),
        };
        let seconds = from.map(|from| now.duration_since(from).unwrap_or_default().as_secs());
        let window = MissedWindow {
            from: unsubscription_date
                .map(str::to_owned)
                .or_else(|| from.map(utc_text)),
            until: utc_text(now),
            seconds,
        };
        self.metrics
            .subscriptions()
            .recreated(name, seconds.map(Duration::from_secs));
        tracing::warn!(
            subscription = name,
            deactivated_key = deactivated_key.map(|k| k.0.as_str()),
            missed_from = window.from.as_deref().unwrap_or("unknown"),
            missed_until = %window.until,
            missed_seconds = seconds,
            "Dataloy had deactivated this subscription; it is re-created now, and the \
             notifications in the missed window were never sent: backfill them"
        );
        window
    }

    /// Reconciles at once and then every `reconcile_interval` until `stop` turns true; after a
    /// failure it retries sooner, backing off from `retry_initial_backoff` to the interval.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            subscriptions = self.desired.len(),
            interval = %humantime::format_duration(self.interval),
            "subscription keeper started"
        );
        let mut delays = None;
        loop {
            let succeeded = tokio::select! {
                succeeded = self.reconcile_and_log() => succeeded,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let wait = if succeeded {
                delays = None;
                self.interval
            } else {
                delays
                    .get_or_insert_with(|| retry_delays(self.retry_initial_backoff, self.interval))
                    .next()
                    .unwrap_or(self.interval)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn reconcile_and_log(&self) -> bool {
        match self.reconcile().await {
            Ok(report) => {
                let matches = report.matches();
                if !matches {
                    tracing::warn!(
                        unmatched = report.unmatched().join("; "),
                        "reconcile left Dataloy's subscriptions unlike the configuration; retrying with backoff"
                    );
                } else if !report.changes.is_empty() {
                    tracing::info!(
                        changes = report.changes.len(),
                        "Dataloy's subscriptions match the configuration again"
                    );
                }
                matches
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list Dataloy's subscriptions; retrying with backoff");
                false
            }
        }
    }
}

/// Delays between retries after failed reconciles: from `initial`, doubling with jitter, never
/// longer than `interval`.
fn retry_delays(initial: Duration, interval: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(initial)
        .with_max_delay(interval)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |delay| delay.min(interval))
}

/// Every string inside `value` (the `extra` tables, which may hold credentials).
fn strings_in(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(strings_in).collect(),
        serde_json::Value::Object(members) => members.values().flat_map(strings_in).collect(),
        _ => Vec::new(),
    }
}

fn keyless(operation: crate::dataloy::Operation) -> DataloyError {
    DataloyError::InvalidResponse {
        operation,
        reason: "Dataloy listed this subscription without a key".into(),
    }
}

/// A Dataloy timestamp: RFC 3339, or (as Dataloy writes them) a local date-time without zone,
/// read in `time_zone`.
fn parse_dataloy_time(text: &str, time_zone: FixedOffset) -> Option<SystemTime> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.into());
    }
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    naive
        .and_local_timezone(time_zone)
        .single()
        .map(SystemTime::from)
}

fn utc_text(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataloy_times_are_read_in_the_configured_zone() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let cet = FixedOffset::east_opt(3600).unwrap();
        let at = |text, zone| {
            parse_dataloy_time(text, zone)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at("2016-09-14T13:37:26", utc), 1_473_860_246);
        assert_eq!(at("2016-09-14T13:37:26", cet), 1_473_860_246 - 3600);
        assert_eq!(at("2016-09-14T13:37:26.5", utc), 1_473_860_246);
        assert_eq!(at("2016-09-14T13:37:26+02:00", utc), 1_473_860_246 - 7200);
        assert_eq!(parse_dataloy_time("yesterday", utc), None);
    }

    #[test]
    fn the_retry_delay_grows_from_the_initial_backoff_and_stays_within_the_interval() {
        let initial = Duration::from_millis(100);
        let interval = Duration::from_secs(2);
        let mut delays = retry_delays(initial, interval);
        let first: Vec<Duration> = delays.by_ref().take(5).collect();
        assert!(first[0] >= initial && first[0] < initial * 2, "{first:?}");
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
        assert!(delays.take(20).all(|d| d == interval));
    }
}
