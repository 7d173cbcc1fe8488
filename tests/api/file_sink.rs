//! The file sink as a long-running process needs it: its file is rotated by size, and the check
//! of the file at start-up (for a write torn by a crash) runs in the background, before the first
//! append.

use std::path::{Path, PathBuf};

use dataloy_gateway::config::{ByteSize, Settings};

use crate::helpers::*;

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[tokio::test]
async fn the_file_is_rotated_by_size_keeping_the_newest_files() {
    let app = spawn_app_with(|settings, _| {
        let file = settings.sinks.file.as_mut().unwrap();
        file.rotate_bytes = ByteSize(1024);
        file.keep_rotated = 2;
    })
    .await;
    let ids: Vec<String> = (0..20).map(|i| format!("rotation-{i:02}")).collect();

    // One at a time, each delivered before the next: one body per batch.
    for (delivered, id) in ids.iter().enumerate() {
        assert_eq!(app.post(minimal(id)).await.status(), 200);
        let want = (delivered + 1) as f64;
        assert!(
            eventually(|| async {
                app.metric("dataloy_gateway_sink_published_total{sink=\"file\"}")
                    .await
                    == want
            })
            .await,
            "{id} delivered"
        );
    }

    let current = app.events_path.clone();
    let files = [rotated(&current, 2), rotated(&current, 1), current.clone()];
    let mut kept = Vec::new();
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size <= 1024, "{} holds {size} bytes", file.display());
        kept.extend(ids_of(&read_events(file)));
    }
    assert!(
        !rotated(&current, 3).exists(),
        "at most keep_rotated files are kept"
    );
    // The newest notifications, in order, none twice: the files form a suffix of what was sent.
    assert!(kept.len() > 4 && kept.len() < ids.len(), "{kept:?}");
    assert_eq!(
        kept,
        ids[ids.len() - kept.len()..],
        "oldest files deleted first"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_large_file_is_checked_in_the_background_before_the_first_append() {
    // A file left by an earlier run: many complete bodies and a body torn by a crash. The check
    // that cuts the torn end reads the whole file; it no longer runs before the listeners start
    // (so liveness answers during it), but it still runs before anything is appended.
    let earlier = tempfile::tempdir().unwrap();
    let path = earlier.path().join("events.jsonl");
    let mut content = String::new();
    let mut count = 0;
    while content.len() < 8 << 20 {
        content.push_str(&minimal(&format!("earlier-{count}")));
        content.push('\n');
        count += 1;
    }
    content.push_str(r#"{"id":"torn-by-a-cra"#);
    std::fs::write(&path, &content).unwrap();
    let file = path.clone();
    let app =
        spawn_app_with(move |settings, _| settings.sinks.file.as_mut().unwrap().path = file).await;

    let live = app
        .client
        .get(format!("{}/health/live", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(app.post(minimal("after-restart")).await.status(), 200);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_sink_published_total{sink=\"file\"}")
                .await
                == 1.0
        })
        .await
    );

    let events = read_events(&path);
    assert_eq!(
        events.len(),
        count + 1,
        "the earlier bodies, then the new one"
    );
    assert_eq!(events[count]["id"], "after-restart");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains("torn-by-a-cra") && written.ends_with('\n'));
    app.stop().await;
}

#[test]
fn rotation_is_on_by_default_and_needs_a_file_to_keep() {
    let config = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!("[sinks.file]\npath = \"events.jsonl\"\n{extra}"),
        )
        .unwrap();
        Settings::load_with_env(Some(&path), Vec::<(String, String)>::new())
    };

    let defaults = config("").unwrap();
    let file = defaults.sinks.file.unwrap();
    assert_eq!(file.rotate_bytes, ByteSize(256 << 20));
    assert_eq!(file.keep_rotated, 4);

    let error = config("keep_rotated = 0\n").unwrap_err().to_string();
    assert!(error.contains("sinks.file.keep_rotated"), "{error}");
    assert!(config("keep_rotated = 0\nrotate_bytes = 0\n").is_ok());
}
