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

const SAMPLE: &str = include_str!("../tests/fixtures/bunker-order-updated.json");
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
    latencies_us: Vec<u64>,
    /// When (from the start of the run) each request slower than [`SLOW`] was due, in µs.
    slow_at_us: Vec<u64>,
    elapsed: Duration,
}

/// Requests slower than this are located in time, to tell one stall from a spread-out tail.
const SLOW: Duration = Duration::from_millis(10);

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
    if let Some(target) = &args.verify {
        prepare(target).await?;
    }
    let report = drive(&args, Arc::new(bodies)).await;
    print_report(&report);
    if let Some(target) = &args.verify {
        verify(target, &run, unique).await?;
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

async fn drive(args: &Args, bodies: Arc<Vec<Bytes>>) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, next, bodies) = (client.clone(), next.clone(), bodies.clone());
            let (url, bearer, rate) = (args.url.clone(), args.bearer.clone(), args.rate);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut slow_at = Vec::new();
                let mut statuses: HashMap<u16, usize> = HashMap::new();
                let mut errors = 0;
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
                    let mut request = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if let Some(token) = &bearer {
                        request = request.bearer_auth(token);
                    }
                    match request.send().await {
                        Ok(response) => {
                            *statuses.entry(response.status().as_u16()).or_default() += 1;
                            let _ = response.bytes().await;
                        }
                        Err(_) => errors += 1,
                    }
                    let latency = scheduled.elapsed();
                    latencies.push(latency.as_micros() as u64);
                    if latency > SLOW {
                        slow_at.push((scheduled - started).as_micros() as u64);
                    }
                }
                (latencies, slow_at, statuses, errors)
            })
        })
        .collect();
    let mut report = Report {
        ok: 0,
        statuses: HashMap::new(),
        errors: 0,
        latencies_us: Vec::new(),
        slow_at_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let (latencies, slow_at, statuses, errors) = worker.await.expect("worker");
        report.latencies_us.extend(latencies);
        report.slow_at_us.extend(slow_at);
        for (status, count) in statuses {
            *report.statuses.entry(status).or_default() += count;
        }
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    report.ok = report.statuses.get(&200).copied().unwrap_or(0);
    report
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
}

/// Creates what the sink needs before the load: the Kafka topic, or a RabbitMQ queue bound to
/// the exchange (both named in the target).
async fn prepare(target: &str) -> anyhow::Result<()> {
    if let Some((brokers, topic)) = target
        .strip_prefix("kafka:")
        .and_then(|s| s.split_once('/'))
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()?;
        let topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        // An existing topic is fine.
        let _ = admin.create_topics(&[topic], &AdminOptions::new()).await?;
    }
    if let Some((uri, queue)) = target
        .strip_prefix("rabbitmq:")
        .and_then(|s| s.split_once('#'))
    {
        use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let exchange = std::env::var("LOADGEN_EXCHANGE").unwrap_or_else(|_| "dataloy".into());
        let connection =
            lapin::Connection::connect(uri, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Reads the sink back and counts this run's ids.
async fn verify(target: &str, run: &str, unique: usize) -> anyhow::Result<()> {
    let prefix = format!("{run}-");
    let deadline = Instant::now() + Duration::from_secs(120);
    let consumes = target.starts_with("rabbitmq:"); // basic_get takes the messages it reads
    let mut taken = Vec::new();
    let ids = loop {
        let mut ids = read_sink(target, &prefix).await?;
        if consumes {
            taken.append(&mut ids);
            ids = taken.clone();
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        if distinct.len() >= unique || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let delivered = counts.len();
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "verify {target}: expected {unique}, delivered {delivered}, lost {}, duplicated {duplicated}",
        unique.saturating_sub(delivered)
    );
    Ok(())
}

async fn read_sink(target: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    if let Some(path) = target.strip_prefix("file:") {
        let bytes = std::fs::read(path).unwrap_or_default();
        let ids = serde_json::Deserializer::from_slice(&bytes)
            .into_iter::<serde_json::Value>()
            .filter_map(|v| v.ok()?["id"].as_str().map(str::to_owned))
            .filter(|id| id.starts_with(prefix))
            .collect();
        return Ok(ids);
    }
    if let Some(spec) = target.strip_prefix("kafka:") {
        let (brokers, topic) = spec
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("kafka:BROKERS/TOPIC"))?;
        return Ok(read_kafka(brokers, topic, prefix).await);
    }
    if let Some(spec) = target.strip_prefix("rabbitmq:") {
        let (uri, queue) = spec
            .split_once('#')
            .ok_or_else(|| anyhow::anyhow!("rabbitmq:URI#QUEUE"))?;
        return read_rabbitmq(uri, queue, prefix).await;
    }
    anyhow::bail!("--verify takes file:PATH, kafka:BROKERS/TOPIC or rabbitmq:URI#QUEUE")
}

async fn read_kafka(brokers: &str, topic: &str, prefix: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let (brokers, topic, prefix) = (brokers.to_owned(), topic.to_owned(), prefix.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("loadgen-{}", fastrand::u64(..)))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let mut ids = Vec::new();
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_secs(5) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                idle_since = Instant::now();
                let id = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "dataloy-id")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                if let Some(id) = id.filter(|id| id.starts_with(&prefix)) {
                    ids.push(id);
                }
            }
        }
        ids
    })
    .await
    .expect("kafka reader")
}

async fn read_rabbitmq(uri: &str, queue: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    use lapin::options::BasicGetOptions;
    let connection =
        lapin::Connection::connect(uri, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await?
    {
        if let Some(id) = message.delivery.properties.message_id() {
            if id.as_str().starts_with(prefix) {
                ids.push(id.to_string());
            }
        }
    }
    Ok(ids)
}
