//! Where the dedup Redis is and how a connection to it is opened. The redis crate is built
//! without TLS: the gateway connects (TCP or a Unix socket), does the TLS handshake itself for
//! `rediss://` with the shared client configuration (`[dedup.tls]`: company CA added to the public
//! roots, client certificate, server name), and hands redis the stream, which then says hello
//! and authenticates with the URL's credentials as usual.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError,
};

use crate::tls::ClientTls;

/// How far opening a connection got.
const PHASE_TCP: u8 = 0;
const PHASE_TLS: u8 = 1;
const PHASE_REDIS: u8 = 2;

/// A parsed `dedup.redis_url`.
#[derive(Clone)]
pub struct RedisTarget {
    address: Address,
    /// `rediss://`: TLS is required.
    pub tls: bool,
    info: RedisConnectionInfo,
}

#[derive(Clone)]
enum Address {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
}

impl RedisTarget {
    /// Parses `redis://`, `rediss://` and `unix://` URLs. The problem never quotes the URL (it
    /// may hold a password).
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let (tls, plain) = match url.strip_prefix("rediss://") {
            Some(rest) => (true, format!("redis://{rest}")),
            None => (false, url.to_owned()),
        };
        if plain.contains('#') {
            return Err(
                "has a #fragment; `#insecure` (no certificate check) is not supported: \
                        trust a private CA with dedup.tls.ca_file instead"
                    .into(),
            );
        }
        let info = plain.as_str().into_connection_info().map_err(|_| {
            "is not a Redis URL such as redis://127.0.0.1:6379 or rediss://redis.internal:6380"
                .to_owned()
        })?;
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp {
                host: host.clone(),
                port: *port,
            },
            ConnectionAddr::Unix(path) if !tls => Address::Unix(path.clone()),
            _ => return Err("is not a Redis URL such as redis://127.0.0.1:6379".into()),
        };
        Ok(RedisTarget {
            address,
            tls,
            info: info.redis_settings().clone(),
        })
    }
}

/// Opens connections to one Redis: the target, its TLS configuration and the timeouts.
pub(super) struct Connector {
    target: RedisTarget,
    tls: Option<ClientTls>,
    timeout: Duration,
    config: AsyncConnectionConfig,
}

impl Connector {
    /// `tls` is used for a `rediss://` target, which is never reached without it (the caller
    /// builds it from `[dedup.tls]`, or from defaults: the public roots).
    pub(super) fn new(target: RedisTarget, tls: Option<ClientTls>, timeout: Duration) -> Connector {
        Connector {
            target,
            tls,
            timeout,
            config: AsyncConnectionConfig::new().set_response_timeout(Some(timeout)),
        }
    }

    /// Connects, shakes hands (TLS, then Redis's HELLO/AUTH/SELECT) within the timeout, and
    /// runs the connection's driver on the calling runtime.
    pub(super) async fn connect(&self) -> Result<MultiplexedConnection, ConnectError> {
        // A TLS 1.3 server tells a refused client certificate only after the handshake, when
        // redis reads its first answer: the stream notes TLS failures wherever they show.
        let tls_failure = TlsFailure::default();
        // How far opening got, for the timeout's message.
        let phase = AtomicU8::new(PHASE_TCP);
        let opening = async {
            let (connection, driver) = match &self.target.address {
                Address::Tcp { host, port } => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    match (&self.tls, self.target.tls) {
                        (Some(tls), true) => {
                            phase.store(PHASE_TLS, Ordering::Relaxed);
                            let stream = tls
                                .connect(host, tcp)
                                .await
                                .inspect_err(|e| tls_failure.note(e))?;
                            let stream = Noting {
                                inner: stream,
                                failure: tls_failure.clone(),
                            };
                            phase.store(PHASE_REDIS, Ordering::Relaxed);
                            let (connection, driver) = MultiplexedConnection::new_with_config(
                                &self.target.info,
                                stream,
                                self.config.clone(),
                            )
                            .await?;
                            (connection, futures::FutureExt::boxed(driver))
                        }
                        (None, true) => {
                            return Err(RedisError::from(std::io::Error::other(
                                "rediss:// without a TLS configuration",
                            )))
                        }
                        (_, false) => {
                            let (connection, driver) = MultiplexedConnection::new_with_config(
                                &self.target.info,
                                tcp,
                                self.config.clone(),
                            )
                            .await?;
                            (connection, futures::FutureExt::boxed(driver))
                        }
                    }
                }
                Address::Unix(path) => {
                    let unix = tokio::net::UnixStream::connect(path).await?;
                    let (connection, driver) = MultiplexedConnection::new_with_config(
                        &self.target.info,
                        unix,
                        self.config.clone(),
                    )
                    .await?;
                    (connection, futures::FutureExt::boxed(driver))
                }
            };
            tokio::spawn(driver);
            Ok::<_, RedisError>(connection)
        };
        let result = match tokio::time::timeout(self.timeout, opening).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                match phase.load(Ordering::Relaxed) {
                    PHASE_TLS => {
                        "the TLS handshake did not finish within dedup.redis_timeout (a rediss:// \
                         URL needs Redis's TLS port, its tls-port)"
                    }
                    _ => "no Redis connection within dedup.redis_timeout",
                },
            ))),
        };
        result.map_err(|e| match tls_failure.take() {
            Some(reason) => ConnectError::Tls(reason),
            None => ConnectError::Redis(e),
        })
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// The TLS handshake failed (a configuration problem, not an outage).
    Tls(String),
    Redis(RedisError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tls(reason) => write!(f, "TLS handshake failed: {reason}"),
            ConnectError::Redis(e) => e.fmt(f),
        }
    }
}

/// The first TLS failure seen on a connection being opened.
#[derive(Clone, Default)]
struct TlsFailure(std::sync::Arc<parking_lot::Mutex<Option<String>>>);

impl TlsFailure {
    fn note(&self, error: &std::io::Error) {
        if let Some(reason) = crate::tls::failure(error) {
            self.0.lock().get_or_insert(reason);
        }
    }

    fn take(&self) -> Option<String> {
        self.0.lock().take()
    }
}

/// A stream that notes the TLS failures behind its I/O errors.
struct Noting<S> {
    inner: S,
    failure: TlsFailure,
}

impl<S> Noting<S> {
    fn noted<T>(&self, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            self.failure.note(e);
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Noting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.noted(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.noted(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.noted(poll)
    }
}
