//! Dedup over `rediss://` against a redis-server of the test's own with TLS on (Debian's
//! redis-server has it built in), certificates from a CA made by the test: the company CA is
//! trusted through `dedup.tls.ca_file`, a wrong CA stops the start with the reason, a Redis that
//! asks for client certificates gets the configured one, and the URL's password shows nowhere.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dataloy_gateway::config::{Settings, TlsSettings};
use dataloy_gateway::startup::Application;

use crate::helpers::*;
use crate::shared_dedup::{status_of, with_redis};
use crate::tls_support::*;

/// A redis-server listening with TLS only.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    /// Serves `server` (issued by `ca`) on a free port; with `require_client_cert`, every
    /// client must present a certificate `ca` issued.
    fn start(
        dir: &Path,
        ca: &TestCa,
        server: &Issued,
        require_client_cert: bool,
        extra: &[&str],
    ) -> TlsRedis {
        Self::start_on(free_port(), dir, ca, server, require_client_cert, extra)
    }

    fn start_on(
        port: u16,
        dir: &Path,
        ca: &TestCa,
        server: &Issued,
        require_client_cert: bool,
        extra: &[&str],
    ) -> TlsRedis {
        let ca_file = ca.write(dir, &format!("redis-client-ca-{port}.pem"));
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&server.cert_file)
            .arg("--tls-key-file")
            .arg(&server.key_file)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args([
                "--tls-auth-clients",
                if require_client_cert { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_tls_redis(settings: &mut Settings, url: &str, tls: TlsSettings) {
    with_redis(settings, url, &format!("{}:", unique("tls-dedup")));
    settings.dedup.redis_timeout = Duration::from_secs(2);
    settings.dedup.tls = Some(tls);
}

async fn build_error(settings: Settings) -> String {
    match Application::build(settings).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn dedup_over_rediss_trusts_the_company_ca_and_recognises_a_retry() {
    // Arrange: a Redis whose certificate a CA of the company's own issued.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Company Root CA");
    let server = ca.server(pki.path(), "redis", &["localhost", "127.0.0.1"]);
    let redis = TlsRedis::start(pki.path(), &ca, &server, false, &[]);
    let ca_file = ca.write(pki.path(), "company-ca.pem");
    let url = format!("rediss://localhost:{}", redis.port);

    // Act
    let app = spawn_app_with(|s, _| {
        with_tls_redis(
            s,
            &url,
            TlsSettings {
                ca_file: Some(ca_file.clone()),
                ..TlsSettings::default()
            },
        )
    })
    .await;
    let first = status_of(app.post(sample_with_id("rediss-1")).await).await;
    let retry = status_of(app.post(sample_with_id("rediss-1")).await).await;

    // Assert
    assert_eq!(first, (200, "accepted".to_owned()));
    assert_eq!(
        retry,
        (200, "duplicate".to_owned()),
        "the id is in the TLS Redis"
    );
    assert_eq!(app.ready_status().await, 200);
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_stops_the_start_with_the_reason() {
    // Arrange: the gateway is given a CA that did not issue Redis's certificate, and the URL
    // holds a password.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Redis CA");
    let server = ca.server(pki.path(), "redis", &["localhost"]);
    let redis = TlsRedis::start(
        pki.path(),
        &ca,
        &server,
        false,
        &["--requirepass", "pw-0451"],
    );
    let other = TestCa::new("Some Other CA");
    let other_file = other.write(pki.path(), "other-ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    with_tls_redis(
        &mut settings,
        &format!("rediss://:pw-0451@localhost:{}", redis.port),
        TlsSettings {
            ca_file: Some(other_file),
            ..TlsSettings::default()
        },
    );
    settings.validate().unwrap();

    // Act
    let error = build_error(settings).await;

    // Assert
    assert!(error.contains("refused the TLS handshake"), "{error}");
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(error.contains("dedup.tls"), "{error}");
    assert!(!error.contains("pw-0451"), "the password shows: {error}");
}

#[tokio::test]
async fn the_host_name_must_match_the_certificate_unless_server_name_says_which_name_to_expect() {
    // Arrange: Redis's certificate names only `redis.internal`; the gateway reaches it by IP.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Internal CA");
    let server = ca.server(pki.path(), "redis", &["redis.internal"]);
    let redis = TlsRedis::start(pki.path(), &ca, &server, false, &[]);
    let ca_file = ca.write(pki.path(), "ca.pem");
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let dir = tempfile::tempdir().unwrap();
    let mut mismatched = test_settings(dir.path());
    with_tls_redis(
        &mut mismatched,
        &url,
        TlsSettings {
            ca_file: Some(ca_file.clone()),
            ..TlsSettings::default()
        },
    );

    // Act + Assert 1: the name does not match.
    let error = build_error(mismatched).await;
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(error.contains("not valid for name"), "{error}");

    // Act + Assert 2: with server_name, the same Redis is accepted.
    let app = spawn_app_with(|s, _| {
        with_tls_redis(
            s,
            &url,
            TlsSettings {
                ca_file: Some(ca_file.clone()),
                server_name: Some("redis.internal".into()),
                ..TlsSettings::default()
            },
        )
    })
    .await;
    assert_eq!(
        status_of(app.post(sample_with_id("named-1")).await).await,
        (200, "accepted".to_owned())
    );
}

#[tokio::test]
async fn a_redis_that_requires_client_certificates_gets_the_configured_one_and_refuses_a_gateway_without(
) {
    // Arrange: `--tls-auth-clients yes`, client certificates from the same CA.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mTLS CA");
    let server = ca.server(pki.path(), "redis", &["localhost"]);
    let client = ca.client(pki.path(), "gateway", "dataloy-gateway");
    let redis = TlsRedis::start(pki.path(), &ca, &server, true, &[]);
    let ca_file = ca.write(pki.path(), "ca.pem");
    let url = format!("rediss://localhost:{}", redis.port);
    let dir = tempfile::tempdir().unwrap();
    let mut anonymous = test_settings(dir.path());
    with_tls_redis(
        &mut anonymous,
        &url,
        TlsSettings {
            ca_file: Some(ca_file.clone()),
            ..TlsSettings::default()
        },
    );

    // Act + Assert 1: without a client certificate the start stops, saying why.
    let error = build_error(anonymous).await;
    assert!(error.contains("refused the TLS handshake"), "{error}");

    // Act + Assert 2: with one, dedup works.
    let app = spawn_app_with(|s, _| {
        with_tls_redis(
            s,
            &url,
            TlsSettings {
                ca_file: Some(ca_file.clone()),
                cert_file: Some(client.cert_file.clone()),
                key_file: Some(client.key_file.clone()),
                ..TlsSettings::default()
            },
        )
    })
    .await;
    assert_eq!(
        status_of(app.post(sample_with_id("mtls-1")).await).await,
        (200, "accepted".to_owned())
    );
    assert_eq!(
        status_of(app.post(sample_with_id("mtls-1")).await).await,
        (200, "duplicate".to_owned())
    );
}

#[tokio::test]
async fn a_redis_that_turns_to_an_untrusted_certificate_makes_the_gateway_unready_not_blind() {
    // Arrange: running against a trusted Redis, which is then replaced on the same port by one
    // with a certificate from another CA (a man in the middle, or a botched rotation).
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Good CA");
    let server = ca.server(pki.path(), "redis", &["localhost"]);
    let mut redis = TlsRedis::start(pki.path(), &ca, &server, false, &[]);
    let ca_file = ca.write(pki.path(), "ca.pem");
    let port = redis.port;
    let app = spawn_app_with(|s, _| {
        with_tls_redis(
            s,
            &format!("rediss://localhost:{port}"),
            TlsSettings {
                ca_file: Some(ca_file.clone()),
                ..TlsSettings::default()
            },
        );
        s.dedup.redis_timeout = Duration::from_millis(500);
    })
    .await;
    assert_eq!(app.ready_status().await, 200);

    // Act
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let rogue_ca = TestCa::new("Rogue CA");
    let rogue = rogue_ca.server(pki.path(), "rogue", &["localhost"]);
    redis = TlsRedis::start_on(port, pki.path(), &rogue_ca, &rogue, false, &[]);

    // Assert: notifications are refused with 503 (never accepted without dedup) and readiness
    // fails, for as long as the certificate is not trusted.
    let (status, _) = status_of(app.post(sample_with_id("rogue-0")).await).await;
    assert_eq!(status, 503);
    // Longer than the reconnect backoff (2 s at most) and the probe interval (1 s): the keeper
    // keeps trying, and every handshake fails.
    for attempt in 1..=30 {
        let (status, _) =
            status_of(app.post(sample_with_id(&format!("rogue-{attempt}"))).await).await;
        assert_eq!(
            status, 503,
            "attempt {attempt}: the reconnect must fail the handshake"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.ready_status().await,
        503,
        "readiness reports the untrusted Redis"
    );
    drop(redis);
}
