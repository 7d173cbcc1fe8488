//! What the test knows from the answers it got: every body sent, which ids were answered 200,
//! which answers were lost (the request may or may not be durable), which records it damaged,
//! and the windows in which the README allows a sink to receive a notification twice. The
//! invariants are checked against this, never against the gateway's own view.

use std::collections::{BTreeMap, BTreeSet};

/// A sink of the run's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sink {
    File,
    Kafka,
    RabbitMq,
}

pub const SINKS: [Sink; 3] = [Sink::File, Sink::Kafka, Sink::RabbitMq];

/// How one request was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    /// 503, with the error code and whether `Retry-After` was present.
    Unavailable {
        code: String,
        retry_after: bool,
    },
    /// No answer: connection refused or reset, or the request timed out.
    Lost(String),
    /// Anything else: a finding.
    Unexpected(String),
}

/// A time in which the README allows republishing: the test's step number, and which sinks.
#[derive(Clone, Debug)]
pub struct Window {
    pub step: usize,
    pub why: &'static str,
    pub sinks: Vec<Sink>,
}

#[derive(Default)]
pub struct Model {
    /// Every id sent, its one body and the step it was first sent in.
    pub sent: BTreeMap<String, (Vec<u8>, usize)>,
    /// Ids answered `accepted` at least once.
    pub accepted: BTreeSet<String>,
    /// Ids sent and not answered 200 yet.
    pub open: BTreeSet<String>,
    /// Ids whose answer was lost at least once (possibly durable).
    pub lost_answer: BTreeSet<String>,
    /// Ids whose spool record the test damaged.
    pub damaged: BTreeSet<String>,
    pub windows: Vec<Window>,
    /// Invariant violations seen so far, each with the step it was seen in.
    pub findings: Vec<String>,
    /// Counters for the summary.
    pub answers: BTreeMap<&'static str, usize>,
    pub step: usize,
    pub next_id: usize,
}

impl Model {
    pub fn finding(&mut self, text: impl Into<String>) {
        let text = format!("step {}: {}", self.step, text.into());
        eprintln!("FINDING {text}");
        self.findings.push(text);
    }

    pub fn window(&mut self, why: &'static str, sinks: &[Sink]) {
        self.windows.push(Window {
            step: self.step,
            why,
            sinks: sinks.to_vec(),
        });
    }

    pub fn remember(&mut self, id: &str, body: &[u8]) {
        let step = self.step;
        self.sent
            .entry(id.to_owned())
            .or_insert_with(|| (body.to_vec(), step));
    }

    /// Records the answer to one request for `id` and checks what a single answer can show.
    pub fn answer(&mut self, id: &str, outcome: Outcome) {
        let key = match &outcome {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Unavailable { .. } => "503",
            Outcome::Lost(_) => "no answer",
            Outcome::Unexpected(_) => "unexpected",
        };
        *self.answers.entry(key).or_default() += 1;
        match outcome {
            Outcome::Accepted => {
                // Redis remembers across restarts, and so does memory dedup (the id journal).
                if self.accepted.contains(id) {
                    self.finding(format!(
                        "{id} answered accepted again although an earlier request for it was answered 200"
                    ));
                }
                self.accepted.insert(id.to_owned());
                self.open.remove(id);
            }
            Outcome::Duplicate => {
                if !self.accepted.contains(id) && !self.lost_answer.contains(id) {
                    // Only an earlier durable attempt can make a duplicate: a 503 released its
                    // claim, so an id never accepted and never unanswered cannot be one.
                    self.finding(format!(
                        "{id} answered duplicate, but no earlier request for it was accepted or lost"
                    ));
                }
                self.accepted.insert(id.to_owned());
                self.open.remove(id);
            }
            Outcome::Unavailable { code, retry_after } => {
                if !retry_after {
                    self.finding(format!("{id}: 503 {code} without Retry-After"));
                }
                if !self.accepted.contains(id) {
                    self.open.insert(id.to_owned());
                }
            }
            Outcome::Lost(_) => {
                self.lost_answer.insert(id.to_owned());
                if !self.accepted.contains(id) {
                    self.open.insert(id.to_owned());
                }
            }
            Outcome::Unexpected(what) => {
                self.finding(format!("{id}: unexpected answer {what}"));
                if !self.accepted.contains(id) {
                    self.open.insert(id.to_owned());
                }
            }
        }
    }
}
