//! Redis dedup backend, so several gateway replicas behind one URL recognise each other's ids.
//! A claim is `SET key token NX PX lease` inside a script that also tells a committed id from
//! one still in flight; commit sets the full TTL; release deletes the key only if it still holds
//! the caller's token. One multiplexed, auto-reconnecting connection pipelines every request, so
//! the request path never waits for a new connection.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{ClaimOutcome, ClaimToken, DedupError, Deduplicator};

/// Value of a committed id. Claim tokens are 16 hex digits, so they never equal it.
const COMMITTED: &str = "c";

const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  return 0
end
if current == ARGV[3] then return 1 end
return 2
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct RedisDedup {
    connection: ConnectionManager,
    key_prefix: String,
    claim: Script,
    release: Script,
}

impl RedisDedup {
    /// Prepares the connection; it is opened on first use and re-opened after failures, so a
    /// Redis that is down at start-up delays nothing but dedup itself.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<Self, DedupError> {
        let client = redis::Client::open(url)
            .map_err(|e| DedupError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| DedupError::Unavailable(e.to_string()))?;
        Ok(Self {
            connection,
            key_prefix: key_prefix.to_owned(),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.key_prefix)
    }
}

fn unavailable(error: redis::RedisError) -> DedupError {
    DedupError::Unavailable(error.to_string())
}

fn token_text(token: ClaimToken) -> String {
    format!("{:016x}", token.0)
}

#[async_trait]
impl Deduplicator for RedisDedup {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        // The top bit stays clear: `WithMemoryFallback` uses it to mark its own tokens.
        let token = ClaimToken(fastrand::u64(..) >> 1);
        let found: i64 = self
            .claim
            .key(self.key(id))
            .arg(token_text(token))
            .arg(lease.as_millis().max(1) as u64)
            .arg(COMMITTED)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(match found {
            0 => ClaimOutcome::Claimed(token),
            1 => ClaimOutcome::Duplicate,
            _ => ClaimOutcome::InFlight,
        })
    }

    async fn commit(&self, id: &str, _token: ClaimToken, ttl: Duration) -> Result<(), DedupError> {
        // Unconditional: the notification is durable, so the id counts as seen from now on.
        redis::cmd("SET")
            .arg(self.key(id))
            .arg(COMMITTED)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(unavailable)
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        self.release
            .key(self.key(id))
            .arg(token_text(token))
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
