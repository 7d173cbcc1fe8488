//! A declared subscription (`[subscriptions.NAME]`) as the keeper compares it with Dataloy's:
//! how it is recognised there (same URL, same target) and which of its attributes have drifted.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::SubscriptionSettings;
use crate::dataloy::{RemoteSubscription, SubscriptionRequest, Target};

#[derive(Debug, Clone)]
pub struct DesiredSubscription {
    pub name: String,
    pub request: SubscriptionRequest,
    pub extra: Map<String, Value>,
}

/// One attribute that differs between the declaration and Dataloy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub attribute: &'static str,
    pub declared: String,
    pub found: String,
}

impl DesiredSubscription {
    pub fn new(name: &str, settings: &SubscriptionSettings) -> Self {
        let target = match (&settings.object_type, &settings.event_type) {
            (Some(object_type), Some(event_type)) => Target::Object {
                object_type: object_type.clone(),
                event_type: event_type.clone(),
                dataloy_object: settings.dataloy_object.map(|k| k.to_string()),
            },
            _ => Target::AlertScript {
                script_code: settings.alert_script.clone().unwrap_or_default(),
            },
        };
        Self {
            name: name.to_owned(),
            request: SubscriptionRequest {
                target,
                url: settings.url.clone(),
                fields: settings.fields.clone(),
                expression: settings.expression.clone(),
                do_not_unsubscribe: settings.do_not_unsubscribe,
            },
            extra: settings.extra.0.clone(),
        }
    }

    /// Whether `remote` is this subscription (active or not): it delivers to the same URL for
    /// the same target.
    pub fn matches(&self, remote: &RemoteSubscription) -> bool {
        remote.url.as_deref() == Some(self.request.url.as_str())
            && remote.target.as_ref() == Some(&self.request.target)
    }

    /// The attributes of `remote` that differ from the declaration. One the list left out
    /// cannot be compared and does not count as drift.
    pub fn drift(&self, remote: &RemoteSubscription) -> Vec<Drift> {
        let mut drift = Vec::new();
        if let Some(found) = &remote.json {
            if !same_fields(self.request.fields.as_deref(), found.as_deref(), remote) {
                drift.push(Drift {
                    attribute: "json",
                    declared: shown(self.request.fields.as_deref()),
                    found: remote
                        .fields()
                        .or_else(|| found.clone())
                        .unwrap_or_else(none),
                });
            }
        }
        if let Some(found) = &remote.expression {
            let declared = self.request.expression.as_deref().unwrap_or("");
            if declared.trim() != found.as_deref().unwrap_or("").trim() {
                drift.push(Drift {
                    attribute: "expression",
                    declared: shown(self.request.expression.as_deref()),
                    found: shown(found.as_deref()),
                });
            }
        }
        if let Some(found) = remote.do_not_unsubscribe {
            if found != self.request.do_not_unsubscribe {
                drift.push(Drift {
                    attribute: "doNotUnsubscribe",
                    declared: self.request.do_not_unsubscribe.to_string(),
                    found: found.to_string(),
                });
            }
        }
        if let Some(found) = &remote.channel_type {
            if !found.eq_ignore_ascii_case("HTTP") {
                drift.push(Drift {
                    attribute: "channelType",
                    declared: "HTTP".into(),
                    found: found.clone(),
                });
            }
        }
        drift
    }
}

fn none() -> String {
    "(none)".into()
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(none, str::to_owned)
}

/// Field selections compare as JSON (whitespace and member order do not matter); an empty one
/// equals none.
fn same_fields(
    declared: Option<&str>,
    found_base64: Option<&str>,
    remote: &RemoteSubscription,
) -> bool {
    let declared = declared.filter(|d| !d.trim().is_empty());
    let found_base64 = found_base64.filter(|f| !f.trim().is_empty());
    match (declared, found_base64) {
        (None, None) => true,
        (Some(declared), Some(_)) => match remote.fields() {
            Some(found) => {
                let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
                match (parse(declared), parse(&found)) {
                    (Some(a), Some(b)) => a == b,
                    _ => declared.trim() == found.trim(),
                }
            }
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExtraMembers;

    fn desired() -> DesiredSubscription {
        DesiredSubscription::new(
            "orders",
            &SubscriptionSettings {
                object_type: Some("BunkerOrder".into()),
                event_type: Some("U".into()),
                dataloy_object: None,
                alert_script: None,
                url: "https://gw/webhooks/dataloy".into(),
                fields: Some(r#"{"fields": ["key", "self"]}"#.into()),
                expression: None,
                do_not_unsubscribe: true,
                extra: ExtraMembers::default(),
            },
        )
    }

    fn remote(json: Value) -> RemoteSubscription {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn recognised_by_url_and_target() {
        let d = desired();
        let same = remote(
            serde_json::json!({"key": 1, "objectType": "BunkerOrder", "eventType": "U",
            "channelInfo": {"channelType": {"channelTypeCode": "HTTP"}, "url": "https://gw/webhooks/dataloy"}}),
        );
        assert!(d.matches(&same));
        let other_event = remote(
            serde_json::json!({"key": 1, "objectType": "BunkerOrder", "eventType": "C",
            "url": "https://gw/webhooks/dataloy"}),
        );
        assert!(!d.matches(&other_event));
        let other_url = remote(
            serde_json::json!({"key": 1, "objectType": "BunkerOrder", "eventType": "U",
            "url": "https://elsewhere/hook"}),
        );
        assert!(!d.matches(&other_url));
        assert!(
            d.drift(&same).is_empty(),
            "attributes left out are not drift"
        );
    }

    #[test]
    fn drift_compares_fields_as_json_and_names_each_attribute() {
        let d = desired();
        let base64 = |t: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(t)
        };
        let same = remote(
            serde_json::json!({"objectType": "BunkerOrder", "eventType": "U",
            "json": base64("{\"fields\":[\"key\",\"self\"]}"), "expression": null, "doNotUnsubscribe": true}),
        );
        assert!(d.drift(&same).is_empty(), "{:?}", d.drift(&same));
        let drifted = remote(
            serde_json::json!({"objectType": "BunkerOrder", "eventType": "U",
            "json": base64("{\"fields\":[\"key\"]}"), "expression": "dlpObject != null",
            "doNotUnsubscribe": false}),
        );
        let attributes: Vec<_> = d.drift(&drifted).iter().map(|d| d.attribute).collect();
        assert_eq!(attributes, ["json", "expression", "doNotUnsubscribe"]);
        assert_eq!(d.drift(&drifted)[0].found, "{\"fields\":[\"key\"]}");
    }
}
