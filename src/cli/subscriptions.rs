//! `subscriptions plan|apply|list`: what the keeper would change in Dataloy, one reconcile made
//! by hand, and what Dataloy holds. Human-readable on stdout, or `--json` for scripts; logs go
//! to stderr.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{print, EXIT_CONFIG, EXIT_FAILED};
use crate::config::Settings;
use crate::dataloy::RemoteSubscription;
use crate::metrics::Metrics;
use crate::subscriptions::{Action, ChangeResult, Keeper, Plan};
use crate::telemetry;

#[derive(Args)]
pub struct SubscriptionsArgs {
    #[command(subcommand)]
    action: SubscriptionsAction,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum SubscriptionsAction {
    /// Show what a reconcile would change in Dataloy; changes nothing.
    Plan,
    /// Reconcile once; exit 0 once Dataloy matches the configuration, 1 naming what failed.
    Apply,
    /// List the subscriptions Dataloy holds, with the declaration each one belongs to.
    List,
}

pub async fn run(settings: Settings, args: SubscriptionsArgs) -> ExitCode {
    telemetry::init_for_command(&settings.log);
    let Some(dataloy) = &settings.dataloy else {
        eprintln!(
            "dataloy-gateway: the configuration has no [dataloy] table (base_url, token_url, \
             client_id, client_secret), so Dataloy cannot be reached"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let keeper = match Keeper::new(dataloy, &settings.subscriptions, Metrics::new()) {
        Ok(keeper) => keeper,
        Err(e) => return failed("subscriptions", &e),
    };
    match args.action {
        SubscriptionsAction::Plan => match keeper.plan().await {
            Ok(plan) => {
                print(args.json, &plan, || plan_text(&plan));
                ExitCode::SUCCESS
            }
            Err(e) => failed("subscriptions plan", &e),
        },
        SubscriptionsAction::Apply => apply(&keeper, args.json).await,
        SubscriptionsAction::List => match keeper.list().await {
            Ok(remote) => {
                let listed: Vec<Listed> = remote
                    .iter()
                    .map(|r| Listed {
                        declared_as: keeper.declared_name_of(r),
                        subscription: r,
                    })
                    .collect();
                print(args.json, &listed, || list_text(&listed));
                ExitCode::SUCCESS
            }
            Err(e) => failed("subscriptions list", &e),
        },
    }
}

#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    subscription: &'a RemoteSubscription,
    declared_as: Option<&'a str>,
}

#[derive(Serialize)]
struct Applied<'a> {
    /// Whether Dataloy matches the configuration after the reconcile.
    matches: bool,
    changes: &'a [ChangeResult],
    /// What still differs (listed again after the changes), when the list succeeded.
    remaining: Option<&'a Plan>,
    error: Option<String>,
}

/// One reconcile; the keeper lists again after changes to check that Dataloy now matches.
async fn apply(keeper: &Keeper, json: bool) -> ExitCode {
    let report = match keeper.reconcile().await {
        Ok(report) => report,
        Err(e) => return failed("subscriptions apply", &e),
    };
    let matches = report.matches();
    let applied = Applied {
        matches,
        changes: &report.changes,
        remaining: report.after(),
        error: report.check_error.clone(),
    };
    print(json, &applied, || apply_text(&applied));
    if matches {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "dataloy-gateway: subscriptions apply: Dataloy does not match the configuration: {}",
        report.unmatched().join("; ")
    );
    ExitCode::from(EXIT_FAILED)
}

fn failed(command: &str, error: &dyn std::error::Error) -> ExitCode {
    eprintln!("dataloy-gateway: {command}: {error}");
    ExitCode::from(EXIT_FAILED)
}

fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for s in &plan.subscriptions {
        let head = format!("subscription {} ({} -> {})", s.name, s.target, s.url);
        let _ =
            match &s.action {
                Action::Unchanged { key } => {
                    writeln!(out, "{head}: up to date (key {})", key_text(key))
                }
                Action::Create => writeln!(out, "{head}: create"),
                Action::Recreate {
                    deactivated_key,
                    unsubscription_date,
                } => writeln!(
                out,
                "{head}: re-create; key {} was deactivated {}: notifications since then are missed",
                key_text(deactivated_key),
                unsubscription_date
                    .as_deref()
                    .map_or("(no unsubscriptionDate given)".to_owned(), |d| format!("on {d}")),
            ),
                Action::Update { key, drift } => {
                    let _ = writeln!(out, "{head}: update key {}", key_text(key));
                    for d in drift {
                        let _ = writeln!(out, "    {}: {} -> {}", d.attribute, d.found, d.declared);
                    }
                    Ok(())
                }
            };
    }
    for u in &plan.undeclared {
        let target = u
            .target
            .as_ref()
            .map_or("?".to_owned(), ToString::to_string);
        let _ = writeln!(
            out,
            "undeclared subscription {} ({target} -> {}): {}",
            key_text(&u.key),
            u.url,
            if u.delete {
                "delete (dataloy.prune is on)"
            } else {
                "left alone"
            }
        );
    }
    let _ = match plan.changes() {
        0 => writeln!(out, "No changes: Dataloy matches the configuration."),
        1 => writeln!(out, "1 change to apply."),
        n => writeln!(out, "{n} changes to apply."),
    };
    out
}

fn apply_text(applied: &Applied<'_>) -> String {
    let mut out = String::new();
    for change in applied.changes {
        let _ = match &change.error {
            None => writeln!(out, "{}: {} done", change.subject, change.action),
            Some(e) => writeln!(out, "{}: {} FAILED: {e}", change.subject, change.action),
        };
        if let Some(missed) = &change.missed {
            let _ = writeln!(
                out,
                "    notifications from {} until {}{} were missed: backfill them",
                missed.from.as_deref().unwrap_or("(unknown)"),
                missed.until,
                missed
                    .seconds
                    .map_or(String::new(), |s| format!(" ({s} s)")),
            );
        }
    }
    if applied.changes.is_empty() {
        let _ = writeln!(out, "Nothing to change.");
    }
    let _ = if applied.matches {
        writeln!(out, "Dataloy matches the configuration.")
    } else {
        writeln!(out, "Dataloy does not match the configuration yet.")
    };
    out
}

fn list_text(listed: &[Listed<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<32} {:<28} {:<16} URL",
        "KEY", "STATE", "TARGET", "DECLARED AS"
    );
    for l in listed {
        let s = l.subscription;
        let state = match (&s.unsubscription_date, s.active) {
            (_, true) => "active".to_owned(),
            (Some(date), false) => format!("deactivated {date}"),
            (None, false) => "deactivated".to_owned(),
        };
        let target = s
            .target
            .as_ref()
            .map_or("?".to_owned(), ToString::to_string);
        let _ = writeln!(
            out,
            "{:<12} {:<32} {:<28} {:<16} {}",
            key_text(&s.key),
            state,
            target,
            l.declared_as.unwrap_or("-"),
            s.url.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(out, "{} subscriptions.", listed.len());
    out
}

fn key_text(key: &Option<crate::dataloy::SubscriptionKey>) -> &str {
    key.as_ref().map_or("(none)", |k| k.0.as_str())
}
