//! `spool status`: how far each sink is behind, what the spool directory holds (segments,
//! spares, quarantined damage) and how many dead letters wait, read from the directory whether
//! the gateway runs or not (see `spool::status`: nothing is written).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{print, EXIT_FAILED};
use crate::config::Settings;
use crate::dead_letter::DeadLetterStore;
use crate::spool::status::{self, SpoolStatus};
use crate::telemetry;

#[derive(Args)]
pub struct SpoolArgs {
    #[command(subcommand)]
    action: SpoolAction,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum SpoolAction {
    /// Per-sink backlog and oldest age, segments, quarantine, dead letters.
    Status,
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    spool: SpoolStatus,
    dead_letters: DeadLetters,
}

#[derive(Serialize)]
struct DeadLetters {
    dir: String,
    count: usize,
    bytes: u64,
    max_bytes: u64,
    /// Entries per sink (`damaged` for entries that cannot be read).
    by_sink: std::collections::BTreeMap<String, usize>,
}

pub async fn run(settings: Settings, args: SpoolArgs) -> ExitCode {
    telemetry::init_for_command(&settings.log);
    match args.action {
        SpoolAction::Status => {}
    }
    let dir = &settings.spool.dir;
    let spool = match status::inspect(dir, &settings.sinks.names()) {
        Ok(spool) => spool,
        Err(e) => return failed(&format!("spool.dir {}: {e}", dir.display())),
    };
    let max_bytes = settings.dead_letters.max_bytes.bytes();
    let dead_letter_dir = settings.dead_letter_dir();
    let store = match DeadLetterStore::inspect(&dead_letter_dir, max_bytes) {
        Ok(store) => store,
        Err(e) => return failed(&e.to_string()),
    };
    let mut by_sink = std::collections::BTreeMap::new();
    let entries = match store.list() {
        Ok(entries) => entries,
        Err(e) => return failed(&e.to_string()),
    };
    for entry in &entries {
        let sink = entry.as_ref().map_or("damaged", |m| m.sink.as_str());
        *by_sink.entry(sink.to_owned()).or_insert(0) += 1;
    }
    let status = Status {
        spool,
        dead_letters: DeadLetters {
            dir: dead_letter_dir.display().to_string(),
            count: entries.len(),
            bytes: store.used_bytes(),
            max_bytes,
            by_sink,
        },
    };
    print(args.json, &status, || text(&status));
    ExitCode::SUCCESS
}

fn failed(why: &str) -> ExitCode {
    eprintln!("dataloy-gateway: spool status: {why}");
    ExitCode::from(EXIT_FAILED)
}

fn text(status: &Status) -> String {
    let s = &status.spool;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "spool {} ({})",
        s.dir.display(),
        if s.gateway_running {
            "a gateway is running on it"
        } else {
            "no gateway running on it"
        }
    );
    let _ = writeln!(out, "last sequence number: {}", s.last_seq);
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:>12} {:>10} {:>14}",
        "SINK", "CONFIGURED", "CURSOR", "BACKLOG", "OLDEST AGE"
    );
    for sink in &s.sinks {
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>12} {:>10} {:>14}",
            sink.sink,
            if sink.configured { "yes" } else { "no" },
            sink.cursor.map_or("(none)".to_owned(), |c| c.to_string()),
            sink.backlog,
            sink.oldest_age_seconds
                .map_or("-".to_owned(), |a| format!("{a:.1} s")),
        );
    }
    let _ = writeln!(
        out,
        "segments: {} ({} bytes); spares: {} ({} bytes)",
        s.segments.len(),
        s.segment_bytes,
        s.spares,
        s.spare_bytes
    );
    let _ = writeln!(
        out,
        "quarantine: {} files ({} bytes){}",
        s.quarantine_files,
        s.quarantine_bytes,
        if s.quarantine_files > 0 {
            ": damaged bytes were found; see docs/spool.md"
        } else {
            ""
        }
    );
    let d = &status.dead_letters;
    let by_sink: Vec<String> = d.by_sink.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "dead letters: {} ({} of {} bytes){}{}",
        d.count,
        d.bytes,
        d.max_bytes,
        if by_sink.is_empty() { "" } else { ": " },
        by_sink.join(", ")
    );
    out
}
