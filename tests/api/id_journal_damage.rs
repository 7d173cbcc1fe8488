//! The id journal against the real binary when its files are damaged or cannot grow: a torn
//! tail and a flipped byte left after SIGKILLs never stop the start, and cost at most the ids
//! whose entries they hit; a journal the disk refuses to extend answers 503 (and nothing of
//! that notification stays), then carries on in a new file.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gateway_process::*;
use crate::helpers::*;

/// Bytes of a journal file's header and of one entry (`id_journal::entry`).
const HEADER_LEN: u64 = 16;
const ENTRY_LEN: u64 = 36;

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
max_body_bytes = "64KiB"
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
segment_bytes = "16KiB"
max_bytes = "4MiB"
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

/// The file sink cannot create its directory: everything accepted stays in the spool.
fn block_sink(dir: &Path) {
    std::fs::write(dir.join("out"), b"blocked").unwrap();
}

fn unblock_sink(dir: &Path) {
    std::fs::remove_file(dir.join("out")).unwrap();
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("spool/ids"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ids"))
        .collect();
    files.sort();
    files
}

async fn status_of(gateway: &GatewayProcess, client: &reqwest::Client, id: &str) -> Answer {
    let response = client
        .post(format!("{}/webhooks/dataloy", gateway.address))
        .header("content-type", "application/json")
        .body(minimal(id))
        .send()
        .await;
    Answer::of(response).await
}

async fn accept_all(gateway: &GatewayProcess, client: &reqwest::Client, ids: &[String]) {
    for id in ids {
        assert_eq!(
            status_of(gateway, client, id).await,
            Answer::Accepted,
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_torn_tail_and_a_flipped_byte_after_kills_are_cut_and_the_gateway_starts() {
    // Arrange: two runs, each killed, each leaving a journal file; the sink is down, so every
    // record is still in the spool.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    block_sink(dir.path());
    let client = reqwest::Client::new();
    let first: Vec<String> = (0..10).map(|i| format!("first-{i}")).collect();
    let second: Vec<String> = (0..10).map(|i| format!("second-{i}")).collect();
    let gateway = start_gateway(&config);
    accept_all(&gateway, &client, &first).await;
    drop(gateway); // SIGKILL
    let gateway = start_gateway(&config);
    accept_all(&gateway, &client, &second).await;
    drop(gateway); // SIGKILL
    let files = journal_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");

    // Act: a byte flipped in the older file's fourth entry (`first-3`), the newest file torn
    // in the middle of its last entry (`second-9`); restart.
    let older = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    let flipped_at = HEADER_LEN + 3 * ENTRY_LEN + 20;
    let mut byte = [0u8];
    std::fs::File::open(&files[0])
        .unwrap()
        .read_exact_at(&mut byte, flipped_at)
        .unwrap();
    older.write_all_at(&[byte[0] ^ 0x10], flipped_at).unwrap();
    let newest_len = std::fs::metadata(&files[1]).unwrap().len();
    assert_eq!(newest_len, HEADER_LEN + 10 * ENTRY_LEN);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_len(newest_len - ENTRY_LEN / 2)
        .unwrap();
    let gateway = start_gateway(&config);

    // Assert: the damage is counted and logged, never fatal. `first-3` is forgotten (its entry
    // is gone) and accepted again; `second-9` is remembered all the same: its record is in the
    // spool, and its entry is written again from there.
    let metrics = gateway.metrics(&client).await;
    let dropped = |reason: &str| {
        metric_value(
            &metrics,
            &format!(
                "dataloy_gateway_dedup_journal_recovery_dropped_bytes_total{{reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(dropped("corrupt"), ENTRY_LEN as f64, "{metrics}");
    assert_eq!(dropped("torn"), (ENTRY_LEN / 2) as f64, "{metrics}");
    assert!(
        gateway
            .logged("torn id journal tail cut off", Duration::from_secs(5))
            .await
    );
    for id in first.iter().chain(&second) {
        let expected = if id == "first-3" {
            Answer::Accepted
        } else {
            Answer::Duplicate
        };
        assert_eq!(status_of(&gateway, &client, id).await, expected, "{id}");
    }
    // The cut tail stays cut: the next start finds the journal clean.
    drop(gateway);
    let gateway = start_gateway(&config);
    let metrics = gateway.metrics(&client).await;
    let torn = "dataloy_gateway_dedup_journal_recovery_dropped_bytes_total{reason=\"torn\"}";
    assert_eq!(metric_value(&metrics, torn), 0.0, "{metrics}");
    assert_eq!(
        status_of(&gateway, &client, "second-9").await,
        Answer::Duplicate
    );
}

/// Runs about 1,150 sequential requests (each waits for its fsyncs) to grow the journal file to
/// the limit; under 20 s on the test machine.
#[tokio::test]
async fn a_journal_the_disk_will_not_extend_answers_503_and_goes_on_in_a_new_file() {
    // Arrange: no file may grow past 40 KiB (the gateway ignores SIGXFSZ: the write fails
    // with EFBIG instead), which the spool's 16 KiB segments never reach and the journal file
    // does after 1,137 entries. The sink is down, so every record stays in the spool until the
    // end.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    block_sink(dir.path());
    let client = reqwest::Client::new();
    let limits = "ulimit -f 40".to_owned();
    let gateway = match launch_in_shell(&config, Some(limits)) {
        Started::Listening(gateway) => gateway,
        Started::Exited(status, log) => panic!("the gateway exited ({status}):\n{log}"),
    };

    // Act: new ids until one is refused.
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let id = format!("full-{i}");
        let response = client
            .post(format!("{}/webhooks/dataloy", gateway.address))
            .body(minimal(&id))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            accepted.push(id);
            continue;
        }
        assert_eq!(response.status(), 503, "{id}");
        assert!(response.headers().contains_key("retry-after"));
        refused = Some(id);
        break;
    }

    // Assert: refused when the journal file reached the limit, counted; the next notification
    // is accepted in a new journal file, and so is the refused one when resent.
    let refused = refused.expect("a notification was refused at the file size limit");
    assert!(
        (1000..1200).contains(&accepted.len()),
        "refused after {} accepted",
        accepted.len()
    );
    let metrics = gateway.metrics(&client).await;
    assert_eq!(
        metric_value(&metrics, "dataloy_gateway_dedup_journal_write_errors_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        status_of(&gateway, &client, "after-full").await,
        Answer::Accepted
    );
    assert_eq!(
        status_of(&gateway, &client, &refused).await,
        Answer::Accepted
    );
    accepted.push("after-full".into());
    accepted.push(refused.clone());
    assert_eq!(journal_files(dir.path()).len(), 2);

    // After a kill and a restart without the limit, every id answered 200 is known, and each
    // notification is delivered once: nothing of the refused attempt stayed in the spool.
    drop(gateway);
    unblock_sink(dir.path());
    let gateway = start_gateway(&config);
    for id in &accepted {
        assert_eq!(
            status_of(&gateway, &client, id).await,
            Answer::Duplicate,
            "{id}"
        );
    }
    let events = dir.path().join("out/events.jsonl");
    let delivered = ids_of(&wait_for_events(&events, accepted.len()).await);
    let (first, copies) = first_deliveries(delivered);
    assert_eq!(copies, 0, "the refused attempt was delivered too");
    assert_eq!(first.len(), accepted.len());
}
