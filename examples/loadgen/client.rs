//! The load generator's HTTP side: one HTTP/1.1 keep-alive connection per request in flight,
//! driven with hyper's connection API and nothing above it (no pool, no redirect or header
//! machinery). The load tool shares the two cores with the server it measures, so every
//! microsecond it spends per request is taken from the server; this keeps that share small.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

/// Where the requests go, parsed once.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    path: String,
    authorization: Option<HeaderValue>,
}

impl Endpoint {
    /// An `http://` URL (the gateway's listener; TLS is out of scope for the load tool).
    pub fn new(url: &str, bearer: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = url.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "--url must be an http:// URL, got {url}"
        );
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("--url has no host: {url}"))?;
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let authorization = bearer
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .transpose()?;
        Ok(Self {
            authority,
            path,
            authorization,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection until the sender is dropped or the peer closes it; a failure
        // shows to the sender as an error on its next request.
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// One keep-alive connection, reopened after it fails or the server closes it.
pub struct Connection {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            sender: None,
        }
    }

    /// Posts one JSON body and reads the whole answer within `timeout`; returns its status code.
    pub async fn post(&mut self, body: Bytes, timeout: Duration) -> anyhow::Result<u16> {
        let outcome = match tokio::time::timeout(timeout, self.try_post(body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
        };
        if outcome.is_err() {
            // A failed or abandoned exchange leaves the connection in an unknown state: the
            // next request opens a fresh one.
            self.sender = None;
        }
        outcome
    }

    async fn try_post(&mut self, body: Bytes) -> anyhow::Result<u16> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            stale => stale.insert(self.endpoint.connect().await?),
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.endpoint.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}
