//! Signals an operator sends to the real binary: SIGHUP reloads `log.level` and ends nothing
//! (it used to kill the process, exit 129), and SIGTERM lets the relay finish its current batch
//! and store its cursor, so a restart relays nothing twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gateway_process::*;
use crate::helpers::*;

fn write_config(dir: &Path, level: &str) -> PathBuf {
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
[relay]
retry_initial_backoff = "20ms"
retry_max_backoff = "200ms"
[sinks.file]
path = "{events}"
[log]
format = "json"
level = "{level}"
"#,
        spool = dir.join("spool").display(),
        events = dir.join("out/events.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test]
async fn sighup_reloads_the_log_level_and_the_gateway_keeps_serving() {
    // Arrange: warnings only, but the start-up line (which carries the port) still shows.
    let dir = tempfile::tempdir().unwrap();
    let quiet = "warn,dataloy_gateway::startup=info";
    let config = write_config(dir.path(), quiet);
    let client = reqwest::Client::new();
    let mut gateway = start_gateway(&config);
    assert_eq!(
        gateway.post(&client, sample_with_id("hup-1")).await,
        Some(200)
    );

    // Act 1: a configuration that no longer loads, then SIGHUP.
    write_config(dir.path(), "verbose");
    gateway.signal("HUP");

    // Assert 1: said so at error level, still serving.
    assert!(
        gateway
            .logged("configuration does not load", Duration::from_secs(10))
            .await,
        "{}",
        gateway.log_text()
    );
    assert_eq!(
        gateway.post(&client, sample_with_id("hup-2")).await,
        Some(200)
    );

    // Act 2: info, then SIGHUP.
    write_config(dir.path(), "info");
    gateway.signal("HUP");

    // Assert 2: the reload's own info line shows, so the new level is in force.
    assert!(
        gateway
            .logged("log.level reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gateway.log_text()
    );
    assert_eq!(
        gateway.post(&client, sample_with_id("hup-3")).await,
        Some(200)
    );
    assert_eq!(
        ids_of(&wait_for_events(&dir.path().join("out/events.jsonl"), 3).await),
        ["hup-1", "hup-2", "hup-3"]
    );
    gateway.signal("TERM");
    let (status, _) = gateway
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", gateway.log_text());
}

/// Posts from 8 clients until told to stop; the ids answered 200.
async fn burst(
    gateway: &GatewayProcess,
    prefix: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for c in 0..8 {
        let client = client.clone();
        let address = gateway.address.clone();
        let prefix = prefix.to_owned();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0.. {
                if *stop.borrow() {
                    break;
                }
                let id = format!("{prefix}-{c}-{i}");
                let answer = client
                    .post(format!("{address}/webhooks/dataloy"))
                    .body(sample_with_id(&id))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 200 => accepted.push(id),
                    Ok(_) => {}
                    Err(_) => break, // the listener closed
                }
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    accepted
}

#[tokio::test]
async fn sigterm_under_load_lets_the_current_batch_finish_so_a_restart_relays_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "info");
    let events = dir.path().join("out/events.jsonl");
    let mut accepted = Vec::new();

    // Three rounds: a burst, SIGTERM while the relay is busy writing batches, a clean exit.
    for round in 0..3 {
        let mut gateway = start_gateway(&config);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let load = {
            let prefix = format!("term-{round}");
            let gateway = &gateway;
            async move { burst(gateway, &prefix, stop_rx).await }
        };
        let terminate = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            gateway.signal("TERM");
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop_tx.send_replace(true);
        };
        let (ids, ()) = tokio::join!(load, terminate);
        assert!(!ids.is_empty(), "round {round}: nothing accepted");
        accepted.extend(ids);
        let (status, _) = gateway
            .wait_exit(Duration::from_secs(40))
            .await
            .expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", gateway.log_text());
    }

    // A last start relays what the rounds left in the spool.
    let gateway = start_gateway(&config);
    let delivered = ids_of(&wait_for_events(&events, accepted.len()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered_after = ids_of(&read_events(&events));
    assert_eq!(delivered.len(), delivered_after.len(), "more arrived late");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &delivered_after {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but not delivered: {missing:?}"
    );
    assert!(
        twice.is_empty(),
        "{} of {} delivered more than once: {twice:?}",
        twice.len(),
        delivered_after.len()
    );
    drop(gateway);
}
