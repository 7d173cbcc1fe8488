//! Delivery reports of one published batch, counted down by the producer's context. librdkafka
//! reports every message it accepted exactly once (delivered, failed or purged). rdkafka's
//! `FutureProducer` turns each report into a future completed with a copy of the whole message;
//! counting a batch's reports instead leaves the report thread one counter per message and, for
//! a failure, one entry in a list, while still telling exactly which messages were delivered:
//! the leading ones before the first failure, and those after it (a later message may reach
//! another partition), so the relay sends none of them again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tracing::Span;

use crate::sink::SinkError;
use crate::telemetry::spans;

/// Why a message of the batch is not confirmed.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// librdkafka refused it at enqueue or reported it failed.
    Kafka(KafkaError),
    /// Its report handle was dropped without a report (the producer went away).
    Unreported,
}

/// The reports of one batch, shared by the publisher and the report handles of its messages.
pub(super) struct BatchReports {
    /// Messages not reported yet, plus one while the publisher is still enqueueing.
    outstanding: AtomicUsize,
    /// Messages handed out with [`expect`](Self::expect): indexes `0..expected`.
    expected: AtomicUsize,
    /// Every failure, in the order reported; a message not in it was delivered.
    failures: Mutex<Vec<(usize, Failure)>>,
    all_reported: Notify,
}

impl BatchReports {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(1),
            expected: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            all_reported: Notify::new(),
        })
    }

    /// A handle for message `index`, to travel with it through librdkafka as its opaque, with
    /// the message's PRODUCER span (ended when the handle is: at the report).
    pub(super) fn expect(self: &Arc<Self>, index: usize, span: Option<Span>) -> Box<PendingReport> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.expected.fetch_max(index + 1, Ordering::Relaxed);
        Box::new(PendingReport {
            reports: self.clone(),
            index,
            reported: false,
            span,
        })
    }

    /// Waits until every message handed out with [`expect`](Self::expect) was reported, then
    /// tells the failures, if any. Call once, after the last `expect`.
    pub(super) async fn finish(&self) -> Option<BatchFailures> {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            self.all_reported.notified().await;
        }
        let mut failures = std::mem::take(&mut *self.failures.lock());
        if failures.is_empty() {
            return None;
        }
        failures.sort_by_key(|(index, _)| *index);
        failures.dedup_by_key(|(index, _)| *index);
        let mut failures = failures.into_iter();
        let first = failures.next().expect("not empty");
        Some(BatchFailures {
            first,
            later: failures.collect(),
            expected: self.expected.load(Ordering::Relaxed),
        })
    }

    fn fail(&self, index: usize, failure: Failure) {
        self.failures.lock().push((index, failure));
    }

    fn count_down(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when the publisher is not waiting yet.
            self.all_reported.notify_one();
        }
    }
}

/// How a batch ended when some of its messages failed.
#[derive(Debug)]
pub(super) struct BatchFailures {
    /// The failure with the lowest index: everything before it was delivered.
    pub first: (usize, Failure),
    /// The failures after it, by index; a message after `first` and below `expected` that is
    /// not here was delivered.
    pub later: Vec<(usize, Failure)>,
    /// Messages handed out: the rest of the batch was never enqueued.
    pub expected: usize,
}

impl BatchFailures {
    /// What became of the messages right after the first failed one, in order, as long as
    /// each was delivered (`Ok`) or refused for good (`Err` with a refusal, by `describe`);
    /// stops at the first transient failure or at the end of what was enqueued.
    pub(super) fn settled_after(
        self,
        mut describe: impl FnMut(usize, Failure) -> SinkError,
    ) -> Vec<Result<(), SinkError>> {
        let mut later = self.later.into_iter().peekable();
        let mut settled = Vec::new();
        for index in self.first.0 + 1..self.expected {
            match later.next_if(|(at, _)| *at == index) {
                None => settled.push(Ok(())),
                Some((_, failure)) => match describe(index, failure) {
                    refused @ SinkError::Refused { .. } => settled.push(Err(refused)),
                    _ => break,
                },
            }
        }
        settled
    }
}

/// One message's place in its batch; counts the batch down when it is reported or dropped.
pub(super) struct PendingReport {
    reports: Arc<BatchReports>,
    index: usize,
    reported: bool,
    span: Option<Span>,
}

impl PendingReport {
    /// Records that the message failed (at enqueue, or by its report); the batch counts it
    /// once the handle is dropped.
    pub(super) fn fail(&mut self, error: KafkaError) {
        if let Some(span) = &self.span {
            let code = error.rdkafka_error_code();
            spans::record_error(span, code.map_or("_OTHER", error_type));
        }
        self.reports.fail(self.index, Failure::Kafka(error));
        self.reported = true;
    }

    fn delivered(&mut self, partition: i32, offset: i64) {
        if let Some(span) = &self.span {
            spans::record_kafka_delivery(span, partition, offset);
        }
        self.reported = true;
    }
}

/// A low-cardinality name for a librdkafka error code, as `error.type`.
fn error_type(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::MessageTimedOut => "message_timed_out",
        RDKafkaErrorCode::MessageSizeTooLarge => "message_size_too_large",
        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => {
            "unknown_topic_or_partition"
        }
        RDKafkaErrorCode::InvalidTopic => "invalid_topic",
        RDKafkaErrorCode::QueueFull => "queue_full",
        _ => "_OTHER",
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        if !self.reported {
            if let Some(span) = &self.span {
                spans::record_error(span, "unreported");
            }
            self.reports.fail(self.index, Failure::Unreported);
        }
        self.reports.count_down();
    }
}

/// The producer's context: hands each delivery report to its batch.
pub(super) struct ReportCounter;

impl ClientContext for ReportCounter {}

impl ProducerContext for ReportCounter {
    type DeliveryOpaque = Box<PendingReport>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut pending: Box<PendingReport>) {
        match result {
            Ok(message) => pending.delivered(message.partition(), message.offset()),
            Err((error, _)) => pending.fail(error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dead_letter::Reason;

    fn error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    /// `finish`, failing the test instead of hanging it when a report is never counted.
    async fn finish(reports: &BatchReports) -> Option<BatchFailures> {
        tokio::time::timeout(Duration::from_secs(10), reports.finish())
            .await
            .expect("every report counted")
    }

    #[tokio::test]
    async fn a_batch_without_messages_finishes_at_once() {
        assert!(finish(&BatchReports::new()).await.is_none());
    }

    #[tokio::test]
    async fn reports_arriving_before_the_publisher_waits_are_not_missed() {
        let reports = BatchReports::new();
        let pending: Vec<_> = (0..3).map(|i| reports.expect(i, None)).collect();
        for mut p in pending {
            p.delivered(0, 0);
        }
        assert!(finish(&reports).await.is_none());
    }

    #[tokio::test]
    async fn the_publisher_waits_for_reports_from_another_thread() {
        let reports = BatchReports::new();
        let pending: Vec<_> = (0..100).map(|i| reports.expect(i, None)).collect();
        let reporter = std::thread::spawn(move || {
            for mut p in pending {
                std::thread::sleep(Duration::from_micros(50));
                p.delivered(0, 0);
            }
        });
        let outcome = finish(&reports).await;
        reporter.join().unwrap();
        assert!(outcome.is_none());
    }

    #[tokio::test]
    async fn the_lowest_failed_index_wins_whatever_the_order_of_reports() {
        let reports = BatchReports::new();
        let mut pending: Vec<_> = (0..5).map(|i| Some(reports.expect(i, None))).collect();
        pending[4]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageTimedOut));
        pending[0].take().unwrap().delivered(0, 0);
        pending[3].take().unwrap().delivered(0, 0);
        pending[2]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageSizeTooLarge));
        pending[1].take().unwrap().delivered(0, 0);
        let failures = finish(&reports).await.expect("two failed");
        let (index, failure) = failures.first;
        assert_eq!(index, 2);
        assert!(matches!(
            failure,
            Failure::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            ))
        ));
        // Message 3 was delivered; message 4 failed too.
        assert_eq!(failures.expected, 5);
        let later: Vec<usize> = failures.later.iter().map(|(i, _)| *i).collect();
        assert_eq!(later, [4]);
    }

    #[tokio::test]
    async fn after_a_refusal_the_delivered_and_refused_messages_are_settled_up_to_a_transient_one()
    {
        let reports = BatchReports::new();
        let mut pending: Vec<_> = (0..7).map(|i| Some(reports.expect(i, None))).collect();
        pending[0].take().unwrap().delivered(0, 0);
        pending[1]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageSizeTooLarge));
        pending[2].take().unwrap().delivered(0, 0);
        pending[3]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageSizeTooLarge));
        pending[4].take().unwrap().delivered(0, 0);
        pending[5]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageTimedOut));
        pending[6].take().unwrap().delivered(0, 0);
        let failures = finish(&reports).await.expect("three failed");
        assert_eq!(failures.first.0, 1);
        let settled = failures.settled_after(|_, failure| match failure {
            Failure::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge,
            )) => SinkError::refused(Reason::TooLarge, "too large"),
            _ => SinkError::Unavailable("timed out".into()),
        });
        // 2 delivered, 3 refused, 4 delivered; 5 timed out: it and 6 are sent again.
        let kinds: Vec<&str> = settled
            .iter()
            .map(|s| match s {
                Ok(()) => "delivered",
                Err(SinkError::Refused { .. }) => "refused",
                Err(_) => "transient",
            })
            .collect();
        assert_eq!(kinds, ["delivered", "refused", "delivered"]);
    }

    #[tokio::test]
    async fn messages_never_enqueued_are_not_settled() {
        let reports = BatchReports::new();
        let mut first = reports.expect(0, None);
        first.fail(error(RDKafkaErrorCode::MessageSizeTooLarge));
        drop(first);
        let failures = finish(&reports).await.expect("one failed");
        assert!(failures
            .settled_after(|_, _| SinkError::refused(Reason::TooLarge, "too large"))
            .is_empty());
    }

    #[tokio::test]
    async fn a_handle_dropped_without_a_report_counts_as_a_failure() {
        let reports = BatchReports::new();
        let mut first = reports.expect(0, None);
        let second = reports.expect(1, None);
        first.delivered(0, 0);
        drop(first);
        drop(second);
        let failures = finish(&reports).await.expect("one unreported");
        assert_eq!(failures.first.0, 1);
        assert!(matches!(failures.first.1, Failure::Unreported));
        assert!(failures.later.is_empty());
    }
}
