//! Every envelope rule: the status, error code and field each violation gets, and that nothing
//! invalid reaches a sink.

use serde_json::{json, Value};

use crate::helpers::*;

fn valid() -> Value {
    json!({
        "id": "v-1",
        "eventTime": "2016-09-14T13:37:26",
        "objectType": "PortCall",
        "eventType": "U",
        "dataloyObject": 189126972,
        "dataloyObjectSelf": "http://localhost:8080/ws/rest/PortCall/7823672",
        "subscription": {"key": 243885046, "objectType": "BunkerOrder"},
        "resource": {"key": 244070007}
    })
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut body = valid();
    body[field] = value;
    serde_json::to_vec(&body).unwrap()
}

fn without(field: &str) -> Vec<u8> {
    let mut body = valid();
    body.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&body).unwrap()
}

/// One broken rule: its name, the body, the error code and the field the answer names.
pub type Violation = (&'static str, Vec<u8>, &'static str, Option<&'static str>);

/// Every envelope rule broken once (also judged by the OpenAPI document: `openapi.rs`).
pub fn violations() -> Vec<Violation> {
    vec![
        ("truncated JSON", br#"{"id":"x","#.to_vec(), "invalid_json", None),
        ("empty body", Vec::new(), "invalid_json", None),
        ("invalid UTF-8", b"{\"id\":\"\xff\xfe\"}".to_vec(), "invalid_json", None),
        ("trailing garbage", [valid().to_string().as_bytes(), b"x"].concat(), "invalid_json", None),
        ("array", b"[1,2]".to_vec(), "invalid_envelope", None),
        ("string", b"\"hello\"".to_vec(), "invalid_envelope", None),
        ("duplicate key", br#"{"id":"a","id":"b"}"#.to_vec(), "invalid_json", None),
        ("id missing", without("id"), "missing_field", Some("id")),
        ("id null", with("id", Value::Null), "missing_field", Some("id")),
        ("id empty", with("id", json!("")), "invalid_field", Some("id")),
        ("id number", with("id", json!(12)), "invalid_field", Some("id")),
        ("id too long", with("id", json!("x".repeat(129))), "invalid_field", Some("id")),
        ("id control char", with("id", json!("a\u{1}b")), "invalid_field", Some("id")),
        ("id newline", with("id", json!("a\nb")), "invalid_field", Some("id")),
        ("eventTime missing", without("eventTime"), "missing_field", Some("eventTime")),
        ("eventTime date only", with("eventTime", json!("2016-09-14")), "invalid_field", Some("eventTime")),
        ("eventTime bad month", with("eventTime", json!("2016-13-14T13:37:26")), "invalid_field", Some("eventTime")),
        ("eventTime number", with("eventTime", json!(1473860246)), "invalid_field", Some("eventTime")),
        ("objectType missing", without("objectType"), "missing_field", Some("objectType")),
        ("objectType with space", with("objectType", json!("Port Call")), "invalid_field", Some("objectType")),
        ("objectType leading digit", with("objectType", json!("1Port")), "invalid_field", Some("objectType")),
        ("objectType dotted", with("objectType", json!("a.b")), "invalid_field", Some("objectType")),
        ("objectType object", with("objectType", json!({})), "invalid_field", Some("objectType")),
        ("eventType missing", without("eventType"), "missing_field", Some("eventType")),
        ("eventType unknown", with("eventType", json!("X")), "invalid_field", Some("eventType")),
        ("eventType lowercase", with("eventType", json!("u")), "invalid_field", Some("eventType")),
        ("eventType word", with("eventType", json!("UPDATE")), "invalid_field", Some("eventType")),
        ("dataloyObject missing", without("dataloyObject"), "missing_field", Some("dataloyObject")),
        ("dataloyObject string", with("dataloyObject", json!("189126972")), "invalid_field", Some("dataloyObject")),
        ("dataloyObject fraction", with("dataloyObject", json!(1.5)), "invalid_field", Some("dataloyObject")),
        ("dataloyObject huge", br#"{"id":"h","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"U","dataloyObject":123456789012345678901234567890,"subscription":{}}"#.to_vec(), "invalid_field", Some("dataloyObject")),
        ("subscription missing", without("subscription"), "missing_field", Some("subscription")),
        ("subscription string", with("subscription", json!("s")), "invalid_field", Some("subscription")),
        ("subscription array", with("subscription", json!([1])), "invalid_field", Some("subscription")),
        ("resource string", with("resource", json!("r")), "invalid_field", Some("resource")),
        ("resource array", with("resource", json!([])), "invalid_field", Some("resource")),
    ]
}

#[tokio::test]
async fn every_violation_gets_400_with_its_code_and_field() {
    let app = spawn_app().await;
    let cases = violations();

    for (name, body, code, field) in cases {
        let response = app.post(body).await;

        assert_eq!(response.status(), 400, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{name}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        match field {
            Some(field) => assert_eq!(error["error"]["field"], field, "{name}: {error}"),
            None => assert!(error["error"].get("field").is_none(), "{name}: {error}"),
        }
    }
    assert_eq!(
        app.post(minimal("only-valid").into_bytes()).await.status(),
        200
    );
    let events = app.wait_for_events(1).await;
    assert_eq!(
        ids_of(&events),
        ["only-valid"],
        "nothing invalid reached the sink"
    );
}

/// Found by fuzzing: well-formed JSON that `serde_json::Value` (what consumers parse with)
/// refuses was answered 200 and queued. Refused at the door instead (RFC 7493, I-JSON).
#[tokio::test]
async fn json_consumers_cannot_read_gets_400_naming_the_problem() {
    let app = spawn_app().await;
    let body = |id: &str, resource: &str| {
        format!(
            r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"U","dataloyObject":1,"subscription":{{}},"resource":{resource}}}"#
        )
        .into_bytes()
    };
    let long_integer = format!(r#"{{"n":-{}}}"#, "9".repeat(400));
    for (name, resource, problem) in [
        (
            "number beyond a double",
            r#"{"n":1e400}"#,
            "number out of range",
        ),
        (
            "negative, as a long integer",
            long_integer.as_str(),
            "number out of range",
        ),
        (
            "lone surrogate",
            r#"{"s":"\ud800"}"#,
            "unpaired UTF-16 surrogate",
        ),
        (
            "lone low surrogate in a name",
            r#"{"\udc00":1}"#,
            "unpaired UTF-16 surrogate",
        ),
    ] {
        let bytes = body(name, resource);
        assert!(serde_json::from_slice::<Value>(&bytes).is_err(), "{name}");

        let response = app.post(bytes).await;

        assert_eq!(response.status(), 400, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_json", "{name}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(problem), "{name}: {message}");
        assert!(message.contains("RFC 7493"), "{name}: {message}");
    }
    let fine = body(
        "edge-values",
        r#"{"n":1e308,"m":-1e-400,"s":"\ud83d\ude00"}"#,
    );
    assert_eq!(app.post(fine).await.status(), 200);
    let events = app.wait_for_events(1).await;
    assert_eq!(
        ids_of(&events),
        ["edge-values"],
        "nothing refused reached the sink"
    );
}

/// Bodies that bend a rule as far as it goes and are accepted.
pub fn accepted_variants() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "fractional seconds",
            with("eventTime", json!("2016-09-14T13:37:26.123")),
        ),
        (
            "offset",
            with("eventTime", json!("2016-09-14T13:37:26+02:00")),
        ),
        ("utc", with("eventTime", json!("2016-09-14T13:37:26.5Z"))),
        ("resource null", with("resource", Value::Null)),
        ("resource absent", without("resource")),
        (
            "subscription fields null",
            with(
                "subscription",
                json!({"key": null, "objectType": null, "eventType": null}),
            ),
        ),
        ("id of 128 chars", with("id", json!("y".repeat(128)))),
        ("negative object key", with("dataloyObject", json!(-5))),
    ]
}

#[tokio::test]
async fn accepted_variants_of_the_rules() {
    let app = spawn_app().await;
    let cases = accepted_variants();

    for (i, (name, body)) in cases.iter().enumerate() {
        let mut value: Value = serde_json::from_slice(body).unwrap();
        if value["id"] == "v-1" {
            value["id"] = json!(format!("variant-{i}"));
        }
        let response = app.post(serde_json::to_vec(&value).unwrap()).await;

        assert_eq!(
            response.status(),
            200,
            "{name}: {}",
            response.text().await.unwrap()
        );
    }
    assert_eq!(app.wait_for_events(cases.len()).await.len(), cases.len());
}
