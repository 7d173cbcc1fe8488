//! The randomized end-to-end fault test (docs/fault-test.md): a seeded sequence of operations
//! against the real binary and real brokers — new notifications, retries, concurrent copies,
//! SIGKILL, SIGTERM and SIGHUP, brokers stopped, hung and paused behind proxies, the spool full,
//! a byte flipped in an older segment — then the invariants: every 200 delivered byte for byte
//! to every sink, nothing else delivered, duplicates only inside documented windows, no hang,
//! the spool drained.
//!
//! `cargo test --test fault` runs the fixed seeds and the regression seeds;
//! `scripts/fault-seeds.sh N` runs N random ones.

mod deliveries;
mod harness;
mod invariants;
mod model;
mod plan;
mod proxies;
mod run;

use plan::Dedup;

/// Steps per seed: enough for every fault to appear once among the drawn operations.
const STEPS: usize = 24;

/// Seeds that once failed, with the dedup backend they failed with; each must pass now.
const REGRESSIONS: &[(u64, Dedup)] = &[];

async fn assert_seed(seed: u64, dedup: Dedup) {
    let findings = run::run_seed(seed, dedup, STEPS).await;
    assert!(
        findings.is_empty(),
        "fault seed {seed} ({dedup:?} dedup) broke invariants (rerun: DATALOY_FAULT_SEED={seed} DATALOY_FAULT_DEDUP={} cargo test --test fault -- --exact regression_seeds_and_the_requested_one --nocapture):\n{}",
        match dedup {
            Dedup::Memory => "memory",
            Dedup::Redis => "redis",
        },
        findings.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_with_redis_dedup() {
    assert_seed(20_261_201, Dedup::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_with_memory_dedup() {
    assert_seed(18, Dedup::Memory).await;
}

/// The regression seeds, plus the one named by `DATALOY_FAULT_SEED` (and `DATALOY_FAULT_DEDUP` =
/// memory | redis) when it is set: what `scripts/fault-seeds.sh` runs, and how a failing seed
/// is run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_seeds_and_the_requested_one() {
    let mut seeds = REGRESSIONS.to_vec();
    seeds.extend(requested_seed());
    for (seed, dedup) in seeds {
        assert_seed(seed, dedup).await;
    }
}

fn requested_seed() -> Option<(u64, Dedup)> {
    let seed = std::env::var("DATALOY_FAULT_SEED").ok()?;
    let seed = seed.parse().expect("DATALOY_FAULT_SEED is a number");
    let dedup = match std::env::var("DATALOY_FAULT_DEDUP").as_deref() {
        Ok("redis") => Dedup::Redis,
        Ok("memory") | Err(_) => Dedup::Memory,
        Ok(other) => panic!("DATALOY_FAULT_DEDUP: memory or redis, not {other:?}"),
    };
    Some((seed, dedup))
}
