//! The notification route: samples relayed byte for byte, duplicates, content types, size, auth.

use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use dataloy_gateway::config::AuthMode;

#[tokio::test]
async fn both_documented_samples_are_accepted_and_written_byte_for_byte() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let first = app.post(UPDATED).await;
    let second = app.post(ALERT).await;

    // Assert
    assert_eq!(first.status(), 200);
    let answer: Value = first.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["id"], "1573335-244070007");
    assert_eq!(second.status(), 200);
    app.wait_for_events(2).await;
    let mut expected = UPDATED.to_vec();
    expected.push(b'\n');
    expected.extend_from_slice(ALERT);
    expected.push(b'\n');
    assert_eq!(std::fs::read(&app.events_path).unwrap(), expected);
}

#[tokio::test]
async fn a_duplicate_is_answered_200_and_published_once() {
    let app = spawn_app().await;

    let first = app.post(UPDATED).await;
    let retry = app.post(UPDATED).await;

    assert_eq!(first.status(), 200);
    assert_eq!(retry.status(), 200);
    let answer: Value = retry.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(answer["id"], "1573335-244070007");
    app.post(minimal("marker").into_bytes()).await;
    let events = app.wait_for_events(2).await;
    assert_eq!(ids_of(&events), ["1573335-244070007", "marker"]);
    assert_eq!(
        app.metric("dataloy_gateway_notifications_duplicate_total{source=\"webhook\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn one_hundred_concurrent_identical_requests_publish_exactly_once() {
    let app = spawn_app().await;
    let body = sample_with_id("concurrent-1");

    let requests = (0..100).map(|_| app.post(body.clone()));
    let responses = futures::future::join_all(requests).await;

    let mut statuses = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        statuses.push(answer["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.iter().filter(|s| *s == "accepted").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 99);
    app.post(minimal("marker").into_bytes()).await;
    let events = app.wait_for_events(2).await;
    assert_eq!(ids_of(&events), ["concurrent-1", "marker"]);
}

#[tokio::test]
async fn unknown_fields_are_accepted_and_kept() {
    let app = spawn_app().await;
    let body = minimal("extra").replacen('{', r#"{"futureField":{"a":[1,2]},"#, 1);

    let response = app.post(body.clone()).await;

    assert_eq!(response.status(), 200);
    let events = app.wait_for_events(1).await;
    assert_eq!(events[0]["futureField"]["a"][1], 2);
    assert_eq!(
        std::fs::read(&app.events_path).unwrap(),
        format!("{body}\n").into_bytes()
    );
}

#[tokio::test]
async fn content_type_must_be_json_or_absent() {
    let app = spawn_app().await;
    let url = format!("{}/webhooks/dataloy", app.address);
    let cases = [
        (Some("application/json"), 200),
        (Some("application/json; charset=utf-8"), 200),
        (Some("application/vnd.dataloy+json"), 200),
        (None, 200),
        (Some("text/plain"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("application/xml"), 415),
    ];

    for (i, (content_type, expected)) in cases.into_iter().enumerate() {
        let mut request = app.client.post(&url).body(minimal(&format!("ct-{i}")));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();

        assert_eq!(response.status(), expected, "content type {content_type:?}");
        if expected == 415 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unsupported_media_type");
        }
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let app =
        spawn_app_with(|s, _| s.server.max_body_bytes = dataloy_gateway::config::ByteSize(4096))
            .await;
    let big = format!(
        r#"{{"id":"big","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"U","dataloyObject":1,"subscription":{{}},"resource":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );

    let declared = app.post(big.clone()).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();

    for response in [declared, streamed] {
        assert_eq!(response.status(), 413);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
    assert_eq!(app.post(minimal("small").into_bytes()).await.status(), 200);
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["small"]);
}

#[tokio::test]
async fn basic_auth_is_enforced() {
    let app = spawn_app_with(|s, _| {
        s.auth.mode = AuthMode::Basic;
        s.auth.username = Some("dataloy".into());
        s.auth.password = Some(SecretString::from("s3cret"));
    })
    .await;
    let url = format!("{}/webhooks/dataloy", app.address);

    let missing = app
        .client
        .post(&url)
        .body(minimal("a1"))
        .send()
        .await
        .unwrap();
    let wrong = app
        .client
        .post(&url)
        .basic_auth("dataloy", Some("guess"))
        .body(minimal("a2"))
        .send()
        .await
        .unwrap();
    let bearer_instead = app
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .body(minimal("a3"))
        .send()
        .await
        .unwrap();
    let right = app
        .client
        .post(&url)
        .basic_auth("dataloy", Some("s3cret"))
        .body(minimal("a4"))
        .send()
        .await
        .unwrap();

    for response in [missing, wrong, bearer_instead] {
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(right.status(), 200);
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["a4"]);
}

#[tokio::test]
async fn bearer_auth_is_enforced() {
    let app = spawn_app_with(|s, _| {
        s.auth.mode = AuthMode::Bearer;
        s.auth.token = Some(SecretString::from("t0ken"));
    })
    .await;
    let url = format!("{}/webhooks/dataloy", app.address);

    let wrong = app
        .client
        .post(&url)
        .bearer_auth("t0ke")
        .body(minimal("b1"))
        .send()
        .await
        .unwrap();
    let missing = app
        .client
        .post(&url)
        .body(minimal("b2"))
        .send()
        .await
        .unwrap();
    let right = app
        .client
        .post(&url)
        .bearer_auth("t0ken")
        .body(minimal("b3"))
        .send()
        .await
        .unwrap();

    assert_eq!(wrong.status(), 401);
    assert_eq!(missing.status(), 401);
    assert_eq!(right.status(), 200);
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["b3"]);
}

#[tokio::test]
async fn other_methods_and_paths_get_json_errors() {
    let app = spawn_app().await;

    let get = app
        .client
        .get(format!("{}/webhooks/dataloy", app.address))
        .send()
        .await
        .unwrap();
    let unknown = app
        .client
        .post(format!("{}/elsewhere", app.address))
        .body(minimal("x"))
        .send()
        .await
        .unwrap();
    let metrics_on_public_listener = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(unknown.status(), 404);
    assert_eq!(metrics_on_public_listener.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
