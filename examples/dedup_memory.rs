//! Memory per id held by the in-memory dedup backend, measured with a counting allocator:
//! claim and commit N ids (default 1,000,000), then divide the bytes still allocated by N.
//! `cargo run --release --example dedup_memory -- 1000000`

use std::time::Duration;

use dataloy_gateway::dedup::{ClaimOutcome, Deduplicator, MemoryDedup};

#[path = "support/counting_allocator.rs"]
mod counting_allocator;

#[global_allocator]
static ALLOCATOR: counting_allocator::CountingAllocator = counting_allocator::CountingAllocator;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(24 * 3600);
    let before = counting_allocator::counts().live;
    let dedup = MemoryDedup::new(n);
    let mut id = String::new();
    for i in 0..n {
        id.clear();
        use std::fmt::Write;
        let _ = write!(id, "{i}-244070007");
        let ClaimOutcome::Claimed(token) = dedup.claim(&id, lease).await.unwrap() else {
            panic!("fresh id {id} not claimed");
        };
        dedup.commit(&id, token, ttl).await.unwrap();
    }
    let used = counting_allocator::counts().live - before;
    println!(
        "{n} ids held ({} entries): {used} bytes allocated, {:.1} bytes per id",
        dedup.entry_count().unwrap(),
        used as f64 / n as f64
    );
}
