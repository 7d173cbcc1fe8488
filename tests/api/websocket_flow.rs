//! The WebSocket source under load, against an in-test server acting as Dataloy: nothing the
//! server sent before it saw the gateway's Close is lost at a graceful stop; a burst is stored
//! in batches (one spool append for what the socket holds); a message over
//! `server.max_body_bytes` is refused without being buffered, and later ones flow.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataloy_gateway::config::ByteSize;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::websocket::{fake_dataloy, source, text};

const ACCEPTED: &str =
    "dataloy_gateway_websocket_messages_total{outcome=\"accepted\",source=\"dataloy\"}";

/// Most messages the flood sends (so that the relay of them all fits the test's wait on a busy
/// machine); far more than the gateway has stored when it is stopped.
const FLOOD_MAX: usize = 12_000;

/// A Dataloy that pushes `minimal` notifications `flood-0`, `flood-1`, … as fast as the
/// connection takes them (up to `FLOOD_MAX`) until it reads the gateway's Close; answers how many
/// it had sent by then (each fully written to the socket).
async fn flooding_dataloy() -> (u16, oneshot::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sent_at_close, answer) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let (mut write, mut read) = socket.split();
        let _fields = read.next().await;
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let pushing = {
            let (sent, stop) = (sent.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.load(Ordering::SeqCst);
                    if n == FLOOD_MAX {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let message = Message::Text(minimal(&format!("flood-{n}")).into());
                    if write.send(message).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                write
            })
        };
        // Reading the Close makes the library queue its answer; a send after it fails, so every
        // message counted here went out before the answer.
        while let Some(Ok(message)) = read.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        let _ = sent_at_close.send(sent.load(Ordering::SeqCst));
        let mut write = pushing.await.unwrap();
        let _ = write.flush().await;
        let _ = write.close().await;
    });
    (port, answer)
}

#[tokio::test]
async fn a_graceful_stop_stores_every_message_sent_before_the_server_saw_the_close() {
    // Arrange: Dataloy floods; the gateway has stored some of it.
    let (port, sent_at_close) = flooding_dataloy().await;
    let app = spawn_app_with(|s, _| {
        s.sources.websocket.insert("dataloy".into(), source(port));
    })
    .await;
    assert!(eventually(|| async { app.metric(ACCEPTED).await >= 2000.0 }).await);

    // Act: a graceful stop while the flood goes on.
    let kept = app.stop().await;

    // Assert: a gateway started on the same spool relays every message sent before the Close.
    let sent = sent_at_close
        .await
        .expect("the server saw the gateway's Close");
    let dir = kept.path().to_owned();
    let app = spawn_app_with(move |s, _| {
        s.spool.dir = dir.join("spool");
        s.sinks.file.as_mut().unwrap().path = dir.join("out/events.jsonl");
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut events = read_events(&app.events_path);
    while events.len() < sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = read_events(&app.events_path);
    }
    let delivered: HashSet<String> = ids_of(&events).into_iter().collect();
    let missing: Vec<usize> = (0..sent)
        .filter(|n| !delivered.contains(&format!("flood-{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} messages sent before the Close were lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    drop(kept);
}

#[tokio::test]
async fn a_burst_is_stored_in_batches_not_one_group_commit_per_message() {
    // Arrange: a burst of 300 notifications written at once, then the connection stays open.
    const BURST: usize = 300;
    let ids: Vec<String> = (0..BURST).map(|n| format!("burst-{n}")).collect();
    let (port, _seen) = fake_dataloy(vec![ids.iter().map(|id| text(id)).collect()]).await;

    // Act
    let app = spawn_app_with(|s, _| {
        s.sources.websocket.insert("dataloy".into(), source(port));
    })
    .await;

    // Assert: all stored, in order, with fewer spool appends than messages.
    assert_eq!(ids_of(&app.wait_for_events(BURST).await), ids);
    let fsyncs = app.metric("dataloy_gateway_spool_fsyncs_total").await;
    assert!(
        fsyncs < BURST as f64,
        "{fsyncs} spool appends for {BURST} messages"
    );
    let batches = app
        .metric("dataloy_gateway_websocket_batch_size_count{source=\"dataloy\"}")
        .await;
    let batched = app
        .metric("dataloy_gateway_websocket_batch_size_sum{source=\"dataloy\"}")
        .await;
    assert_eq!(batched, BURST as f64);
    assert!(
        batches < BURST as f64,
        "{batches} batches for {BURST} messages"
    );
}

#[tokio::test]
async fn a_message_over_max_body_bytes_is_refused_and_later_ones_flow() {
    // Arrange: a valid notification just over the limit between two small ones; the gateway
    // must drop that connection, and the next connection pushes one more.
    const LIMIT: u64 = 64 * 1024;
    let big = minimal("too-big").replacen(
        r#""resource":{"key":1}"#,
        &format!(
            r#""resource":{{"key":1,"pad":"{}"}}"#,
            "x".repeat(LIMIT as usize)
        ),
        1,
    );
    let (port, _seen) = fake_dataloy(vec![
        vec![text("before-big"), big, text("after-big-same-connection")],
        vec![text("after-reconnect")],
    ])
    .await;

    // Act
    let app = spawn_app_with(|s, _| {
        s.server.max_body_bytes = ByteSize(LIMIT);
        s.sources.websocket.insert("dataloy".into(), source(port));
    })
    .await;

    // Assert
    let events = app.wait_for_events(2).await;
    assert_eq!(ids_of(&events), ["before-big", "after-reconnect"]);
    assert_eq!(
        app.metric(
            "dataloy_gateway_websocket_messages_total{outcome=\"too_large\",source=\"dataloy\"}"
        )
        .await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !ids_of(&read_events(&app.events_path)).contains(&"too-big".to_owned()),
        "the over-size message is never relayed"
    );
}
