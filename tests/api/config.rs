//! Configuration: layering (file, then environment) and start-up errors that name the key.

use std::path::PathBuf;
use std::process::Command;

use dataloy_gateway::config::{AuthMode, Settings};

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const MINIMAL: &str = "[sinks.file]\npath = \"events.jsonl\"\n";

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
    let (_dir, path) = write_config(text);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::load_with_env(Some(&path), env).map_err(|e| e.to_string())
}

#[test]
fn the_shipped_default_config_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let settings = Settings::load_with_env(Some(&path), Vec::new()).unwrap();
    assert_eq!(settings.server.bind, "127.0.0.1:8080");
    assert_eq!(settings.admin.bind, "127.0.0.1:9090");
    assert!(settings.sinks.file.is_some());
    assert_eq!(settings.dedup.ttl.as_secs(), 24 * 3600);
}

#[test]
fn environment_overrides_the_file_and_can_add_a_sink() {
    let settings = load(
        "[server]\nbind = \"127.0.0.1:8080\"\n",
        &[
            ("DATALOY_GATEWAY__SERVER__BIND", "127.0.0.1:18080"),
            ("DATALOY_GATEWAY__SINKS__FILE__PATH", "from-env.jsonl"),
            ("DATALOY_GATEWAY__DEDUP__TTL", "5m"),
            ("DATALOY_GATEWAY__SPOOL__MAX_BYTES", "512MiB"),
            ("DATALOY_GATEWAY__AUTH__MODE", "bearer"),
            ("DATALOY_GATEWAY__AUTH__TOKEN", "tok"),
            ("UNRELATED", "ignored"),
        ],
    )
    .unwrap();

    assert_eq!(settings.server.bind, "127.0.0.1:18080");
    assert_eq!(
        settings.sinks.file.unwrap().path,
        PathBuf::from("from-env.jsonl")
    );
    assert_eq!(settings.dedup.ttl.as_secs(), 300);
    assert_eq!(settings.spool.max_bytes.bytes(), 512 << 20);
    assert_eq!(settings.auth.mode, AuthMode::Bearer);
}

/// The key an error must name, the file, and environment overrides.
type Case = (&'static str, String, Vec<(&'static str, &'static str)>);

#[test]
fn errors_name_the_key() {
    let cases: Vec<Case> = vec![
        (
            "server.bind",
            format!("[server]\nbind = \"nowhere\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "admin.bind",
            format!("[admin]\nbind = \"1.2.3.4\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "auth.mode",
            format!("[server]\nbind = \"0.0.0.0:8080\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "auth.password",
            format!("[auth]\nmode = \"basic\"\nusername = \"u\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "auth.token",
            format!("[auth]\nmode = \"bearer\"\n{MINIMAL}"),
            vec![],
        ),
        ("sinks", String::new(), vec![]),
        (
            "server.client_timeout",
            format!("[server]\nclient_timeout = \"0s\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "server.shutdown_timeout",
            MINIMAL.to_string(),
            vec![("DATALOY_GATEWAY__SERVER__SHUTDOWN_TIMEOUT", "0s")],
        ),
        (
            "server.retry_after_seconds",
            format!("[server]\nretry_after_seconds = 0\n{MINIMAL}"),
            vec![],
        ),
        (
            "spool.max_bytes",
            format!("[spool]\nmax_bytes = \"lots\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "spool.max_bytes",
            format!("[spool]\nmax_bytes = 8192\nsegment_bytes = 8192\n{MINIMAL}"),
            vec![],
        ),
        (
            "spool.commit_interval",
            format!("[spool]\ncommit_interval = \"1s\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "dedup.ttl",
            format!("[dedup]\nttl = \"forever\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "server.workers",
            MINIMAL.to_string(),
            vec![("DATALOY_GATEWAY__SERVER__WORKERS", "0")],
        ),
        (
            "bnd",
            format!("[server]\nbnd = \"127.0.0.1:1\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "auth.mode",
            format!("[auth]\nmode = \"kerberos\"\n{MINIMAL}"),
            vec![],
        ),
        // Issue 20 #9: `verbose` used to be taken as a module name and log nothing at all.
        (
            "log.level",
            format!("[log]\nlevel = \"verbose\"\n{MINIMAL}"),
            vec![],
        ),
        (
            "log.level",
            MINIMAL.to_string(),
            vec![("DATALOY_GATEWAY__LOG__LEVEL", "info,relay=loud")],
        ),
    ];

    for (key, file, env) in cases {
        let error = load(&file, &env).expect_err(key);
        assert!(
            error.contains(key),
            "error for `{key}` does not name it: {error}"
        );
    }
}

#[test]
fn unauthenticated_public_bind_is_allowed_only_when_said_explicitly() {
    let text = format!(
        "[server]\nbind = \"0.0.0.0:8080\"\n[auth]\nallow_unauthenticated = true\n{MINIMAL}"
    );
    assert!(load(&text, &[]).is_ok());
}

#[test]
fn the_binary_refuses_a_bad_config_and_names_the_key() {
    let (_dir, path) = write_config(&format!("[server]\nbind = \"nowhere\"\n{MINIMAL}"));

    let output = Command::new(env!("CARGO_BIN_EXE_dataloy-gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.bind"), "{stderr}");
}

#[test]
fn numeric_looking_secrets_from_the_environment_stay_text() {
    use secrecy::ExposeSecret;
    for token in ["1e5", "007", "0x10", "true", "1.50"] {
        let settings = load(
            "[auth]\nmode = \"bearer\"\n[sinks.file]\npath = \"events.jsonl\"\n",
            &[("DATALOY_GATEWAY__AUTH__TOKEN", token)],
        )
        .unwrap();
        let loaded = settings.auth.token.expect("token set");
        assert_eq!(
            loaded.expose_secret(),
            token,
            "re-typed from the environment"
        );
    }
}

#[test]
fn a_debug_print_of_the_settings_shows_no_secret() {
    let secrets = [
        "kafka-sasl-S3cret",
        "redis-pa55word",
        "rabbit-pa55word",
        "bearer-t0ken",
        "ws-t0ken-in-url",
    ];
    let settings = load(
        r#"
[auth]
mode = "bearer"
token = "bearer-t0ken"
[dedup]
backend = "redis"
redis_url = "redis://:redis-pa55word@127.0.0.1:6379"
[sinks.rabbitmq]
uri = "amqp://gw:rabbit-pa55word@127.0.0.1:5672/%2f"
[sinks.kafka]
brokers = "127.0.0.1:9092"
[sinks.kafka.properties]
"sasl.password" = "kafka-sasl-S3cret"
[sources.websocket.s]
url = "wss://dataloy.example/ws/rest/WebSocketAlertScript/BUP/ws-t0ken-in-url"
"#,
        &[],
    )
    .unwrap();
    let printed = format!("{settings:?} {settings:#?}");
    for secret in secrets {
        assert!(!printed.contains(secret), "{secret} printed by Debug");
    }
}
