//! Load generator that also verifies delivery: posts realistic notifications (the documented
//! sample with unique ids, optionally some resent as duplicates) at a concurrency or a fixed
//! rate, reports throughput and latency percentiles, then reads the sink back and reports
//! delivered / lost / duplicated. The benchmark is this tool (see BENCHMARKS.md), never a timing
//! assertion in tests.
//!
//! `cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/dataloy \
//!    --requests 20000 --concurrency 64 --verify file:data/events.jsonl`

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;

mod client;
mod machine;
mod sink;

use client::{Connection, Endpoint};
use machine::{MachineReport, MachineWatch};

const SAMPLE: &str = include_str!("../../tests/fixtures/bunker-order-updated.json");
const SAMPLE_ID: &str = "1573335-244070007";

#[derive(Parser)]
struct Args {
    /// Notification endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/dataloy")]
    url: String,
    /// Requests to send (duplicates included).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests per second; unlimited when absent. Latency is measured from each request's
    /// scheduled time, so a stalled server is not hidden (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of requests that resend an earlier id (0.0–1.0), as Dataloy's retries do.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Bearer token, when the gateway requires one.
    #[arg(long)]
    bearer: Option<String>,
    /// Where to check delivery: `file:PATH`, `kafka:BROKERS/TOPIC` or `rabbitmq:URI#QUEUE`.
    #[arg(long)]
    verify: Option<String>,
}

struct Report {
    ok: usize,
    statuses: HashMap<u16, usize>,
    errors: usize,
    /// The first transport error, to say why requests failed.
    first_error: Option<String>,
    latencies_us: Vec<u64>,
    /// When (from the start of the run) each request slower than [`SLOW`] was due, in µs.
    slow_at_us: Vec<u64>,
    elapsed: Duration,
    machine: MachineReport,
}

/// Requests slower than this are located in time, to tell one stall from a spread-out tail.
const SLOW: Duration = Duration::from_millis(10);
/// A request not answered within this counts as a transport error.
const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = format!("lg{}", std::process::id());
    let (bodies, unique) = build_requests(&args, &run);
    println!(
        "{} requests ({} unique ids, {} bytes each), concurrency {}, rate {}",
        bodies.len(),
        unique,
        SAMPLE.len(),
        args.concurrency,
        args.rate
            .map_or("unlimited".to_owned(), |r| format!("{r}/s"))
    );
    let endpoint = Endpoint::new(&args.url, args.bearer.as_deref())?;
    if let Some(target) = &args.verify {
        sink::prepare(target).await?;
    }
    let report = drive(&args, endpoint, Arc::new(bodies)).await;
    print_report(&report);
    if let Some(target) = &args.verify {
        sink::verify(target, &run, unique).await?;
    }
    Ok(())
}

/// Bodies in sending order; a duplicate reuses an earlier body exactly.
fn build_requests(args: &Args, run: &str) -> (Vec<Bytes>, usize) {
    let mut bodies: Vec<Bytes> = Vec::with_capacity(args.requests);
    let mut unique = 0;
    for _ in 0..args.requests {
        if !bodies.is_empty() && fastrand::f64() < args.duplicates {
            let earlier = bodies[fastrand::usize(..bodies.len())].clone();
            bodies.push(earlier);
        } else {
            let id = format!("{run}-{unique}");
            bodies.push(Bytes::from(SAMPLE.replacen(SAMPLE_ID, &id, 1)));
            unique += 1;
        }
    }
    (bodies, unique)
}

async fn drive(args: &Args, endpoint: Endpoint, bodies: Arc<Vec<Bytes>>) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let machine = MachineWatch::start(started);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (next, bodies, rate) = (next.clone(), bodies.clone(), args.rate);
            let mut connection = Connection::new(endpoint.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut slow_at = Vec::new();
                let mut statuses: HashMap<u16, usize> = HashMap::new();
                let mut errors = 0;
                let mut first_error = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let scheduled = match rate {
                        Some(rate) => {
                            let at = started + Duration::from_secs_f64(i as f64 / rate);
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    match connection.post(body.clone(), TIMEOUT).await {
                        Ok(status) => *statuses.entry(status).or_default() += 1,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    let latency = scheduled.elapsed();
                    latencies.push(latency.as_micros() as u64);
                    if latency > SLOW {
                        slow_at.push((scheduled - started).as_micros() as u64);
                    }
                }
                (latencies, slow_at, statuses, errors, first_error)
            })
        })
        .collect();
    let (mut latencies_us, mut slow_at_us, mut all_statuses, mut all_errors) =
        (Vec::new(), Vec::new(), HashMap::new(), 0);
    let mut first_error = None;
    for worker in workers {
        let (latencies, slow_at, statuses, errors, error) = worker.await.expect("worker");
        first_error = first_error.or(error);
        latencies_us.extend(latencies);
        slow_at_us.extend(slow_at);
        for (status, count) in statuses {
            *all_statuses.entry(status).or_default() += count;
        }
        all_errors += errors;
    }
    Report {
        ok: all_statuses.get(&200).copied().unwrap_or(0),
        statuses: all_statuses,
        errors: all_errors,
        first_error,
        latencies_us,
        slow_at_us,
        elapsed: started.elapsed(),
        machine: machine.finish(),
    }
}

fn print_report(report: &Report) {
    let mut latencies = report.latencies_us.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    let seconds = report.elapsed.as_secs_f64();
    println!(
        "answered 200: {} in {:.2} s = {:.0} req/s; statuses {:?}; transport errors {}",
        report.ok,
        seconds,
        report.ok as f64 / seconds,
        report.statuses,
        report.errors
    );
    if let Some(error) = &report.first_error {
        println!("first transport error: {error}");
    }
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        percentile(99.9),
        percentile(100.0)
    );
    // Slow requests per 100 ms window of due time: one stall shows as one crowded window.
    let mut windows: HashMap<u64, usize> = HashMap::new();
    for at in &report.slow_at_us {
        *windows.entry(at / 100_000).or_default() += 1;
    }
    if let Some((window, count)) = windows.iter().max_by_key(|(_, count)| **count) {
        println!(
            "over {} ms: {} requests in {} of the run's 100 ms windows; the most ({count}) due at +{:.1} s",
            SLOW.as_millis(),
            report.slow_at_us.len(),
            windows.len(),
            *window as f64 / 10.0
        );
    }
    print_machine(&report.machine);
}

/// The machine's side of the run: a stall that shows here too was not the server's.
fn print_machine(machine: &MachineReport) {
    let worst_steal = machine.worst_steal.map_or(String::new(), |(at, share)| {
        format!(
            " (most in a 100 ms window: {share:.0} % at +{:.1} s)",
            at.as_secs_f64()
        )
    });
    println!(
        "machine: {:.0} % busy, {:.1} % stolen{worst_steal}; loadgen's 1 ms sleeper woke over 5 ms late {} times",
        machine.busy_percent,
        machine.steal_percent,
        machine.late_wakes.len()
    );
    let mut latest: Vec<_> = machine.late_wakes.iter().collect();
    latest.sort_by_key(|wake| std::cmp::Reverse(wake.late));
    for wake in latest.iter().take(3) {
        println!(
            "  woke {:.1} ms late at +{:.2} s",
            wake.late.as_secs_f64() * 1000.0,
            wake.at.as_secs_f64()
        );
    }
}
