//! The difference between the declared subscriptions and Dataloy's, as a list of actions. Pure:
//! `subscriptions plan` prints it, a reconcile carries it out.
//!
//! A declared subscription is found among those with its URL and target: an active one is kept
//! (and updated if it drifted); if only deactivated ones exist it is created anew (Dataloy cannot
//! reactivate one); if none exists it is created. Active subscriptions that deliver to a declared
//! URL but are not declared are left alone, or deleted when `prune` is on.

use serde::Serialize;

use super::desired::{DesiredSubscription, Drift};
use crate::dataloy::{RemoteSubscription, SubscriptionKey, Target};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub subscriptions: Vec<PlannedSubscription>,
    pub undeclared: Vec<Undeclared>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedSubscription {
    pub name: String,
    pub target: Target,
    pub url: String,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Active in Dataloy and as declared.
    Unchanged { key: Option<SubscriptionKey> },
    /// Not in Dataloy.
    Create,
    /// Only deactivated ones are in Dataloy; notifications since `unsubscription_date` were missed.
    Recreate {
        deactivated_key: Option<SubscriptionKey>,
        unsubscription_date: Option<String>,
    },
    /// Active, but some attributes differ.
    Update {
        key: Option<SubscriptionKey>,
        drift: Vec<Drift>,
    },
}

/// An active subscription delivering to a declared URL that no declaration accounts for.
#[derive(Debug, Clone, Serialize)]
pub struct Undeclared {
    pub key: Option<SubscriptionKey>,
    pub target: Option<Target>,
    pub url: String,
    /// Deleted by a reconcile (`dataloy.prune`); otherwise left alone.
    pub delete: bool,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Unchanged { .. } => "unchanged",
            Action::Create => "create",
            Action::Recreate { .. } => "recreate",
            Action::Update { .. } => "update",
        }
    }
}

impl Plan {
    pub fn new(
        desired: &[DesiredSubscription],
        remote: &[RemoteSubscription],
        prune: bool,
    ) -> Plan {
        let mut accounted = vec![false; remote.len()];
        let subscriptions = desired
            .iter()
            .map(|d| {
                let matching: Vec<usize> = (0..remote.len())
                    .filter(|&i| d.matches(&remote[i]))
                    .collect();
                let active = matching.iter().copied().find(|&i| remote[i].active);
                let action = if let Some(i) = active {
                    accounted[i] = true;
                    let drift = d.drift(&remote[i]);
                    let key = remote[i].key.clone();
                    if drift.is_empty() {
                        Action::Unchanged { key }
                    } else {
                        Action::Update { key, drift }
                    }
                } else if let Some(latest) = matching
                    .iter()
                    .map(|&i| &remote[i])
                    .max_by(|a, b| a.unsubscription_date.cmp(&b.unsubscription_date))
                {
                    Action::Recreate {
                        deactivated_key: latest.key.clone(),
                        unsubscription_date: latest.unsubscription_date.clone(),
                    }
                } else {
                    Action::Create
                };
                PlannedSubscription {
                    name: d.name.clone(),
                    target: d.request.target.clone(),
                    url: d.request.url.clone(),
                    action,
                }
            })
            .collect();
        let undeclared = remote
            .iter()
            .zip(accounted)
            .filter(|(r, accounted)| {
                !accounted
                    && r.active
                    && desired
                        .iter()
                        .any(|d| r.url.as_deref() == Some(d.request.url.as_str()))
            })
            .map(|(r, _)| Undeclared {
                key: r.key.clone(),
                target: r.target.clone(),
                url: r.url.clone().unwrap_or_default(),
                delete: prune,
            })
            .collect();
        Plan {
            subscriptions,
            undeclared,
        }
    }

    /// The changes this plan holds, as `subject (action)`.
    pub fn pending(&self) -> Vec<String> {
        let declared = self
            .subscriptions
            .iter()
            .filter(|s| !matches!(s.action, Action::Unchanged { .. }))
            .map(|s| format!("subscription {} ({})", s.name, s.action.as_str()));
        let undeclared = self.undeclared.iter().filter(|u| u.delete).map(|u| {
            format!(
                "undeclared subscription {} (delete)",
                u.key.as_ref().map_or("(no key)", |k| k.0.as_str())
            )
        });
        declared.chain(undeclared).collect()
    }

    /// How many changes a reconcile would make.
    pub fn changes(&self) -> usize {
        let declared = self
            .subscriptions
            .iter()
            .filter(|s| !matches!(s.action, Action::Unchanged { .. }))
            .count();
        declared + self.undeclared.iter().filter(|u| u.delete).count()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{ExtraMembers, SubscriptionSettings};

    const URL: &str = "https://gw/webhooks/dataloy";

    fn declared(name: &str, object_type: &str) -> DesiredSubscription {
        DesiredSubscription::new(
            name,
            &SubscriptionSettings {
                object_type: Some(object_type.into()),
                event_type: Some("U".into()),
                dataloy_object: None,
                alert_script: None,
                url: URL.into(),
                fields: None,
                expression: None,
                do_not_unsubscribe: true,
                extra: ExtraMembers::default(),
            },
        )
    }

    fn remote(value: serde_json::Value) -> RemoteSubscription {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn each_declared_subscription_gets_the_action_dataloy_needs() {
        let desired = [
            declared("kept", "PortCall"),
            declared("missing", "Voyage"),
            declared("dead", "BunkerOrder"),
            declared("drifted", "Invoice"),
        ];
        let remote = [
            remote(
                json!({"key": 1, "objectType": "PortCall", "eventType": "U", "url": URL, "doNotUnsubscribe": true}),
            ),
            remote(
                json!({"key": 2, "objectType": "BunkerOrder", "eventType": "U", "url": URL,
                "isSubscriptionActive": false, "unsubscriptionDate": "2024-01-01T10:00:00"}),
            ),
            remote(
                json!({"key": 3, "objectType": "BunkerOrder", "eventType": "U", "url": URL,
                "isSubscriptionActive": false, "unsubscriptionDate": "2024-03-01T10:00:00"}),
            ),
            remote(
                json!({"key": 4, "objectType": "Invoice", "eventType": "U", "url": URL, "doNotUnsubscribe": false}),
            ),
            remote(json!({"key": 5, "objectType": "Vessel", "eventType": "C", "url": URL})),
            remote(
                json!({"key": 6, "objectType": "Vessel", "eventType": "C", "url": "https://other/hook"}),
            ),
            remote(
                json!({"key": 7, "objectType": "Cargo", "eventType": "D", "url": URL, "isSubscriptionActive": false}),
            ),
        ];
        let plan = Plan::new(&desired, &remote, false);
        let key = |k: &str| Some(SubscriptionKey(k.into()));
        assert_eq!(
            plan.subscriptions[0].action,
            Action::Unchanged { key: key("1") }
        );
        assert_eq!(plan.subscriptions[1].action, Action::Create);
        assert_eq!(
            plan.subscriptions[2].action,
            Action::Recreate {
                deactivated_key: key("3"),
                unsubscription_date: Some("2024-03-01T10:00:00".into())
            },
            "the latest deactivation"
        );
        assert!(
            matches!(&plan.subscriptions[3].action, Action::Update { key: k, drift } if *k == key("4") && drift[0].attribute == "doNotUnsubscribe")
        );
        let undeclared: Vec<_> = plan
            .undeclared
            .iter()
            .map(|u| (u.key.clone(), u.delete))
            .collect();
        assert_eq!(
            undeclared,
            [(key("5"), false)],
            "only active ones at a declared URL"
        );
        assert_eq!(plan.changes(), 3);
        assert_eq!(Plan::new(&desired, &remote, true).changes(), 4);
    }

    #[test]
    fn an_active_subscription_wins_over_deactivated_ones() {
        let desired = [declared("kept", "PortCall")];
        let remote = [
            remote(
                json!({"key": 1, "objectType": "PortCall", "eventType": "U", "url": URL, "unsubscriptionDate": "2024-01-01T00:00:00"}),
            ),
            remote(json!({"key": 2, "objectType": "PortCall", "eventType": "U", "url": URL})),
            remote(json!({"key": 3, "objectType": "PortCall", "eventType": "U", "url": URL})),
        ];
        let plan = Plan::new(&desired, &remote, true);
        assert_eq!(
            plan.subscriptions[0].action,
            Action::Unchanged {
                key: Some(SubscriptionKey("2".into()))
            }
        );
        assert_eq!(
            plan.undeclared.len(),
            1,
            "a second active copy is not declared"
        );
        assert_eq!(plan.undeclared[0].key, Some(SubscriptionKey("3".into())));
    }
}
