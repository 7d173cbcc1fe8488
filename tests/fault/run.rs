//! One seed, end to end: sets up the brokers, proxies and gateway, performs the plan's
//! operations one by one (each bounded in time), then settles and checks the invariants.

use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;

use crate::deliveries;
use crate::harness::{self, Brokers, Gateway, Layout};
use crate::invariants;
use crate::model::{Model, Outcome, Sink, SINKS};
use crate::plan::{self, Broker, Dedup, Features, Op};
use crate::proxies::{Mode, Proxy};

/// Longest time one operation may take before the run counts it as a hang.
const STEP_LIMIT: Duration = Duration::from_secs(60);

pub struct Run {
    pub seed: u64,
    pub model: Model,
    layout: Layout,
    gateway: Option<Gateway>,
    client: reqwest::Client,
    rng: fastrand::Rng,
    kafka: Proxy,
    rabbitmq: Proxy,
    redis: Option<Proxy>,
    topic: String,
    queue: String,
    exchange: String,
    features: Features,
    tag: String,
}

/// Runs `seed`; returns the findings (empty when every invariant held).
pub async fn run_seed(seed: u64, dedup: Dedup, steps: usize) -> Vec<String> {
    let features = Features::from_env();
    let ops = plan::generate(seed, dedup, &features, steps);
    let dir = tempfile::Builder::new()
        .prefix(&format!("fault-{seed}-"))
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let tag = format!("fault-{seed}-{}-{}", std::process::id(), fastrand::u32(..));

    let tansu_port = harness::free_port();
    let kafka = Proxy::start(tansu_port).await;
    let _tansu = harness::start_tansu(dir.path(), tansu_port, kafka.port);
    let rabbitmq = Proxy::start(harness::RABBITMQ_PORT).await;
    let (_redis_server, redis) = match dedup {
        Dedup::Redis => {
            let port = harness::free_port();
            let server = harness::start_redis(dir.path(), port);
            (Some(server), Some(Proxy::start(port).await))
        }
        Dedup::Memory => (None, None),
    };
    let topic = tag.clone();
    let exchange = format!("{tag}-x");
    let queue = format!("{tag}-q");
    deliveries::create_topic(&format!("127.0.0.1:{}", kafka.port), &topic).await;
    deliveries::bind_queue(&exchange, &queue).await;
    let layout = harness::prepare(
        dir.path(),
        &Brokers {
            kafka: &kafka,
            topic: &topic,
            rabbitmq: &rabbitmq,
            exchange: &exchange,
            redis: redis.as_ref(),
        },
    );
    let mut run = Run {
        seed,
        model: Model::default(),
        layout,
        gateway: None,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        kafka,
        rabbitmq,
        redis,
        topic,
        queue,
        exchange,
        features,
        tag,
    };
    println!(
        "fault seed {seed} ({dedup:?} dedup): {} steps; gated until fixed: {:?}",
        ops.len(),
        run.features.gated()
    );
    run.restart().await;

    let mut hung = false;
    for (step, op) in ops.iter().enumerate() {
        run.model.step = step;
        let began = Instant::now();
        println!("  step {step}: {op:?}");
        if tokio::time::timeout(STEP_LIMIT, run.perform(op))
            .await
            .is_err()
        {
            run.model
                .finding(format!("{op:?} did not finish within {STEP_LIMIT:?}"));
            hung = true;
            break;
        }
        run.check_alive().await;
        if began.elapsed() > Duration::from_secs(20) {
            println!("    (took {:?})", began.elapsed());
        }
    }
    if !hung {
        run.model.step = ops.len();
        if tokio::time::timeout(Duration::from_secs(120), run.settle_and_check())
            .await
            .is_err()
        {
            run.model
                .finding("settling and checking did not finish within 120 s");
        }
    }
    if !run.model.findings.is_empty() {
        println!(
            "--- gateway log (last lines) ---\n{}",
            harness::log_tail(&run.layout, 40)
        );
    }
    deliveries::remove_queue(&run.exchange, &run.queue).await;
    println!(
        "fault seed {seed}: {} in {:.1} s; answers {:?}; {} findings",
        if run.model.findings.is_empty() {
            "passed"
        } else {
            "FAILED"
        },
        started.elapsed().as_secs_f64(),
        run.model.answers,
        run.model.findings.len()
    );
    std::mem::take(&mut run.model.findings)
}

impl Run {
    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    async fn restart(&mut self) {
        self.gateway = None;
        match Gateway::start(&self.layout).await {
            Ok(gateway) => self.gateway = Some(gateway),
            Err(e) => {
                self.model.finding(format!("restart failed: {e}"));
                panic!(
                    "seed {}: the gateway does not start: {e}\n{}",
                    self.seed,
                    harness::log_tail(&self.layout, 40)
                );
            }
        }
    }

    /// After every step: the process must still be running.
    async fn check_alive(&mut self) {
        let status = self.gateway.as_mut().and_then(|g| g.exited());
        if let Some(status) = status {
            self.model
                .finding(format!("the gateway exited by itself: {status}"));
            self.model.window("gateway exited", &SINKS);
            self.restart().await;
        }
    }

    fn new_id(&mut self) -> (String, Vec<u8>) {
        self.model.next_id += 1;
        let id = format!("{}-{}", self.tag, self.model.next_id);
        let body = plan::body(&mut self.rng, &id);
        self.model.remember(&id, &body);
        (id, body)
    }

    fn new_ids(&mut self, count: usize) -> Vec<(String, Vec<u8>)> {
        (0..count).map(|_| self.new_id()).collect()
    }

    fn body_of(&self, id: &str) -> Vec<u8> {
        self.model.sent[id].0.clone()
    }

    /// Posts `requests`, `parallel` at a time; the answers in the order they came.
    fn post_all(
        &self,
        requests: Vec<(String, Vec<u8>)>,
        parallel: usize,
    ) -> impl std::future::Future<Output = Vec<(String, Outcome)>> + 'static {
        let client = self.client.clone();
        let url = format!("http://127.0.0.1:{}/webhooks/dataloy", self.layout.port);
        async move {
            futures::stream::iter(requests)
                .map(|(id, body)| {
                    let (client, url) = (client.clone(), url.clone());
                    async move { (id, post(&client, &url, body).await) }
                })
                .buffer_unordered(parallel.max(1))
                .collect()
                .await
        }
    }

    fn apply(&mut self, answers: Vec<(String, Outcome)>) {
        // `accepted` first: a copy's `duplicate` is checked against it.
        let (first, rest): (Vec<_>, Vec<_>) = answers
            .into_iter()
            .partition(|(_, o)| *o == Outcome::Accepted);
        for (id, outcome) in first.into_iter().chain(rest) {
            self.model.answer(&id, outcome);
        }
    }

    async fn send_new(&mut self, count: usize, parallel: usize) -> Vec<(String, Outcome)> {
        let requests = self.new_ids(count);
        let answers = self.post_all(requests, parallel).await;
        self.apply(answers.clone());
        answers
    }

    fn proxy(&self, broker: Broker) -> &Proxy {
        match broker {
            Broker::Kafka => &self.kafka,
            Broker::RabbitMq => &self.rabbitmq,
        }
    }

    fn sink(broker: Broker) -> Sink {
        match broker {
            Broker::Kafka => Sink::Kafka,
            Broker::RabbitMq => Sink::RabbitMq,
        }
    }

    async fn perform(&mut self, op: &Op) {
        match *op {
            Op::New { count, parallel } => {
                self.send_new(count, parallel).await;
            }
            Op::Retry { count } => self.retry(count).await,
            Op::Concurrent { copies } => self.concurrent(copies).await,
            Op::Kill { count, after_ms } => self.stop_under_load(count, after_ms, false).await,
            Op::Term { count, after_ms } => self.stop_under_load(count, after_ms, true).await,
            Op::Hup => self.hup().await,
            Op::BrokerDown { broker, count } => {
                self.proxy(broker).set(Mode::Down);
                self.model.window("broker down", &[Self::sink(broker)]);
                self.send_new(count, 2).await;
                tokio::time::sleep(Duration::from_millis(self.rng.u64(0..1500))).await;
                self.proxy(broker).set(Mode::Up);
            }
            Op::Hung {
                broker,
                count,
                term,
            } => self.hung(broker, count, term).await,
            Op::RedisPause { stall_ms, count } => self.redis_pause(stall_ms, count).await,
            Op::SpoolFull => self.spool_full().await,
            Op::FlipByte => self.flip_byte().await,
        }
    }

    async fn retry(&mut self, count: usize) {
        // Every id answered 200 before, also by an earlier process: dedup remembers across
        // restarts with either backend.
        let pool: Vec<String> = self.model.accepted.iter().cloned().collect();
        let mut requests = Vec::new();
        for _ in 0..count.min(pool.len()) {
            let id = pool[self.rng.usize(0..pool.len())].clone();
            requests.push((id.clone(), self.body_of(&id)));
        }
        // And whatever is still unanswered: Dataloy resends those.
        let open: Vec<String> = self.model.open.iter().take(count).cloned().collect();
        for id in open {
            requests.push((id.clone(), self.body_of(&id)));
        }
        let answers = self.post_all(requests, 2).await;
        self.apply(answers);
    }

    async fn concurrent(&mut self, copies: usize) {
        let (id, body) = self.new_id();
        let requests = vec![(id.clone(), body); copies];
        let answers = self.post_all(requests, copies).await;
        let accepted = answers
            .iter()
            .filter(|(_, o)| *o == Outcome::Accepted)
            .count();
        if accepted > 1 {
            self.model.finding(format!(
                "{copies} concurrent copies of {id}: {accepted} accepted"
            ));
        }
        self.apply(answers);
    }

    /// A burst of new notifications, SIGKILL or SIGTERM in the middle of it, restart, and the
    /// unanswered ones resent as Dataloy would.
    async fn stop_under_load(&mut self, count: usize, after_ms: u64, graceful: bool) {
        let requests = self.new_ids(count);
        let burst = tokio::spawn(self.post_all(requests, 4));
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let gateway = self.gateway.take().expect("gateway running");
        if graceful {
            let limit = harness::SHUTDOWN_TIMEOUT + harness::SHUTDOWN_MARGIN;
            match gateway.terminate(limit).await {
                Ok((status, _)) if status.success() => {}
                Ok((status, took)) => self
                    .model
                    .finding(format!("SIGTERM: exit status {status} after {took:?}")),
                Err(e) => self.model.finding(format!("SIGTERM: {e}")),
            }
            if !self.features.on("sigterm_exact") {
                self.model
                    .window("SIGTERM (known: file sink resend)", &[Sink::File]);
            }
        } else {
            gateway.kill();
            self.model.window("SIGKILL", &SINKS);
        }
        let answers = burst.await.unwrap();
        self.apply(answers);
        self.restart().await;
        self.resend_open().await;
    }

    /// Resends every id without a 200 yet, once.
    async fn resend_open(&mut self) {
        let requests: Vec<_> = self
            .model
            .open
            .iter()
            .map(|id| (id.clone(), self.body_of(id)))
            .collect();
        let answers = self.post_all(requests, 4).await;
        self.apply(answers);
    }

    async fn hup(&mut self) {
        self.gateway().signal(Signal::SIGHUP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = self.gateway.as_mut().unwrap().exited() {
            self.model
                .finding(format!("SIGHUP ended the gateway: {status}"));
            self.model.window("SIGHUP killed it", &SINKS);
            self.restart().await;
            return;
        }
        let answers = self.send_new(2, 1).await;
        // A 503 with Retry-After is the spool bound holding a backlog an earlier step left (the
        // slowest sink still catching up after a restart): a refusal the sender retries, not a
        // SIGHUP fault. Retried after the drain, as Dataloy would, it must be accepted.
        let (refused, other): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(_, o)| {
            matches!(
                o,
                Outcome::Unavailable {
                    retry_after: true,
                    ..
                }
            )
        });
        if other.iter().any(|(_, o)| *o != Outcome::Accepted) {
            self.model
                .finding(format!("after SIGHUP: answers {other:?}"));
        }
        if refused.is_empty() {
            return;
        }
        self.wait_drained(Duration::from_secs(40)).await;
        let requests: Vec<_> = refused
            .iter()
            .map(|(id, _)| (id.clone(), self.body_of(id)))
            .collect();
        let answers = self.post_all(requests, 1).await;
        if answers.iter().any(|(_, o)| *o != Outcome::Accepted) {
            self.model.finding(format!(
                "after SIGHUP: refused with Retry-After, resent after the drain: {answers:?}"
            ));
        }
        self.apply(answers);
    }

    async fn hung(&mut self, broker: Broker, count: usize, term: bool) {
        self.proxy(broker).set(Mode::Stalled);
        self.model.window("broker hung", &[Self::sink(broker)]);
        self.send_new(count, 2).await;
        tokio::time::sleep(Duration::from_millis(self.rng.u64(200..1500))).await;
        if term {
            let limit = harness::SHUTDOWN_TIMEOUT + harness::SHUTDOWN_MARGIN;
            let gateway = self.gateway.take().unwrap();
            match gateway.terminate(limit).await {
                Ok((status, _)) if status.success() => {}
                Ok((status, took)) => self.model.finding(format!(
                    "SIGTERM while {broker:?} hung: exit status {status} after {took:?}"
                )),
                Err(e) => self
                    .model
                    .finding(format!("SIGTERM while {broker:?} hung: {e}")),
            }
            if !self.features.on("sigterm_exact") {
                self.model
                    .window("SIGTERM (known: file sink resend)", &[Sink::File]);
            }
        }
        // The hung broker is restarted: its connections reset.
        self.proxy(broker).set(Mode::Down);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.proxy(broker).set(Mode::Up);
        if term {
            self.restart().await;
        }
    }

    async fn redis_pause(&mut self, stall_ms: u64, count: usize) {
        let Some(redis) = &self.redis else { return };
        redis.set(Mode::Stalled);
        let mut requests = self.new_ids(count);
        let accepted: Vec<String> = self.model.accepted.iter().cloned().collect();
        for _ in 0..2.min(accepted.len()) {
            let id = accepted[self.rng.usize(0..accepted.len())].clone();
            requests.push((id.clone(), self.body_of(&id)));
        }
        let during = tokio::spawn(self.post_all(requests, 3));
        tokio::time::sleep(Duration::from_millis(stall_ms)).await;
        self.redis.as_ref().unwrap().set(Mode::Up);
        let answers = during.await.unwrap();
        self.apply(answers);
        // Dataloy's retries after Redis is back must be processed within the in-flight wait,
        // not refused for the whole claim lease.
        let deadline = Instant::now() + Duration::from_secs(4);
        while !self.model.open.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.resend_open().await;
        }
        if !self.model.open.is_empty() {
            let requests: Vec<_> = self
                .model
                .open
                .iter()
                .map(|id| (id.clone(), self.body_of(id)))
                .collect();
            let answers = self.post_all(requests, 4).await;
            self.model.finding(format!(
                "4 s after a {stall_ms} ms Redis stall, still refused: {answers:?}"
            ));
            self.apply(answers);
        }
    }

    /// Kafka down until the spool is full: 503 with Retry-After; Kafka back: the backlog
    /// drains and the refused ids are accepted when resent.
    async fn spool_full(&mut self) {
        self.kafka.set(Mode::Down);
        self.model.window("broker down", &[Sink::Kafka]);
        let mut refused = Vec::new();
        for _ in 0..300 {
            let (id, _) = self.new_id();
            let body = filler(&mut self.rng, &id, 6000);
            self.model.sent.get_mut(&id).unwrap().0 = body.clone();
            let answers = self.post_all(vec![(id.clone(), body)], 1).await;
            let full = matches!(&answers[0].1, Outcome::Unavailable { .. });
            self.apply(answers);
            if full {
                refused.push(id);
                break;
            }
        }
        if refused.is_empty() {
            self.model
                .finding("spool full: 300 x 6 KB with Kafka down, never a 503");
        }
        self.kafka.set(Mode::Up);
        self.wait_drained(Duration::from_secs(40)).await;
        let requests: Vec<_> = refused
            .iter()
            .map(|id| (id.clone(), self.body_of(id)))
            .collect();
        let answers = self.post_all(requests, 1).await;
        for (id, outcome) in &answers {
            if *outcome != Outcome::Accepted {
                self.model.finding(format!(
                    "{id} refused while the spool was full, resent after the drain: {outcome:?}"
                ));
            }
        }
        self.apply(answers);
    }

    /// A backlog over several segments (Kafka down), SIGKILL, one byte flipped inside a body
    /// in an older segment, restart.
    async fn flip_byte(&mut self) {
        self.kafka.set(Mode::Down);
        self.model.window("broker down", &[Sink::Kafka]);
        let mut ids = Vec::new();
        for _ in 0..60 {
            let (id, _) = self.new_id();
            let body = filler(&mut self.rng, &id, 5000);
            self.model.sent.get_mut(&id).unwrap().0 = body.clone();
            let answers = self.post_all(vec![(id.clone(), body)], 1).await;
            if answers[0].1 == Outcome::Accepted {
                ids.push(id);
            }
            self.apply(answers);
            if segments(&self.layout).len() >= 3 {
                break;
            }
        }
        self.gateway.take().unwrap().kill();
        self.model.window("SIGKILL", &SINKS);
        let segments = segments(&self.layout);
        let mut flipped = None;
        if segments.len() >= 2 {
            // Any segment but the newest: damage there is never a torn tail.
            let segment = &segments[self.rng.usize(0..segments.len() - 1)];
            let bytes = std::fs::read(segment).unwrap();
            let candidates: Vec<(String, usize)> = ids
                .iter()
                .filter_map(|id| {
                    let body = &self.model.sent[id].0;
                    memchr::memmem::find(&bytes, body).map(|at| (id.clone(), at + body.len() / 2))
                })
                .collect();
            if !candidates.is_empty() {
                let (id, offset) = candidates[self.rng.usize(0..candidates.len())].clone();
                flip(segment, offset as u64);
                flipped = Some((id, segment.clone()));
            }
        }
        match flipped {
            Some((id, segment)) => {
                println!(
                    "    flipped a byte in {id}'s body in {}",
                    segment.file_name().unwrap().to_string_lossy()
                );
                self.model.damaged.insert(id);
            }
            None => println!(
                "    no older segment held an unrelayed body ({} segments); nothing flipped",
                segments.len()
            ),
        }
        self.restart().await;
        self.kafka.set(Mode::Up);
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!(
                "http://127.0.0.1:{}/metrics",
                self.layout.admin_port
            ))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    async fn wait_drained(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let depth = self.metric("dataloy_gateway_spool_depth_records").await;
            if depth == Some(0.0) {
                return true;
            }
            if Instant::now() > deadline {
                self.model.finding(format!(
                    "spool depth {depth:?} after {limit:?} with every broker up"
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every broker up, every unanswered id resent until answered, the spool drained; then the
    /// sinks are read back and the invariants checked.
    async fn settle_and_check(&mut self) {
        self.kafka.set(Mode::Up);
        self.rabbitmq.set(Mode::Up);
        if let Some(redis) = &self.redis {
            redis.set(Mode::Up);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.model.open.is_empty() && Instant::now() < deadline {
            self.resend_open().await;
            if !self.model.open.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if !self.model.open.is_empty() {
            let open: Vec<_> = self.model.open.iter().cloned().collect();
            self.model.finding(format!(
                "never answered 200 within 30 s of resending: {open:?}"
            ));
        }
        self.wait_drained(Duration::from_secs(60)).await;
        let least = self.model.accepted.len() - self.model.damaged.len();
        let delivered = [
            (Sink::File, deliveries::read_file(&self.layout.events())),
            (
                Sink::Kafka,
                deliveries::consume_topic(
                    &format!("127.0.0.1:{}", self.kafka.port),
                    &self.topic,
                    least,
                    Duration::from_secs(30),
                )
                .await,
            ),
            (
                Sink::RabbitMq,
                deliveries::drain_queue(&self.queue, least, Duration::from_secs(30)).await,
            ),
        ];
        let quarantined = std::fs::read_dir(self.layout.spool().join("quarantine"))
            .map(|d| d.count())
            .unwrap_or(0);
        for (sink, messages) in &delivered {
            invariants::check_sink(&mut self.model, *sink, messages, quarantined);
        }
        if let Some(gateway) = self.gateway.take() {
            let limit = harness::SHUTDOWN_TIMEOUT + harness::SHUTDOWN_MARGIN;
            match gateway.terminate(limit).await {
                Ok((status, _)) if status.success() => {}
                Ok((status, took)) => self.model.finding(format!(
                    "final SIGTERM: exit status {status} after {took:?}"
                )),
                Err(e) => self.model.finding(format!("final SIGTERM: {e}")),
            }
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Outcome {
    let response = match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match (status, json["status"].as_str()) {
        (200, Some("accepted")) => Outcome::Accepted,
        (200, Some("duplicate")) => Outcome::Duplicate,
        (503, _) => Outcome::Unavailable {
            code: json["error"]["code"].as_str().unwrap_or("?").to_owned(),
            retry_after,
        },
        _ => Outcome::Unexpected(format!("{status} {text}")),
    }
}

/// A body of about `size` bytes (one of the samples, padded).
fn filler(rng: &mut fastrand::Rng, id: &str, size: usize) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&plan::body(rng, id)).unwrap();
    value["pad"] = serde_json::Value::from("f".repeat(size));
    serde_json::to_vec(&value).unwrap()
}

/// The spool's segment files, oldest first (named by their first sequence number).
fn segments(layout: &Layout) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(layout.spool())
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn flip(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x20], offset).unwrap();
    file.sync_all().unwrap();
}
