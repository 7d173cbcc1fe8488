//! The admin listener: liveness, readiness and the Prometheus exposition.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn live_and_ready_answer_on_the_admin_listener() {
    let app = spawn_app().await;

    let live = app
        .client
        .get(format!("{}/health/live", app.admin_address))
        .send()
        .await
        .unwrap();
    let ready = app
        .client
        .get(format!("{}/health/ready", app.admin_address))
        .send()
        .await
        .unwrap();

    assert_eq!(live.status(), 200);
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["spool"], "ok");
    assert_eq!(body["checks"]["sink:file"], "ok");
}

#[tokio::test]
async fn metrics_count_outcomes_with_prometheus_names() {
    let app = spawn_app().await;
    app.post(UPDATED).await;
    app.post(UPDATED).await;
    app.post(b"{".to_vec()).await;
    app.wait_for_events(1).await;
    // The relay records the publish, then acknowledges: depth 0 means both happened.
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );

    let text = app.metrics().await;

    let expect = |name: &str, value: f64| {
        assert_eq!(metric_value(&text, name), value, "{name}\n{text}");
    };
    expect(
        "dataloy_gateway_notifications_received_total{source=\"webhook\"}",
        3.0,
    );
    expect(
        "dataloy_gateway_notifications_accepted_total{object_type=\"PortCall\",source=\"webhook\"}",
        1.0,
    );
    expect(
        "dataloy_gateway_notifications_duplicate_total{source=\"webhook\"}",
        1.0,
    );
    expect(
        "dataloy_gateway_notifications_rejected_total{reason=\"invalid_json\",source=\"webhook\"}",
        1.0,
    );
    expect("dataloy_gateway_build_info{version=\"0.1.0\"}", 1.0);
    // The configured bound (test_settings: 64 MiB), so alerts divide by what this gateway uses.
    expect("dataloy_gateway_spool_max_bytes", (64u64 << 20) as f64);
    for name in [
        "dataloy_gateway_request_duration_seconds_bucket",
        "dataloy_gateway_publish_duration_seconds_bucket",
        "dataloy_gateway_spool_depth_records",
        "dataloy_gateway_spool_bytes",
        "dataloy_gateway_spool_oldest_age_seconds",
        "dataloy_gateway_spool_fsyncs_total",
        "dataloy_gateway_sink_up{sink=\"file\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[tokio::test]
async fn readiness_fails_while_shutting_down_and_liveness_stays() {
    // Readiness is what a load balancer watches: a stopped app must not be ready. After stop,
    // both listeners are closed, so the request itself fails.
    let app = spawn_app().await;
    let admin = app.admin_address.clone();
    let client = app.client.clone();
    app.stop().await;

    let after = client.get(format!("{admin}/health/ready")).send().await;

    assert!(after.is_err(), "admin listener closed after shutdown");
}
