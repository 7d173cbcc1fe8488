//! Spool design choice, measured: our segment log with group commit against an embedded store
//! (redb) given the same group commit (one write transaction per group of waiting appends),
//! both fsyncing before an append is acknowledged. Run: `cargo bench --bench spool_store`.
//! Figures and the decision are in BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{record, Spool, SpoolOptions};
use redb::{Database, TableDefinition};
use tokio::sync::{mpsc, oneshot};

const SAMPLE: &str = include_str!("../tests/fixtures/bunker-order-updated.json");
const APPENDS: usize = 20_000;
const CONCURRENCY: usize = 64;
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

fn notification(i: usize) -> Notification {
    let body = Bytes::from(SAMPLE.replacen("1573335-244070007", &format!("bench-{i}"), 1));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

struct Figures {
    appends_per_second: f64,
    commits: u64,
    drain_seconds: f64,
}

async fn run_appends<F, Fut>(append: F) -> f64
where
    F: Fn(Notification) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let append = append.clone();
            tokio::spawn(async move {
                for i in (w..APPENDS).step_by(CONCURRENCY) {
                    append(notification(i)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    APPENDS as f64 / started.elapsed().as_secs_f64()
}

async fn segment_log(dir: &Path) -> Figures {
    let metrics = Metrics::new();
    let spool = Arc::new(
        Spool::open(
            SpoolOptions {
                dir: dir.to_owned(),
                max_bytes: 4 << 30,
                segment_bytes: 64 << 20,
                commit_interval: Duration::ZERO,
                missing_cursor: Default::default(),
            },
            &["relay"],
            metrics.clone(),
        )
        .unwrap(),
    );
    let writer = spool.clone();
    let appends_per_second = run_appends(move |n| {
        let spool = writer.clone();
        async move {
            spool.append(n).await.unwrap();
        }
    })
    .await;
    let started = Instant::now();
    let mut reader = spool.reader();
    let mut read = 0;
    while read < APPENDS {
        let batch = reader.next_batch(512).await.unwrap();
        read += batch.len();
        spool.acknowledge(batch.last().unwrap().seq).await.unwrap();
    }
    Figures {
        appends_per_second,
        commits: metrics.spool_fsyncs.get(),
        drain_seconds: started.elapsed().as_secs_f64(),
    }
}

type Reply = oneshot::Sender<u64>;

async fn embedded_store(dir: &Path) -> Figures {
    let db = Arc::new(Database::create(dir.join("spool.redb")).unwrap());
    let (tx, mut rx) = mpsc::channel::<(Notification, Reply)>(8192);
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        let mut next_seq = 1u64;
        let mut commits = 0u64;
        let mut buffer = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            let txn = writer_db.begin_write().unwrap();
            let mut replies = Vec::with_capacity(group.len());
            {
                let mut table = txn.open_table(TABLE).unwrap();
                for (n, reply) in group {
                    buffer.clear();
                    record::encode(next_seq, 0, &n, &mut buffer).expect("the sample fits a record");
                    table.insert(next_seq, buffer.as_slice()).unwrap();
                    replies.push((next_seq, reply));
                    next_seq += 1;
                }
            }
            txn.commit().unwrap();
            commits += 1;
            for (seq, reply) in replies {
                let _ = reply.send(seq);
            }
        }
        commits
    });
    let appends_per_second = run_appends(move |n| {
        let tx = tx.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            tx.send((n, reply)).await.unwrap();
            answer.await.unwrap();
        }
    })
    .await;
    let commits = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let mut acked = 0u64;
    while acked < APPENDS as u64 {
        let read = db.begin_read().unwrap();
        let table = read.open_table(TABLE).unwrap();
        let mut last = acked;
        for entry in table.range(acked + 1..).unwrap().take(512) {
            let (key, value) = entry.unwrap();
            record::decode(value.value(), 0).unwrap();
            last = key.value();
        }
        drop(table);
        drop(read);
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for seq in acked + 1..=last {
                table.remove(seq).unwrap();
            }
        }
        txn.commit().unwrap();
        acked = last;
    }
    Figures {
        appends_per_second,
        commits,
        drain_seconds: started.elapsed().as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("{APPENDS} appends of a {} byte body, {CONCURRENCY} concurrent writers, fsync before acknowledging", SAMPLE.len());
    println!("| store | appends/s | commits (fsync groups) | read+ack all (s) |");
    println!("| --- | --- | --- | --- |");
    for round in 0..2 {
        let dir = tempfile::tempdir_in(".").unwrap();
        let ours = segment_log(dir.path()).await;
        let dir = tempfile::tempdir_in(".").unwrap();
        let redb = embedded_store(dir.path()).await;
        for (name, f) in [("segment log", ours), ("redb", redb)] {
            println!(
                "| {name} (round {}) | {:.0} | {} | {:.2} |",
                round + 1,
                f.appends_per_second,
                f.commits,
                f.drain_seconds
            );
        }
    }
}
