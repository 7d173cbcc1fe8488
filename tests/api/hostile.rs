//! A corpus of malformed and hostile requests against a gateway with bearer auth: each gets
//! its 4xx (never a 5xx, never a panic), and nothing reaches the sink. Plus load shedding, slow
//! clients and auth on every route.

use std::io::{Read, Write};
use std::time::Duration;

use dataloy_gateway::config::{AuthMode, ByteSize, Settings};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "hostile-test-token";

fn with_bearer(settings: &mut Settings) {
    settings.auth.mode = AuthMode::Bearer;
    settings.auth.token = Some(SecretString::from(TOKEN));
    settings.server.max_body_bytes = ByteSize(256 * 1024);
    settings.server.client_timeout = Duration::from_millis(500);
}

struct Case {
    name: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    authorization: Option<String>,
    status: u16,
    code: &'static str,
}

fn case(name: impl Into<String>, body: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        body,
        content_type: Some("application/json"),
        authorization: Some(format!("Bearer {TOKEN}")),
        status,
        code,
    }
}

fn valid() -> Value {
    serde_json::from_slice(UPDATED).unwrap()
}

fn with_field(field: &str, value: Value) -> Vec<u8> {
    let mut body = valid();
    body[field] = value;
    serde_json::to_vec(&body).unwrap()
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    // Truncated JSON.
    for cut in [1, 2, 10, 50, 100, 500, 1000, 2000, 3000, UPDATED.len() - 2] {
        cases.push(case(
            format!("truncated at {cut}"),
            UPDATED[..cut].to_vec(),
            400,
            "invalid_json",
        ));
    }
    // Invalid UTF-8 in various places.
    for (i, at) in [0, 5, 20, 1500].into_iter().enumerate() {
        let mut body = UPDATED.to_vec();
        body.insert(at, 0xff);
        cases.push(case(
            format!("invalid UTF-8 #{i}"),
            body,
            400,
            "invalid_json",
        ));
    }
    cases.push(case(
        "overlong UTF-8",
        b"{\"id\":\"\xc0\xaf\"}".to_vec(),
        400,
        "invalid_json",
    ));
    cases.push(case(
        "lone surrogate escape",
        br#"{"id":"\ud800"}"#.to_vec(),
        400,
        // Refused by the scan itself now, anywhere in the body (I-JSON), not only in `id`.
        "invalid_json",
    ));
    // Deep nesting.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    cases.push(case(
        "a field nested 200 deep",
        UPDATED
            .to_vec()
            .replace_last_brace(&format!(",\"x\":{}}}", deep(200))),
        400,
        "invalid_json",
    ));
    cases.push(case(
        "unbalanced nesting 100k",
        "[".repeat(100_000).into_bytes(),
        400,
        "invalid_json",
    ));
    cases.push(case(
        "id nested 10k deep",
        format!("{{\"id\":{}}}", deep(10_000)).into_bytes(),
        400,
        "invalid_json",
    ));
    // Huge numbers and strings.
    cases.push(case(
        "dataloyObject 1e400",
        with_field("dataloyObject", json!(0))
            .replace_bytes(b"\"dataloyObject\":0", b"\"dataloyObject\":1e400"),
        400,
        "invalid_json",
    ));
    cases.push(case(
        "dataloyObject 2^70",
        with_field("dataloyObject", json!(0)).replace_bytes(
            b"\"dataloyObject\":0",
            b"\"dataloyObject\":1180591620717411303424",
        ),
        400,
        "invalid_field",
    ));
    cases.push(case(
        "id of 100k characters",
        with_field("id", json!("x".repeat(100_000))),
        400,
        "invalid_field",
    ));
    cases.push(case(
        "objectType of 10k characters",
        with_field("objectType", json!("A".repeat(10_000))),
        400,
        "invalid_field",
    ));
    cases.push(case(
        "eventTime of 50k characters",
        with_field("eventTime", json!("2".repeat(50_000))),
        400,
        "invalid_field",
    ));
    // Wrong types, field by field.
    let wrong: [(&str, Value, &str); 21] = [
        ("id", json!(1), "invalid_field"),
        ("id", json!(true), "invalid_field"),
        ("id", json!(["a"]), "invalid_field"),
        ("id", json!({"a": 1}), "invalid_field"),
        ("eventTime", json!(true), "invalid_field"),
        ("eventTime", json!([2016, 9, 14]), "invalid_field"),
        ("eventTime", json!({}), "invalid_field"),
        ("objectType", json!(1), "invalid_field"),
        ("objectType", json!(false), "invalid_field"),
        ("objectType", json!(["PortCall"]), "invalid_field"),
        ("eventType", json!(1), "invalid_field"),
        ("eventType", json!(["U"]), "invalid_field"),
        ("eventType", json!(""), "invalid_field"),
        ("dataloyObject", json!("1"), "invalid_field"),
        ("dataloyObject", json!(true), "invalid_field"),
        ("dataloyObject", json!([1]), "invalid_field"),
        ("dataloyObject", json!({}), "invalid_field"),
        ("subscription", json!(1), "invalid_field"),
        ("subscription", json!(true), "invalid_field"),
        ("resource", json!(1), "invalid_field"),
        ("resource", json!("big"), "invalid_field"),
    ];
    for (field, value, code) in wrong {
        cases.push(case(
            format!("{field} = {value}"),
            with_field(field, value),
            400,
            code,
        ));
    }
    // Nulls everywhere.
    for field in [
        "id",
        "eventTime",
        "objectType",
        "eventType",
        "dataloyObject",
        "subscription",
    ] {
        cases.push(case(
            format!("{field} null"),
            with_field(field, Value::Null),
            400,
            "missing_field",
        ));
    }
    let all_null = r#"{"id":null,"eventTime":null,"objectType":null,"eventType":null,"dataloyObject":null,"subscription":null,"resource":null}"#;
    cases.push(case(
        "all null",
        all_null.as_bytes().to_vec(),
        400,
        "missing_field",
    ));
    cases.push(case("JSON null", b"null".to_vec(), 400, "invalid_envelope"));
    cases.push(case("empty object", b"{}".to_vec(), 400, "missing_field"));
    // Auth.
    for (name, authorization) in [
        ("no credentials", None),
        ("wrong token", Some(format!("Bearer {TOKEN}x"))),
        ("token prefix", Some("Bearer hostile".to_owned())),
        ("empty bearer", Some("Bearer ".to_owned())),
        (
            "basic instead of bearer",
            Some("Basic aG9zdGlsZTp0ZXN0".to_owned()),
        ),
        ("scheme only", Some("Bearer".to_owned())),
        ("token without scheme", Some(TOKEN.to_owned())),
    ] {
        let mut c = case(name, UPDATED.to_vec(), 401, "unauthorized");
        c.authorization = authorization;
        cases.push(c);
    }
    // Content types.
    for content_type in [
        "text/plain",
        "text/html",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/x-www-form-urlencoded",
    ] {
        let mut c = case(
            format!("content type {content_type}"),
            UPDATED.to_vec(),
            415,
            "unsupported_media_type",
        );
        c.content_type = Some(content_type);
        cases.push(c);
    }
    // Oversized.
    cases.push(case(
        "300 KiB body",
        with_field("resource", json!({"pad": "x".repeat(300 * 1024)})),
        413,
        "payload_too_large",
    ));
    cases
}

/// Small byte-editing helpers for building hostile bodies.
trait Edit {
    fn replace_bytes(self, from: &[u8], to: &[u8]) -> Vec<u8>;
    fn replace_last_brace(self, with: &str) -> Vec<u8>;
}

impl Edit for Vec<u8> {
    fn replace_bytes(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
        [&self[..at], to, &self[at + from.len()..]].concat()
    }

    fn replace_last_brace(mut self, with: &str) -> Vec<u8> {
        let at = self.iter().rposition(|b| *b == b'}').unwrap();
        self.truncate(at);
        self.extend_from_slice(with.as_bytes());
        self
    }
}

#[tokio::test]
async fn every_hostile_request_gets_its_4xx_and_nothing_reaches_the_sink() {
    let app = spawn_app_with(|s, _| with_bearer(s)).await;
    let corpus = corpus();
    assert!(corpus.len() >= 50, "corpus has {} cases", corpus.len());
    eprintln!("hostile corpus: {} requests", corpus.len());

    for case in &corpus {
        let mut request = app
            .client
            .post(format!("{}/webhooks/dataloy", app.address))
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(auth) = &case.authorization {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();

        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
    }

    let marker = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .bearer_auth(TOKEN)
        .body(minimal("marker"))
        .send()
        .await
        .unwrap();
    assert_eq!(marker.status(), 200);
    assert_eq!(
        ids_of(&app.wait_for_events(1).await),
        ["marker"],
        "nothing hostile was relayed"
    );
    assert_eq!(app.metric("dataloy_gateway_notifications_accepted_total{object_type=\"PortCall\",source=\"webhook\"}").await, 1.0);
}

#[tokio::test]
async fn every_route_of_the_notification_listener_requires_credentials() {
    let app = spawn_app_with(|s, _| with_bearer(s)).await;

    for (method, path, with_credentials) in [
        ("GET", "/webhooks/dataloy", 405),
        ("GET", "/metrics", 404),
        ("GET", "/health/ready", 404),
        ("POST", "/", 404),
        ("DELETE", "/webhooks/dataloy", 405),
        ("GET", "/../etc/passwd", 404),
    ] {
        let url = format!("{}{path}", app.address);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let anonymous = app
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        let authenticated = app
            .client
            .request(method, &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();

        assert_eq!(anonymous.status(), 401, "{path}");
        assert_eq!(
            authenticated.status(),
            with_credentials,
            "{path}: metrics and health live only on the admin listener; the webhook takes POST"
        );
    }
}

#[tokio::test]
async fn slow_bodies_and_slow_headers_are_cut_off() {
    let app = spawn_app_with(|s, _| with_bearer(s)).await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();

    // A body that never finishes: 408 once client_timeout passes.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(b"{\"id\":".to_vec())).unwrap();
    let slow_body = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(rx))
        .send()
        .await
        .unwrap();
    assert_eq!(slow_body.status(), 408);
    let body: Value = slow_body.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");
    drop(tx);

    // Headers that never finish (slowloris): the connection is answered 408 or closed.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"POST /webhooks/dataloy HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Many headers: refused with a 4xx before any processing.
    let mut request = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .bearer_auth(TOKEN)
        .body(minimal("many-headers"));
    for i in 0..200 {
        request = request.header(format!("x-filler-{i}"), "y");
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(read_events(&app.events_path).is_empty());
}

#[tokio::test]
async fn senders_stalling_their_bodies_hold_no_processing_slot() {
    let app = spawn_app_with(|s, _| {
        with_bearer(s);
        s.server.max_in_flight = 2;
        s.server.client_timeout = Duration::from_secs(10);
    })
    .await;
    // As many senders stalling their bodies as there are processing slots.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
        tx.unbounded_send(Ok(b"{".to_vec())).unwrap();
        let request = app
            .client
            .post(format!("{}/webhooks/dataloy", app.address))
            .bearer_auth(TOKEN)
            .body(reqwest::Body::wrap_stream(rx))
            .send();
        stalled.push((tx, tokio::spawn(request)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let shed = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .bearer_auth(TOKEN)
        .body(minimal("shed"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();

    // Stalled bodies hold no processing slot (#18.10): the real notification is accepted.
    assert_eq!(shed.status(), 200, "{waited:?}");
    drop(stalled);
}
