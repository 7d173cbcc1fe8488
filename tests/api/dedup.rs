//! The dedup behaviour every backend must show. Each check takes the backend and a way to let
//! time pass, so the same checks run against every backend.

use std::sync::Arc;
use std::time::Duration;

use dataloy_gateway::dedup::{ClaimOutcome, Deduplicator, MemoryDedup, RedisDedup};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

async fn claim(dedup: &dyn Deduplicator, id: &str) -> ClaimOutcome {
    dedup.claim(id, LEASE).await.unwrap()
}

async fn claimed_token(dedup: &dyn Deduplicator, id: &str) -> dataloy_gateway::dedup::ClaimToken {
    match claim(dedup, id).await {
        ClaimOutcome::Claimed(token) => token,
        other => panic!("expected a claim on {id}, got {other:?}"),
    }
}

pub async fn claim_then_commit_makes_a_duplicate(dedup: &dyn Deduplicator) {
    let token = claimed_token(dedup, "a").await;
    assert_eq!(claim(dedup, "a").await, ClaimOutcome::InFlight);
    dedup.commit("a", token, TTL).await.unwrap();
    assert_eq!(claim(dedup, "a").await, ClaimOutcome::Duplicate);
    assert!(matches!(claim(dedup, "b").await, ClaimOutcome::Claimed(_)));
}

pub async fn release_lets_the_retry_claim_again(dedup: &dyn Deduplicator) {
    let token = claimed_token(dedup, "r").await;
    dedup.release("r", token).await.unwrap();
    let second = claimed_token(dedup, "r").await;
    // A stale release (the first token) must not free the new claim.
    dedup.release("r", token).await.unwrap();
    assert_eq!(claim(dedup, "r").await, ClaimOutcome::InFlight);
    dedup.commit("r", second, TTL).await.unwrap();
    assert_eq!(claim(dedup, "r").await, ClaimOutcome::Duplicate);
}

pub async fn expired_entries_count_as_absent<F, Fut>(dedup: &dyn Deduplicator, pass: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let token = claimed_token(dedup, "e").await;
    dedup
        .commit("e", token, Duration::from_secs(2))
        .await
        .unwrap();
    pass(Duration::from_millis(1500)).await;
    assert_eq!(claim(dedup, "e").await, ClaimOutcome::Duplicate);
    pass(Duration::from_millis(1000)).await;
    assert!(matches!(claim(dedup, "e").await, ClaimOutcome::Claimed(_)));

    // An abandoned claim expires after its lease.
    dedup.claim("lease", Duration::from_secs(1)).await.unwrap();
    assert_eq!(claim(dedup, "lease").await, ClaimOutcome::InFlight);
    pass(Duration::from_millis(1100)).await;
    assert!(matches!(
        claim(dedup, "lease").await,
        ClaimOutcome::Claimed(_)
    ));
}

pub async fn concurrent_claims_have_one_winner(dedup: Arc<dyn Deduplicator>) {
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let dedup = dedup.clone();
            tokio::spawn(async move { dedup.claim("race", LEASE).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), ClaimOutcome::Claimed(_)) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

fn memory() -> Arc<dyn Deduplicator> {
    Arc::new(MemoryDedup::new(1000))
}

#[tokio::test(start_paused = true)]
async fn memory_claim_then_commit_makes_a_duplicate() {
    claim_then_commit_makes_a_duplicate(memory().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_release_lets_the_retry_claim_again() {
    release_lets_the_retry_claim_again(memory().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_expired_entries_count_as_absent() {
    expired_entries_count_as_absent(memory().as_ref(), tokio::time::advance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_claims_have_one_winner() {
    concurrent_claims_have_one_winner(memory()).await;
}

/// The default bound, which splits the table into shards (see `dedup::memory`).
fn memory_sharded() -> Arc<dyn Deduplicator> {
    Arc::new(MemoryDedup::new(1_000_000))
}

#[tokio::test(start_paused = true)]
async fn memory_sharded_claim_then_commit_makes_a_duplicate() {
    claim_then_commit_makes_a_duplicate(memory_sharded().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_sharded_release_lets_the_retry_claim_again() {
    release_lets_the_retry_claim_again(memory_sharded().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_sharded_expired_entries_count_as_absent() {
    expired_entries_count_as_absent(memory_sharded().as_ref(), tokio::time::advance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sharded_concurrent_claims_have_one_winner() {
    concurrent_claims_have_one_winner(memory_sharded()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_capacity_evicts_the_oldest_accepted_ids() {
    let dedup = MemoryDedup::new(3);
    for id in ["1", "2", "3", "4"] {
        let token = claimed_token(&dedup, id).await;
        dedup.commit(id, token, TTL).await.unwrap();
    }

    assert!(dedup.entry_count().unwrap() <= 3);
    assert_eq!(claim(&dedup, "4").await, ClaimOutcome::Duplicate);
    assert!(matches!(claim(&dedup, "1").await, ClaimOutcome::Claimed(_)));
}

/// A Redis backend on the shared server, with keys of its own.
fn redis() -> Arc<dyn Deduplicator> {
    let prefix = format!("{}:", crate::helpers::unique("test-dedup"));
    Arc::new(
        RedisDedup::new(
            "redis://127.0.0.1:6379",
            &prefix,
            Duration::from_millis(500),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn redis_claim_then_commit_makes_a_duplicate() {
    claim_then_commit_makes_a_duplicate(redis().as_ref()).await;
}

#[tokio::test]
async fn redis_release_lets_the_retry_claim_again() {
    release_lets_the_retry_claim_again(redis().as_ref()).await;
}

#[tokio::test]
async fn redis_expired_entries_count_as_absent() {
    expired_entries_count_as_absent(redis().as_ref(), tokio::time::sleep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_claims_have_one_winner() {
    concurrent_claims_have_one_winner(redis()).await;
}
