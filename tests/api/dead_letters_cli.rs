//! The operator commands on the real binary, against real brokers: issue 19's reproduction
//! continued (after a queue is bound, `dead-letters replay` delivers the unroutable notification
//! once, to RabbitMQ only, and removes it, while the gateway runs); dead letters survive SIGKILL
//! of the gateway, and `spool status`, `dead-letters list|show|purge|replay` work on that spool.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::rabbitmq::{of_type, rabbitmq_settings};
use crate::rabbitmq_broker::*;

/// The binary under test: `DATALOY_GATEWAY_BIN` (a private copy, when the build directory is
/// shared with other checkouts), else the one cargo built for these tests.
fn binary() -> PathBuf {
    std::env::var_os("DATALOY_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dataloy-gateway")))
}

/// Runs a command of the binary on `config`.
fn command(config: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed and print JSON.
pub(crate) fn json(config: &Path, args: &[&str]) -> Value {
    let out = command(config, args);
    assert!(
        out.status.success(),
        "{args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A configuration in `dir` with the spool, the file sink and RabbitMQ on `exchange`, plus
/// `extra` TOML.
pub(crate) fn write_config(
    dir: &Path,
    spool: &Path,
    events: &Path,
    exchange: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 1
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
[relay]
retry_initial_backoff = "20ms"
retry_max_backoff = "200ms"
[sinks.file]
path = "{events}"
[sinks.rabbitmq]
uri = "{AMQP_URI}"
exchange = "{exchange}"
health_interval = "200ms"
[log]
format = "json"
{extra}
"#,
        spool = spool.display(),
        events = events.display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn count(listing: &Value) -> u64 {
    listing["count"].as_u64().unwrap()
}

#[tokio::test]
async fn after_a_queue_is_bound_replay_delivers_the_dead_letter_once_and_to_that_sink_only() {
    // Arrange: issue 19's reproduction, with the file sink beside RabbitMQ.
    let exchange = unique("x-replay");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| {
        s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange));
    })
    .await;
    let config = write_config(
        app.dir.path(),
        &app.dir.path().join("spool"),
        &app.events_path,
        &exchange,
        "",
    );
    let unroutable = of_type("BunkerOrderLine", "rp-bol-1");
    assert_eq!(app.post(unroutable.clone()).await.status(), 200);
    // Stored before the next ones arrive.
    assert!(
        eventually(|| async { count(&json(&config, &["dead-letters", "list", "--json"])) == 1 })
            .await
    );
    for i in 0..2 {
        let id = format!("rp-pc-{i}");
        assert_eq!(app.post(sample_with_id(&id)).await.status(), 200);
    }
    assert_eq!(
        drain(&port_calls, 2, Duration::from_secs(30)).await.len(),
        2
    );
    app.wait_for_events(3).await;

    // Act: the operator binds a queue for it and replays, while the gateway runs.
    let bunker_lines = bind_queue(&exchange, "BunkerOrderLine.*").await;
    let replayed = json(&config, &["dead-letters", "replay", "--json"]);

    // Assert: delivered once, byte for byte, to RabbitMQ only; the entry is gone.
    assert_eq!(replayed["done"], 1, "{replayed}");
    assert_eq!(replayed["entries"][0]["outcome"], "replayed");
    let got = drain(&bunker_lines, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(message_id(&got[0]), "rp-bol-1");
    assert_eq!(got[0].delivery.data, unroutable);
    assert!(drain(&port_calls, 0, Duration::from_millis(500))
        .await
        .is_empty());
    let events = ids_of(&read_events(&app.events_path));
    assert_eq!(
        events,
        ["rp-bol-1", "rp-pc-0", "rp-pc-1"],
        "file sink untouched"
    );
    assert_eq!(
        count(&json(&config, &["dead-letters", "list", "--json"])),
        0
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letter_store_bytes").await,
        0.0
    );

    // A second replay finds nothing and delivers nothing.
    let again = json(&config, &["dead-letters", "replay", "--json"]);
    assert_eq!(again["done"], 0);
    assert!(drain(&bunker_lines, 0, Duration::from_millis(500))
        .await
        .is_empty());
}

pub(crate) struct Gateway(pub(crate) Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on `config`; returns it and its notification port (from its JSON log).
pub(crate) fn start(config: &Path) -> (Gateway, u16) {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                if entry["fields"]["message"] == "dataloy-gateway listening" {
                    let _ = port_tx.send(entry["fields"]["port"].as_u64().unwrap() as u16);
                }
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway logged its port");
    (Gateway(child), port)
}

#[tokio::test]
async fn dead_letters_survive_sigkill_and_the_commands_work_on_that_spool() {
    // Arrange: the real binary; RabbitMQ's exchange has no queue for BunkerOrderLine, and the
    // Kafka sink's broker is not there (its backlog grows).
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("x-kill");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let dead = free_port();
    let config = write_config(
        dir.path(),
        &dir.path().join("spool"),
        &dir.path().join("out/events.jsonl"),
        &exchange,
        &format!(
            "[sinks.kafka]\nbrokers = \"127.0.0.1:{dead}\"\ntopic = \"kill.{{objectType}}\"\n"
        ),
    );
    let (mut gateway, port) = start(&config);
    let client = reqwest::Client::new();
    let bodies = [
        of_type("BunkerOrderLine", "kl-bol-1"),
        sample_with_id("kl-pc-1"),
        of_type("BunkerOrderLine", "kl-bol-2"),
    ];
    // One at a time, each dealt with before the next, so the entries are stored in this order.
    for (index, body) in bodies.iter().enumerate() {
        let answer = client
            .post(format!("http://127.0.0.1:{port}/webhooks/dataloy"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        if index == 1 {
            assert_eq!(
                drain(&port_calls, 1, Duration::from_secs(30)).await.len(),
                1
            );
        } else {
            let stored = index as u64 / 2 + 1;
            assert!(
                eventually(|| async {
                    count(&json(&config, &["dead-letters", "list", "--json"])) == stored
                })
                .await
            );
        }
    }
    let running = json(&config, &["spool", "status", "--json"]);
    assert_eq!(running["gateway_running"], true, "{running}");

    // Act: SIGKILL.
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();

    // Assert: both entries are there, whole, and every command works on the spool.
    let listing = json(&config, &["dead-letters", "list", "--json"]);
    assert_eq!(count(&listing), 2, "{listing}");
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries[0]["id"], "kl-bol-1");
    assert_eq!(entries[1]["id"], "kl-bol-2");
    for entry in entries {
        assert_eq!(entry["sink"], "rabbitmq");
        assert_eq!(entry["reason"], "unroutable");
    }
    let text = command(&config, &["dead-letters", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("2 dead letters"));

    let body = command(&config, &["dead-letters", "show", "kl-bol-1", "--body"]);
    assert!(body.status.success());
    assert!(
        body.stdout == bodies[0],
        "body byte for byte: {} bytes shown, {} posted",
        body.stdout.len(),
        bodies[0].len()
    );
    let shown = json(&config, &["dead-letters", "show", "kl-bol-2", "--json"]);
    assert_eq!(shown[0]["body"]["id"], "kl-bol-2");
    let missing = command(&config, &["dead-letters", "show", "no-such-id"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no dead letter matches `no-such-id`")
    );

    let status = json(&config, &["spool", "status", "--json"]);
    assert_eq!(status["gateway_running"], false, "{status}");
    assert_eq!(status["dead_letters"]["count"], 2);
    assert_eq!(status["dead_letters"]["by_sink"]["rabbitmq"], 2);
    let sinks = status["sinks"].as_array().unwrap();
    let sink = |name: &str| sinks.iter().find(|s| s["sink"] == name).unwrap().clone();
    assert_eq!(sink("rabbitmq")["backlog"], 0);
    assert_eq!(sink("file")["backlog"], 0);
    assert_eq!(sink("kafka")["backlog"], 3);
    assert!(sink("kafka")["oldest_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(!status["segments"].as_array().unwrap().is_empty());

    // Purge needs a selection; an unknown id is named; one entry goes.
    assert_eq!(
        command(&config, &["dead-letters", "purge"]).status.code(),
        Some(2)
    );
    let unknown = command(&config, &["dead-letters", "purge", "--id", "no-such-id"]);
    assert_eq!(unknown.status.code(), Some(1));
    let purged = json(
        &config,
        &["dead-letters", "purge", "--id", "kl-bol-2", "--json"],
    );
    assert_eq!(purged["done"], 1);

    // Replay without a queue for it: refused again, kept, exit 1 naming it.
    let refused = command(&config, &["dead-letters", "replay", "--id", "kl-bol-1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused again (unroutable)"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        count(&json(&config, &["dead-letters", "list", "--json"])),
        1
    );

    // With a queue bound, the replay delivers it and the store is empty.
    let bunker_lines = bind_queue(&exchange, "BunkerOrderLine.*").await;
    let replayed = command(&config, &["dead-letters", "replay", "--sink", "rabbitmq"]);
    assert!(replayed.status.success());
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("1 replayed, 0 failed."));
    let got = drain(&bunker_lines, 1, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ["kl-bol-1"]);
    let status = json(&config, &["spool", "status", "--json"]);
    assert_eq!(status["dead_letters"]["count"], 0);
}
