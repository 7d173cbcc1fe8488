//! The real binary, killed without a chance to shut down, restarted on the same spool: every
//! notification it answered 200 is relayed, and every id it accepted is still known (the id
//! journal), so a resend is a duplicate. And SIGTERM shuts it down cleanly with exit 0.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
batch_max_records = {batch}
retry_initial_backoff = "20ms"
retry_max_backoff = "200ms"
[sinks.file]
path = "{events}"
[log]
format = "json"
"#,
        spool = dir.join("spool").display(),
        events = dir.join("out/events.jsonl").display(),
        batch = RELAY_BATCH,
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

/// The relay's batch in `write_config`: what a kill between a sink's confirm and the cursor
/// store can publish again.
const RELAY_BATCH: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_then_sent_everything_again_no_id_is_accepted_twice() {
    // Arrange: a working sink, so the relay is publishing when the kill comes.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let events = dir.path().join("out/events.jsonl");
    let gateway = start(&config);
    let ids: Vec<String> = (0..1500).map(|i| format!("load-{i}")).collect();

    // Act: load from 8 clients; SIGKILL in the middle of it.
    let accepted = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(post_concurrently(
        gateway.address.clone(),
        ids.clone(),
        8,
        accepted.clone(),
    ));
    assert!(
        eventually(|| async { accepted.load(Ordering::Relaxed) >= 300 }).await,
        "the gateway accepted notifications under load"
    );
    drop(gateway); // SIGKILL
    let before: HashMap<String, Answer> = load.await.unwrap().into_iter().collect();
    let accepted_before = before.values().filter(|a| **a == Answer::Accepted).count();
    assert!(
        accepted_before < ids.len(),
        "the kill came before the load finished"
    );

    // Dataloy resends every notification, answered or not (as when answers are lost), to the
    // restarted gateway on the same spool.
    let restarted = start(&config);
    let after = post_concurrently(restarted.address.clone(), ids.clone(), 8, accepted).await;

    // Assert: every resend is answered 200, and none accepted before is accepted again.
    let accepted_twice: Vec<&String> = after
        .iter()
        .filter(|(id, answer)| *answer == Answer::Accepted && before[id] == Answer::Accepted)
        .map(|(id, _)| id)
        .collect();
    assert!(
        accepted_twice.is_empty(),
        "accepted before the kill and again after it: {accepted_twice:?}"
    );
    let refused: Vec<_> = after
        .iter()
        .filter(|(_, answer)| !matches!(answer, Answer::Accepted | Answer::Duplicate))
        .collect();
    assert!(refused.is_empty(), "not answered 200: {refused:?}");
    // Every notification is delivered; copies come only from the relay's batch in flight.
    let all_there = || {
        let delivered: HashSet<String> = ids_of(&read_events(&events)).into_iter().collect();
        let done = ids.iter().all(|id| delivered.contains(id));
        async move { done }
    };
    assert!(eventually(all_there).await, "every notification delivered");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in ids_of(&read_events(&events)) {
        *counts.entry(id).or_insert(0) += 1;
    }
    let delivered_twice = counts.values().filter(|n| **n > 1).count();
    let resent_unanswered = before.values().filter(|a| **a == Answer::None).count();
    eprintln!(
        "crash under load: {accepted_before} accepted before the kill, {resent_unanswered} \
         unanswered, all {} resent: {} accepted and {} duplicate after the restart; {delivered_twice} \
         delivered twice (relay batch {RELAY_BATCH})",
        ids.len(),
        after.iter().filter(|(_, a)| *a == Answer::Accepted).count(),
        after.iter().filter(|(_, a)| *a == Answer::Duplicate).count(),
    );
    assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
    assert!(
        delivered_twice <= RELAY_BATCH,
        "{delivered_twice} delivered twice: more than the relay's batch in flight"
    );
}
