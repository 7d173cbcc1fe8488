//! The real binary, killed without a chance to shut down, restarted on the same spool: every
//! notification it answered 200 is relayed. And SIGTERM shuts it down cleanly with exit 0.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

struct Gateway {
    child: Child,
    address: String,
}

impl Drop for Gateway {
    /// A failing test must not leave a gateway running (it would hold the test's stderr open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `config` and reads the listening port from its JSON log.
fn start(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dataloy-gateway"))
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
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) {
                if entry["fields"]["message"] == "dataloy-gateway listening" {
                    let _ = port_tx.send(entry["fields"]["port"].as_u64().unwrap());
                }
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway logged its port");
    Gateway {
        child,
        address: format!("http://127.0.0.1:{port}"),
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
# Small segments: under load they roll and are recycled many times, so a kill lands among them.
segment_bytes = "64KiB"
[relay]
retry_initial_backoff = "20ms"
retry_max_backoff = "200ms"
[sinks.file]
path = "{events}"
[log]
format = "json"
"#,
        spool = dir.join("spool").display(),
        events = dir.join("out/events.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn post(client: &reqwest::Client, gateway: &Gateway, body: Vec<u8>) -> u16 {
    client
        .post(format!("{}/webhooks/dataloy", gateway.address))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_killed_gateway_relays_everything_it_accepted_after_restart() {
    // Arrange: the sink cannot write, so everything accepted sits in the spool.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let events = dir.path().join("out/events.jsonl");
    std::fs::write(dir.path().join("out"), b"blocked").unwrap();
    let client = reqwest::Client::new();
    let mut gateway = start(&config);
    let ids: Vec<String> = (0..20).map(|i| format!("k-{i}")).collect();
    for id in &ids {
        assert_eq!(post(&client, &gateway, sample_with_id(id)).await, 200);
    }

    // Act: SIGKILL, no shutdown; the sink recovers; restart on the same spool.
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    std::fs::remove_file(dir.path().join("out")).unwrap();
    let mut restarted = start(&config);

    // Assert: all 20 relayed once, in order, and the dedup of a fresh process does not matter
    // for what was already durable.
    let delivered = wait_for_events(&events, ids.len()).await;
    assert_eq!(ids_of(&delivered), ids);
    assert_eq!(
        post(&client, &restarted, sample_with_id("k-new")).await,
        200
    );
    assert_eq!(ids_of(&wait_for_events(&events, 21).await).len(), 21);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_finishes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let client = reqwest::Client::new();
    let gateway = start(&config);
    assert_eq!(post(&client, &gateway, sample_with_id("term-1")).await, 200);

    let pid = gateway.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let mut gateway = gateway;
        gateway.child.wait().unwrap()
    })
    .await
    .unwrap();

    assert_eq!(status.code(), Some(0));
    let events = read_events(&dir.path().join("out/events.jsonl"));
    assert_eq!(ids_of(&events), ["term-1"]);
}

/// Posts `ids` from `workers` concurrent clients; returns the ids answered 200.
async fn post_all(address: String, ids: Vec<String>, workers: usize) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(ids.into_iter()));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, queue, address) = (client.clone(), queue.clone(), address.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                loop {
                    let Some(id) = queue.lock().await.next() else {
                        return answered;
                    };
                    let response = client
                        .post(format!("{address}/webhooks/dataloy"))
                        .body(sample_with_id(&id))
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status() == 200) {
                        answered.push(id);
                    }
                }
            })
        })
        .collect();
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_every_acknowledged_notification_is_delivered() {
    // Arrange: a working sink, so the relay is publishing when the kill comes.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let events = dir.path().join("out/events.jsonl");
    let gateway = start(&config);
    let ids: Vec<String> = (0..3000).map(|i| format!("load-{i}")).collect();

    // Act: load from 8 clients; SIGKILL in the middle of it.
    let load = tokio::spawn(post_all(gateway.address.clone(), ids.clone(), 8));
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(gateway); // SIGKILL
    let answered_before = load.await.unwrap();
    assert!(
        !answered_before.is_empty(),
        "the kill came after some notifications were accepted"
    );
    assert!(
        answered_before.len() < ids.len(),
        "the kill came before the load finished"
    );

    // Dataloy resends what got no 200, to the restarted gateway on the same spool.
    let restarted = start(&config);
    let unanswered: Vec<String> = ids
        .iter()
        .filter(|id| !answered_before.contains(id))
        .cloned()
        .collect();
    let answered_after = post_all(restarted.address.clone(), unanswered.clone(), 8).await;
    assert_eq!(
        answered_after.len(),
        unanswered.len(),
        "the restarted gateway accepts the resends"
    );

    // Assert: every notification answered 200 is delivered; copies come only from the crash.
    let all_there = || {
        let delivered = ids_of(&read_events(&events));
        let unique: std::collections::HashSet<String> = delivered.into_iter().collect();
        let done = ids.iter().all(|id| unique.contains(id));
        async move { done }
    };
    eventually(all_there).await;
    let delivered = ids_of(&read_events(&events));
    let mut counts = std::collections::HashMap::new();
    for id in &delivered {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    let republished = counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "crash under load: {} accepted before the kill, {} resent, {} delivered twice",
        answered_before.len(),
        unanswered.len(),
        republished
    );
    // At most three copies: the relay's unacknowledged batch is published again after the
    // restart, and a request whose answer the kill swallowed is resent and (with memory dedup,
    // which a restart empties) accepted again.
    assert!(counts.values().all(|n| *n <= 3));
    assert!(
        republished <= 512 + 8,
        "copies are bounded by one relay batch plus the requests in flight"
    );
}
