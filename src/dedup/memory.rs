//! In-process dedup backend: one hash table keyed by a 128-bit hash of the id, bounded in size,
//! evicting the oldest accepted ids first. An expired entry counts as absent.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{ClaimOutcome, ClaimToken, DedupError, Deduplicator};

/// Token value of an entry that is committed rather than claimed.
const COMMITTED: u64 = 0;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Milliseconds since the backend's epoch.
    expires_ms: u64,
    /// [`COMMITTED`] or the token of the pending claim.
    token: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u128, Entry, BuildHasherDefault<PreHashed>>,
    /// Committed ids in commit order (equal TTLs make this expiry order): the eviction queue.
    /// An element whose expiry no longer matches its entry is stale and skipped.
    commit_order: VecDeque<(u128, u64)>,
}

pub struct MemoryDedup {
    table: Mutex<Table>,
    max_entries: usize,
    epoch: Instant,
    next_token: AtomicU64,
}

impl MemoryDedup {
    pub fn new(max_entries: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            max_entries,
            epoch: Instant::now(),
            next_token: AtomicU64::new(COMMITTED + 1),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn key(id: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(id.as_bytes())
    }
}

impl Table {
    /// Drops expired ids from the front of the queue, and the oldest ones while over `max`.
    fn evict(&mut self, now_ms: u64, max_entries: usize) {
        while let Some(&(key, expires_ms)) = self.commit_order.front() {
            let over_capacity = self.entries.len() >= max_entries;
            if expires_ms > now_ms && !over_capacity {
                break;
            }
            self.commit_order.pop_front();
            let current = self.entries.get(&key);
            if current.is_some_and(|e| e.token == COMMITTED && e.expires_ms == expires_ms) {
                self.entries.remove(&key);
            }
        }
    }
}

#[async_trait]
impl Deduplicator for MemoryDedup {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        let key = Self::key(id);
        let now = self.now_ms();
        let mut table = self.table.lock();
        table.evict(now, usize::MAX);
        if let Some(entry) = table.entries.get(&key) {
            if entry.expires_ms > now {
                return Ok(if entry.token == COMMITTED {
                    ClaimOutcome::Duplicate
                } else {
                    ClaimOutcome::InFlight
                });
            }
        }
        table.evict(now, self.max_entries);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let expires_ms = now + lease.as_millis() as u64;
        table.entries.insert(key, Entry { expires_ms, token });
        Ok(ClaimOutcome::Claimed(ClaimToken(token)))
    }

    async fn commit(&self, id: &str, _token: ClaimToken, ttl: Duration) -> Result<(), DedupError> {
        // Committed even if the claim's lease ran out: the notification is durable, so the id
        // must count as seen from now on.
        let key = Self::key(id);
        let expires_ms = self.now_ms() + ttl.as_millis() as u64;
        let mut table = self.table.lock();
        table.entries.insert(
            key,
            Entry {
                expires_ms,
                token: COMMITTED,
            },
        );
        table.commit_order.push_back((key, expires_ms));
        Ok(())
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        let key = Self::key(id);
        let mut table = self.table.lock();
        if table.entries.get(&key).is_some_and(|e| e.token == token.0) {
            table.entries.remove(&key);
        }
        Ok(())
    }

    fn entry_count(&self) -> Option<usize> {
        Some(self.table.lock().entries.len())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// Keys are already uniform 128-bit hashes: fold them instead of hashing again.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = (value as u64) ^ ((value >> 64) as u64);
    }
}
