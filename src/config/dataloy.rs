//! `[dataloy]` (how to reach Dataloy's REST API) and `[subscriptions.NAME]` (the webhook
//! subscriptions the gateway keeps alive there), with their validation beside them so that a
//! mistake names its key at start-up instead of failing at the first reconcile.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::FixedOffset;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{invalid, ConfigError};

/// Shortest `dataloy.reconcile_interval`: a shorter one would hammer Dataloy's API.
const MIN_RECONCILE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `dataloy.reconcile_interval`: a deactivation would go unnoticed for longer.
const MAX_RECONCILE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted subscription name; it becomes a metric label.
const MAX_NAME_CHARS: usize = 64;
/// Request-body members the gateway sets from a subscription's own keys; `extra` may not replace
/// them, or the subscription could never be recognised again and would be re-created forever.
pub const MANAGED_MEMBERS: &[&str] = &[
    "objectType",
    "eventType",
    "dataloyObject",
    "json",
    "expression",
    "doNotUnsubscribe",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataloySettings {
    /// Dataloy's address; resources live at `{base_url}/ws/rest/{Resource}`.
    pub base_url: String,
    /// OAuth2 token endpoint (client-credentials grant).
    pub token_url: String,
    pub client_id: String,
    /// Never logged, never in metrics, errors or `Debug` output.
    pub client_secret: SecretString,
    pub audience: Option<String>,
    /// How often the keeper compares Dataloy's subscriptions with the declared ones.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// After a failed reconcile the keeper retries sooner, starting here and doubling (with
    /// jitter) up to `reconcile_interval`.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest one request to Dataloy or the token endpoint may take, body included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest response body read from Dataloy.
    pub max_response_bytes: super::ByteSize,
    /// Query parameters added to the list request (e.g. a page size; Dataloy's paging of this
    /// resource is not documented).
    pub list_query: BTreeMap<String, String>,
    /// Delete subscriptions that point at one of the declared URLs but are not declared.
    pub prune: bool,
    /// Offset of Dataloy's zone-less timestamps (`unsubscriptionDate`), e.g. `+01:00`; used to
    /// measure the window of missed notifications.
    pub time_zone_offset: String,
}

impl Default for DataloySettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            token_url: String::new(),
            client_id: String::new(),
            client_secret: SecretString::from(""),
            audience: None,
            reconcile_interval: Duration::from_secs(60),
            retry_initial_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: super::ByteSize(16 * 1024 * 1024),
            list_query: BTreeMap::new(),
            prune: false,
            time_zone_offset: "+00:00".into(),
        }
    }
}

impl DataloySettings {
    /// The validated `time_zone_offset`.
    pub fn time_zone(&self) -> FixedOffset {
        self.time_zone_offset.parse().expect("validated at load")
    }
}

/// One `[subscriptions.NAME]` table: a webhook subscription Dataloy must keep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// Subscribed object type, with `event_type`; or `alert_script` instead of both.
    pub object_type: Option<String>,
    /// `C`, `U` or `D`.
    pub event_type: Option<String>,
    /// Key of the one object to watch (optional).
    pub dataloy_object: Option<u64>,
    /// Code of a Dataloy alert script, instead of `object_type`/`event_type`.
    pub alert_script: Option<String>,
    /// What Dataloy must call: this gateway's `/webhooks/dataloy`, as Dataloy reaches it.
    pub url: String,
    /// Field selection (JSON), sent Base64 as `json`.
    pub fields: Option<String>,
    /// Dataloy filter expression.
    pub expression: Option<String>,
    #[serde(default = "default_true")]
    pub do_not_unsubscribe: bool,
    /// Anything else Dataloy needs in the request body, merged into it (objects deeply).
    #[serde(default)]
    pub extra: ExtraMembers,
}

fn default_true() -> bool {
    true
}

/// The `extra` table; it may hold credentials (the HTTP channel's), so `Debug` shows its keys only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ExtraMembers(pub serde_json::Map<String, serde_json::Value>);

impl fmt::Debug for ExtraMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Checks `[dataloy]` and every `[subscriptions.NAME]`.
pub(super) fn validate(
    dataloy: Option<&DataloySettings>,
    subscriptions: &BTreeMap<String, SubscriptionSettings>,
) -> Result<(), ConfigError> {
    if let Some(dataloy) = dataloy {
        validate_dataloy(dataloy)?;
    } else if !subscriptions.is_empty() {
        return Err(invalid(
            "dataloy",
            "is missing: [subscriptions.*] are kept in Dataloy, so [dataloy] must say how to \
             reach it (base_url, token_url, client_id, client_secret)",
        ));
    }
    for (name, subscription) in subscriptions {
        validate_subscription(name, subscription)?;
    }
    Ok(())
}

fn validate_dataloy(dataloy: &DataloySettings) -> Result<(), ConfigError> {
    for (key, value) in [
        ("dataloy.base_url", &dataloy.base_url),
        ("dataloy.token_url", &dataloy.token_url),
    ] {
        let url = check_http_url(key, value)?;
        // Paths are appended to base_url: a query or fragment would swallow them.
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                key,
                "must not have a query (`?…`) or fragment (`#…`); Dataloy's paths are appended to it",
            ));
        }
    }
    if dataloy.client_id.trim().is_empty() {
        return Err(invalid("dataloy.client_id", "is required"));
    }
    if dataloy.client_secret.expose_secret().trim().is_empty() {
        return Err(invalid(
            "dataloy.client_secret",
            "is required (and not only whitespace)",
        ));
    }
    if dataloy.reconcile_interval < MIN_RECONCILE_INTERVAL
        || dataloy.reconcile_interval > MAX_RECONCILE_INTERVAL
    {
        return Err(invalid(
            "dataloy.reconcile_interval",
            "must be between 100ms and 24h",
        ));
    }
    if dataloy.retry_initial_backoff.is_zero()
        || dataloy.retry_initial_backoff > dataloy.reconcile_interval
    {
        return Err(invalid(
            "dataloy.retry_initial_backoff",
            "must be greater than 0 and at most dataloy.reconcile_interval",
        ));
    }
    for (key, value) in [
        ("dataloy.connect_timeout", dataloy.connect_timeout),
        ("dataloy.request_timeout", dataloy.request_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be greater than 0"));
        }
    }
    if dataloy.max_response_bytes.bytes() < 1024 {
        return Err(invalid(
            "dataloy.max_response_bytes",
            "must be at least 1KiB",
        ));
    }
    if dataloy.time_zone_offset.parse::<FixedOffset>().is_err() {
        return Err(invalid(
            "dataloy.time_zone_offset",
            format!(
                "`{}` is not an offset such as +00:00 or -05:00",
                dataloy.time_zone_offset
            ),
        ));
    }
    Ok(())
}

/// An absolute `http(s)` URL without credentials in it (they would end up in logs and errors).
fn check_http_url(key: &'static str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|_| invalid(key, format!("`{value}` is not an absolute http(s) URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key,
            format!("`{value}` is not an absolute http(s) URL"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not contain credentials (they would be logged)",
        ));
    }
    Ok(url)
}

fn validate_subscription(name: &str, sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let named = |what: &str| format!("(subscription `{name}`) {what}");
    let valid_name = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(invalid(
            "subscriptions",
            format!("has a subscription named `{name}`; use up to 64 letters, digits, '_' and '-'"),
        ));
    }
    match (&sub.object_type, &sub.event_type, &sub.alert_script) {
        (Some(object_type), Some(event_type), None) => {
            let identifier = !object_type.is_empty()
                && object_type
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !identifier {
                return Err(invalid(
                    "subscriptions.object_type",
                    named("must be a Dataloy object type such as BunkerOrder"),
                ));
            }
            if !matches!(event_type.as_str(), "C" | "U" | "D") {
                return Err(invalid(
                    "subscriptions.event_type",
                    named("must be C, U or D"),
                ));
            }
        }
        (None, None, Some(script)) => {
            if script.trim().is_empty() {
                return Err(invalid(
                    "subscriptions.alert_script",
                    named("must not be empty"),
                ));
            }
            if sub.dataloy_object.is_some() {
                return Err(invalid(
                    "subscriptions.dataloy_object",
                    named("applies to object_type subscriptions, not alert_script ones"),
                ));
            }
        }
        (_, _, Some(_)) => {
            return Err(invalid(
                "subscriptions.alert_script",
                named("replaces object_type and event_type; set either, not both"),
            ))
        }
        (None, _, None) => {
            return Err(invalid(
                "subscriptions.object_type",
                named("is required (with event_type), unless alert_script is set"),
            ))
        }
        (Some(_), None, None) => {
            return Err(invalid(
                "subscriptions.event_type",
                named("is required with object_type (C, U or D)"),
            ))
        }
    }
    check_http_url("subscriptions.url", &sub.url).map_err(|e| match e {
        ConfigError::Invalid { key, message } => invalid(key, named(&message)),
        other => other,
    })?;
    if let Some(fields) = &sub.fields {
        if serde_json::from_str::<serde_json::Value>(fields).map_or(true, |v| !v.is_object()) {
            return Err(invalid(
                "subscriptions.fields",
                named("must be a JSON object, e.g. '{\"extraCost\":\"*\"}'"),
            ));
        }
    }
    if sub
        .expression
        .as_deref()
        .is_some_and(|e| e.trim().is_empty())
    {
        return Err(invalid(
            "subscriptions.expression",
            named("is empty; leave it out to receive every change"),
        ));
    }
    if let Some(managed) = MANAGED_MEMBERS
        .iter()
        .find(|m| sub.extra.0.contains_key(**m))
    {
        return Err(invalid(
            "subscriptions.extra",
            named(&format!(
                "cannot set `{managed}`: the gateway sets it from the subscription's own keys"
            )),
        ));
    }
    let nested_managed = [("channelInfo", "url"), ("dlpAlertScript", "scriptCode")];
    for (object, member) in nested_managed {
        match sub.extra.0.get(object) {
            None => {}
            Some(serde_json::Value::Object(inner)) if !inner.contains_key(member) => {}
            Some(serde_json::Value::Object(_)) => {
                return Err(invalid(
                    "subscriptions.extra",
                    named(&format!(
                        "cannot set `{object}.{member}`: the gateway sets it from the subscription's own keys"
                    )),
                ))
            }
            Some(_) => {
                return Err(invalid(
                    "subscriptions.extra",
                    named(&format!("`{object}` must be a table (it is merged into the gateway's)")),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataloy() -> DataloySettings {
        DataloySettings {
            base_url: "https://dataloy.example".into(),
            token_url: "https://auth.example/oauth/token".into(),
            client_id: "gateway".into(),
            client_secret: SecretString::from("s3cret-value"),
            ..DataloySettings::default()
        }
    }

    fn subscription() -> SubscriptionSettings {
        SubscriptionSettings {
            object_type: Some("BunkerOrder".into()),
            event_type: Some("U".into()),
            dataloy_object: None,
            alert_script: None,
            url: "https://gateway.example/webhooks/dataloy".into(),
            fields: None,
            expression: None,
            do_not_unsubscribe: true,
            extra: ExtraMembers::default(),
        }
    }

    fn error_of(
        dataloy: Option<&DataloySettings>,
        name: &str,
        sub: SubscriptionSettings,
    ) -> String {
        let subs = BTreeMap::from([(name.to_owned(), sub)]);
        validate(dataloy, &subs).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_declaration_passes() {
        let subs = BTreeMap::from([("bunker-orders".to_owned(), subscription())]);
        validate(Some(&dataloy()), &subs).unwrap();
    }

    #[test]
    fn subscriptions_without_dataloy_name_the_missing_table() {
        assert!(error_of(None, "a", subscription()).contains("`dataloy`"));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let mut d = dataloy();
        d.base_url = "dataloy.example".into();
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.base_url`"));
        let mut d = dataloy();
        d.token_url = "https://user:pw@auth.example/token".into();
        let message = error_of(Some(&d), "a", subscription());
        assert!(message.contains("`dataloy.token_url`"), "{message}");
        assert!(!message.contains("pw@"), "{message}");
        for (url, query) in [
            ("https://dataloy.example/?a=b", true),
            ("https://dataloy.example#frag", true),
            ("https://dataloy.example/?", true),
            ("https://dataloy.example/base/", false),
        ] {
            let mut d = dataloy();
            d.base_url = url.into();
            let subs = BTreeMap::from([("a".to_owned(), subscription())]);
            match validate(Some(&d), &subs) {
                Err(e) if query => assert!(e.to_string().contains("`dataloy.base_url`"), "{e}"),
                Ok(()) if !query => {}
                other => panic!("{url}: {other:?}"),
            }
            let mut d = dataloy();
            d.token_url = url.into();
            match validate(Some(&d), &subs) {
                Err(e) if query => assert!(e.to_string().contains("`dataloy.token_url`"), "{e}"),
                Ok(()) if !query => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        let mut d = dataloy();
        d.client_secret = SecretString::from("");
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.client_secret`"));
        d.client_secret = SecretString::from(" \t ");
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.client_secret`"));
        let mut d = dataloy();
        d.reconcile_interval = Duration::from_millis(10);
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.reconcile_interval`"));
        d.reconcile_interval = Duration::from_secs(2 * 24 * 3600);
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.reconcile_interval`"));
        let mut d = dataloy();
        d.time_zone_offset = "CET".into();
        assert!(error_of(Some(&d), "a", subscription()).contains("`dataloy.time_zone_offset`"));

        let d = Some(dataloy());
        let d = d.as_ref();
        let mut s = subscription();
        s.event_type = Some("X".into());
        assert!(error_of(d, "a", s).contains("`subscriptions.event_type` (subscription `a`)"));
        let mut s = subscription();
        s.alert_script = Some("BUP".into());
        assert!(error_of(d, "a", s).contains("`subscriptions.alert_script`"));
        let mut s = subscription();
        s.object_type = None;
        s.event_type = None;
        assert!(error_of(d, "a", s).contains("`subscriptions.object_type`"));
        let mut s = subscription();
        s.url = "ftp://x/".into();
        assert!(error_of(d, "a", s).contains("`subscriptions.url` (subscription `a`)"));
        let mut s = subscription();
        s.fields = Some("[1]".into());
        assert!(error_of(d, "a", s).contains("`subscriptions.fields`"));
        let mut s = subscription();
        s.extra.0.insert("json".into(), "x".into());
        assert!(error_of(d, "a", s).contains("cannot set `json`"));
        let mut s = subscription();
        s.extra
            .0
            .insert("channelInfo".into(), serde_json::json!({"url": "x"}));
        assert!(error_of(d, "a", s).contains("cannot set `channelInfo.url`"));
        assert!(error_of(d, "bad name", subscription()).contains("`subscriptions`"));
    }

    #[test]
    fn a_declaration_loads_from_toml_with_extra_members_as_written_and_the_secret_from_the_environment(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            r#"
[sinks.file]
path = "events.jsonl"
[dataloy]
base_url = "https://dataloy.example"
token_url = "https://auth.example/oauth/token"
client_id = "gateway"
reconcile_interval = "2m"
[subscriptions.bunker-orders]
object_type = "BunkerOrder"
event_type = "U"
url = "https://gateway.example/webhooks/dataloy"
fields = '{"fields":["key","self"]}'
[subscriptions.bunker-orders.extra]
channelInfo = { channelType = { channelTypeCode = "HTTP" }, userName = "dataloy" }
"#,
        )
        .unwrap();
        let env = [(
            "DATALOY_GATEWAY__DATALOY__CLIENT_SECRET".to_owned(),
            "from-the-environment".to_owned(),
        )];
        let settings = crate::config::Settings::load_with_env(Some(&path), env).unwrap();
        let dataloy = settings.dataloy.unwrap();
        assert_eq!(
            dataloy.client_secret.expose_secret(),
            "from-the-environment"
        );
        assert_eq!(dataloy.reconcile_interval, Duration::from_secs(120));
        let orders = &settings.subscriptions["bunker-orders"];
        assert!(orders.do_not_unsubscribe, "the default");
        assert_eq!(
            serde_json::Value::Object(orders.extra.0.clone()),
            serde_json::json!({"channelInfo": {"channelType": {"channelTypeCode": "HTTP"}, "userName": "dataloy"}})
        );
    }

    #[test]
    fn a_toml_syntax_error_names_line_and_key_without_quoting_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        for broken in [
            r#"client_secret = "S3cr3t-Sh0uld-N3ver-Leak"#,
            r#"client_secret = "S3cr3t-Sh0uld"-N3ver-Leak""#,
            "client_secret = S3cr3t-Sh0uld-N3ver-Leak",
        ] {
            let text = format!(
                "[sinks.file]\npath = \"events.jsonl\"\n[dataloy]\nclient_id = \"gateway\"\n{broken}\n"
            );
            std::fs::write(&path, text).unwrap();
            let error = crate::config::Settings::load_with_env(Some(&path), [])
                .unwrap_err()
                .to_string();
            assert!(!error.contains("Sh0uld"), "{error}");
            assert!(!error.contains("N3ver"), "{error}");
            assert!(error.contains("line 5"), "{error}");
            assert!(error.contains("`dataloy.client_secret`"), "{error}");
        }
    }

    #[test]
    fn debug_output_shows_neither_the_secret_nor_extra_values() {
        let mut s = subscription();
        s.extra.0.insert(
            "channelInfo".into(),
            serde_json::json!({"password": "hunter2"}),
        );
        let text = format!("{:?} {:?}", dataloy(), s);
        assert!(!text.contains("s3cret-value"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("channelInfo"), "{text}");
    }
}
