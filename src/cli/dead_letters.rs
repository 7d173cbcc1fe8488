//! `dead-letters list|show|replay|purge`: what an operator does with the notifications a sink
//! refused for good. Each works on the store in the configured directory whether the gateway
//! runs or not: the gateway only ever adds entries (written whole, then renamed into place), and
//! a command takes an entry with an exclusive lock before it replays or removes it, so two
//! commands never replay the same entry twice.
//!
//! A replay publishes the entry through the sink that refused it, built from the same
//! configuration — that sink only, never the others — and removes the entry once the broker
//! confirmed it. What stays (refused again, broker away) is named, and the exit code is 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{print, EXIT_FAILED};
use crate::config::Settings;
use crate::dead_letter::forward::{Mark, Marks, DESTINATIONS};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterMeta, DeadLetterStore};
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::notification::{unix_millis, Notification};
use crate::sink::{self, SinkError};
use crate::spool::status::gateway_holds;
use crate::telemetry;

#[derive(Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    action: DeadLettersAction,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum DeadLettersAction {
    /// List the entries, oldest first.
    List {
        /// Only the entries of this sink (file, kafka, rabbitmq).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Show the entries of one notification: metadata and body.
    Show {
        /// A notification id, or an entry name as `list` shows it.
        id: String,
        /// Write only the body, byte for byte (of the first entry, when several match).
        #[arg(long)]
        body: bool,
    },
    /// Publish entries again, each to the sink that refused it (only that sink); an entry is
    /// removed once the broker confirmed it.
    Replay {
        /// Only this notification id (or entry name).
        #[arg(long)]
        id: Option<String>,
        /// Only the entries of this sink.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Delete entries for good.
    #[command(group(ArgGroup::new("which").required(true).multiple(true).args(["all", "id", "older_than"])))]
    Purge {
        /// Every entry (of `--sink`, if given).
        #[arg(long)]
        all: bool,
        /// Only this notification id (or entry name).
        #[arg(long)]
        id: Option<String>,
        /// Only the entries of this sink.
        #[arg(long)]
        sink: Option<String>,
        /// Only entries stored longer ago than this (e.g. `7d`, `12h`).
        #[arg(long)]
        older_than: Option<humantime::Duration>,
    },
}

pub async fn run(settings: Settings, args: DeadLettersArgs) -> ExitCode {
    telemetry::init_for_command(&settings.log);
    let dir = settings.dead_letter_dir();
    let store = match DeadLetterStore::inspect(&dir, settings.dead_letters.max_bytes.bytes()) {
        Ok(store) => store,
        Err(e) => return failed("dead-letters", &e.to_string()),
    };
    let json = args.json;
    match args.action {
        DeadLettersAction::List { sink } => list(&store, sink.as_deref(), json),
        DeadLettersAction::Show { id, body } => show(&store, &id, body, json),
        DeadLettersAction::Replay { id, sink } => {
            replay(&settings, &store, id.as_deref(), sink.as_deref(), json).await
        }
        DeadLettersAction::Purge {
            all: _,
            id,
            sink,
            older_than,
        } => purge(
            &store,
            id.as_deref(),
            sink.as_deref(),
            older_than.map(Into::into),
            json,
        ),
    }
}

fn failed(command: &str, why: &str) -> ExitCode {
    eprintln!("dataloy-gateway: {command}: {why}");
    ExitCode::from(EXIT_FAILED)
}

/// An entry as listed: its metadata, or why it cannot be read.
#[derive(Serialize)]
struct Listed {
    name: String,
    #[serde(flatten)]
    meta: Option<DeadLetterMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    damaged: Option<String>,
    /// What `[dead_letters.forward.*]` did with it, by destination (`forwarded`, or `refused`:
    /// set aside); a destination not named has not dealt with it (yet).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    forward: BTreeMap<&'static str, Mark>,
}

#[derive(Serialize)]
struct Listing {
    dir: String,
    count: usize,
    bytes: u64,
    entries: Vec<Listed>,
}

fn list(store: &DeadLetterStore, sink: Option<&str>, json: bool) -> ExitCode {
    let names = match store.select(None, sink) {
        Ok(names) => names,
        Err(e) => return failed("dead-letters list", &e.to_string()),
    };
    let mut marks = Vec::new();
    for destination in DESTINATIONS {
        match Marks::inspect(store.dir(), destination).load() {
            Ok(loaded) => marks.push((destination, loaded)),
            Err(e) => return failed("dead-letters list", &format!("forward marks: {e}")),
        }
    }
    let forward_of = |name: &str| {
        marks
            .iter()
            .filter_map(|(destination, loaded)| loaded.get(name).map(|m| (*destination, *m)))
            .collect()
    };
    let entries: Vec<Listed> = names
        .into_iter()
        .map(|name| match store.read(&name) {
            Ok(entry) => Listed {
                forward: forward_of(&name),
                name,
                meta: Some(entry.meta),
                damaged: None,
            },
            Err(e) => Listed {
                forward: forward_of(&name),
                name,
                meta: None,
                damaged: Some(e.to_string()),
            },
        })
        .collect();
    let listing = Listing {
        dir: store.dir().display().to_string(),
        count: entries.len(),
        bytes: store.used_bytes(),
        entries,
    };
    print(json, &listing, || list_text(&listing));
    ExitCode::SUCCESS
}

fn list_text(listing: &Listing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<24} {:<9} {:<16} {:<20} {:>8} {:>9}  ERROR",
        "NAME", "ID", "SINK", "REASON", "LAST ATTEMPT (UTC)", "ATTEMPTS", "BYTES"
    );
    for entry in &listing.entries {
        let _ = match (&entry.meta, &entry.damaged) {
            (Some(m), _) => writeln!(
                out,
                "{:<44} {:<24} {:<9} {:<16} {:<20} {:>8} {:>9}  {}",
                entry.name,
                m.id,
                m.sink,
                m.reason.as_str(),
                time_text(m.last_attempt_ms),
                m.attempts,
                m.body_bytes,
                one_line(&m.error, 100),
            ),
            (None, damaged) => writeln!(
                out,
                "{:<44} DAMAGED: {}",
                entry.name,
                damaged.as_deref().unwrap_or("unreadable")
            ),
        };
    }
    let _ = writeln!(
        out,
        "{} dead letters, {} bytes, in {}.",
        listing.count, listing.bytes, listing.dir
    );
    out
}

/// An entry with its body: as JSON when it is JSON (it always is when the gateway stored it),
/// else as text.
#[derive(Serialize)]
struct Shown {
    name: String,
    #[serde(flatten)]
    meta: DeadLetterMeta,
    body: Body,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body {
    Json(Box<RawValue>),
    Text(String),
}

fn show(store: &DeadLetterStore, id: &str, body_only: bool, json: bool) -> ExitCode {
    let names = match store.select(Some(id), None) {
        Ok(names) if names.is_empty() => {
            return failed(
                "dead-letters show",
                &format!("no dead letter matches `{id}`"),
            )
        }
        Ok(names) => names,
        Err(e) => return failed("dead-letters show", &e.to_string()),
    };
    let mut entries = Vec::with_capacity(names.len());
    for name in &names {
        match store.read(name) {
            Ok(entry) => entries.push(entry),
            Err(e) => return failed("dead-letters show", &e.to_string()),
        }
    }
    if body_only {
        let _ = std::io::stdout().write_all(&entries[0].body);
        return ExitCode::SUCCESS;
    }
    let shown: Vec<Shown> = entries.into_iter().map(shown).collect();
    print(json, &shown, || show_text(&shown));
    ExitCode::SUCCESS
}

fn shown(entry: DeadLetter) -> Shown {
    let text = String::from_utf8_lossy(&entry.body).into_owned();
    let body = match RawValue::from_string(text.clone()) {
        Ok(raw) => Body::Json(raw),
        Err(_) => Body::Text(text),
    };
    Shown {
        name: entry.meta.name.clone(),
        meta: entry.meta,
        body,
    }
}

fn show_text(shown: &[Shown]) -> String {
    let mut out = String::new();
    for s in shown {
        let m = &s.meta;
        let _ = writeln!(out, "entry:          {}", s.name);
        let _ = writeln!(out, "id:             {}", m.id);
        let _ = writeln!(out, "sink:           {}", m.sink);
        let _ = writeln!(out, "reason:         {}", m.reason.as_str());
        let _ = writeln!(out, "error:          {}", m.error);
        let _ = writeln!(out, "object type:    {} ({})", m.object_type, m.event_type);
        let _ = writeln!(out, "received:       {}", time_text(m.received_at_ms));
        let _ = writeln!(out, "first attempt:  {}", time_text(m.first_attempt_ms));
        let _ = writeln!(out, "last attempt:   {}", time_text(m.last_attempt_ms));
        let _ = writeln!(out, "attempts:       {}", m.attempts);
        if let Some(traceparent) = &m.traceparent {
            let _ = writeln!(out, "traceparent:    {traceparent}");
        }
        if let Some(tracestate) = &m.tracestate {
            let _ = writeln!(out, "tracestate:     {tracestate}");
        }
        let _ = writeln!(out, "body:           {} bytes", m.body_bytes);
        let _ = match &s.body {
            Body::Json(raw) => writeln!(out, "{}", raw.get()),
            Body::Text(text) => writeln!(out, "{text}"),
        };
        out.push('\n');
    }
    out
}

/// What became of one entry in a replay or purge.
#[derive(Serialize)]
struct Outcome {
    name: String,
    id: Option<String>,
    sink: Option<String>,
    /// `replayed`, `purged`, `gone` (removed by another command meanwhile), `failed`, or
    /// `not_attempted` (its sink failed on an earlier entry).
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl Outcome {
    fn new(name: &str, meta: Option<&DeadLetterMeta>, outcome: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            id: meta.map(|m| m.id.clone()),
            sink: meta.map(|m| m.sink.clone()),
            outcome,
            detail: None,
        }
    }

    fn because(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn is_failure(&self) -> bool {
        matches!(self.outcome, "failed" | "not_attempted")
    }
}

#[derive(Serialize)]
struct Report {
    done: usize,
    failed: usize,
    entries: Vec<Outcome>,
}

/// Prints the outcomes; exit 0 when every selected entry was dealt with, else 1 naming them.
fn finish(command: &str, verb: &str, entries: Vec<Outcome>, json: bool) -> ExitCode {
    let failed_entries: Vec<String> = entries
        .iter()
        .filter(|o| o.is_failure())
        .map(|o| format!("{} ({})", o.name, o.detail.as_deref().unwrap_or(o.outcome)))
        .collect();
    let report = Report {
        done: entries.len() - failed_entries.len(),
        failed: failed_entries.len(),
        entries,
    };
    print(json, &report, || {
        let mut out = String::new();
        for o in &report.entries {
            let _ = writeln!(
                out,
                "{} {} {}: {}{}",
                o.name,
                o.id.as_deref().unwrap_or("?"),
                o.sink.as_deref().unwrap_or("?"),
                o.outcome,
                o.detail
                    .as_deref()
                    .map_or(String::new(), |d| format!(": {d}"))
            );
        }
        let _ = writeln!(out, "{} {verb}, {} failed.", report.done, report.failed);
        out
    });
    if failed_entries.is_empty() {
        ExitCode::SUCCESS
    } else {
        failed(command, &format!("not done: {}", failed_entries.join("; ")))
    }
}

/// The entries `id` and `sink` select; an id that matches nothing is an error.
fn selection(
    store: &DeadLetterStore,
    id: Option<&str>,
    sink: Option<&str>,
) -> Result<Vec<String>, String> {
    let names = store.select(id, sink).map_err(|e| e.to_string())?;
    match id {
        Some(id) if names.is_empty() => Err(format!(
            "no dead letter matches `{id}`{}",
            sink.map_or(String::new(), |s| format!(" for sink `{s}`"))
        )),
        _ => Ok(names),
    }
}

/// An entry selected for a replay: its name, and the entry or why it cannot be read.
type Selected = (String, Result<DeadLetter, DeadLetterError>);

async fn replay(
    settings: &Settings,
    store: &DeadLetterStore,
    id: Option<&str>,
    sink: Option<&str>,
    json: bool,
) -> ExitCode {
    let names = match selection(store, id, sink) {
        Ok(names) => names,
        Err(why) => return failed("dead-letters replay", &why),
    };
    // Group by sink, keeping each sink's entries oldest first.
    let mut by_sink: BTreeMap<String, Vec<Selected>> = BTreeMap::new();
    for name in names {
        let entry = store.read(&name);
        let sink = match &entry {
            Ok(entry) => entry.meta.sink.clone(),
            Err(_) => String::new(),
        };
        by_sink.entry(sink).or_default().push((name, entry));
    }
    let mut outcomes = Vec::new();
    for (sink_name, entries) in by_sink {
        replay_to_sink(settings, store, &sink_name, entries, &mut outcomes).await;
    }
    finish("dead-letters replay", "replayed", outcomes, json)
}

async fn replay_to_sink(
    settings: &Settings,
    store: &DeadLetterStore,
    sink_name: &str,
    entries: Vec<Selected>,
    outcomes: &mut Vec<Outcome>,
) {
    let not_replayable = if sink_name.is_empty() {
        None // damaged entries: reported one by one below
    } else if sink_name == "file" && gateway_holds(&settings.spool.dir) {
        Some(
            "the file sink's file is written by the gateway running on this spool; stop it, \
             then replay"
                .to_owned(),
        )
    } else {
        None
    };
    let built = if sink_name.is_empty() || not_replayable.is_some() {
        Ok(None)
    } else {
        sink::build_named(
            &settings.sinks,
            sink_name,
            settings.server.max_body_bytes.bytes(),
            &Metrics::new(),
        )
        .await
    };
    let sink = match (built, not_replayable) {
        (_, Some(why)) => Err(why),
        (Err(e), None) => Err(format!("cannot set up sink `{sink_name}`: {e:#}")),
        (Ok(None), None) if !sink_name.is_empty() => Err(format!(
            "sink `{sink_name}` is not configured (no [sinks.{sink_name}] table)"
        )),
        (Ok(sink), None) => Ok(sink),
    };
    let mut unavailable: Option<String> = None;
    for (name, entry) in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                outcomes.push(Outcome::new(&name, None, "failed").because(e.to_string()));
                continue;
            }
        };
        let meta = Some(&entry.meta);
        let sink = match &sink {
            Ok(Some(sink)) => sink,
            Ok(None) => {
                outcomes.push(Outcome::new(&name, meta, "failed").because("no sink"));
                continue;
            }
            Err(why) => {
                outcomes.push(Outcome::new(&name, meta, "failed").because(why.clone()));
                continue;
            }
        };
        if let Some(why) = &unavailable {
            outcomes.push(Outcome::new(&name, meta, "not_attempted").because(why.clone()));
            continue;
        }
        let claim = match store.claim(&name) {
            Ok(claim) => claim,
            Err(DeadLetterError::NotFound(_)) => {
                outcomes.push(
                    Outcome::new(&name, meta, "gone")
                        .because("replayed or purged by another command meanwhile"),
                );
                continue;
            }
            Err(e) => {
                outcomes.push(Outcome::new(&name, meta, "failed").because(e.to_string()));
                continue;
            }
        };
        let notification = match Envelope::parse(&entry.body) {
            Ok(envelope) => Notification {
                envelope,
                body: entry.body.clone(),
                received_at_ms: entry.meta.received_at_ms,
                trace: entry.meta.trace(),
            },
            Err(e) => {
                outcomes.push(
                    Outcome::new(&name, meta, "failed")
                        .because(format!("the body is not a valid notification: {e}")),
                );
                continue;
            }
        };
        match sink.publish(std::slice::from_ref(&notification)).await {
            Ok(()) => match claim.remove() {
                Ok(()) => outcomes.push(Outcome::new(&name, meta, "replayed")),
                Err(e) => outcomes.push(Outcome::new(&name, meta, "failed").because(format!(
                    "delivered, but the entry could not be removed ({e}); purge it with --id \
                     {name}, or a later replay delivers it again"
                ))),
            },
            Err(e) => {
                let why = match &e.source {
                    SinkError::Refused { reason, detail } => {
                        format!("refused again ({}): {detail}", reason.as_str())
                    }
                    other => {
                        let why = format!("sink `{sink_name}` unavailable: {other}");
                        unavailable = Some(why.clone());
                        why
                    }
                };
                outcomes.push(Outcome::new(&name, meta, "failed").because(why));
            }
        }
    }
    if let Ok(Some(sink)) = &sink {
        sink.close(std::time::Duration::from_secs(10)).await;
    }
}

fn purge(
    store: &DeadLetterStore,
    id: Option<&str>,
    sink: Option<&str>,
    older_than: Option<Duration>,
    json: bool,
) -> ExitCode {
    let mut names = match selection(store, id, sink) {
        Ok(names) => names,
        Err(why) => return failed("dead-letters purge", &why),
    };
    if let Some(age) = older_than {
        let before = unix_millis().saturating_sub(age.as_millis() as u64);
        names.retain(|name| store.stored_at_ms(name).is_ok_and(|at| at <= before));
    }
    let outcomes = names
        .iter()
        .map(|name| {
            let meta = store.read(name).ok().map(|e| e.meta);
            let outcome = |o| Outcome::new(name, meta.as_ref(), o);
            match store.claim(name).and_then(|claim| claim.remove()) {
                Ok(()) => outcome("purged"),
                Err(DeadLetterError::NotFound(_)) => {
                    outcome("gone").because("replayed or purged by another command meanwhile")
                }
                Err(e) => outcome("failed").because(e.to_string()),
            }
        })
        .collect();
    finish("dead-letters purge", "purged", outcomes, json)
}

/// A time as RFC 3339 (UTC, seconds), or `-` for none.
fn time_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `text` on one line, cut at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line: String = text.replace(['\n', '\r'], " ");
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}
