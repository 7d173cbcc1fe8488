//! The subscription keeper's series: whether each declared subscription is active, how often one
//! had to be re-created (and how much time its deactivation cost), reconcile failures and the
//! time of the last reconcile that left Dataloy matching the configuration. Labels are the
//! declared subscription names (bounded by the configuration) and fixed operation names.

use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SubscriptionSeries {
    active: IntGaugeVec,
    recreations: IntCounterVec,
    missed_seconds: IntCounterVec,
    changes: IntCounterVec,
    reconcile_errors: IntCounterVec,
    last_success: Gauge,
}

impl SubscriptionSeries {
    pub(super) fn register(registry: &Registry) -> Self {
        let register = |collector: Box<dyn prometheus::core::Collector>| {
            registry.register(collector).expect("unique");
        };
        let active = IntGaugeVec::new(
            Opts::new(
                "subscription_active",
                "1 when the last reconcile found (or made) the declared subscription active in \
                 Dataloy, 0 when it is missing or deactivated there.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        register(Box::new(active.clone()));
        let recreations = IntCounterVec::new(
            Opts::new(
                "subscription_recreations_total",
                "Declared subscriptions found deactivated in Dataloy and created anew; \
                 notifications between the deactivation and the re-creation were missed.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        register(Box::new(recreations.clone()));
        let missed_seconds = IntCounterVec::new(
            Opts::new(
                "subscription_missed_seconds_total",
                "Seconds from a subscription's unsubscriptionDate to its re-creation, summed: \
                 the windows whose notifications Dataloy never sent.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        register(Box::new(missed_seconds.clone()));
        let changes = IntCounterVec::new(
            Opts::new(
                "subscription_changes_total",
                "Changes the keeper made in Dataloy, by action (create, recreate, update, delete).",
            ),
            &["action"],
        )
        .expect("valid metric");
        register(Box::new(changes.clone()));
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "subscription_reconcile_errors_total",
                "Failed calls to Dataloy during reconciles, by operation (token, list, create, \
                 update, delete), and `verify`: reconciles after which Dataloy, listed again, \
                 still did not match although it accepted every change.",
            ),
            &["operation"],
        )
        .expect("valid metric");
        register(Box::new(reconcile_errors.clone()));
        let last_success = Gauge::new(
            "subscription_reconcile_last_success_timestamp_seconds",
            "Unix time of the last reconcile after which Dataloy matched the configuration; 0 \
             until the first.",
        )
        .expect("valid metric");
        register(Box::new(last_success.clone()));
        Self {
            active,
            recreations,
            missed_seconds,
            changes,
            reconcile_errors,
            last_success,
        }
    }

    /// Creates the counters of a keeper for `subscriptions` at 0, so that a first re-creation or
    /// failure shows as an increase (Prometheus sees no increase in a series born at 1).
    pub fn declare<'a>(
        &self,
        subscriptions: impl IntoIterator<Item = &'a str>,
        operations: impl IntoIterator<Item = &'a str>,
    ) {
        for subscription in subscriptions {
            self.recreations.with_label_values(&[subscription]);
            self.missed_seconds.with_label_values(&[subscription]);
        }
        for operation in operations {
            self.reconcile_errors.with_label_values(&[operation]);
        }
        for action in ["create", "recreate", "update", "delete"] {
            self.changes.with_label_values(&[action]);
        }
    }

    pub fn set_active(&self, subscription: &str, active: bool) {
        self.active
            .with_label_values(&[subscription])
            .set(i64::from(active));
    }

    /// A deactivated subscription was created anew; `missed` is the window it cost, if known.
    pub fn recreated(&self, subscription: &str, missed: Option<std::time::Duration>) {
        self.recreations.with_label_values(&[subscription]).inc();
        self.changes.with_label_values(&["recreate"]).inc();
        if let Some(missed) = missed {
            self.missed_seconds
                .with_label_values(&[subscription])
                .inc_by(missed.as_secs());
        }
    }

    /// A change other than a re-creation (`create`, `update`, `delete`).
    pub fn changed(&self, action: &str) {
        self.changes.with_label_values(&[action]).inc();
    }

    pub fn reconcile_failed(&self, operation: &str) {
        self.reconcile_errors.with_label_values(&[operation]).inc();
    }

    pub fn reconciled(&self, unix_seconds: f64) {
        self.last_success.set(unix_seconds);
    }
}
