//! Reading a batch: the message the source waited for plus every message the socket already
//! holds (taken without waiting, up to a count and a byte bound), so that a burst is made durable
//! in one spool append instead of one group commit per message. Also says why reading ends.

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::describe;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Most messages in one batch.
const MAX_BATCH_MESSAGES: usize = 1024;
/// A batch takes no further message once it holds this many bytes (so it holds at most this plus
/// one message of up to `server.max_body_bytes`).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why the socket cannot be read any further.
#[derive(Debug)]
pub(super) enum End {
    /// The server's Close frame arrived (or the stream ended after one).
    Closed,
    /// A message over `server.max_body_bytes`: the library stops at its header, so the rest of
    /// the stream cannot be read.
    TooLarge { size: usize },
    /// The connection failed or ended without a Close frame.
    Lost(String),
}

/// Messages read at once, in arrival order, and why reading stopped (if it must).
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub bodies: Vec<Bytes>,
    bytes: usize,
    /// Something arrived (a message, a ping or a pong): the peer is alive.
    pub heard: bool,
    pub end: Option<End>,
}

impl Batch {
    /// Adds what `socket.next()` returned; false once reading must stop.
    fn take(&mut self, next: Option<Result<Message, Error>>) -> bool {
        let body = match next {
            None => {
                self.end = Some(End::Lost("connection closed".into()));
                return false;
            }
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                self.end = Some(End::TooLarge { size });
                return false;
            }
            Some(Err(Error::ConnectionClosed)) => {
                self.end = Some(End::Closed);
                return false;
            }
            Some(Err(e)) => {
                self.end = Some(End::Lost(describe(&e)));
                return false;
            }
            Some(Ok(Message::Close(_))) => {
                self.heard = true;
                self.end = Some(End::Closed);
                return false;
            }
            Some(Ok(Message::Text(text))) => Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            // Pong, or a ping (answered by the library).
            Some(Ok(_)) => {
                self.heard = true;
                return true;
            }
        };
        self.heard = true;
        self.bytes += body.len();
        self.bodies.push(body);
        true
    }

    fn has_room(&self) -> bool {
        self.bodies.len() < MAX_BATCH_MESSAGES && self.bytes < MAX_BATCH_BYTES
    }

    /// `first` (what the source waited for) and every message `socket` holds already.
    pub(super) fn read(first: Option<Result<Message, Error>>, socket: &mut Socket) -> Batch {
        let mut batch = Batch::default();
        if batch.take(first) {
            batch.read_ready(socket);
        }
        batch
    }

    /// Takes what `socket` holds without waiting for more.
    pub(super) fn read_ready(&mut self, socket: &mut Socket) {
        while self.has_room() {
            // `now_or_never` polls once; a pending read keeps its state in the stream.
            let Some(next) = socket.next().now_or_never() else {
                return;
            };
            if !self.take(next) {
                return;
            }
        }
    }
}
