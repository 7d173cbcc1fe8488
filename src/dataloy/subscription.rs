//! Dataloy's `WebhookSubscription` on the wire: what the list returns (read leniently, since
//! only an example of it is documented) and the body the gateway sends to create or update one.
//! The assumed shapes are listed in docs/subscriptions.md.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// What a subscription watches: changes of an object type, or an alert script's firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Object {
        object_type: String,
        event_type: String,
        /// Key of the one object watched, if any.
        dataloy_object: Option<String>,
    },
    AlertScript {
        script_code: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Object {
                object_type,
                event_type,
                dataloy_object: None,
            } => write!(f, "{object_type} {event_type}"),
            Target::Object {
                object_type,
                event_type,
                dataloy_object: Some(key),
            } => write!(f, "{object_type} {event_type} (object {key})"),
            Target::AlertScript { script_code } => write!(f, "alert script {script_code}"),
        }
    }
}

/// A subscription's key (`subscription.key` in notifications), kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SubscriptionKey(pub String);

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One element of `GET /WebhookSubscription`, normalised. An attribute the list left out is
/// `None` (unknown), which is different from one it sent as `null` (`Some(None)`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteSubscription {
    pub key: Option<SubscriptionKey>,
    /// Active: not marked inactive and without an `unsubscriptionDate`.
    pub active: bool,
    pub unsubscription_date: Option<String>,
    pub target: Option<Target>,
    pub channel_type: Option<String>,
    /// Where Dataloy delivers (`channelInfo.url`, else the top-level `url`).
    pub url: Option<String>,
    /// The `json` field selection, Base64 as Dataloy holds it.
    pub json: Option<Option<String>>,
    pub expression: Option<Option<String>>,
    pub do_not_unsubscribe: Option<bool>,
}

/// The attributes the gateway reads, as Dataloy sends them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    key: Option<Value>,
    is_subscription_active: Option<bool>,
    unsubscription_date: Option<Value>,
    object_type: Option<String>,
    event_type: Option<String>,
    dataloy_object: Option<Value>,
    dlp_alert_script: Option<Value>,
    channel_info: Option<WireChannel>,
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    json: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    expression: Option<Option<String>>,
    do_not_unsubscribe: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChannel {
    channel_type: Option<Value>,
    url: Option<String>,
}

/// Tells an attribute sent as `null` (`Some(None)`) from one left out (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A reference Dataloy may send as a number, a string or an object with `key`.
fn key_of(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("key").and_then(key_of),
        _ => None,
    }
}

/// A code Dataloy may send as a string or inside an object (`{"scriptCode": …}`).
fn code_of(value: &Value, member: &str) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get(member).and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for RemoteSubscription {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let unsubscription_date = match wire.unsubscription_date {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        let script = wire
            .dlp_alert_script
            .as_ref()
            .and_then(|s| code_of(s, "scriptCode"));
        let target = match (wire.object_type, wire.event_type, script) {
            (Some(object_type), Some(event_type), None) => Some(Target::Object {
                object_type,
                event_type,
                dataloy_object: wire.dataloy_object.as_ref().and_then(key_of),
            }),
            (None, _, Some(script_code)) => Some(Target::AlertScript { script_code }),
            _ => None,
        };
        let (channel_type, channel_url) = match wire.channel_info {
            Some(channel) => (
                channel
                    .channel_type
                    .as_ref()
                    .and_then(|t| code_of(t, "channelTypeCode")),
                channel.url,
            ),
            None => (None, None),
        };
        Ok(RemoteSubscription {
            key: wire.key.as_ref().and_then(key_of).map(SubscriptionKey),
            active: wire.is_subscription_active != Some(false) && unsubscription_date.is_none(),
            unsubscription_date,
            target,
            channel_type,
            url: channel_url.filter(|u| !u.is_empty()).or(wire.url),
            json: wire.json,
            expression: wire.expression,
            do_not_unsubscribe: wire.do_not_unsubscribe,
        })
    }
}

impl RemoteSubscription {
    /// The field selection as text, when `json` is valid Base64 of UTF-8.
    pub fn fields(&self) -> Option<String> {
        let encoded = self.json.as_ref()?.as_ref()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        String::from_utf8(bytes).ok()
    }
}

/// What the gateway wants a subscription to be; [`SubscriptionRequest::body`] is what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub target: Target,
    pub url: String,
    /// Field selection text (JSON); sent Base64.
    pub fields: Option<String>,
    pub expression: Option<String>,
    pub do_not_unsubscribe: bool,
}

impl SubscriptionRequest {
    /// Base64 of the field selection, as Dataloy's `json` attribute holds it.
    pub fn json(&self) -> Option<String> {
        self.fields
            .as_ref()
            .map(|f| base64::engine::general_purpose::STANDARD.encode(f.as_bytes()))
    }

    /// The request body: the assumed create shape, with `extra` merged in (objects deeply,
    /// `extra` winning). An update also sends unset attributes as `null`, to clear them.
    pub fn body(&self, extra: &Map<String, Value>, for_update: bool) -> Value {
        let mut body = Map::new();
        match &self.target {
            Target::Object {
                object_type,
                event_type,
                dataloy_object,
            } => {
                body.insert("objectType".into(), object_type.as_str().into());
                body.insert("eventType".into(), event_type.as_str().into());
                if let Some(key) = dataloy_object {
                    let key = key
                        .parse::<u64>()
                        .map_or_else(|_| Value::from(key.as_str()), Value::from);
                    body.insert("dataloyObject".into(), key);
                }
            }
            Target::AlertScript { script_code } => {
                body.insert(
                    "dlpAlertScript".into(),
                    serde_json::json!({ "scriptCode": script_code }),
                );
            }
        }
        body.insert(
            "channelInfo".into(),
            serde_json::json!({ "channelType": "HTTP", "url": self.url }),
        );
        for (name, value) in [
            ("json", self.json()),
            ("expression", self.expression.clone()),
        ] {
            match value {
                Some(value) => {
                    body.insert(name.into(), value.into());
                }
                None if for_update => {
                    body.insert(name.into(), Value::Null);
                }
                None => {}
            }
        }
        body.insert("doNotUnsubscribe".into(), self.do_not_unsubscribe.into());
        let mut body = Value::Object(body);
        merge(&mut body, &Value::Object(extra.clone()));
        body
    }
}

/// Merges `extra` into `base`: objects member by member, anything else replaced.
fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (name, value) in extra {
                match base.get_mut(name) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT_SAMPLE: &str =
        include_str!("../../tests/fixtures/bunker-order-line-alert-script.json");

    #[test]
    fn the_documented_alert_script_subscription_reads_as_an_active_email_subscription() {
        let notification: Value = serde_json::from_str(ALERT_SAMPLE).unwrap();
        let sub: RemoteSubscription =
            serde_json::from_value(notification["subscription"].clone()).unwrap();
        assert_eq!(sub.key, Some(SubscriptionKey("332501529".into())));
        assert!(sub.active);
        assert_eq!(
            sub.target,
            Some(Target::AlertScript {
                script_code: "BUP".into()
            })
        );
        assert_eq!(sub.channel_type.as_deref(), Some("EMAIL"));
        assert_eq!(sub.url.as_deref(), Some("ab@dataloy.com"));
        assert_eq!(sub.json, None, "left out, so unknown");
    }

    #[test]
    fn an_unsubscription_date_or_the_inactive_flag_means_deactivated() {
        let dated: RemoteSubscription = serde_json::from_value(serde_json::json!({
            "key": 1, "objectType": "PortCall", "eventType": "U",
            "isSubscriptionActive": true, "unsubscriptionDate": "2024-01-02T03:04:05"
        }))
        .unwrap();
        assert!(!dated.active);
        let flagged: RemoteSubscription = serde_json::from_value(serde_json::json!({
            "key": "2", "objectType": "PortCall", "eventType": "U", "isSubscriptionActive": false,
            "url": "http://gw/webhooks/dataloy", "json": null
        }))
        .unwrap();
        assert!(!flagged.active);
        assert_eq!(flagged.url.as_deref(), Some("http://gw/webhooks/dataloy"));
        assert_eq!(flagged.json, Some(None), "sent as null");
    }

    #[test]
    fn the_body_has_the_assumed_shape_and_extra_merges_deeply() {
        let request = SubscriptionRequest {
            target: Target::Object {
                object_type: "BunkerOrderLine".into(),
                event_type: "U".into(),
                dataloy_object: Some("320996749".into()),
            },
            url: "https://gw.example/webhooks/dataloy".into(),
            fields: Some("{\"extraCost\":\"*\"}".into()),
            expression: None,
            do_not_unsubscribe: true,
        };
        let extra = serde_json::json!({
            "channelInfo": {"channelType": {"channelTypeCode": "HTTP"}, "username": "dataloy"},
            "xsl": "PHhzbC8+"
        });
        let body = request.body(extra.as_object().unwrap(), false);
        assert_eq!(
            body,
            serde_json::json!({
                "objectType": "BunkerOrderLine",
                "eventType": "U",
                "dataloyObject": 320996749u64,
                "channelInfo": {
                    "channelType": {"channelTypeCode": "HTTP"},
                    "url": "https://gw.example/webhooks/dataloy",
                    "username": "dataloy"
                },
                "json": "eyJleHRyYUNvc3QiOiIqIn0=",
                "doNotUnsubscribe": true,
                "xsl": "PHhzbC8+"
            })
        );
        let update = request.body(&Map::new(), true);
        assert_eq!(update["expression"], Value::Null, "an update clears it");
    }
}
