//! Test helpers for RabbitMQ (the server on 127.0.0.1:5672 that `scripts/test.sh` makes sure
//! is running): queues bound to the gateway's exchange and a reader that drains them.

use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub const AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URI, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/test.sh starts it)");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Declares `exchange` as the gateway does, and a durable queue bound to it with `binding`.
pub async fn bind_queue(exchange: &str, binding: &str) -> String {
    let (_connection, channel) = channel().await;
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
    let queue = crate::helpers::unique("q");
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
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
            ShortString::from(queue.as_str()),
            ShortString::from(exchange),
            ShortString::from(binding),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

/// Takes messages from `queue` until `expected` arrived or `timeout` passed, then keeps
/// looking one more second to catch anything extra.
pub async fn drain(queue: &str, expected: usize, timeout: Duration) -> Vec<BasicGetMessage> {
    let deadline = Instant::now() + timeout;
    let mut extra_until: Option<Instant> = None;
    let mut messages = Vec::new();
    let mut link: Option<(Connection, Channel)> = None;
    while Instant::now() < extra_until.unwrap_or(deadline) {
        if link.is_none() {
            if let Ok(connection) =
                Connection::connect(AMQP_URI, ConnectionProperties::default()).await
            {
                if let Ok(channel) = connection.create_channel().await {
                    link = Some((connection, channel));
                }
            }
        }
        let got = match &link {
            Some((_, channel)) => channel
                .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
                .await
                .map_err(|_| ()),
            None => Err(()),
        };
        match got {
            Ok(Some(message)) => {
                messages.push(message);
                continue;
            }
            Ok(None) => {}
            Err(()) => link = None,
        }
        if messages.len() >= expected && extra_until.is_none() {
            extra_until = Some(Instant::now() + Duration::from_secs(1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    messages
}

pub fn header(message: &BasicGetMessage, name: &str) -> String {
    let headers = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .expect("headers");
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

pub fn message_id(message: &BasicGetMessage) -> String {
    message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .expect("message_id")
        .to_string()
}
