//! Delivering one batch to one sink: confirmed notifications count as done, a notification the
//! sink refused for good is stored in dead letters and counts as done, anything else is retried
//! with backoff from the first notification not done, so order is kept. A panic inside the sink
//! is caught: the rest of the batch is then published one notification at a time, and one that
//! makes the sink panic on its own goes to dead letters.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::watch;

use super::{sleep_or_shutdown, with_jitter};
use crate::config::RelaySettings;
use crate::dead_letter::{Attempts, DeadLetterStore, Reason};
use crate::metrics::Metrics;
use crate::notification::{unix_millis, Notification};
use crate::sink::{Sink, SinkError};

pub(super) struct Delivery<'a> {
    pub sink: &'a dyn Sink,
    pub settings: &'a RelaySettings,
    pub metrics: &'a Metrics,
    pub dead_letters: &'a DeadLetterStore,
}

/// Attempts at the first notification not yet done.
#[derive(Default)]
struct HeadAttempts {
    first_ms: u64,
    last_ms: u64,
    count: u32,
}

impl HeadAttempts {
    fn record(&mut self) {
        let now = unix_millis();
        if self.count == 0 {
            self.first_ms = now;
        }
        self.last_ms = now;
        self.count = self.count.saturating_add(1);
    }

    fn attempts(&self) -> Attempts {
        Attempts {
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            count: self.count,
        }
    }
}

impl Delivery<'_> {
    /// Delivers `batch` until every notification is confirmed or dead-lettered, and returns
    /// how many leading notifications are done: all of them, unless shutdown came first. A
    /// publish in progress when `shutdown` turns true runs to its end (what it confirmed counts;
    /// a failure is not retried); only `interrupt` abandons it. What is not done stays in the
    /// spool.
    pub async fn deliver(
        &self,
        batch: &[Notification],
        mut shutdown: watch::Receiver<bool>,
        mut interrupt: watch::Receiver<bool>,
    ) -> usize {
        let name = self.sink.name();
        let mut done = 0;
        let mut head = HeadAttempts::default();
        let mut backoff = self.settings.retry_initial_backoff;
        let mut one_at_a_time = false;
        while done < batch.len() {
            let end = if one_at_a_time { done + 1 } else { batch.len() };
            let started = Instant::now();
            let publish = AssertUnwindSafe(self.sink.publish(&batch[done..end])).catch_unwind();
            let outcome = tokio::select! {
                outcome = publish => outcome,
                _ = interrupt.wait_for(|stop| *stop) => return done,
            };
            head.record();
            let (failure, settled_after) = match outcome {
                Ok(Ok(())) => {
                    self.metrics
                        .sink_published(name, end - done, started.elapsed());
                    done = end;
                    head = HeadAttempts::default();
                    backoff = self.settings.retry_initial_backoff;
                    continue;
                }
                Ok(Err(e)) => {
                    let confirmed = e.confirmed.min(end - done);
                    if confirmed > 0 {
                        self.metrics
                            .sink_published(name, confirmed, started.elapsed());
                        done += confirmed;
                        head = HeadAttempts::default();
                        head.record();
                    }
                    if done == end {
                        continue;
                    }
                    (e.source, e.settled_after)
                }
                Err(panic) => {
                    self.metrics.delivery.panicked(name);
                    let message = panic_message(panic.as_ref());
                    tracing::error!(
                        sink = name,
                        panic = message,
                        batch = end - done,
                        "the sink panicked while publishing"
                    );
                    if end - done > 1 {
                        // Find the notification that causes it: the same batch, one at a time.
                        one_at_a_time = true;
                        continue;
                    }
                    (
                        SinkError::refused(
                            Reason::SinkPanic,
                            format!("the sink panicked: {message}"),
                        ),
                        Vec::new(),
                    )
                }
            };
            if let SinkError::Refused { reason, detail } = &failure {
                if self.dead_letter(&batch[done], *reason, detail, &head) {
                    done += 1;
                    head = HeadAttempts::default();
                    done = self.settle_after(batch, done, end, settled_after, started);
                    continue;
                }
            } else {
                self.metrics.sink_publish_failed(name);
            }
            let wait = with_jitter(backoff);
            tracing::warn!(
                sink = name,
                error = %failure,
                notification_id = %batch[done].envelope.id,
                pending = batch.len() - done,
                retry_in_ms = wait.as_millis() as u64,
                "publish failed; will retry"
            );
            if sleep_or_shutdown(wait, &mut shutdown).await {
                return done;
            }
            backoff = (backoff * 2).min(self.settings.retry_max_backoff);
        }
        done
    }

    /// Counts what the sink had already dealt with after a refusal (see
    /// `PublishError::settled_after`): delivered, or refused for good and stored in dead
    /// letters, so none of it is sent again. Returns the new `done`; it stops at a refusal that
    /// cannot be stored (retried from there).
    fn settle_after(
        &self,
        batch: &[Notification],
        mut done: usize,
        end: usize,
        settled_after: Vec<Result<(), SinkError>>,
        started: Instant,
    ) -> usize {
        let name = self.sink.name();
        for settled in settled_after {
            if done >= end {
                break;
            }
            match settled {
                Ok(()) => self.metrics.sink_published(name, 1, started.elapsed()),
                Err(SinkError::Refused { reason, detail }) => {
                    let mut head = HeadAttempts::default();
                    head.record();
                    if !self.dead_letter(&batch[done], reason, &detail, &head) {
                        break;
                    }
                }
                Err(_) => break,
            }
            done += 1;
        }
        done
    }

    /// Stores a refused notification in dead letters; false if it could not be stored (the
    /// caller retries the notification: nothing is dropped).
    fn dead_letter(
        &self,
        notification: &Notification,
        reason: Reason,
        detail: &str,
        head: &HeadAttempts,
    ) -> bool {
        let name = self.sink.name();
        match self
            .dead_letters
            .store(name, notification, reason, detail, head.attempts())
        {
            Ok(entry) => {
                self.metrics.delivery.dead_lettered(name, reason);
                self.metrics
                    .delivery
                    .dead_letter_bytes
                    .set(self.dead_letters.used_bytes() as i64);
                tracing::error!(
                    sink = name,
                    notification_id = %notification.envelope.id,
                    reason = reason.as_str(),
                    error = detail,
                    dead_letter = entry,
                    "notification refused for good; stored in dead letters, going on with the next"
                );
                true
            }
            Err(e) => {
                self.metrics.delivery.dead_letter_store_failed(name);
                tracing::error!(
                    sink = name,
                    notification_id = %notification.envelope.id,
                    reason = reason.as_str(),
                    error = %e,
                    "cannot store a refused notification in dead letters; retrying it"
                );
                false
            }
        }
    }
}

/// The text of a panic's payload, when it has one.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::envelope::Envelope;
    use crate::sink::PublishError;

    /// A sink that panics on the notification with id `poison` and records every other one it
    /// is handed, in order.
    struct PanickingSink {
        poison: &'static str,
        delivered: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Sink for PanickingSink {
        fn name(&self) -> &'static str {
            "test"
        }

        async fn publish(&self, batch: &[Notification]) -> Result<(), PublishError> {
            if batch.iter().any(|n| n.envelope.id.as_str() == self.poison) {
                panic!("a value this sink cannot handle");
            }
            let mut delivered = self.delivered.lock().unwrap();
            delivered.extend(batch.iter().map(|n| n.envelope.id.to_string()));
            Ok(())
        }

        fn is_up(&self) -> bool {
            true
        }
    }

    fn notification(id: &str) -> Notification {
        let body = Bytes::from(format!(
            r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"PortCall","eventType":"U","dataloyObject":1,"subscription":{{"key":7}},"resource":null}}"#
        ));
        Notification::new(Envelope::parse(&body).expect("valid"), body)
    }

    #[tokio::test]
    async fn a_notification_that_makes_the_sink_panic_goes_to_dead_letters_and_the_rest_are_delivered(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        let metrics = Metrics::new();
        let sink = PanickingSink {
            poison: "p-3",
            delivered: Mutex::default(),
        };
        let settings = RelaySettings::default();
        let delivery = Delivery {
            sink: &sink,
            settings: &settings,
            metrics: &metrics,
            dead_letters: &store,
        };
        let batch: Vec<_> = (1..=5).map(|i| notification(&format!("p-{i}"))).collect();
        let (_stop, shutdown) = watch::channel(false);
        let (_interrupt, interrupt) = watch::channel(false);

        let done = delivery.deliver(&batch, shutdown, interrupt).await;

        assert_eq!(done, 5, "the whole batch is dealt with");
        assert_eq!(
            *sink.delivered.lock().unwrap(),
            ["p-1", "p-2", "p-4", "p-5"],
            "every other notification delivered once, in order"
        );
        let entries: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "p-3");
        assert_eq!(entries[0].reason, Reason::SinkPanic);
        assert!(
            entries[0].error.contains("cannot handle"),
            "{}",
            entries[0].error
        );
    }
}
