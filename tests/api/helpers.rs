//! `spawn_app()` and the other helpers every test shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dataloy_gateway::config::{
    ByteSize, FileSinkSettings, LogSettings, ServerSettings, Settings, SinksSettings, SpoolSettings,
};
use dataloy_gateway::startup::{Application, StopHandle};
use tempfile::TempDir;

pub const UPDATED: &[u8] = include_bytes!("../fixtures/bunker-order-updated.json");
pub const ALERT: &[u8] = include_bytes!("../fixtures/bunker-order-line-alert-script.json");
const UPDATED_ID: &str = "1573335-244070007";

/// The documented `bunker-order-updated` sample with its id replaced.
pub fn sample_with_id(id: &str) -> Vec<u8> {
    let text = std::str::from_utf8(UPDATED).unwrap();
    let replaced = text.replacen(UPDATED_ID, id, 1);
    assert_ne!(replaced, text, "sample id not found");
    replaced.into_bytes()
}

/// A minimal valid envelope with the given id.
pub fn minimal(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"PortCall","eventType":"U","dataloyObject":1,"subscription":{{"key":2}},"resource":{{"key":1}}}}"#
    )
}

/// Settings for a gateway confined to `dir`, on ephemeral ports, with the file sink.
pub fn test_settings(dir: &Path) -> Settings {
    Settings {
        server: ServerSettings {
            bind: "127.0.0.1:0".into(),
            workers: Some(2),
            ..ServerSettings::default()
        },
        admin: dataloy_gateway::config::AdminSettings {
            bind: "127.0.0.1:0".into(),
            ..Default::default()
        },
        spool: SpoolSettings {
            dir: dir.join("spool"),
            max_bytes: ByteSize(64 << 20),
            segment_bytes: ByteSize(1 << 20),
            ..SpoolSettings::default()
        },
        sinks: SinksSettings {
            file: Some(FileSinkSettings::at(dir.join("out/events.jsonl"))),
            ..SinksSettings::default()
        },
        log: LogSettings::default(),
        relay: dataloy_gateway::config::RelaySettings {
            retry_initial_backoff: Duration::from_millis(20),
            retry_max_backoff: Duration::from_millis(200),
            ..Default::default()
        },
        ..Settings::default()
    }
}

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub events_path: PathBuf,
    stop: StopHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

/// Starts a gateway with the test settings, changed by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings, &Path)) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        dataloy_gateway::telemetry::init(&LogSettings {
            format: dataloy_gateway::config::LogFormat::Pretty,
            level: "info".into(),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    customize(&mut settings, dir.path());
    settings.validate().expect("test settings are valid");
    let events_path = settings
        .sinks
        .file
        .as_ref()
        .map(|f| f.path.clone())
        .unwrap_or_default();
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let stop = app.stop_handle();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_address,
        client: reqwest::Client::new(),
        dir,
        events_path,
        stop,
        task: Some(task),
    }
}

/// Starts a gateway on the spool and sink file of an earlier one kept in `dir` (a restart),
/// with the test settings changed by `customize`.
pub async fn spawn_app_on(dir: &Path, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let kept = dir.to_owned();
    spawn_app_with(move |settings, _| {
        settings.spool.dir = kept.join("spool");
        if let Some(file) = settings.sinks.file.as_mut() {
            file.path = kept.join("out/events.jsonl");
        }
        customize(settings);
    })
    .await
}

/// How the gateway answered one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Duplicate,
    /// Another status (503, …).
    Status(u16),
    /// No answer: refused, reset or timed out (the gateway was killed).
    None,
}

impl Answer {
    pub async fn of(response: reqwest::Result<reqwest::Response>) -> Answer {
        let Ok(response) = response else {
            return Answer::None;
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Answer::Status(status);
        }
        match response.json::<serde_json::Value>().await {
            Ok(body) if body["status"] == "accepted" => Answer::Accepted,
            Ok(body) if body["status"] == "duplicate" => Answer::Duplicate,
            _ => Answer::None,
        }
    }
}

/// Posts the sample with each of `ids` from `workers` concurrent clients, each id once; returns
/// every answer. `accepted` counts the `accepted` answers as they come (to act mid-load).
pub async fn post_concurrently(
    address: String,
    ids: Vec<String>,
    workers: usize,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<(String, Answer)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(ids.into_iter()));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, queue, address) = (client.clone(), queue.clone(), address.clone());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let Some(id) = queue.lock().await.next() else {
                        return answers;
                    };
                    let response = client
                        .post(format!("{address}/webhooks/dataloy"))
                        .body(sample_with_id(&id))
                        .send()
                        .await;
                    let answer = Answer::of(response).await;
                    if answer == Answer::Accepted {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    answers.push((id, answer));
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    answers
}

impl TestApp {
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}/webhooks/dataloy", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name` (with labels, as printed) in `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    pub async fn ready_status(&self) -> u16 {
        self.client
            .get(format!("{}/health/ready", self.admin_address))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Posts `ids` while `sink`'s broker is down: each is still accepted, the sink reports
    /// itself down, and readiness stays 200 (the spool absorbs the outage).
    pub async fn post_during_outage(&self, ids: &[String], sink: &str) {
        for id in ids {
            assert_eq!(
                self.post(sample_with_id(id)).await.status(),
                200,
                "accepted during the outage"
            );
        }
        assert!(
            eventually(|| async {
                self.metric(&format!("dataloy_gateway_sink_up{{sink=\"{sink}\"}}"))
                    .await
                    == 0.0
            })
            .await,
            "sink_up reports the outage"
        );
        assert_eq!(
            self.ready_status().await,
            200,
            "a broker outage never takes the gateway out of service"
        );
    }

    /// Waits until the file sink holds `count` bodies, and returns them.
    pub async fn wait_for_events(&self, count: usize) -> Vec<serde_json::Value> {
        wait_for_events(&self.events_path, count).await
    }

    /// Stops gracefully and waits for the shutdown to finish.
    pub async fn stop(mut self) -> TempDir {
        self.stop.stop();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.dir
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// The bodies in a file sink's output, parsed as a stream of JSON values (bodies may span lines).
/// The sink may be writing while this reads, so a body cut short by the end of what was read is
/// not counted yet; anything else that is not JSON fails the test.
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>() {
        match value {
            Ok(event) => events.push(event),
            Err(e) if e.is_eof() => break,
            Err(e) => panic!("file sink output is JSON: {e}"),
        }
    }
    events
}

pub async fn wait_for_events(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = read_events(path);
        if events.len() >= count || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it holds or 20 s pass; returns whether it held.
pub async fn eventually<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ids_of(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Loads `text` as a configuration file (nothing from the environment) and returns the error
/// message; panics if the configuration is accepted.
pub fn config_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    match Settings::load_with_env(Some(&path), Vec::new()) {
        Ok(_) => panic!("configuration accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A client posting unique notifications one after another, every 5 ms, until stopped; it
/// returns each id with the status it got.
pub struct SteadyLoad {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(String, u16)>>,
}

impl SteadyLoad {
    pub fn start(app: &TestApp) -> SteadyLoad {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let client = app.client.clone();
        let url = format!("{}/webhooks/dataloy", app.address);
        let task = tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !*stopped.borrow() {
                let id = format!("steady-{}", statuses.len());
                let response = client
                    .post(&url)
                    .body(sample_with_id(&id))
                    .send()
                    .await
                    .unwrap();
                statuses.push((id, response.status().as_u16()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        });
        SteadyLoad { stop, task }
    }

    /// Stops the load; returns the ids sent, after checking that every one was answered 200.
    pub async fn finish(self) -> Vec<String> {
        self.stop.send_replace(true);
        let statuses = self.task.await.unwrap();
        assert!(
            statuses.iter().all(|(_, status)| *status == 200),
            "{statuses:?}"
        );
        statuses.into_iter().map(|(id, _)| id).collect()
    }
}

/// The ids in order of first delivery, and how many extra copies arrived.
pub fn first_deliveries(delivered: impl IntoIterator<Item = String>) -> (Vec<String>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut first = Vec::new();
    let mut copies = 0;
    for id in delivered {
        if seen.insert(id.clone()) {
            first.push(id);
        } else {
            copies += 1;
        }
    }
    (first, copies)
}
