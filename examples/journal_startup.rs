//! Start-up time with N remembered ids (issue 23): prepares a spool whose id journal holds N ids
//! (appended through the real spool in group commits of 4,096, every record relayed, as after a
//! day of traffic), then opens it as the gateway does, rebuilding the memory dedup table from
//! the journal, and reports the time and the table's memory per id (counting allocator).
//!
//! `cargo run --release --example journal_startup -- 1000000 [DIR]`
//!
//! With DIR the prepared spool is kept there (sink `file`, all relayed), so the real binary can
//! be started on it (`spool.dir = DIR`, a `[sinks.file]` table) and timed to `/health/ready`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataloy_gateway::dedup::{Deduplicator, MemoryDedup};
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::id_journal::{self, Limits};
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{MissingCursor, Spool, SpoolOptions};

#[path = "support/counting_allocator.rs"]
mod counting_allocator;

#[global_allocator]
static ALLOCATOR: counting_allocator::CountingAllocator = counting_allocator::CountingAllocator;

const SINK: &str = "file";
const GROUP: usize = 4096;

fn options(dir: &std::path::Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        segment_bytes: 16 << 20,
        commit_interval: Duration::ZERO,
        missing_cursor: MissingCursor::Refuse,
    }
}

fn notification(id: &str) -> Notification {
    let body = format!(
        r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"PortCall","eventType":"U","dataloyObject":1,"subscription":{{"key":2}},"resource":{{"key":1}}}}"#
    );
    let body = Bytes::from(body);
    Notification::new(Envelope::parse(&body).expect("valid"), body)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let kept = args.next().map(PathBuf::from);
    let temporary = tempfile::tempdir().unwrap();
    let dir = kept
        .clone()
        .unwrap_or_else(|| temporary.path().join("spool"));
    let limits = Limits {
        ttl: Duration::from_secs(24 * 3600),
        max_entries: n,
    };

    // Prepare: N ids accepted and relayed.
    let started = Instant::now();
    {
        let table = MemoryDedup::new(n);
        let spool = Spool::open_remembering_ids(
            options(&dir),
            &[SINK],
            Metrics::new(),
            limits,
            &mut |key, left| table.remember(key, left),
        )
        .unwrap();
        let mut next = 0;
        while next < n {
            let batch: Vec<Notification> = (next..(next + GROUP).min(n))
                .map(|i| notification(&format!("{i}-244070007")))
                .collect();
            next += batch.len();
            let stored = spool.append_batch(batch).await;
            let last = stored.last().unwrap().as_ref().copied().unwrap();
            spool.acknowledge_for(SINK, last).await.unwrap();
        }
        spool.close().await;
    }
    println!(
        "prepared {n} ids in {:.1} s (journal {} bytes)",
        started.elapsed().as_secs_f64(),
        journal_bytes(&dir)
    );

    // Measure: open and rebuild, three times.
    for round in 1..=3 {
        let before = counting_allocator::counts().live;
        let started = Instant::now();
        // As `Application::build` does.
        let table = MemoryDedup::new(n);
        table.reserve(id_journal::estimated_ids(&dir) as usize);
        let spool = Spool::open_remembering_ids(
            options(&dir),
            &[SINK],
            Metrics::new(),
            limits,
            &mut |key, left| table.remember(key, left),
        )
        .unwrap();
        let elapsed = started.elapsed();
        spool.close().await;
        drop(spool);
        let held = table.entry_count().unwrap();
        let used = counting_allocator::counts().live - before;
        println!(
            "round {round}: spool opened and {held} ids remembered in {:.0} ms; table {used} bytes, \
             {:.1} bytes per id",
            elapsed.as_secs_f64() * 1000.0,
            used as f64 / n as f64
        );
    }
    if let Some(dir) = kept {
        println!("spool kept in {}", dir.display());
    }
}

fn journal_bytes(spool: &std::path::Path) -> u64 {
    std::fs::read_dir(spool.join("ids"))
        .map(|files| {
            files
                .filter_map(|f| f.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
