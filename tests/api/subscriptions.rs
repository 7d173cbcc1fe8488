//! The subscription keeper inside the running gateway, against the fake Dataloy: declared
//! subscriptions are created as declared, drift is corrected, undeclared ones are left alone
//! (or pruned when asked), the token is reused and refreshed once when it expires, and an
//! unreachable Dataloy costs retries and metrics, never the webhook path.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use dataloy_gateway::config::{DataloySettings, ExtraMembers, Settings, SubscriptionSettings};
use secrecy::SecretString;
use serde_json::json;

use crate::fake_dataloy::*;
use crate::helpers::*;

pub const GATEWAY_URL: &str = "https://gateway.example/webhooks/dataloy";
pub const FIELDS: &str = r#"{"fields":["key","self"]}"#;

/// `[dataloy]` for `fake`, reconciling every 150 ms.
pub fn dataloy_settings(base_url: &str, token_url: &str) -> DataloySettings {
    DataloySettings {
        base_url: base_url.to_owned(),
        token_url: token_url.to_owned(),
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(FakeOptions::default().client_secret),
        audience: Some(AUDIENCE.into()),
        reconcile_interval: Duration::from_millis(150),
        retry_initial_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..DataloySettings::default()
    }
}

pub fn object_subscription(object_type: &str, event_type: &str, url: &str) -> SubscriptionSettings {
    SubscriptionSettings {
        object_type: Some(object_type.into()),
        event_type: Some(event_type.into()),
        dataloy_object: None,
        alert_script: None,
        url: url.into(),
        fields: None,
        expression: None,
        do_not_unsubscribe: true,
        extra: ExtraMembers::default(),
    }
}

fn keep(
    settings: &mut Settings,
    fake: &FakeDataloy,
    subscriptions: impl IntoIterator<Item = (&'static str, SubscriptionSettings)>,
) {
    settings.dataloy = Some(dataloy_settings(&fake.base_url, &fake.token_url));
    settings.subscriptions = subscriptions
        .into_iter()
        .map(|(name, s)| (name.to_owned(), s))
        .collect::<BTreeMap<_, _>>();
}

/// Waits until the keeper has listed `more` more times than now: later reconciles ran.
async fn wait_for_reconciles(fake: &FakeDataloy, more: usize) {
    let target = fake.list_calls() + more;
    assert!(
        eventually(|| async { fake.list_calls() >= target }).await,
        "the keeper keeps reconciling"
    );
}

fn active(name: &str) -> String {
    format!("dataloy_gateway_subscription_active{{subscription=\"{name}\"}}")
}

#[tokio::test]
async fn declared_subscriptions_are_created_with_do_not_unsubscribe_and_the_base64_field_selection()
{
    // Arrange
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    let mut orders = object_subscription("BunkerOrder", "U", GATEWAY_URL);
    orders.fields = Some(FIELDS.into());
    orders.extra.0.insert(
        "channelInfo".into(),
        json!({"username": "dataloy", "password": "hook-password"}),
    );
    let mut alert = object_subscription("", "", GATEWAY_URL);
    (alert.object_type, alert.event_type, alert.alert_script) = (None, None, Some("BUP".into()));

    // Act
    let app =
        spawn_app_with(|s, _| keep(s, &fake, [("bunker-orders", orders), ("unit-price", alert)]))
            .await;

    // Assert
    assert!(
        eventually(|| async { fake.active_subscriptions().len() == 2 }).await,
        "both created: {:?}",
        fake.requests()
    );
    let creates = fake.changes();
    let order = creates
        .iter()
        .find_map(|r| r.body.clone().filter(|b| b["objectType"] == "BunkerOrder"))
        .expect("BunkerOrder created");
    assert_eq!(order["eventType"], "U");
    assert_eq!(order["doNotUnsubscribe"], true);
    let fields = base64::engine::general_purpose::STANDARD
        .decode(order["json"].as_str().unwrap())
        .unwrap();
    assert_eq!(fields, FIELDS.as_bytes(), "the field selection, Base64");
    assert_eq!(
        order["channelInfo"],
        json!({"channelType": "HTTP", "url": GATEWAY_URL, "username": "dataloy", "password": "hook-password"}),
        "extra merged into the body"
    );
    let script = creates
        .iter()
        .find_map(|r| r.body.clone().filter(|b| b.get("dlpAlertScript").is_some()))
        .expect("alert script subscription created");
    assert_eq!(script["dlpAlertScript"]["scriptCode"], "BUP");
    assert!(script.get("objectType").is_none());
    assert_eq!(script["doNotUnsubscribe"], true);
    assert!(
        eventually(|| async {
            let metrics = app.metrics().await;
            metric_value(&metrics, &active("bunker-orders")) == 1.0
                && metric_value(&metrics, &active("unit-price")) == 1.0
        })
        .await
    );

    // Later reconciles find them as declared and change nothing.
    wait_for_reconciles(&fake, 3).await;
    assert_eq!(fake.changes().len(), 2, "{:?}", fake.changes());
    assert_eq!(fake.subscriptions().len(), 2);
    assert!(
        app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
            .await
            > 0.0
    );
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn drift_is_corrected_and_undeclared_subscriptions_are_left_alone() {
    // Arrange
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    let drifted = fake.seed(
        "BunkerOrder",
        "U",
        GATEWAY_URL,
        json!({"expression": "dlpObject.getExtraCost() != null", "doNotUnsubscribe": false}),
    );
    let undeclared_here = fake.seed("Vessel", "C", GATEWAY_URL, json!({}));
    let elsewhere = fake.seed("BunkerOrder", "U", "https://other.example/hook", json!({}));
    let mut orders = object_subscription("BunkerOrder", "U", GATEWAY_URL);
    orders.expression = Some("dlpObject.getUnitPrice() != null".into());

    // Act
    let app = spawn_app_with(|s, _| keep(s, &fake, [("bunker-orders", orders)])).await;

    // Assert
    let corrected = || {
        fake.subscriptions().into_iter().any(|s| {
            s["key"] == drifted
                && s["expression"] == "dlpObject.getUnitPrice() != null"
                && s["doNotUnsubscribe"] == true
        })
    };
    assert!(
        eventually(|| async { corrected() }).await,
        "{:?}",
        fake.requests()
    );
    wait_for_reconciles(&fake, 3).await;
    let changes = fake.changes();
    assert_eq!(changes.len(), 1, "one update, nothing else: {changes:?}");
    assert_eq!(changes[0].method, "PUT");
    assert_eq!(
        changes[0].path,
        format!("/ws/rest/WebhookSubscription/{drifted}")
    );
    let keys: Vec<_> = fake
        .active_subscriptions()
        .iter()
        .map(|s| s["key"].clone())
        .collect();
    assert_eq!(
        keys,
        [json!(drifted), json!(undeclared_here), json!(elsewhere)]
    );
    assert_eq!(
        app.metric("dataloy_gateway_subscription_changes_total{action=\"update\"}")
            .await,
        1.0
    );
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn prune_deletes_only_undeclared_subscriptions_that_point_at_this_gateway() {
    // Arrange
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    let declared = fake.seed(
        "BunkerOrder",
        "U",
        GATEWAY_URL,
        json!({"doNotUnsubscribe": true}),
    );
    let undeclared_here = fake.seed("Vessel", "C", GATEWAY_URL, json!({}));
    let elsewhere = fake.seed("Vessel", "C", "https://other.example/hook", json!({}));

    // Act
    let app = spawn_app_with(|s, _| {
        keep(
            s,
            &fake,
            [(
                "bunker-orders",
                object_subscription("BunkerOrder", "U", GATEWAY_URL),
            )],
        );
        s.dataloy.as_mut().unwrap().prune = true;
    })
    .await;

    // Assert
    assert!(
        eventually(|| async { fake.subscriptions().len() == 2 }).await,
        "{:?}",
        fake.requests()
    );
    let keys: Vec<_> = fake
        .subscriptions()
        .iter()
        .map(|s| s["key"].clone())
        .collect();
    assert_eq!(keys, [json!(declared), json!(elsewhere)]);
    let deletes: Vec<_> = fake.changes().into_iter().map(|r| r.path).collect();
    assert_eq!(
        deletes,
        [format!("/ws/rest/WebhookSubscription/{undeclared_here}")]
    );
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_not_per_request() {
    // Arrange
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    let app = spawn_app_with(|s, _| {
        keep(
            s,
            &fake,
            [(
                "bunker-orders",
                object_subscription("BunkerOrder", "U", GATEWAY_URL),
            )],
        )
    })
    .await;
    assert!(eventually(|| async { fake.active_subscriptions().len() == 1 }).await);
    wait_for_reconciles(&fake, 3).await;
    assert_eq!(
        fake.tokens_issued(),
        1,
        "one token for every request so far"
    );

    // Act
    fake.expire_tokens();
    wait_for_reconciles(&fake, 4).await;

    // Assert
    assert_eq!(fake.expired_refusals(), 1, "refused once");
    assert_eq!(fake.tokens_issued(), 2, "refreshed once");
    assert_eq!(
        app.metric("dataloy_gateway_subscription_reconcile_errors_total{operation=\"list\"}")
            .await,
        0.0,
        "the refresh made the refused request succeed"
    );
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn with_dataloy_down_the_keeper_retries_and_counts_while_webhooks_are_still_accepted() {
    // Arrange: Dataloy's address, with nothing listening yet.
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(|s, _| {
        s.dataloy = Some(dataloy_settings(
            &base_url,
            &format!("{base_url}/oauth/token"),
        ));
        s.subscriptions.insert(
            "bunker-orders".into(),
            object_subscription("BunkerOrder", "U", GATEWAY_URL),
        );
    })
    .await;
    let errors = "dataloy_gateway_subscription_reconcile_errors_total{operation=\"token\"}";

    // Act
    let failing = eventually(|| async { app.metric(errors).await >= 3.0 }).await;

    // Assert
    assert!(failing, "failed reconciles are counted and retried");
    assert_eq!(
        app.post(sample_with_id("during-outage")).await.status(),
        200
    );
    assert_eq!(app.ready_status().await, 200);
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["during-outage"]);
    assert_eq!(
        app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
            .await,
        0.0
    );

    // Dataloy comes back: the next retry creates the subscription.
    let fake = FakeDataloy::start_at(port, FakeOptions::default()).await;
    assert!(eventually(|| async { fake.active_subscriptions().len() == 1 }).await);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
                .await
                > 0.0
                && app.metric(&active("bunker-orders")).await == 1.0
        })
        .await
    );
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn a_change_dataloy_accepts_but_does_not_make_is_a_reconcile_error_not_a_success() {
    // Arrange: creates are answered 201 but never show in the list.
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    fake.lose_creates(true);
    let orders = object_subscription("BunkerOrder", "U", GATEWAY_URL);

    // Act
    let app = spawn_app_with(|s, _| keep(s, &fake, [("bunker-orders", orders)])).await;
    let verify = "dataloy_gateway_subscription_reconcile_errors_total{operation=\"verify\"}";
    let counted = eventually(|| async { app.metric(verify).await >= 2.0 }).await;

    // Assert
    assert!(counted, "{}", app.metrics().await);
    assert_eq!(
        app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
            .await,
        0.0,
        "never a success"
    );
    assert_eq!(app.metric(&active("bunker-orders")).await, 0.0);
    assert!(fake.active_subscriptions().is_empty());

    // Act: Dataloy keeps its creates again.
    fake.lose_creates(false);

    // Assert
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
                .await
                > 0.0
        })
        .await
    );
    assert_eq!(app.metric(&active("bunker-orders")).await, 1.0);
    app.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn members_dataloy_still_lists_as_null_after_an_update_are_updated_once_not_every_interval() {
    // Arrange: Dataloy writes json and expression as null in its list, whatever it holds.
    let fake = FakeDataloy::start(FakeOptions::default()).await;
    let key = fake.seed("BunkerOrder", "U", GATEWAY_URL, json!({}));
    fake.answer_list_with(json!([{
        "key": key, "self": format!("{}/ws/rest/WebhookSubscription/{key}", fake.base_url),
        "isSubscriptionActive": true, "objectType": "BunkerOrder", "eventType": "U",
        "unsubscriptionDate": null, "json": null, "expression": null, "doNotUnsubscribe": true,
        "channelInfo": {"channelType": {"channelTypeCode": "HTTP"}, "url": GATEWAY_URL}
    }]));
    let mut orders = object_subscription("BunkerOrder", "U", GATEWAY_URL);
    orders.fields = Some(FIELDS.into());
    orders.expression = Some("dlpObject.getUnitPrice() != null".into());

    // Act
    let app = spawn_app_with(|s, _| keep(s, &fake, [("bunker-orders", orders)])).await;
    wait_for_reconciles(&fake, 6).await;

    // Assert: one update sets them; listed as null again, they are not compared any more.
    let changes = fake.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].method, "PUT");
    assert!(
        app.metric("dataloy_gateway_subscription_reconcile_last_success_timestamp_seconds")
            .await
            > 0.0
    );
    app.stop().await;
    fake.stop().await;
}
