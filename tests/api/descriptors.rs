//! The open-file limit (issue 20 #10): idle connections must never take the descriptors the
//! spool and the admin listener need. The real binary under a low `ulimit -n`: too low to hold
//! its reserve, it refuses to start naming both numbers; lower than `server.max_connections`
//! needs, it lowers the bound (with a warning), and under a flood of idle connections the spool
//! still opens segments and the admin port still answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::gateway_process::*;
use crate::helpers::*;

fn write_config(dir: &Path) -> PathBuf {
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
# A 3 KB notification fills a segment: every one needs a new segment file.
segment_bytes = 4096
max_bytes = "4MiB"
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

#[tokio::test]
async fn a_limit_below_the_reserve_refuses_the_start_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());

    let Started::Exited(status, log) = launch(&config, Some(128)) else {
        panic!("started under ulimit -n 128");
    };

    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("server.max_connections"), "{log}");
    assert!(log.contains("RLIMIT_NOFILE"), "{log}");
    assert!(log.contains("is 128"), "{log}");
}

#[tokio::test]
async fn idle_connections_past_the_limit_leave_descriptors_for_the_spool_and_admin() {
    // Arrange: 512 descriptors, the default server.max_connections (1024) does not fit.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let Started::Listening(gateway) = launch(&config, Some(512)) else {
        panic!("did not start under ulimit -n 512");
    };
    assert!(
        gateway
            .logged("server.max_connections lowered", Duration::from_secs(5))
            .await,
        "{}",
        gateway.log_text()
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    // A kept-alive connection, opened before the flood.
    assert_eq!(
        gateway.post(&client, sample_with_id("fd-0")).await,
        Some(200)
    );

    // Act: 700 idle connections (more than the limit), held open.
    let port: u16 = gateway.address.rsplit(':').next().unwrap().parse().unwrap();
    let connects = (0..700).map(|_| async move {
        tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .ok()
        .and_then(Result::ok)
    });
    let idle: Vec<TcpStream> = futures::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Assert: the admin port answers, and notifications (each in a new segment) are accepted.
    let ready = client
        .get(format!("{}/health/ready", gateway.admin_address))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(ready.ok(), Some(200), "admin port with {} idle", idle.len());
    for i in 1..=3 {
        assert_eq!(
            gateway
                .post(&client, sample_with_id(&format!("fd-{i}")))
                .await,
            Some(200),
            "with {} idle connections:\n{}",
            idle.len(),
            gateway.log_text()
        );
    }
    drop(idle);
    let events = wait_for_events(&dir.path().join("out/events.jsonl"), 4).await;
    assert_eq!(ids_of(&events), ["fd-0", "fd-1", "fd-2", "fd-3"]);
}
