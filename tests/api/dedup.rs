//! The dedup behaviour every backend must show. Each check takes the backend and a way to let
//! time pass, so the same checks run against every backend.

use std::sync::Arc;
use std::time::Duration;

use dataloy_gateway::dedup::{
    ClaimOutcome, CommitOutcome, Deduplicator, MemoryDedup, RedisDedup, RedisOptions,
};

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
    assert_eq!(
        dedup.commit("a", token, TTL).await.unwrap(),
        CommitOutcome::Committed
    );
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

/// A claim renewed while its write runs outlives its lease; a retry meanwhile finds it in flight.
pub async fn a_renewed_claim_outlives_its_lease<F, Fut>(dedup: &dyn Deduplicator, pass: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let lease = Duration::from_secs(1);
    let ClaimOutcome::Claimed(token) = dedup.claim("renewed", lease).await.unwrap() else {
        panic!("fresh id not claimed");
    };
    for _ in 0..3 {
        pass(Duration::from_millis(600)).await;
        assert!(dedup.renew("renewed", token, lease).await.unwrap());
    }
    assert_eq!(claim(dedup, "renewed").await, ClaimOutcome::InFlight);
    assert_eq!(
        dedup.commit("renewed", token, TTL).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(claim(dedup, "renewed").await, ClaimOutcome::Duplicate);
}

/// A claim whose lease ran out: renew retakes it if nobody else did, and reports it lost if
/// someone did; that one's commit then says the lease was lost, and the id stays accepted.
pub async fn a_lost_claim_is_reported_by_renew_and_commit<F, Fut>(dedup: &dyn Deduplicator, pass: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let lease = Duration::from_secs(1);
    let ClaimOutcome::Claimed(lapsed) = dedup.claim("lapsed", lease).await.unwrap() else {
        panic!("fresh id not claimed");
    };
    let ClaimOutcome::Claimed(slow) = dedup.claim("taken", lease).await.unwrap() else {
        panic!("fresh id not claimed");
    };
    pass(Duration::from_millis(1100)).await;

    // Nobody took "lapsed": renewing takes it back.
    assert!(dedup.renew("lapsed", lapsed, LEASE).await.unwrap());
    assert_eq!(claim(dedup, "lapsed").await, ClaimOutcome::InFlight);

    // A retry took "taken" over: the slow claimant learns it from renew and from commit.
    let retry = claimed_token(dedup, "taken").await;
    assert!(!dedup.renew("taken", slow, LEASE).await.unwrap());
    assert_eq!(
        dedup.commit("taken", slow, TTL).await.unwrap(),
        CommitOutcome::LeaseLost
    );
    // The slow copy is durable, so the id is accepted now; the retry's commit and release
    // cannot undo that.
    assert_eq!(claim(dedup, "taken").await, ClaimOutcome::Duplicate);
    dedup.release("taken", retry).await.unwrap();
    assert_eq!(claim(dedup, "taken").await, ClaimOutcome::Duplicate);
    assert_eq!(
        dedup.commit("taken", retry, TTL).await.unwrap(),
        CommitOutcome::LeaseLost
    );

    // A commit after a lapse nobody used is an ordinary commit.
    let ClaimOutcome::Claimed(late) = dedup.claim("late", lease).await.unwrap() else {
        panic!("fresh id not claimed");
    };
    pass(Duration::from_millis(1100)).await;
    assert_eq!(
        dedup.commit("late", late, TTL).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(claim(dedup, "late").await, ClaimOutcome::Duplicate);
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

#[tokio::test(start_paused = true)]
async fn memory_a_renewed_claim_outlives_its_lease() {
    a_renewed_claim_outlives_its_lease(memory().as_ref(), tokio::time::advance).await;
}

#[tokio::test(start_paused = true)]
async fn memory_a_lost_claim_is_reported_by_renew_and_commit() {
    a_lost_claim_is_reported_by_renew_and_commit(memory().as_ref(), tokio::time::advance).await;
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
pub async fn redis_at(url: &str) -> RedisDedup {
    let prefix = format!("{}:", crate::helpers::unique("test-dedup"));
    RedisDedup::connect(RedisOptions {
        url: url.to_owned(),
        key_prefix: prefix,
        timeout: Duration::from_millis(500),
        allow_eviction: false,
        max_lease: LEASE,
        tls: None,
    })
    .await
    .unwrap()
}

async fn redis() -> Arc<dyn Deduplicator> {
    Arc::new(redis_at("redis://127.0.0.1:6379").await)
}

#[tokio::test]
async fn redis_claim_then_commit_makes_a_duplicate() {
    claim_then_commit_makes_a_duplicate(redis().await.as_ref()).await;
}

#[tokio::test]
async fn redis_release_lets_the_retry_claim_again() {
    release_lets_the_retry_claim_again(redis().await.as_ref()).await;
}

#[tokio::test]
async fn redis_expired_entries_count_as_absent() {
    expired_entries_count_as_absent(redis().await.as_ref(), tokio::time::sleep).await;
}

#[tokio::test]
async fn redis_a_renewed_claim_outlives_its_lease() {
    a_renewed_claim_outlives_its_lease(redis().await.as_ref(), tokio::time::sleep).await;
}

#[tokio::test]
async fn redis_a_lost_claim_is_reported_by_renew_and_commit() {
    a_lost_claim_is_reported_by_renew_and_commit(redis().await.as_ref(), tokio::time::sleep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_claims_have_one_winner() {
    concurrent_claims_have_one_winner(redis().await).await;
}

/// An HTTP worker runs on a runtime of its own, which ends when the worker stops. The Redis
/// connection must not live there: a call after that worker is gone still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_connection_outlives_the_runtime_that_used_it_first() {
    let dedup = Arc::new(redis_at("redis://127.0.0.1:6379").await);

    let on_worker = dedup.clone();
    std::thread::spawn(move || {
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        worker.block_on(async {
            let outcome = on_worker.claim("first-use", LEASE).await.unwrap();
            assert!(matches!(outcome, ClaimOutcome::Claimed(_)));
        });
        // The worker's runtime ends here, as at shutdown.
    })
    .join()
    .unwrap();

    for i in 0..3 {
        let outcome = dedup.claim(&format!("after-{i}"), LEASE).await;
        assert!(
            matches!(outcome, Ok(ClaimOutcome::Claimed(_))),
            "call {i} after the worker stopped: {outcome:?}"
        );
    }
}
