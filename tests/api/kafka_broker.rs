//! Test helpers for Kafka: topics, a consumer that reads a topic from the beginning, and a
//! Kafka-protocol broker process (tansu) that a test can stop and restart.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

/// The shared broker that `scripts/test.sh` starts.
pub fn brokers() -> String {
    std::env::var("DATALOY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics answered");
    for result in results {
        result.expect("topic created");
    }
}

/// Reads `topic` (all `partitions`) from the beginning until `expected` messages arrived or
/// `timeout` passed, then keeps reading one more second to catch anything extra.
pub async fn consume(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", crate::helpers::unique("test-consumer"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut messages = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut extra_until: Option<Instant> = None;
        while Instant::now() < extra_until.unwrap_or(deadline) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                messages.push(message.detach());
            }
            if messages.len() >= expected && extra_until.is_none() {
                extra_until = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        messages
    })
    .await
    .unwrap()
}

pub fn header_map(message: &OwnedMessage) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned());
            map.insert(header.key.to_owned(), value.unwrap_or_default());
        }
    }
    map
}

pub fn message_id(message: &OwnedMessage) -> String {
    header_map(message)["dataloy-id"].clone()
}

/// A tansu broker of the test's own, which the test can stop and restart. It keeps its data in
/// memory: tansu 0.6.0's SQLite engine panics ("more or less than one row", lite.rs:503) on the
/// second produce of an idempotent producer, so a restart starts the broker empty.
pub struct OwnBroker {
    child: Option<Child>,
    pub port: u16,
    data_dir: std::path::PathBuf,
    /// The address clients are told to use, when not the listener's own (e.g. a TLS front).
    advertised: Option<String>,
}

impl OwnBroker {
    pub fn start(data_dir: &Path) -> OwnBroker {
        Self::start_advertising(data_dir, None)
    }

    /// Started telling clients to connect to `advertised` (`tcp://host:port`) instead of its
    /// own listener: a TLS front's address.
    pub fn start_advertising(data_dir: &Path, advertised: Option<String>) -> OwnBroker {
        let mut broker = OwnBroker {
            child: None,
            port: crate::helpers::free_port(),
            data_dir: data_dir.to_owned(),
            advertised,
        };
        broker.restart();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends the broker a signal (`STOP` freezes it with its data, `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.clone().unwrap_or_else(|| url.clone());
        let tansu = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.data_dir.join("tansu.log")).unwrap())
            .spawn()
            .expect("tansu is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
