//! Memory per id held by the in-memory dedup backend, measured with a counting allocator:
//! claim and commit N ids (default 1,000,000), then divide the bytes still allocated by N.
//! `cargo run --release --example dedup_memory -- 1000000`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use dataloy_gateway::dedup::{ClaimOutcome, Deduplicator, MemoryDedup};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(24 * 3600);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
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
    let used = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "{n} ids held ({} entries): {used} bytes allocated, {:.1} bytes per id",
        dedup.entry_count().unwrap(),
        used as f64 / n as f64
    );
}
