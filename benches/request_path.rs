//! The CPU work of the request path, without its I/O: validating the envelope of the documented
//! sample and encoding its spool record, against a bare serde_json pass over the same bytes
//! (measured in the same run, so the ratio is what counts). Then the bytes allocated per
//! notification as `resource` grows, to check that nothing is copied in proportion to it (the
//! body itself arrives as one buffer and is shared, not copied). Run:
//! `cargo bench --bench request_path`. Figures are in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::record;

const SAMPLE: &str = include_str!("../tests/fixtures/bunker-order-updated.json");
const ROUNDS: usize = 200_000;

#[path = "../examples/support/counting_allocator.rs"]
mod counting_allocator;

#[global_allocator]
static ALLOCATOR: counting_allocator::CountingAllocator = counting_allocator::CountingAllocator;

/// Nanoseconds per call of `work`, best of three rounds of `ROUNDS` calls.
fn time_per_call(mut work: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ROUNDS {
                work();
            }
            started.elapsed().as_nanos() as f64 / ROUNDS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The sample with its `resource` replaced by one holding a string of `size` bytes.
fn body_with_resource(size: usize) -> Bytes {
    let mut value: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
    value["resource"] = serde_json::json!({ "remark": "x".repeat(size), "lines": [1, 2, 3] });
    Bytes::from(serde_json::to_vec(&value).unwrap())
}

/// Bytes allocated while validating and spooling one notification whose body is `body`.
fn allocated_per_notification(body: &Bytes, buffer: &mut Vec<u8>) -> u64 {
    let before = counting_allocator::counts().allocated;
    let envelope = Envelope::parse(body).unwrap();
    let notification = Notification::new(envelope, body.clone());
    buffer.clear();
    record::encode(1, 1, &notification, buffer).expect("the sample fits a record");
    black_box(&notification);
    counting_allocator::counts().allocated - before
}

fn main() {
    let body = Bytes::from_static(SAMPLE.as_bytes());
    let json_only = time_per_call(|| {
        black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).unwrap());
    });
    let parse = time_per_call(|| {
        black_box(Envelope::parse(black_box(&body)).unwrap());
    });
    let notification = Notification::new(Envelope::parse(&body).unwrap(), body.clone());
    let mut buffer = Vec::with_capacity(1 << 20);
    let encode = time_per_call(|| {
        buffer.clear();
        record::encode(1, 1, black_box(&notification), &mut buffer)
            .expect("the sample fits a record");
    });
    println!("sample: {} bytes", body.len());
    println!("serde_json pass (IgnoredAny): {json_only:8.0} ns");
    println!(
        "Envelope::parse:               {parse:8.0} ns  ({:.2} x the serde_json pass)",
        parse / json_only
    );
    println!("spool record encode (+CRC):    {encode:8.0} ns");

    // Warm the buffer so its growth is not counted.
    let largest = body_with_resource(1 << 20);
    allocated_per_notification(&largest, &mut buffer);
    for size in [1 << 10, 64 << 10, 1 << 20] {
        let body = body_with_resource(size);
        let allocated = allocated_per_notification(&body, &mut buffer);
        println!(
            "resource of {:>7} bytes (body {:>7}): {allocated} bytes allocated to validate and spool",
            size,
            body.len()
        );
    }
}
