//! The real binary as an operator runs it: started on a configuration file (optionally under a
//! lower open-file limit), its JSON log collected, signalled, and timed until it exits.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: `DATALOY_GATEWAY_BIN` (a private copy, when the build directory is
/// shared with other checkouts), else the one cargo built for these tests.
pub fn binary() -> PathBuf {
    std::env::var_os("DATALOY_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dataloy-gateway")))
}

pub struct GatewayProcess {
    child: Child,
    pub address: String,
    pub admin_address: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for GatewayProcess {
    /// A failing test must not leave a gateway running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a start ended: listening, or exited first (with its status and log).
pub enum Started {
    Listening(GatewayProcess),
    Exited(ExitStatus, String),
}

/// Starts the binary on `config` (under `ulimit -n nofile` when given) and waits until it logs
/// that it listens, or exits.
pub fn launch(config: &Path, nofile: Option<u64>) -> Started {
    launch_in_shell(config, nofile.map(|limit| format!("ulimit -n {limit}")))
}

/// Starts the binary on `config` after the bash commands `limits` (e.g. `ulimit -f 40`), and
/// waits until it logs that it listens, or exits.
pub fn launch_in_shell(config: &Path, limits: Option<String>) -> Started {
    let mut command = match limits {
        Some(limits) => {
            let mut command = Command::new("bash");
            command
                .arg("-c")
                .arg(format!("{limits} && exec \"$0\" --config \"$1\""))
                .arg(binary())
                .arg(config);
            command
        }
        None => {
            let mut command = Command::new(binary());
            command.arg("--config").arg(config);
            command
        }
    };
    let mut child = command
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ports_tx, ports_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let collected = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) {
                if entry["fields"]["message"] == "dataloy-gateway listening" {
                    let port = entry["fields"]["port"].as_u64().unwrap();
                    let admin = entry["fields"]["admin_port"].as_u64().unwrap();
                    let _ = ports_tx.send((port, admin));
                }
            }
            collected.lock().unwrap().push(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let collected = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            collected.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((port, admin)) = ports_rx.recv_timeout(Duration::from_millis(50)) {
            return Started::Listening(GatewayProcess {
                child,
                address: format!("http://127.0.0.1:{port}"),
                admin_address: format!("http://127.0.0.1:{admin}"),
                log,
            });
        }
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200)); // let the readers finish
            return Started::Exited(status, log.lock().unwrap().join("\n"));
        }
        assert!(
            Instant::now() < deadline,
            "the gateway neither listened nor exited"
        );
    }
}

/// Starts the binary on `config`; it must start listening.
pub fn start_gateway(config: &Path) -> GatewayProcess {
    match launch(config, None) {
        Started::Listening(gateway) => gateway,
        Started::Exited(status, log) => panic!("the gateway exited ({status}):\n{log}"),
    }
}

impl GatewayProcess {
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits up to `limit` for the process to exit; its status and how long it took, or `None`
    /// (and the process is left running) if it did not exit in time.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Whether a log line containing `text` appeared within `limit`.
    pub async fn logged(&self, text: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(text))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> Option<u16> {
        client
            .post(format!("{}/webhooks/dataloy", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
