//! TLS tables that cannot work stop the start with the key and the file named, and never with
//! a secret: missing, unreadable or garbage files, a key that is not the certificate's, an
//! expired certificate, an encrypted key, a TLS table on a plain URL, a switch that would turn
//! verification off. A PEM file with several certificates is a chain (or a CA bundle) and works.

use std::path::Path;

use crate::helpers::*;
use crate::tls_support::*;

const SINK: &str = "[sinks.file]\npath = \"events.jsonl\"\n";

fn listener(dir: &Path, cert: &Path, key: &Path) -> String {
    let _ = dir;
    format!(
        "{SINK}[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

fn redis(tls: &str) -> String {
    format!(
        "{SINK}[dedup]\nbackend = \"redis\"\nredis_url = \"rediss://:pw-7781@localhost:6380\"\n[dedup.tls]\n{tls}"
    )
}

#[test]
fn a_missing_certificate_file_is_named_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let error = config_error(&listener(
        dir.path(),
        &dir.path().join("nope.crt"),
        &dir.path().join("nope.key"),
    ));
    assert!(error.contains("`server.tls.cert_file`"), "{error}");
    assert!(error.contains("nope.crt"), "{error}");
    assert!(error.contains("no such file"), "{error}");
}

#[test]
fn a_directory_or_garbage_instead_of_a_pem_file_is_named_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    )
    .unwrap();

    let directory = config_error(&listener(dir.path(), dir.path(), &server.key_file));
    let broken = config_error(&listener(dir.path(), &garbage, &server.key_file));
    let no_key = config_error(&listener(dir.path(), &server.cert_file, &server.cert_file));

    assert!(directory.contains("`server.tls.cert_file`"), "{directory}");
    assert!(directory.contains("not a regular file"), "{directory}");
    assert!(broken.contains("`server.tls.cert_file`"), "{broken}");
    assert!(broken.contains("not valid PEM"), "{broken}");
    assert!(no_key.contains("`server.tls.key_file`"), "{no_key}");
    assert!(no_key.contains("no PEM private key"), "{no_key}");
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let other = ca.server(dir.path(), "other", &["localhost"]);

    let error = config_error(&listener(dir.path(), &server.cert_file, &other.key_file));

    assert!(error.contains("`server.tls.key_file`"), "{error}");
    assert!(error.contains("other.key"), "{error}");
    assert!(error.contains("does not belong"), "{error}");
    let key_body = other.key_pem.lines().nth(1).unwrap();
    assert!(!error.contains(key_body), "{error}");
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused_with_its_date() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let expired = ca.server_valid(
        dir.path(),
        "expired",
        &["localhost"],
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2021, 1, 1),
    );
    let future = ca.server_valid(
        dir.path(),
        "future",
        &["localhost"],
        rcgen::date_time_ymd(2090, 1, 1),
        rcgen::date_time_ymd(2091, 1, 1),
    );

    let old = config_error(&listener(dir.path(), &expired.cert_file, &expired.key_file));
    let early = config_error(&listener(dir.path(), &future.cert_file, &future.key_file));

    assert!(old.contains("`server.tls.cert_file`"), "{old}");
    assert!(old.contains("expired on 2021-01-01"), "{old}");
    assert!(early.contains("valid only from 2090-01-01"), "{early}");
}

#[test]
fn an_encrypted_key_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let encrypted = dir.path().join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();

    let error = config_error(&listener(dir.path(), &server.cert_file, &encrypted));

    assert!(error.contains("`server.tls.key_file`"), "{error}");
    assert!(error.contains("encrypted private key"), "{error}");
    assert!(!error.contains("MIIBvTBXBgkqhkiG9w0BBQ0w"), "{error}");
}

#[test]
fn a_pem_file_with_a_chain_and_a_ca_bundle_with_several_cas_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let other = TestCa::new("Other CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, format!("{}{}", server.cert_pem, ca.pem)).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", other.pem, ca.pem)).unwrap();
    let text = format!(
        "{}client_ca_file = \"{}\"\n",
        listener(dir.path(), &chain, &server.key_file),
        bundle.display()
    );

    let (_config_dir, settings) = {
        let config_dir = tempfile::tempdir().unwrap();
        let path = config_dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = dataloy_gateway::config::Settings::load_with_env(Some(&path), Vec::new());
        (config_dir, loaded)
    };

    let settings = settings.unwrap();
    assert!(settings.server.tls.is_some());
}

#[test]
fn a_chain_with_the_ca_first_is_refused_because_the_leaf_must_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let reversed = dir.path().join("reversed.pem");
    std::fs::write(&reversed, format!("{}{}", ca.pem, server.cert_pem)).unwrap();

    let error = config_error(&listener(dir.path(), &reversed, &server.key_file));

    assert!(
        error.contains("leaf certificate must come first"),
        "{error}"
    );
}

#[test]
fn client_tls_tables_name_their_own_keys_and_never_the_url_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let client = ca.client(dir.path(), "client", "gateway");
    let missing_ca = config_error(&redis(&format!(
        "ca_file = \"{}\"\n",
        dir.path().join("company-ca.pem").display()
    )));
    let half_pair = config_error(&redis(&format!(
        "cert_file = \"{}\"\n",
        client.cert_file.display()
    )));
    let bad_name = config_error(&redis("server_name = \"not a host name\"\n"));

    assert!(missing_ca.contains("`dedup.tls.ca_file`"), "{missing_ca}");
    assert!(missing_ca.contains("company-ca.pem"), "{missing_ca}");
    assert!(half_pair.contains("`dedup.tls.key_file`"), "{half_pair}");
    assert!(bad_name.contains("`dedup.tls.server_name`"), "{bad_name}");
    for error in [&missing_ca, &half_pair, &bad_name] {
        assert!(!error.contains("pw-7781"), "{error}");
    }

    let rabbit = config_error(&format!(
        "[sinks.rabbitmq]\nuri = \"amqps://user:pw-9931@localhost:5671/%2f\"\n[sinks.rabbitmq.tls]\nca_file = \"{}\"\n",
        dir.path().join("missing.pem").display()
    ));
    assert!(rabbit.contains("`sinks.rabbitmq.tls.ca_file`"), "{rabbit}");
    assert!(!rabbit.contains("pw-9931"), "{rabbit}");

    let websocket = config_error(&format!(
        "{SINK}[sources.websocket.orders]\nurl = \"wss://dataloy.example/ws/rest/WebSocketAlertScript/X/tok-5521\"\n[sources.websocket.orders.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        client.cert_file.display(),
        dir.path().join("gone.key").display()
    ));
    assert!(
        websocket.contains("`sources.websocket.tls.key_file`"),
        "{websocket}"
    );
    assert!(websocket.contains("(source `orders`)"), "{websocket}");
    assert!(!websocket.contains("tok-5521"), "{websocket}");
}

#[test]
fn a_tls_table_on_a_plain_url_and_a_switch_that_turns_verification_off_are_refused() {
    let plain_redis = config_error(&format!(
        "{SINK}[dedup]\nbackend = \"redis\"\nredis_url = \"redis://:pw-1@localhost:6379\"\n[dedup.tls]\n"
    ));
    let insecure = config_error(&format!(
        "{SINK}[dedup]\nbackend = \"redis\"\nredis_url = \"rediss://:pw-2@localhost:6380/#insecure\"\n"
    ));
    let plain_rabbit = config_error(
        "[sinks.rabbitmq]\nuri = \"amqp://guest:pw-3@localhost:5672/%2f\"\n[sinks.rabbitmq.tls]\n",
    );
    let plain_websocket = config_error(&format!(
        "{SINK}[sources.websocket.a]\nurl = \"ws://dataloy.example/ws/rest/WebSocketAlertScript/X/tok\"\n[sources.websocket.a.tls]\n"
    ));
    let unknown_switch = config_error(&format!(
        "{SINK}[sinks.rabbitmq]\nuri = \"amqps://localhost\"\n[sinks.rabbitmq.tls]\ninsecure_skip_verify = true\n"
    ));

    assert!(plain_redis.contains("`dedup.tls`"), "{plain_redis}");
    assert!(plain_redis.contains("rediss://"), "{plain_redis}");
    assert!(insecure.contains("`dedup.redis_url`"), "{insecure}");
    assert!(insecure.contains("#insecure"), "{insecure}");
    assert!(
        plain_rabbit.contains("`sinks.rabbitmq.tls`"),
        "{plain_rabbit}"
    );
    assert!(
        plain_websocket.contains("`sources.websocket.tls`"),
        "{plain_websocket}"
    );
    assert!(
        unknown_switch.contains("insecure_skip_verify"),
        "{unknown_switch}"
    );
    for (error, secret) in [
        (&plain_redis, "pw-1"),
        (&insecure, "pw-2"),
        (&plain_rabbit, "pw-3"),
    ] {
        assert!(!error.contains(secret), "{error}");
    }
}

#[tokio::test]
async fn a_misspelt_kafka_property_is_reported_by_name_without_its_value() {
    let mut settings = crate::kafka::kafka_settings("127.0.0.1:1", "t");
    settings.properties.insert(
        "sasl.pasword".into(),
        secrecy::SecretString::from("s3cret-0042"),
    );

    let error = match dataloy_gateway::sink::KafkaSink::new(&settings, 1 << 20) {
        Ok(_) => panic!("the producer was created"),
        Err(e) => e.to_string(),
    };

    assert!(error.contains("sasl.pasword"), "{error}");
    assert!(!error.contains("s3cret-0042"), "{error}");
}

#[test]
fn tls_tables_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let server = ca.server(dir.path(), "server", &["localhost"]);
    let ca_file = ca.write(dir.path(), "ca.pem");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, SINK).unwrap();
    let env = [
        (
            "DATALOY_GATEWAY__SERVER__TLS__CERT_FILE",
            server.cert_file.display().to_string(),
        ),
        (
            "DATALOY_GATEWAY__SERVER__TLS__KEY_FILE",
            server.key_file.display().to_string(),
        ),
        ("DATALOY_GATEWAY__DEDUP__BACKEND", "redis".into()),
        (
            "DATALOY_GATEWAY__DEDUP__REDIS_URL",
            "rediss://localhost:6380".into(),
        ),
        (
            "DATALOY_GATEWAY__DEDUP__TLS__CA_FILE",
            ca_file.display().to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));

    let settings = dataloy_gateway::config::Settings::load_with_env(Some(&config), env).unwrap();

    assert_eq!(settings.server.tls.unwrap().cert_file, server.cert_file);
    assert_eq!(settings.dedup.tls.unwrap().ca_file, Some(ca_file));
}
