//! The seeded sequence of operations a fault run performs, and the notification bodies it sends.
//! One seed always gives the same plan (fastrand's seeded generator), so a failing seed
//! reproduces; what the processes do in between is not deterministic, which is the point.

use serde_json::Value;

/// Operations whose known bug is not fixed on main yet: generated only when named in
/// `DATALOY_FAULT_FEATURES` (comma-separated, or `all`), so the fixed seeds pass today. Each
/// entry says what it shows on main.
pub const AWAITING_FIX: &[(&str, &str)] = &[
    // Empty: `sighup` (issue 20 #8), `hung_broker` (issue 20 #3) and `sigterm_exact` (the file
    // sink's resend after SIGTERM) were fixed and now run in every seed.
];

#[derive(Clone, Debug, Default)]
pub struct Features {
    enabled: Vec<String>,
}

impl Features {
    /// From `DATALOY_FAULT_FEATURES`.
    pub fn from_env() -> Features {
        let text = std::env::var("DATALOY_FAULT_FEATURES").unwrap_or_default();
        let enabled: Vec<String> = if text.trim() == "all" {
            AWAITING_FIX
                .iter()
                .map(|(name, _)| name.to_string())
                .collect()
        } else {
            text.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for name in &enabled {
            assert!(
                AWAITING_FIX.iter().any(|(known, _)| known == name),
                "DATALOY_FAULT_FEATURES: unknown feature {name:?}"
            );
        }
        Features { enabled }
    }

    /// Whether operation `name` is generated: always, unless it awaits a fix and was not named.
    pub fn on(&self, name: &str) -> bool {
        !AWAITING_FIX.iter().any(|(gated, _)| *gated == name)
            || self.enabled.iter().any(|e| e == name)
    }

    pub fn gated(&self) -> Vec<&'static str> {
        AWAITING_FIX
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !self.on(name))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedup {
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Kafka,
    RabbitMq,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// `count` new notifications, `parallel` at a time.
    New { count: usize, parallel: usize },
    /// Dataloy's retries of ids answered before.
    Retry { count: usize },
    /// `copies` requests with one new id at once.
    Concurrent { copies: usize },
    /// SIGKILL `after_ms` into a burst of `count` new notifications, then restart.
    Kill { count: usize, after_ms: u64 },
    /// SIGTERM `after_ms` into a burst, then restart.
    Term { count: usize, after_ms: u64 },
    /// SIGHUP; the gateway must keep serving.
    Hup,
    /// The broker refuses connections while `count` notifications arrive, then returns.
    BrokerDown { broker: Broker, count: usize },
    /// The broker accepts connections but answers nothing; with `term`, SIGTERM meanwhile.
    Hung {
        broker: Broker,
        count: usize,
        term: bool,
    },
    /// Redis stalls for `stall_ms` while notifications and retries arrive.
    RedisPause { stall_ms: u64, count: usize },
    /// Kafka down until the spool is full (503), then back: drained, and the 503s accepted.
    SpoolFull,
    /// A byte flipped in an older spool segment while the gateway is down.
    FlipByte,
}

/// The plan of one seed.
pub fn generate(seed: u64, dedup: Dedup, features: &Features, steps: usize) -> Vec<Op> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ops = vec![Op::New {
        count: 10,
        parallel: 2,
    }];
    // Each of these appears once per plan, at a seeded place, so a fixed seed covers every
    // fault in a bounded time; the rest of the steps are drawn freely.
    let mut once = vec![
        Op::SpoolFull,
        Op::FlipByte,
        Op::Kill {
            count: 60,
            after_ms: rng.u64(20..400),
        },
        Op::Term {
            count: 30,
            after_ms: rng.u64(20..300),
        },
        Op::BrokerDown {
            broker: Broker::Kafka,
            count: 15,
        },
        Op::BrokerDown {
            broker: Broker::RabbitMq,
            count: 15,
        },
    ];
    if features.on("sighup") {
        once.push(Op::Hup);
    }
    if features.on("hung_broker") {
        once.push(Op::Hung {
            broker: Broker::RabbitMq,
            count: 10,
            term: true,
        });
        once.push(Op::Hung {
            broker: Broker::Kafka,
            count: 10,
            term: true,
        });
    }
    if dedup == Dedup::Redis {
        once.push(Op::RedisPause {
            stall_ms: 1500,
            count: 6,
        });
    }
    rng.shuffle(&mut once);
    let free = steps.saturating_sub(once.len());
    let mut drawn: Vec<Op> = (0..free).map(|_| draw(&mut rng, dedup, features)).collect();
    // Interleave: the fixed faults spread between the drawn steps.
    let mut merged = Vec::new();
    let per = (drawn.len() / once.len().max(1)).max(1);
    for op in once {
        for _ in 0..per.min(drawn.len()) {
            merged.push(drawn.remove(0));
        }
        merged.push(op);
    }
    merged.extend(drawn);
    ops.extend(merged);
    ops
}

fn draw(rng: &mut fastrand::Rng, dedup: Dedup, features: &Features) -> Op {
    loop {
        let op = match rng.u32(0..100) {
            0..=29 => Op::New {
                count: rng.usize(1..12),
                parallel: rng.usize(1..5),
            },
            30..=44 => Op::Retry {
                count: rng.usize(1..6),
            },
            45..=54 => Op::Concurrent {
                copies: rng.usize(2..12),
            },
            55..=64 => Op::Kill {
                count: rng.usize(10..60),
                after_ms: rng.u64(0..300),
            },
            65..=71 => Op::Term {
                count: rng.usize(5..30),
                after_ms: rng.u64(0..200),
            },
            72..=83 => Op::BrokerDown {
                broker: if rng.bool() {
                    Broker::Kafka
                } else {
                    Broker::RabbitMq
                },
                count: rng.usize(1..15),
            },
            84..=89 => Op::Hup,
            90..=95 => Op::Hung {
                broker: if rng.bool() {
                    Broker::Kafka
                } else {
                    Broker::RabbitMq
                },
                count: rng.usize(1..8),
                term: rng.bool(),
            },
            _ => Op::RedisPause {
                stall_ms: rng.u64(300..2000),
                count: rng.usize(1..8),
            },
        };
        let allowed = match op {
            Op::Hup => features.on("sighup"),
            Op::Hung { .. } => features.on("hung_broker"),
            Op::RedisPause { .. } => dedup == Dedup::Redis,
            _ => true,
        };
        if allowed {
            return op;
        }
    }
}

const SAMPLES: [&[u8]; 2] = [
    include_bytes!("../fixtures/bunker-order-updated.json"),
    include_bytes!("../fixtures/bunker-order-line-alert-script.json"),
];

/// Body sizes around the widths a codec might use (2^8, 2^16) and the body limit.
const BOUNDARIES: [usize; 8] = [
    255,
    256,
    257,
    65_535,
    65_536,
    65_537,
    128 * 1024 - 1,
    128 * 1024,
];

/// A valid notification shaped like one of Dataloy's samples, with `id`; most are ordinary,
/// some padded to a size at a width boundary (exact where the sample allows).
pub fn body(rng: &mut fastrand::Rng, id: &str) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(SAMPLES[rng.usize(0..SAMPLES.len())]).unwrap();
    value["id"] = Value::from(id);
    value["eventType"] = Value::from(["C", "U", "D"][rng.usize(0..3)]);
    value["dataloyObject"] = Value::from(rng.u64(1..1_000_000_000));
    let target = match rng.u32(0..10) {
        0 => Some(BOUNDARIES[rng.usize(0..BOUNDARIES.len())]),
        1 => Some(rng.usize(1000..8000)),
        _ => None,
    };
    let Some(target) = target else {
        return serde_json::to_vec(&value).unwrap();
    };
    // Multi-byte characters now and then: lengths are in bytes.
    let unit = if rng.bool() { "x" } else { "é" };
    value["pad"] = Value::from("");
    let bare = serde_json::to_vec(&value).unwrap().len();
    let room = target.saturating_sub(bare);
    let mut pad = unit.repeat(room / unit.len());
    pad.push_str(&"y".repeat(room - pad.len()));
    value["pad"] = Value::from(pad);
    serde_json::to_vec(&value).unwrap()
}
