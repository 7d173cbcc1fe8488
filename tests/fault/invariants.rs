//! The end-to-end promises, checked per sink against what the test itself saw answered:
//! every body answered 200 delivered byte for byte; nothing delivered that was not sent (or
//! not as it was sent); duplicates only where a documented window explains them (counted and
//! printed); damaged records missing only when the damage was reported (quarantined).

use std::collections::BTreeMap;

use crate::deliveries::Delivered;
use crate::model::{Model, Sink};

/// The README's crash window: at most one relay batch (`relay.batch_max_records`, 16 in the
/// run's config) republished per window and sink.
const BATCH: usize = 16;

pub fn check_sink(model: &mut Model, sink: Sink, delivered: &[Delivered], quarantined: usize) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for message in delivered {
        match model.sent.get(&message.id) {
            None => problems.push(format!(
                "{sink:?}: delivered {} bytes with id {:?}, never sent by this run",
                message.body.len(),
                message.id
            )),
            Some((body, _)) if *body != message.body => problems.push(format!(
                "{sink:?}: {} delivered with a different body ({} bytes, sent {})",
                message.id,
                message.body.len(),
                body.len()
            )),
            Some(_) => {
                if !model.accepted.contains(&message.id) && !model.lost_answer.contains(&message.id)
                {
                    problems.push(format!(
                        "{sink:?}: {} delivered although every request for it was refused",
                        message.id
                    ));
                }
            }
        }
        *counts.entry(message.id.as_str()).or_default() += 1;
    }

    let mut missing = Vec::new();
    let mut damaged_missing = Vec::new();
    for id in &model.accepted {
        if counts.contains_key(id.as_str()) {
            continue;
        }
        if model.damaged.contains(id) {
            damaged_missing.push(id.clone());
        } else {
            missing.push(id.clone());
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{sink:?}: {} answered 200 and never delivered: {:?}",
            missing.len(),
            missing
        ));
    }
    if !damaged_missing.is_empty() && quarantined == 0 {
        problems.push(format!(
            "{sink:?}: damaged records {damaged_missing:?} never delivered and nothing quarantined (lost silently)"
        ));
    }

    // Duplicates: an id whose answer was lost may be resent by Dataloy and so arrive twice; any
    // other copy needs a window of this sink after the id was first sent, and at most a batch
    // per window.
    let windows: Vec<usize> = model
        .windows
        .iter()
        .filter(|w| w.sinks.contains(&sink))
        .map(|w| w.step)
        .collect();
    let reasons: BTreeMap<&str, usize> = model
        .windows
        .iter()
        .filter(|w| w.sinks.contains(&sink))
        .fold(BTreeMap::new(), |mut m, w| {
            *m.entry(w.why).or_default() += 1;
            m
        });
    let (mut resent, mut in_window, mut unexplained) = (0, 0, Vec::new());
    for (id, n) in &counts {
        if *n < 2 {
            continue;
        }
        let extra = n - 1;
        let first_step = model.sent.get(*id).map_or(usize::MAX, |(_, s)| *s);
        if model.lost_answer.contains(*id) {
            resent += extra;
        } else if windows.iter().any(|w| *w >= first_step) {
            in_window += extra;
        } else {
            unexplained.push(format!("{id} x{n}"));
        }
    }
    if in_window > BATCH * windows.len().max(1) {
        problems.push(format!(
            "{sink:?}: {in_window} republished, more than a batch ({BATCH}) per window ({} windows)",
            windows.len()
        ));
    }
    if !unexplained.is_empty() {
        problems.push(format!(
            "{sink:?}: delivered more than once outside any crash or outage window: {unexplained:?}"
        ));
    }
    println!(
        "    {sink:?}: {} delivered, {} distinct; duplicates: {resent} after a lost answer, {in_window} in {} windows {reasons:?}, {} unexplained; damaged and not delivered: {}",
        delivered.len(),
        counts.len(),
        windows.len(),
        unexplained.len(),
        damaged_missing.len()
    );
    for problem in problems {
        model.finding(problem);
    }
}
