//! What reached each sink, read back from the brokers themselves (a Kafka consumer, an AMQP
//! queue bound to the run's exchange) and from the file sink's output: the evidence the
//! invariants are checked against.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One delivered message: the notification id the sink carries beside the body, and the body.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub id: String,
    pub body: Vec<u8>,
}

const AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics answered");
    for result in results {
        result.expect("topic created");
    }
}

/// Declares the run's exchange as the gateway does and a queue bound to everything on it,
/// directly on the shared RabbitMQ (before the gateway publishes, so nothing is unroutable).
pub async fn bind_queue(exchange: &str, queue: &str) {
    let connection = Connection::connect(AMQP_URI, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/services.sh starts it)");
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(0, "done".into()).await;
}

/// Removes the run's queue and exchange from the shared RabbitMQ.
pub async fn remove_queue(exchange: &str, queue: &str) {
    let Ok(connection) = Connection::connect(AMQP_URI, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(
                ShortString::from(exchange),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(0, "done".into()).await;
}

/// Everything in `queue`, waiting until at least `expected` arrived (or `timeout`), then one
/// more second for extras.
pub async fn drain_queue(queue: &str, expected: usize, timeout: Duration) -> Vec<Delivered> {
    let connection = Connection::connect(AMQP_URI, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + timeout;
    let mut extra_until: Option<Instant> = None;
    let mut delivered = Vec::new();
    while Instant::now() < extra_until.unwrap_or(deadline) {
        match channel
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let id = message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                delivered.push(Delivered {
                    id,
                    body: message.delivery.data.clone(),
                });
                continue;
            }
            None => {
                if delivered.len() >= expected && extra_until.is_none() {
                    extra_until = Some(Instant::now() + Duration::from_secs(1));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = connection.close(0, "done".into()).await;
    delivered
}

/// Everything on `topic` (one partition) from the beginning, as `drain_queue` waits.
pub async fn consume_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Delivered> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + timeout;
        let mut extra_until: Option<Instant> = None;
        let mut delivered = Vec::new();
        while Instant::now() < extra_until.unwrap_or(deadline) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let id = message
                    .headers()
                    .and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == "dataloy-id")
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .unwrap_or_default();
                delivered.push(Delivered {
                    id,
                    body: message.payload().unwrap_or_default().to_vec(),
                });
            }
            if delivered.len() >= expected && extra_until.is_none() {
                extra_until = Some(Instant::now() + Duration::from_secs(2));
            }
        }
        delivered
    })
    .await
    .unwrap()
}

/// The file sink's bodies: one per line (the run sends compact JSON, which has no raw newline).
/// The id is read from the body itself.
pub fn read_file(path: &std::path::Path) -> Vec<Delivered> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Delivered {
                id,
                body: line.to_vec(),
            }
        })
        .collect()
}
