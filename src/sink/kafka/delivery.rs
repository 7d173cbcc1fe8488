//! Delivery reports of one published batch, counted down by the producer's context. librdkafka
//! reports every message it accepted exactly once (delivered, failed or purged). rdkafka's
//! `FutureProducer` turns each report into a future completed with a copy of the whole message;
//! counting a batch's reports instead leaves the report thread one counter per message and, for
//! a failure, one comparison, while still telling exactly how many leading messages were
//! delivered (the relay's retry starts after them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::Notify;

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
    /// The failure with the lowest index: everything before it was delivered.
    first_failure: Mutex<Option<(usize, Failure)>>,
    all_reported: Notify,
}

impl BatchReports {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(1),
            first_failure: Mutex::new(None),
            all_reported: Notify::new(),
        })
    }

    /// A handle for message `index`, to travel with it through librdkafka as its opaque.
    pub(super) fn expect(self: &Arc<Self>, index: usize) -> Box<PendingReport> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Box::new(PendingReport {
            reports: self.clone(),
            index,
            reported: false,
        })
    }

    /// Waits until every message handed out with [`expect`](Self::expect) was reported, then
    /// tells the first failure, if any. Call once, after the last `expect`.
    pub(super) async fn finish(&self) -> Option<(usize, Failure)> {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            self.all_reported.notified().await;
        }
        self.first_failure.lock().take()
    }

    fn fail(&self, index: usize, failure: Failure) {
        let mut first = self.first_failure.lock();
        if first.as_ref().is_none_or(|(known, _)| index < *known) {
            *first = Some((index, failure));
        }
    }

    fn count_down(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when the publisher is not waiting yet.
            self.all_reported.notify_one();
        }
    }
}

/// One message's place in its batch; counts the batch down when it is reported or dropped.
pub(super) struct PendingReport {
    reports: Arc<BatchReports>,
    index: usize,
    reported: bool,
}

impl PendingReport {
    /// Records that the message failed (at enqueue, or by its report); the batch counts it
    /// once the handle is dropped.
    pub(super) fn fail(&mut self, error: KafkaError) {
        self.reports.fail(self.index, Failure::Kafka(error));
        self.reported = true;
    }

    fn delivered(&mut self) {
        self.reported = true;
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        if !self.reported {
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
            Ok(_) => pending.delivered(),
            Err((error, _)) => pending.fail(error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    /// `finish`, failing the test instead of hanging it when a report is never counted.
    async fn finish(reports: &BatchReports) -> Option<(usize, Failure)> {
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
        let pending: Vec<_> = (0..3).map(|i| reports.expect(i)).collect();
        for mut p in pending {
            p.delivered();
        }
        assert!(finish(&reports).await.is_none());
    }

    #[tokio::test]
    async fn the_publisher_waits_for_reports_from_another_thread() {
        let reports = BatchReports::new();
        let pending: Vec<_> = (0..100).map(|i| reports.expect(i)).collect();
        let reporter = std::thread::spawn(move || {
            for mut p in pending {
                std::thread::sleep(Duration::from_micros(50));
                p.delivered();
            }
        });
        let outcome = finish(&reports).await;
        reporter.join().unwrap();
        assert!(outcome.is_none());
    }

    #[tokio::test]
    async fn the_lowest_failed_index_wins_whatever_the_order_of_reports() {
        let reports = BatchReports::new();
        let mut pending: Vec<_> = (0..5).map(|i| Some(reports.expect(i))).collect();
        pending[4]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageTimedOut));
        pending[0].take().unwrap().delivered();
        pending[3].take().unwrap().delivered();
        pending[2]
            .take()
            .unwrap()
            .fail(error(RDKafkaErrorCode::MessageSizeTooLarge));
        pending[1].take().unwrap().delivered();
        let (index, failure) = finish(&reports).await.expect("two failed");
        assert_eq!(index, 2);
        assert!(matches!(
            failure,
            Failure::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            ))
        ));
    }

    #[tokio::test]
    async fn a_handle_dropped_without_a_report_counts_as_a_failure() {
        let reports = BatchReports::new();
        let mut first = reports.expect(0);
        let second = reports.expect(1);
        first.delivered();
        drop(first);
        drop(second);
        let (index, failure) = finish(&reports).await.expect("one unreported");
        assert_eq!(index, 1);
        assert!(matches!(failure, Failure::Unreported));
    }
}
