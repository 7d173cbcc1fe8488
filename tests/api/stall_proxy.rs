//! An in-test TCP proxy that can hold every byte in flight, in both directions, for as long as a
//! test wants: a server that stalls (Redis busy, a broker frozen) without the connection closing.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct StallProxy {
    pub port: u16,
    hold: watch::Sender<bool>,
}

impl StallProxy {
    /// Forwards 127.0.0.1:`port` (a fresh port) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, held.clone()));
                tokio::spawn(pump(out_read, in_write, held.clone()));
            }
        });
        StallProxy { port, hold }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds every byte until [`StallProxy::resume`].
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    pub fn resume(&self) {
        self.hold.send_replace(false);
    }
}

/// Copies `from` to `to`, waiting while the proxy holds before writing what it read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 || held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
