//! The processes a fault run drives: the real gateway binary (started on a temporary config and
//! spool, stopped with real signals), a tansu broker and a redis-server of the run's own, and
//! the proxies in front of every broker. The shared services are only ever reached through a
//! proxy, never stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::proxies::Proxy;

pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// What a graceful stop may take beyond `server.shutdown_timeout` (relay batch, spool flush).
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(6);
pub const RABBITMQ_PORT: u16 = 5672;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker (data in memory) that advertises the proxy's port, so every client connection
/// goes through the proxy.
pub fn start_tansu(dir: &Path, port: u16, advertised: u16) -> Service {
    let tansu = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        let home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
        let installed = format!("{home}/bin/tansu");
        if Path::new(&installed).exists() {
            installed
        } else {
            "tansu".into()
        }
    });
    let child = Command::new(tansu)
        .args(["broker", "--listener-url"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
        .spawn()
        .expect("tansu is installed (scripts/services.sh installs it)");
    let service = Service(child);
    wait_for_port(port, "tansu");
    service
}

pub fn start_redis(dir: &Path, port: u16) -> Service {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .stdout(std::fs::File::create(dir.join("redis.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/services.sh installs it)");
    let service = Service(child);
    wait_for_port(port, "redis-server");
    service
}

/// Where a run keeps its files and which ports its gateway uses across restarts.
pub struct Layout {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub admin_port: u16,
}

impl Layout {
    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    pub fn events(&self) -> PathBuf {
        self.dir.join("out/events.jsonl")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }
}

pub struct Brokers<'a> {
    pub kafka: &'a Proxy,
    pub topic: &'a str,
    pub rabbitmq: &'a Proxy,
    pub exchange: &'a str,
    pub redis: Option<&'a Proxy>,
}

/// Copies the binary out of the target directory (other builds replace it) and writes the
/// configuration every start of this run uses.
pub fn prepare(dir: &Path, brokers: &Brokers) -> Layout {
    let binary = dir.join("dataloy-gateway");
    // `DATALOY_FAULT_GATEWAY_BIN`: a copy made right after the build (scripts/fault-seeds.sh),
    // which a later build of another branch into the same target directory cannot replace.
    let built = std::env::var("DATALOY_FAULT_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_dataloy-gateway").to_owned());
    std::fs::copy(&built, &binary).unwrap();
    let layout = Layout {
        dir: dir.to_owned(),
        binary,
        config: dir.join("gateway.toml"),
        port: free_port(),
        admin_port: free_port(),
    };
    let dedup = match brokers.redis {
        Some(redis) => format!(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\nredis_key_prefix = \"{}:\"",
            redis.port, brokers.topic
        ),
        None => "backend = \"memory\"".to_owned(),
    };
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
workers = 2
max_body_bytes = "128KiB"
shutdown_timeout = "{shutdown}s"
retry_after_seconds = 1
[admin]
bind = "127.0.0.1:{admin_port}"
[dedup]
{dedup}
claim_lease = "10s"
[spool]
dir = "{spool}"
segment_bytes = "128KiB"
max_bytes = "512KiB"
[relay]
batch_max_records = 16
retry_initial_backoff = "20ms"
retry_max_backoff = "300ms"
[sinks.file]
path = "{events}"
[sinks.kafka]
brokers = "127.0.0.1:{kafka}"
topic = "{topic}"
linger = "1ms"
message_timeout = "5s"
health_interval = "500ms"
[sinks.rabbitmq]
uri = "amqp://guest:guest@127.0.0.1:{rabbitmq}/%2f"
exchange = "{exchange}"
routing_key = "{{objectType}}.{{eventType}}"
health_interval = "500ms"
connect_timeout = "2s"
confirm_timeout = "5s"
[log]
format = "json"
level = "info"
"#,
        port = layout.port,
        admin_port = layout.admin_port,
        shutdown = SHUTDOWN_TIMEOUT.as_secs(),
        spool = layout.spool().display(),
        events = layout.events().display(),
        kafka = brokers.kafka.port,
        topic = brokers.topic,
        rabbitmq = brokers.rabbitmq.port,
        exchange = brokers.exchange,
    );
    std::fs::write(&layout.config, text).unwrap();
    layout
}

/// The gateway process. Dropping it kills it.
pub struct Gateway {
    child: Option<Child>,
}

impl Gateway {
    /// Starts the binary and waits until its admin listener answers `/health/live`.
    pub async fn start(layout: &Layout) -> Result<Gateway, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.log())
            .unwrap();
        let child = Command::new(&layout.binary)
            .arg("--config")
            .arg(&layout.config)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut gateway = Gateway { child: Some(child) };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{}/health/live", layout.admin_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gateway.exited() {
                return Err(format!("the gateway exited at start: {status}"));
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                return Err("the gateway did not answer /health/live within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; waits up to `limit` for the exit. On timeout the process is killed and the
    /// error says how long it was given.
    pub async fn terminate(mut self, limit: Duration) -> Result<(ExitStatus, Duration), String> {
        let started = Instant::now();
        self.signal(Signal::SIGTERM);
        loop {
            if let Some(status) = self.exited() {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > limit {
                self.kill();
                return Err(format!("still running {limit:?} after SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of the gateway's log, for a failure message.
pub fn log_tail(layout: &Layout, lines: usize) -> String {
    let text = std::fs::read_to_string(layout.log()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
