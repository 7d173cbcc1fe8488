//! The real binary with a configuration file: `subscriptions plan` changes nothing and shows the
//! difference, `apply` makes Dataloy match (or names what failed), `list` shows what Dataloy
//! holds; and neither the commands nor the running gateway ever print the client secret, in
//! logs or in `/metrics`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::fake_dataloy::*;
use crate::helpers::*;

const SECRET: &str = "keeper-S3CRET-must-not-leak";
const URL: &str = "https://gateway.example/webhooks/dataloy";

/// The binary under test: `DATALOY_GATEWAY_BIN` (a private copy, when the build directory is
/// shared with other checkouts), else the one cargo built for these tests.
fn binary() -> PathBuf {
    std::env::var_os("DATALOY_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dataloy-gateway")))
}

/// A gateway configuration in `dir` that keeps `subscriptions` (TOML tables) in `fake`.
fn write_config(dir: &Path, fake: &FakeDataloy, subscriptions: &str) -> PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 1
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
[sinks.file]
path = "{events}"
[log]
format = "json"
[dataloy]
base_url = "{base}"
token_url = "{token}"
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
audience = "{AUDIENCE}"
reconcile_interval = "200ms"
retry_initial_backoff = "50ms"
{subscriptions}
"#,
        spool = dir.join("spool").display(),
        events = dir.join("events.jsonl").display(),
        base = fake.base_url,
        token = fake.token_url,
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command.args(args).arg("--config").arg(config);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn fake_with_secret() -> FakeDataloy {
    FakeDataloy::start(FakeOptions {
        client_secret: SECRET.into(),
        ..FakeOptions::default()
    })
    .await
}

const THREE_DECLARED: &str = r#"
[subscriptions.missing]
object_type = "Voyage"
event_type = "C"
url = "https://gateway.example/webhooks/dataloy"

[subscriptions.drifted]
object_type = "BunkerOrder"
event_type = "U"
url = "https://gateway.example/webhooks/dataloy"
fields = '{"fields":["key","self"]}'

[subscriptions.deactivated]
object_type = "PortCall"
event_type = "U"
url = "https://gateway.example/webhooks/dataloy"
"#;

#[tokio::test]
async fn subscriptions_plan_changes_nothing_and_shows_the_difference_then_apply_makes_dataloy_match(
) {
    // Arrange: one declared subscription missing, one drifted, one deactivated, one undeclared.
    let fake = fake_with_secret().await;
    let drifted = fake.seed("BunkerOrder", "U", URL, json!({"doNotUnsubscribe": false}));
    let dead = fake.seed(
        "PortCall",
        "U",
        URL,
        json!({"isSubscriptionActive": false, "unsubscriptionDate": "2024-05-01T08:00:00", "doNotUnsubscribe": true}),
    );
    let undeclared = fake.seed("Vessel", "D", URL, json!({}));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, THREE_DECLARED);

    // Act
    let plan = run(&config, &["subscriptions", "plan"]).await;
    let plan_json = run(&config, &["subscriptions", "plan", "--json"]).await;

    // Assert: the difference, and nothing changed.
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = stdout(&plan);
    assert!(
        text.contains(
            "subscription missing (Voyage C -> https://gateway.example/webhooks/dataloy): create"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "subscription drifted (BunkerOrder U -> {URL}): update key {drifted}"
        )),
        "{text}"
    );
    assert!(text.contains("doNotUnsubscribe: false -> true"), "{text}");
    assert!(
        text.contains(r#"json: (none) -> {"fields":["key","self"]}"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "re-create; key {dead} was deactivated on 2024-05-01T08:00:00"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "undeclared subscription {undeclared} (Vessel D -> {URL}): left alone"
        )),
        "{text}"
    );
    assert!(text.contains("3 changes to apply."), "{text}");
    let plan_json: Value = serde_json::from_slice(&plan_json.stdout).unwrap();
    let actions: Vec<(&str, &str)> = plan_json["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("deactivated", "recreate"),
            ("drifted", "update"),
            ("missing", "create")
        ]
    );
    assert!(
        fake.changes().is_empty(),
        "plan changed nothing: {:?}",
        fake.changes()
    );

    // Act: apply, then plan again.
    let apply = run(&config, &["subscriptions", "apply"]).await;
    let again = run(&config, &["subscriptions", "plan"]).await;
    let list = run(&config, &["subscriptions", "list", "--json"]).await;

    // Assert
    assert!(
        apply.status.success(),
        "{}{}",
        stdout(&apply),
        stderr(&apply)
    );
    let applied = stdout(&apply);
    assert!(
        applied.contains("subscription deactivated: recreate done"),
        "{applied}"
    );
    assert!(
        applied.contains("notifications from 2024-05-01T08:00:00 until"),
        "{applied}"
    );
    assert!(
        applied.contains("Dataloy matches the configuration."),
        "{applied}"
    );
    assert!(
        stderr(&apply).contains("missed window"),
        "warned: {}",
        stderr(&apply)
    );
    assert!(stdout(&again).contains("No changes: Dataloy matches the configuration."));
    assert_eq!(fake.changes().len(), 3);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let declared: Vec<(Value, Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].clone(), s["declared_as"].clone()))
        .collect();
    assert_eq!(declared.len(), 5, "{listed}");
    assert!(declared.contains(&(json!(undeclared.to_string()), Value::Null)));
    assert!(declared.contains(&(json!(drifted.to_string()), json!("drifted"))));
    fake.stop().await;
}

#[tokio::test]
async fn subscriptions_apply_exits_non_zero_naming_what_failed() {
    // Arrange
    let fake = fake_with_secret().await;
    fake.refuse_creates(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, THREE_DECLARED);

    // Act
    let apply = run(&config, &["subscriptions", "apply"]).await;

    // Assert
    assert_eq!(apply.status.code(), Some(1), "{}", stdout(&apply));
    let message = stderr(&apply);
    assert!(
        message.contains("subscription missing (create)"),
        "{message}"
    );
    assert!(
        message.contains("subscription deactivated (create)"),
        "{message}"
    );
    assert!(stdout(&apply).contains("create FAILED: create: Dataloy answered 500: Internal error"));
    fake.stop().await;
}

#[tokio::test]
async fn the_client_secret_never_appears_in_logs_errors_or_metrics() {
    // Arrange: at first the token endpoint refuses the gateway, echoing the secret back.
    let fake = fake_with_secret().await;
    fake.set_client_secret("another-secret");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &fake,
        "[subscriptions.orders]\nobject_type = \"BunkerOrder\"\nevent_type = \"U\"\nurl = \"https://gateway.example/webhooks/dataloy\"\n",
    );
    let refused_plan = run(&config, &["subscriptions", "plan"]).await;
    let mut gateway = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(gateway.stdout.take().unwrap());
    let mut log = String::new();
    let admin_port = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "gateway exited: {log}"
        );
        log.push_str(&line);
        if let Ok(entry) = serde_json::from_str::<Value>(&line) {
            if entry["fields"]["message"] == "dataloy-gateway listening" {
                break entry["fields"]["admin_port"].as_u64().unwrap();
            }
        }
    };
    let log_rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });

    // Act: refused a few times, then accepted; later the token expires and is refreshed.
    assert!(eventually(|| async { fake.token_refusals() >= 2 }).await);
    fake.set_client_secret(SECRET);
    assert!(eventually(|| async { fake.active_subscriptions().len() == 1 }).await);
    fake.expire_tokens();
    assert!(eventually(|| async { fake.tokens_issued() >= 2 }).await);
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    log.push_str(&log_rest.join().unwrap());
    let mut errors = String::new();
    gateway
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();

    // Assert: the refusals were logged and reported, without the secret.
    assert_eq!(refused_plan.status.code(), Some(1));
    let plan_error = stderr(&refused_plan);
    assert!(
        plan_error.contains("token: Dataloy answered 401"),
        "{plan_error}"
    );
    assert!(plan_error.contains("[redacted]"), "{plan_error}");
    assert!(log.contains("[redacted]"), "the refusal is logged");
    assert!(metrics
        .contains("dataloy_gateway_subscription_reconcile_errors_total{operation=\"token\"}"));
    for (what, text) in [
        ("plan output", stdout_and_stderr(&refused_plan)),
        ("gateway log", log),
        ("gateway stderr", errors),
        ("/metrics", metrics),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret is in the {what}:\n{text}"
        );
    }
    fake.stop().await;
}

fn stdout_and_stderr(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

#[tokio::test]
async fn a_secret_echoed_in_a_wrongly_typed_member_is_not_printed() {
    // Arrange: the token endpoint puts the secret where a number belongs.
    let fake = fake_with_secret().await;
    fake.answer_tokens_with(json!({"access_token": "tok", "expires_in": SECRET}));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, THREE_DECLARED);

    // Act
    let mut outputs = Vec::new();
    for args in [
        &["subscriptions", "plan"][..],
        &["subscriptions", "apply", "--json"],
        &["subscriptions", "list"],
    ] {
        outputs.push(run(&config, args).await);
    }

    // Assert
    for output in &outputs {
        assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
        let text = stdout_and_stderr(output);
        assert!(text.contains("not a token response"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }
    fake.stop().await;
}

#[tokio::test]
async fn a_secret_echoed_in_the_list_is_not_printed() {
    // Arrange: a valid token; the list puts the secret where a boolean belongs.
    let fake = fake_with_secret().await;
    fake.answer_list_with(json!([{"key": 1, "isSubscriptionActive": SECRET}]));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, THREE_DECLARED);

    // Act
    let plan = run(&config, &["subscriptions", "plan"]).await;

    // Assert
    assert_eq!(plan.status.code(), Some(1), "{}", stderr(&plan));
    let text = stdout_and_stderr(&plan);
    assert!(text.contains("not a JSON array of subscriptions"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    fake.stop().await;
}

#[tokio::test]
async fn a_toml_error_on_the_secret_line_does_not_print_the_secret() {
    // Arrange: the closing quote of client_secret is missing.
    let fake = fake_with_secret().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, THREE_DECLARED);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("client_secret = \"{SECRET}\""),
        &format!("client_secret = \"{SECRET}"),
    );
    std::fs::write(&config, text).unwrap();

    // Act
    let plan = run(&config, &["subscriptions", "plan"]).await;

    // Assert
    assert_eq!(plan.status.code(), Some(2), "{}", stderr(&plan));
    let text = stdout_and_stderr(&plan);
    assert!(text.contains("`dataloy.client_secret`"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    fake.stop().await;
}
