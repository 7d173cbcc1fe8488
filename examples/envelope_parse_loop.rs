//! `Envelope::parse` of the documented sample, N times (default 1,000), and nothing else: the
//! envelope scan's instructions counted by callgrind, a figure machine noise does not move
//! (BENCHMARKS.md, "Sitting of 2026-12-01 (evening)"):
//! `valgrind --tool=callgrind target/release/examples/envelope_parse_loop 10000`.

use dataloy_gateway::envelope::Envelope;

const SAMPLE: &str = include_str!("../tests/fixtures/bunker-order-updated.json");

fn main() {
    let times: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("the number of parses"))
        .unwrap_or(1000);
    for _ in 0..times {
        let envelope = Envelope::parse(std::hint::black_box(SAMPLE.as_bytes()));
        std::hint::black_box(envelope.expect("the sample is valid"));
    }
}
