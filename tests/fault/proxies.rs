//! In-test TCP proxies in front of each broker, so the test can fail a broker the way an
//! operator sees it fail without touching the broker itself (the shared RabbitMQ must never be
//! stopped): `Down` closes every connection and drops new ones at once, `Stalled` keeps every
//! connection open and accepts new ones but forwards no byte (a hung broker, a paused Redis), and
//! `Up` forwards. Leaving `Stalled` for `Up` delivers the held bytes late (a pause); leaving it
//! through `Down` resets the connections (a hung broker restarted).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    Down,
    Stalled,
}

/// One proxy: a listener on its own port forwarding to `target`.
pub struct Proxy {
    pub port: u16,
    /// The mode and a generation that changes whenever the proxy goes down, so connections of an
    /// earlier generation close.
    state: watch::Sender<(Mode, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, _) = watch::channel((Mode::Up, 0u64));
        let watcher = state.subscribe();
        let task = tokio::spawn(accept_loop(listener, target, watcher));
        Proxy { port, state, task }
    }

    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|(current, generation)| {
            if mode == Mode::Down {
                *generation += 1;
            }
            *current = mode;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(Mode::Down);
    }
}

async fn accept_loop(listener: TcpListener, target: u16, state: watch::Receiver<(Mode, u64)>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (mode, generation) = *state.borrow();
        if mode == Mode::Down {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, target, state.clone(), generation));
    }
}

/// Forwards one connection until either side closes or the proxy goes down.
async fn connection(
    client: TcpStream,
    target: u16,
    mut state: watch::Receiver<(Mode, u64)>,
    generation: u64,
) {
    let mut gone = state.clone();
    let closed = async move {
        let _ = gone.wait_for(|(_, g)| *g != generation).await;
    };
    let forward = async move {
        // A stalled broker accepts the connection but answers nothing: wait before connecting.
        if !wait_up(&mut state, generation).await {
            return;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::select! {
            _ = pump(client_read, server_write, state.clone(), generation) => {}
            _ = pump(server_read, client_write, state, generation) => {}
        }
    };
    tokio::select! {
        _ = closed => {}
        _ = forward => {}
    }
}

/// Waits until the proxy is up; false if it went down (this generation is over).
async fn wait_up(state: &mut watch::Receiver<(Mode, u64)>, generation: u64) -> bool {
    match state
        .wait_for(|(mode, g)| *g != generation || *mode == Mode::Up)
        .await
    {
        Ok(value) => value.1 == generation,
        Err(_) => false,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<(Mode, u64)>,
    generation: u64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read while stalled are held until the proxy is up again.
        if !wait_up(&mut state, generation).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
