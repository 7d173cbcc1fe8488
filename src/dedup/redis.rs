//! Redis dedup backend, so several gateway replicas behind one URL recognise each other's ids.
//! A claim is `SET key token NX PX lease` inside a script that also tells a committed id from
//! one still in flight. Every later call is a script fenced by the claim's token: renew extends
//! the lease only while the key still holds the token (or retakes a lapsed one), commit reports
//! when another request took the id over, release deletes the key only if it holds the token.
//!
//! A claim or release the client gave up on (timeout, broken connection) may still reach Redis
//! later, when a stall ends, and would block the id for a whole lease with nobody owning it: it
//! is handed to the fences (`redis_fence`), which release its token once Redis answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script};

use super::redis_connection::{Probe, RedisConnection, Shared, StartError};
use super::redis_fence::Fences;
use super::redis_target::{Connector, RedisTarget};
use super::{BuildError, ClaimOutcome, ClaimToken, CommitOutcome, DedupError, Deduplicator};
use crate::config::TlsSettings;
use crate::tls::ClientTls;

/// Value of a committed id. Claim tokens are 16 hex digits, so they never equal it.
const COMMITTED: &str = "c";

/// Returns 0 when claimed, 1 when committed before, 2 when another claim holds the id.
const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  return 0
end
if current == ARGV[3] then return 1 end
return 2
"#;

/// Returns 1 while the claim is the caller's (retaken if it lapsed), 0 when someone else's.
const RENEW: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Returns 0 when the claim was the caller's (or lapsed unclaimed), 1 when another request
/// claimed or committed the id meanwhile. Records the id as committed unless it already was.
const COMMIT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == ARGV[3] then return 1 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
if current == ARGV[1] or current == false then return 0 end
return 1
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Key the keeper's probe claims and releases: outside the id space, which the envelope bounds
/// to printable text.
const PROBE_KEY: &str = "\u{0}probe";

/// What [`RedisDedup::connect`] needs.
pub struct RedisOptions {
    pub url: String,
    pub key_prefix: String,
    /// Connect and command timeout.
    pub timeout: Duration,
    /// Run on a Redis whose `maxmemory-policy` evicts keys (logged as an error).
    pub allow_eviction: bool,
    /// The longest claim lease used: a release that failed is retried for that long.
    pub max_lease: Duration,
    /// `[dedup.tls]`, for a `rediss://` URL (the public roots when absent).
    pub tls: Option<TlsSettings>,
}

struct Scripts {
    claim: Script,
    renew: Script,
    commit: Script,
    release: Script,
}

pub struct RedisDedup {
    connection: RedisConnection,
    key_prefix: String,
    scripts: Arc<Scripts>,
    fences: Fences,
    max_lease: Duration,
}

impl RedisDedup {
    /// Opens the connection on the calling runtime, which keeps it from then on (call it on the
    /// application's main runtime). A Redis that is down at start-up delays nothing but dedup
    /// itself; one that evicts keys is refused unless `allow_eviction`.
    pub async fn connect(options: RedisOptions) -> Result<Self, BuildError> {
        let target = RedisTarget::parse(&options.url).map_err(BuildError::Url)?;
        let tls = if target.tls {
            let settings = options.tls.clone().unwrap_or_default();
            Some(ClientTls::new(&settings, &crate::tls::DEDUP_KEYS).map_err(BuildError::Tls)?)
        } else {
            None
        };
        let connector = Connector::new(target, tls, options.timeout);
        let scripts = Arc::new(Scripts {
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            commit: Script::new(COMMIT),
            release: Script::new(RELEASE),
        });
        let probe_key = format!("{}{PROBE_KEY}", options.key_prefix);
        let probe_scripts = scripts.clone();
        let probe: Probe = Box::new(move |mut connection| {
            let (key, scripts) = (probe_key.clone(), probe_scripts.clone());
            Box::pin(async move {
                let token = token_text(new_token());
                scripts
                    .claim
                    .key(&key)
                    .arg(&token)
                    .arg(1000)
                    .arg(COMMITTED)
                    .invoke_async::<i64>(&mut connection)
                    .await?;
                scripts
                    .release
                    .key(&key)
                    .arg(&token)
                    .invoke_async::<i64>(&mut connection)
                    .await?;
                Ok(())
            })
        });
        let connection = RedisConnection::start(connector, options.allow_eviction, probe)
            .await
            .map_err(|e| match e {
                StartError::Evicting { policy, maxmemory } => {
                    BuildError::Evicting { policy, maxmemory }
                }
                StartError::Tls(reason) => BuildError::Handshake(reason),
            })?;
        let fences = Fences::start(
            &tokio::runtime::Handle::current(),
            connection.shared().clone(),
            Script::new(RELEASE),
        );
        Ok(Self {
            connection,
            key_prefix: options.key_prefix,
            scripts,
            fences,
            max_lease: options.max_lease,
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.key_prefix)
    }

    fn shared(&self) -> &Arc<Shared> {
        self.connection.shared()
    }

    /// Runs one script call on the current connection and reports how it went.
    async fn invoke(
        &self,
        call: impl FnOnce(
            MultiplexedConnection,
        ) -> futures::future::BoxFuture<'static, Result<i64, RedisError>>,
    ) -> Result<i64, DedupError> {
        let (generation, connection) = self.shared().connection().map_err(unavailable)?;
        let result = call(connection).await;
        self.shared().report(generation, &result);
        result.map_err(unavailable)
    }
}

fn unavailable(error: RedisError) -> DedupError {
    DedupError::Unavailable(error.to_string())
}

/// The top bit stays clear: `WithMemoryFallback` uses it to mark its own tokens.
fn new_token() -> ClaimToken {
    ClaimToken(fastrand::u64(..) >> 1)
}

fn token_text(token: ClaimToken) -> String {
    format!("{:016x}", token.0)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, u64::MAX as u128) as u64
}

#[async_trait]
impl Deduplicator for RedisDedup {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        let token = new_token();
        let (key, scripts) = (self.key(id), self.scripts.clone());
        let found = self
            .invoke(|mut connection| {
                let key = key.clone();
                Box::pin(async move {
                    scripts
                        .claim
                        .key(key)
                        .arg(token_text(token))
                        .arg(millis(lease))
                        .arg(COMMITTED)
                        .invoke_async(&mut connection)
                        .await
                })
            })
            .await;
        match found {
            Ok(0) => Ok(ClaimOutcome::Claimed(token)),
            Ok(1) => Ok(ClaimOutcome::Duplicate),
            Ok(_) => Ok(ClaimOutcome::InFlight),
            Err(e) => {
                // The claim may still land when Redis catches up; nobody would own it.
                self.fences.release_later(key, token_text(token), lease);
                Err(e)
            }
        }
    }

    async fn renew(
        &self,
        id: &str,
        token: ClaimToken,
        lease: Duration,
    ) -> Result<bool, DedupError> {
        let (key, scripts) = (self.key(id), self.scripts.clone());
        let held = self
            .invoke(|mut connection| {
                Box::pin(async move {
                    scripts
                        .renew
                        .key(key)
                        .arg(token_text(token))
                        .arg(millis(lease))
                        .invoke_async(&mut connection)
                        .await
                })
            })
            .await?;
        Ok(held == 1)
    }

    async fn commit(
        &self,
        id: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<CommitOutcome, DedupError> {
        let (key, scripts) = (self.key(id), self.scripts.clone());
        let lost = self
            .invoke(|mut connection| {
                Box::pin(async move {
                    scripts
                        .commit
                        .key(key)
                        .arg(token_text(token))
                        .arg(millis(ttl))
                        .arg(COMMITTED)
                        .invoke_async(&mut connection)
                        .await
                })
            })
            .await?;
        Ok(if lost == 0 {
            CommitOutcome::Committed
        } else {
            CommitOutcome::LeaseLost
        })
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        let (key, scripts) = (self.key(id), self.scripts.clone());
        let result = self
            .invoke(|mut connection| {
                let key = key.clone();
                Box::pin(async move {
                    scripts
                        .release
                        .key(key)
                        .arg(token_text(token))
                        .invoke_async(&mut connection)
                        .await
                })
            })
            .await;
        if let Err(e) = result {
            // Otherwise the claim would block the id until its lease ends.
            self.fences
                .release_later(key, token_text(token), self.max_lease);
            return Err(e);
        }
        Ok(())
    }

    fn usable(&self) -> bool {
        self.shared().usable()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
