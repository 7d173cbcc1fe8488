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

#[tokio::test]
async fn sigterm_while_draining_a_backlog_lets_the_current_batch_finish_so_nothing_is_relayed_twice(
) {
    // One notification per batch, fsynced each: the relay spends its time inside publishes.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "info");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[relay]\n", "[relay]\nbatch_max_records = 1\n");
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("out");
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut outputs = Vec::new();

    // Three rounds: a backlog while the sink cannot write (its directory is a file), then the
    // sink unblocked and SIGTERM while the relay drains it.
    for round in 0..3 {
        std::fs::write(&out, b"blocked").unwrap();
        let mut gateway = start_gateway(&config);
        for i in 0..150 {
            let id = format!("drain-{round}-{i}");
            assert_eq!(gateway.post(&client, sample_with_id(&id)).await, Some(200));
            accepted.push(id);
        }
        std::fs::remove_file(&out).unwrap();
        let events = out.join("events.jsonl");
        assert!(eventually(|| async { read_events(&events).len() >= 20 }).await);
        gateway.signal("TERM");
        let (status, _) = gateway
            .wait_exit(Duration::from_secs(40))
            .await
            .expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", gateway.log_text());
        let kept = dir.path().join(format!("out-{round}"));
        std::fs::rename(&out, &kept).unwrap();
        outputs.push(kept.join("events.jsonl"));
    }

    // A last start relays what the rounds left in the spool.
    let gateway = start_gateway(&config);
    let events = out.join("events.jsonl");
    let before: usize = outputs.iter().map(|p| read_events(p).len()).sum();
    wait_for_events(&events, accepted.len().saturating_sub(before)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    outputs.push(events);
    let delivered: Vec<String> = outputs
        .iter()
        .flat_map(|p| ids_of(&read_events(p)))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but not delivered: {missing:?}"
    );
    let mut twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    assert!(
        twice.is_empty(),
        "{} of {} delivered more than once: {twice:?}",
        twice.len(),
        accepted.len()
    );
    drop(gateway);
}
