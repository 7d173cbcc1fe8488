//! What an operator does to a spool directory cannot make the gateway lose or repeat
//! notifications silently: deleting the file that looked like the lock does not let a second
//! gateway in, and a deleted cursor is refused (naming the setting that says "start from the
//! end") instead of relaying everything again.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{MissingCursor, Spool, SpoolError, SpoolOptions};

use crate::helpers::{ids_of, read_events, sample_with_id, wait_for_events};

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

fn open(dir: &Path, missing_cursor: MissingCursor) -> Result<Spool, SpoolError> {
    Spool::open(
        SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            missing_cursor,
        },
        &["relay"],
        Metrics::new(),
    )
}

fn read_ids(spool: &Spool) -> Vec<String> {
    spool
        .reader()
        .read_available(1000)
        .unwrap()
        .into_iter()
        .map(|r| r.notification.envelope.id.to_string())
        .collect()
}

/// Deletes every cursor file in the spool directory.
fn delete_cursors(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "cursor" || name.starts_with("cursor.") {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[tokio::test]
async fn deleting_the_lock_file_does_not_let_a_second_gateway_in() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), MissingCursor::Refuse).unwrap();
    let _ = std::fs::remove_file(dir.path().join("lock"));

    let second = open(dir.path(), MissingCursor::Refuse);

    match second {
        Err(error @ SpoolError::Locked(_)) => {
            assert!(
                error
                    .to_string()
                    .contains(&dir.path().display().to_string()),
                "{error}"
            );
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a second spool opened the same directory"),
    }
}

#[tokio::test]
async fn the_lock_goes_with_the_process_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), MissingCursor::Refuse).unwrap();
    first.close().await;
    drop(first);

    assert!(open(dir.path(), MissingCursor::Refuse).is_ok());
}

#[tokio::test]
async fn a_deleted_cursor_beside_records_is_refused_naming_the_setting() {
    // Arrange: three records relayed and acknowledged; then the cursor is deleted.
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), MissingCursor::Refuse).unwrap();
    for i in 0..3 {
        spool.append(notification(&format!("c-{i}"))).await.unwrap();
    }
    spool.acknowledge(3).await.unwrap();
    spool.close().await;
    drop(spool);
    delete_cursors(dir.path());
    let files_before = std::fs::read_dir(dir.path()).unwrap().count();

    // Act
    let refused = open(dir.path(), MissingCursor::Refuse);

    // Assert: refused, naming the key; nothing in the directory changed.
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("spool.missing_cursor"), "{error}");
    assert!(error.contains("start_from_end"), "{error}");
    assert!(error.contains("cursor"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files_before);

    // "Start from the end": nothing the spool held comes back; new records flow.
    let spool = open(dir.path(), MissingCursor::StartFromEnd).unwrap();
    assert!(read_ids(&spool).is_empty());
    spool.append(notification("c-new")).await.unwrap();
    assert_eq!(read_ids(&spool), ["c-new"]);
    spool.close().await;
    drop(spool);
    // The cursor it created is used from then on.
    let reopened = open(dir.path(), MissingCursor::Refuse).unwrap();
    assert_eq!(read_ids(&reopened), ["c-new"]);
}

#[tokio::test]
async fn a_new_spool_or_one_holding_no_record_needs_no_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), MissingCursor::Refuse).unwrap();
    spool.close().await;
    drop(spool);
    delete_cursors(dir.path());

    let reopened = open(dir.path(), MissingCursor::Refuse).unwrap();

    reopened.append(notification("n-1")).await.unwrap();
    assert_eq!(read_ids(&reopened), ["n-1"]);
}

/// The gateway binary under test: `DATALOY_GATEWAY_BIN` when set (a private copy, so another
/// build replacing the shared target's binary cannot change it mid-run), else Cargo's.
fn gateway_binary() -> PathBuf {
    std::env::var_os("DATALOY_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dataloy-gateway")))
}

struct Gateway {
    child: Child,
    address: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// SIGTERM, then waits for the exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    }
}

enum Started {
    Listening(Gateway),
    Exited { code: Option<i32>, stderr: String },
}

/// Starts the binary; returns once it logs that it listens, or once it exits.
fn start(config: &Path, env: &[(&str, &str)]) -> Started {
    let mut child = Command::new(gateway_binary())
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (port_tx, port_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) {
                if entry["fields"]["message"] == "dataloy-gateway listening" {
                    let _ = port_tx.send(entry["fields"]["port"].as_u64());
                }
            }
        }
        let _ = port_tx.send(None);
    });
    let (stderr_tx, stderr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = stderr_tx.send(text);
    });
    match port_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(port)) => Started::Listening(Gateway {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }),
        _ => {
            let code = child.wait().unwrap().code();
            let stderr = stderr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            Started::Exited { code, stderr }
        }
    }
}

fn listening(started: Started) -> Gateway {
    match started {
        Started::Listening(gateway) => gateway,
        Started::Exited { code, stderr } => panic!("gateway exited ({code:?}): {stderr}"),
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
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
[log]
format = "json"
"#,
        spool = dir.join("spool").display(),
        events = dir.join("out/events.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn post(client: &reqwest::Client, gateway: &Gateway, id: &str) {
    let status = client
        .post(format!("{}/webhooks/dataloy", gateway.address))
        .body(sample_with_id(id))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_second_gateway_process_is_refused_after_the_lock_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let first = listening(start(&config, &[]));
    let _ = std::fs::remove_file(dir.path().join("spool/lock"));

    let second = start(&config, &[]);

    match second {
        Started::Exited { code, stderr } => {
            assert_eq!(code, Some(1), "{stderr}");
            let spool = dir.path().join("spool").display().to_string();
            assert!(stderr.contains(&spool), "names the directory: {stderr}");
            assert!(stderr.contains("in use"), "{stderr}");
        }
        Started::Listening(_) => panic!("a second gateway started on the same spool"),
    }
    first.stop();
}

#[tokio::test]
async fn a_deleted_cursor_stops_the_gateway_until_the_operator_says_start_from_the_end() {
    // Arrange: five notifications relayed to the file sink; clean stop; cursor deleted.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let events = dir.path().join("out/events.jsonl");
    let client = reqwest::Client::new();
    let gateway = listening(start(&config, &[]));
    let sent: Vec<String> = (0..5).map(|i| format!("del-{i}")).collect();
    for id in &sent {
        post(&client, &gateway, id).await;
    }
    wait_for_events(&events, sent.len()).await;
    gateway.stop();
    delete_cursors(&dir.path().join("spool"));

    // Act 1: a plain restart is refused, naming the setting.
    match start(&config, &[]) {
        Started::Exited { code, stderr } => {
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains("spool.missing_cursor"), "{stderr}");
            assert!(
                stderr.contains("DATALOY_GATEWAY__SPOOL__MISSING_CURSOR"),
                "{stderr}"
            );
        }
        Started::Listening(_) => panic!("started without its cursor"),
    }

    // Act 2: the operator says "start from the end" through the environment.
    let gateway = listening(start(
        &config,
        &[("DATALOY_GATEWAY__SPOOL__MISSING_CURSOR", "start_from_end")],
    ));
    post(&client, &gateway, "del-after").await;

    // Assert: the new notification arrives after the five, and none of them came again (the
    // relay keeps order, so a republished one would arrive before it).
    let delivered = ids_of(&wait_for_events(&events, sent.len() + 1).await);
    let mut expected = sent.clone();
    expected.push("del-after".into());
    assert_eq!(delivered, expected);
    gateway.stop();
    assert_eq!(ids_of(&read_events(&events)), expected);
}
