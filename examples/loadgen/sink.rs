//! The sink side of a load run: creates what the target needs before the load (the Kafka topic,
//! a RabbitMQ queue bound to the exchange) and afterwards reads everything back, counting this
//! run's ids as delivered, lost or duplicated.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Creates what the sink needs before the load: the Kafka topic, or a RabbitMQ queue bound to
/// the exchange (both named in the target).
pub async fn prepare(target: &str) -> anyhow::Result<()> {
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
pub async fn verify(target: &str, run: &str, unique: usize) -> anyhow::Result<()> {
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
