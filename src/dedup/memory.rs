//! In-process dedup backend: a hash table keyed by a 128-bit hash of the id, bounded in size,
//! evicting the oldest accepted ids first. An expired entry counts as absent. Renew and commit
//! compare the claim's token with the stored one, as the Redis backend does.
//!
//! Large tables are split into shards, each with its own lock, eviction queue and bound (an
//! equal share of `max_entries`). A table that outgrows its capacity moves every entry into new
//! memory under its lock; in one table of a million ids those moves came at the ids where the
//! half-rate benchmark's worst stalls were (BENCHMARKS.md), and every request needing the lock
//! waited for them. At the default bound each of 64 shards moves a sixty-fourth of that, at a
//! time of its own, and blocks only the requests whose ids hash to it. Eviction is oldest-first
//! within a shard, which for uniformly hashed ids is close to oldest-first overall (the unit
//! tests bound how close). Tables with fewer than [`MIN_SHARD_ENTRIES`] per shard stay in one
//! shard with one exact order.
//!
//! With the spool, the table outlives the process through the id journal (`id_journal`): it
//! holds the same 128-bit key ([`IdKey`]) and accept time of every accepted id, and at start-up
//! [`MemoryDedup::remember`] puts back the ids still within `dedup.ttl`, for what is left of it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{ClaimOutcome, ClaimToken, CommitOutcome, DedupError, Deduplicator};

/// Token value of an entry that is committed rather than claimed.
const COMMITTED: u64 = 0;

/// The smallest bound a shard gets: below this the table is not split.
const MIN_SHARD_ENTRIES: usize = 4096;

/// The most shards a table is split into (a power of two).
const MAX_SHARDS: usize = 64;

/// What the table keys an id by: a 128-bit hash of its bytes (ids themselves are not kept). The
/// id journal stores the same key, so that what it remembers finds the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdKey(pub u128);

impl IdKey {
    pub fn of(id: &str) -> IdKey {
        IdKey(xxhash_rust::xxh3::xxh3_128(id.as_bytes()))
    }
}

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

/// One shard's lock, on a cache line of its own so that two workers locking neighbouring
/// shards do not contend for the line.
#[derive(Default)]
#[repr(align(64))]
struct Shard(Mutex<Table>);

pub struct MemoryDedup {
    shards: Box<[Shard]>,
    /// Bound on the entries of each shard; the shards' bounds add up to at most `max_entries`.
    max_entries_per_shard: usize,
    epoch: Instant,
    next_token: AtomicU64,
}

impl MemoryDedup {
    pub fn new(max_entries: usize) -> Self {
        let shard_count = shard_count(max_entries);
        Self {
            shards: (0..shard_count).map(|_| Shard::default()).collect(),
            max_entries_per_shard: max_entries / shard_count,
            epoch: Instant::now(),
            next_token: AtomicU64::new(COMMITTED + 1),
        }
    }

    /// What a claim on `id` would find, without claiming: `Duplicate` or `InFlight` while an
    /// entry is live, `None` when the id is free.
    pub fn peek(&self, id: &str) -> Option<ClaimOutcome> {
        let key = Self::key(id);
        let now = self.now_ms();
        let table = self.table(key).lock();
        let entry = table.entries.get(&key).filter(|e| e.expires_ms > now)?;
        Some(if entry.token == COMMITTED {
            ClaimOutcome::Duplicate
        } else {
            ClaimOutcome::InFlight
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn key(id: &str) -> u128 {
        IdKey::of(id).0
    }

    /// Makes room for about `ids` ids before [`MemoryDedup::remember`] puts them back, so the
    /// table is allocated once at its size instead of growing through every doubling (and the
    /// memory of each smaller table left behind).
    pub fn reserve(&self, ids: usize) {
        let ids = ids.min(self.max_entries_per_shard * self.shards.len());
        let per_shard = ids.div_ceil(self.shards.len());
        // Ids hash unevenly over the shards: room for a few percent more in each.
        let per_shard = (per_shard + per_shard / 16 + 64).min(self.max_entries_per_shard);
        for shard in self.shards.iter() {
            let mut table = shard.0.lock();
            table.entries.reserve(per_shard);
            table.commit_order.reserve(per_shard);
        }
    }

    /// Records an id accepted before this process started (from the id journal) as accepted for
    /// the `ttl_left` of its TTL. Call in accept order, before serving: the eviction queue
    /// assumes expiry order, as commits make it.
    pub fn remember(&self, key: IdKey, ttl_left: Duration) {
        let key = key.0;
        let now = self.now_ms();
        let mut table = self.table(key).lock();
        table.evict(now, self.max_entries_per_shard);
        let expires_ms = now + ttl_left.as_millis() as u64;
        table.entries.insert(
            key,
            Entry {
                expires_ms,
                token: COMMITTED,
            },
        );
        table.commit_order.push_back((key, expires_ms));
    }

    /// The shard holding `key`, chosen by low bits of the hash's high half. The table's own
    /// hash ([`PreHashed`]) folds that half with the low one, so within a shard it stays uniform.
    fn table(&self, key: u128) -> &Mutex<Table> {
        let index = ((key >> 64) as usize) & (self.shards.len() - 1);
        &self.shards[index].0
    }
}

/// How many shards a table bounded at `max_entries` gets: a power of two, at most
/// [`MAX_SHARDS`], each bounded at no less than [`MIN_SHARD_ENTRIES`] (or one shard).
fn shard_count(max_entries: usize) -> usize {
    let wanted = (max_entries / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS);
    1 << wanted.ilog2()
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
        let mut table = self.table(key).lock();
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
        table.evict(now, self.max_entries_per_shard);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let expires_ms = now + lease.as_millis() as u64;
        table.entries.insert(key, Entry { expires_ms, token });
        Ok(ClaimOutcome::Claimed(ClaimToken(token)))
    }

    async fn renew(
        &self,
        id: &str,
        token: ClaimToken,
        lease: Duration,
    ) -> Result<bool, DedupError> {
        let key = Self::key(id);
        let now = self.now_ms();
        let mut table = self.table(key).lock();
        let live = table.entries.get(&key).filter(|e| e.expires_ms > now);
        if live.is_some_and(|e| e.token != token.0) {
            return Ok(false);
        }
        let expires_ms = now + lease.as_millis() as u64;
        table.entries.insert(
            key,
            Entry {
                expires_ms,
                token: token.0,
            },
        );
        Ok(true)
    }

    async fn commit(
        &self,
        id: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<CommitOutcome, DedupError> {
        let key = Self::key(id);
        let now = self.now_ms();
        let mut table = self.table(key).lock();
        let outcome = match table.entries.get(&key).filter(|e| e.expires_ms > now) {
            // Another copy was accepted while this one's write ran; its record stands.
            Some(entry) if entry.token == COMMITTED => return Ok(CommitOutcome::LeaseLost),
            Some(entry) if entry.token != token.0 => CommitOutcome::LeaseLost,
            // Still ours, or lapsed with nobody taking it.
            _ => CommitOutcome::Committed,
        };
        // Recorded even when another request holds a claim: this copy is durable, so the id
        // counts as seen from now on, and that request's release cannot free it any more.
        let expires_ms = now + ttl.as_millis() as u64;
        table.entries.insert(
            key,
            Entry {
                expires_ms,
                token: COMMITTED,
            },
        );
        table.commit_order.push_back((key, expires_ms));
        Ok(outcome)
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        let key = Self::key(id);
        let mut table = self.table(key).lock();
        if table.entries.get(&key).is_some_and(|e| e.token == token.0) {
            table.entries.remove(&key);
        }
        Ok(())
    }

    fn entry_count(&self) -> Option<usize> {
        Some(
            self.shards
                .iter()
                .map(|shard| shard.0.lock().entries.len())
                .sum(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    async fn accept(dedup: &MemoryDedup, id: &str) {
        let ClaimOutcome::Claimed(token) = dedup.claim(id, LEASE).await.unwrap() else {
            panic!("fresh id {id} not claimed");
        };
        dedup.commit(id, token, TTL).await.unwrap();
    }

    #[test]
    fn small_tables_stay_in_one_shard_and_large_ones_split_up_to_the_limit() {
        for (max_entries, shards) in [
            (1, 1),
            (3, 1),
            (MIN_SHARD_ENTRIES - 1, 1),
            (MIN_SHARD_ENTRIES, 1),
            (2 * MIN_SHARD_ENTRIES, 2),
            (3 * MIN_SHARD_ENTRIES, 2),
            (1_000_000, MAX_SHARDS),
            (usize::MAX, MAX_SHARDS),
        ] {
            assert_eq!(
                shard_count(max_entries),
                shards,
                "max_entries {max_entries}"
            );
            let dedup = MemoryDedup::new(max_entries);
            assert_eq!(dedup.shards.len(), shards);
            assert!(dedup.max_entries_per_shard * shards <= max_entries);
            assert!(dedup.max_entries_per_shard >= MIN_SHARD_ENTRIES.min(max_entries));
        }
    }

    #[tokio::test]
    async fn a_sharded_table_keeps_its_bound_and_evicts_close_to_oldest_first() {
        let max_entries = 4 * MIN_SHARD_ENTRIES;
        let dedup = MemoryDedup::new(max_entries);
        assert_eq!(dedup.shards.len(), 4);
        let total = 2 * max_entries;
        let id = |i: usize| format!("{i}-244070007");
        for i in 0..total {
            accept(&dedup, &id(i)).await;
            assert!(dedup.entry_count().unwrap() <= max_entries);
        }
        // Each shard got about a quarter of the ids and kept its newest 4,096: every shard is
        // full, the newest 85 % of the bound are all held and nothing older than 110 % of it is.
        for shard in dedup.shards.iter() {
            assert_eq!(shard.0.lock().entries.len(), dedup.max_entries_per_shard);
        }
        for i in total - max_entries * 85 / 100..total {
            assert_eq!(
                dedup.claim(&id(i), LEASE).await.unwrap(),
                ClaimOutcome::Duplicate,
                "id {i} of {total} was evicted"
            );
        }
        for i in 0..total - max_entries * 110 / 100 {
            assert!(
                matches!(
                    dedup.claim(&id(i), LEASE).await.unwrap(),
                    ClaimOutcome::Claimed(_)
                ),
                "id {i} of {total} is still held"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_remembered_id_is_a_duplicate_for_the_ttl_it_has_left_then_free() {
        let dedup = MemoryDedup::new(1000);
        dedup.remember(IdKey::of("1573335-244070007"), Duration::from_secs(10));
        dedup.remember(IdKey::of("emoji-🚢"), Duration::from_secs(30));

        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            dedup.claim("1573335-244070007", LEASE).await.unwrap(),
            ClaimOutcome::Duplicate
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            dedup.claim("1573335-244070007", LEASE).await.unwrap(),
            ClaimOutcome::Claimed(_)
        ));
        assert_eq!(
            dedup.claim("emoji-🚢", LEASE).await.unwrap(),
            ClaimOutcome::Duplicate
        );
    }

    #[tokio::test]
    async fn remembering_keeps_the_bound() {
        let dedup = MemoryDedup::new(10);
        dedup.reserve(25);
        for i in 0..25 {
            dedup.remember(IdKey::of(&format!("{i}")), TTL);
        }
        assert_eq!(dedup.entry_count(), Some(10));
        assert_eq!(
            dedup.claim("24", LEASE).await.unwrap(),
            ClaimOutcome::Duplicate
        );
        assert!(matches!(
            dedup.claim("0", LEASE).await.unwrap(),
            ClaimOutcome::Claimed(_)
        ));
    }

    #[tokio::test]
    async fn ids_spread_over_every_shard() {
        let dedup = MemoryDedup::new(1_000_000);
        for i in 0..64 * 100 {
            accept(&dedup, &format!("{i}-244070007")).await;
        }
        for shard in dedup.shards.iter() {
            let held = shard.0.lock().entries.len();
            assert!(
                (50..=150).contains(&held),
                "a shard holds {held} of 6,400 ids"
            );
        }
    }
}
