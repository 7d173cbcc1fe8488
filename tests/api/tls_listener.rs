//! TLS on the listeners: the webhook over HTTPS, the admin listener asking for client
//! certificates, and certificate rotation picked up without a restart (file change, SIGHUP)
//! while a connection opened before keeps working.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::config::ListenerTlsSettings;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::gateway_process::*;
use crate::helpers::*;
use crate::tls_support::*;

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn listener_tls(server: &Issued) -> ListenerTlsSettings {
    ListenerTlsSettings {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        ..ListenerTlsSettings::default()
    }
}

fn https_client(ca: &TestCa, identity: Option<&Issued>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&identity.identity_pem()).unwrap());
    }
    builder.build().unwrap()
}

/// An HTTP/1.1 connection over TLS to `localhost:port`, and the serial of the certificate the
/// server presented on it.
async fn open(port: u16, ca: &TestCa) -> (SendRequest<Full<Bytes>>, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, None)));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial = parsed.raw_serial_as_string();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    (sender, serial)
}

/// Posts a notification on an open connection; its status.
async fn post_on(sender: &mut SendRequest<Full<Bytes>>, id: &str) -> u16 {
    sender.ready().await.expect("the connection is still open");
    let request = hyper::Request::post("/webhooks/dataloy")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(sample_with_id(id))))
        .unwrap();
    let response = sender.send_request(request).await.expect("answered");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn serial_of(issued: &Issued) -> String {
    let der = &issued.chain()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
    parsed.raw_serial_as_string()
}

/// Writes `issued`'s certificate and key over the files at `cert` and `key`, each by rename
/// (as a Secret update or a careful operator does).
fn install(issued: &Issued, cert: &Path, key: &Path) {
    for (from, to) in [(&issued.cert_file, cert), (&issued.key_file, key)] {
        let staging = to.with_extension("new");
        std::fs::copy(from, &staging).unwrap();
        std::fs::rename(&staging, to).unwrap();
    }
}

#[tokio::test]
async fn the_webhook_is_served_over_https_and_plain_http_gets_no_answer() {
    // Arrange
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Listener CA");
    let server = ca.server(pki.path(), "gateway", &["localhost"]);
    let app = spawn_app_with(|s, _| s.server.tls = Some(listener_tls(&server))).await;
    let port = port_of(&app.address);
    let client = https_client(&ca, None);

    // Act
    let over_tls = client
        .post(format!("https://localhost:{port}/webhooks/dataloy"))
        .header("content-type", "application/json")
        .body(sample_with_id("https-1"))
        .send()
        .await
        .unwrap();
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/dataloy"))
        .body(sample_with_id("plain-1"))
        .send()
        .await;

    // Assert
    assert_eq!(over_tls.status(), 200);
    let body: serde_json::Value = over_tls.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert!(plain.is_err(), "plain HTTP on the TLS listener: {plain:?}");
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["https-1"]);
    assert!(
        app.metric("dataloy_gateway_tls_certificate_expiry_timestamp_seconds{listener=\"server\"}")
            .await
            > 1_700_000_000.0
    );
}

#[tokio::test]
async fn the_admin_listener_with_a_client_ca_answers_only_clients_with_a_certificate_from_it() {
    // Arrange
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Admin CA");
    let server = ca.server(pki.path(), "admin", &["localhost"]);
    let scraper = ca.client(pki.path(), "prometheus", "prometheus");
    let stranger_ca = TestCa::new("Stranger CA");
    let stranger = stranger_ca.client(pki.path(), "stranger", "stranger");
    let client_ca_file = ca.write(pki.path(), "clients.pem");
    let app = spawn_app_with(|s, _| {
        s.admin.tls = Some(ListenerTlsSettings {
            client_ca_file: Some(client_ca_file.clone()),
            ..listener_tls(&server)
        })
    })
    .await;
    let url = format!(
        "https://localhost:{}/health/ready",
        port_of(&app.admin_address)
    );

    // Act
    let with_certificate = https_client(&ca, Some(&scraper)).get(&url).send().await;
    let without = https_client(&ca, None).get(&url).send().await;
    let foreign = https_client(&ca, Some(&stranger)).get(&url).send().await;

    // Assert
    assert_eq!(with_certificate.unwrap().status(), 200);
    assert!(without.is_err(), "{without:?}");
    assert!(foreign.is_err(), "{foreign:?}");
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections_and_an_open_one_keeps_working()
{
    // Arrange: the listener checks its files every second.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Rotation CA");
    let first = ca.server(pki.path(), "first", &["localhost"]);
    let (cert, key) = (pki.path().join("tls.crt"), pki.path().join("tls.key"));
    install(&first, &cert, &key);
    let app = spawn_app_with(|s, _| {
        s.server.tls = Some(ListenerTlsSettings {
            cert_file: cert.clone(),
            key_file: key.clone(),
            reload_interval: Duration::from_secs(1),
            ..ListenerTlsSettings::default()
        })
    })
    .await;
    let port = port_of(&app.address);
    let (mut open_before, served_before) = open(port, &ca).await;
    assert_eq!(served_before, serial_of(&first));
    assert_eq!(post_on(&mut open_before, "rotate-1").await, 200);

    // Act
    let second = ca.server(pki.path(), "second", &["localhost"]);
    install(&second, &cert, &key);

    // Assert: new connections get the new certificate, without a restart ...
    assert!(
        eventually(|| async { open(port, &ca).await.1 == serial_of(&second) }).await,
        "the new certificate is served to new connections"
    );
    // ... and the connection opened before is still served.
    assert_eq!(post_on(&mut open_before, "rotate-2").await, 200);
    assert_eq!(
        app.metric("dataloy_gateway_tls_reloads_total{listener=\"server\",outcome=\"changed\"}")
            .await,
        1.0
    );
    assert_eq!(
        ids_of(&app.wait_for_events(2).await),
        ["rotate-1", "rotate-2"]
    );
}

#[tokio::test]
async fn a_replacement_whose_key_does_not_match_is_refused_and_the_old_certificate_stays() {
    // Arrange
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Rotation CA");
    let first = ca.server(pki.path(), "first", &["localhost"]);
    let (cert, key) = (pki.path().join("tls.crt"), pki.path().join("tls.key"));
    install(&first, &cert, &key);
    let app = spawn_app_with(|s, _| {
        s.server.tls = Some(ListenerTlsSettings {
            cert_file: cert.clone(),
            key_file: key.clone(),
            reload_interval: Duration::from_secs(1),
            ..ListenerTlsSettings::default()
        })
    })
    .await;
    let port = port_of(&app.address);

    // Act: a new certificate arrives, its key does not (the operator's half-finished update).
    let second = ca.server(pki.path(), "second", &["localhost"]);
    std::fs::copy(&second.cert_file, &cert).unwrap();

    // Assert
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_tls_reloads_total{listener=\"server\",outcome=\"failed\"}")
                .await
                >= 1.0
        })
        .await
    );
    let (mut connection, served) = open(port, &ca).await;
    assert_eq!(
        served,
        serial_of(&first),
        "the old certificate is still served"
    );
    assert_eq!(post_on(&mut connection, "mismatch-1").await, 200);

    // Act 2: the key follows; the pair is loaded.
    std::fs::copy(&second.key_file, &key).unwrap();
    assert!(
        eventually(|| async { open(port, &ca).await.1 == serial_of(&second) }).await,
        "the completed pair is served"
    );
}

fn write_config(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
reload_interval = "1h"
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
[sinks.file]
path = "{events}"
[log]
format = "json"
level = "info"
"#,
        cert = cert.display(),
        key = key.display(),
        spool = dir.join("spool").display(),
        events = dir.join("out/events.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test]
async fn sighup_reloads_the_listener_certificate_and_an_open_connection_is_not_dropped() {
    // Arrange: the real binary, whose watcher would wait an hour: only SIGHUP reloads.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("SIGHUP CA");
    let first = ca.server(dir.path(), "first", &["localhost"]);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    install(&first, &cert, &key);
    let config = write_config(dir.path(), &cert, &key);
    let gateway = start_gateway(&config);
    let port = port_of(&gateway.address);
    let (mut open_before, served_before) = open(port, &ca).await;
    assert_eq!(served_before, serial_of(&first));
    assert_eq!(post_on(&mut open_before, "hup-tls-1").await, 200);

    // Act
    let second = ca.server(dir.path(), "second", &["localhost"]);
    install(&second, &cert, &key);
    gateway.signal("HUP");

    // Assert
    assert!(
        gateway
            .logged("TLS certificate reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gateway.log_text()
    );
    assert_eq!(open(port, &ca).await.1, serial_of(&second));
    assert_eq!(post_on(&mut open_before, "hup-tls-2").await, 200);
    assert!(!gateway.log_text().contains("PRIVATE KEY"));
    assert_eq!(
        ids_of(&wait_for_events(&dir.path().join("out/events.jsonl"), 2).await),
        ["hup-tls-1", "hup-tls-2"]
    );
}
