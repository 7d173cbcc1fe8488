//! The OpenAPI document (`openapi/dataloy-gateway.yaml`) and the gateway agree, both ways:
//! - the envelope schema, with the rules its `x-` keywords state, gives the gateway's own verdict
//!   and blames the member the gateway names, on the documented samples, the validation table,
//!   the fuzz corpus and boundary cases posted to the real server, and on generated envelopes;
//! - every answer the gateway gave matches the response the document gives for its status;
//! - every route either listener serves is documented, on its listener, and nothing else is;
//!   other methods get 405 with `Allow`; the admin listener serves the document of this build.
//!
//! Schemathesis attacks the same document from outside (`scripts/schemathesis.sh`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::routes::openapi::{DOCUMENT, MEDIA_TYPE};
use dataloy_gateway::routes::{Endpoint, Listener};
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Keyword, ValidationError, Validator};
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::validation::{accepted_variants, violations};

fn document() -> Value {
    yaml_serde::from_str(DOCUMENT).expect("the document is YAML")
}

/// What the document says about a body.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// Invalid, blaming these envelope members (none when the body is not one JSON text whose
    /// envelope members are unique, or not an object).
    Invalid(BTreeSet<String>),
}

/// The envelope schema `components.schemas.Notification`, with the rules the document states in
/// `x-` keywords because JSON Schema cannot: a UTF-8 byte limit, integers written as such, a
/// nesting limit and members that may not repeat. The body must also be one JSON text that
/// `serde_json::Value` reads (RFC 7493, I-JSON), as the schema's description says.
struct EnvelopeContract {
    schema: Validator,
    max_nesting: usize,
    unique_members: Vec<String>,
    unique_in_subscription: Vec<String>,
}

impl EnvelopeContract {
    fn from_document(document: &Value) -> Self {
        let envelope = &document["components"]["schemas"]["Notification"];
        let schema = jsonschema::draft202012::options()
            .with_keyword("x-maxUtf8Bytes", |_, value, _| {
                let limit = value
                    .as_u64()
                    .ok_or_else(|| ValidationError::schema("x-maxUtf8Bytes is a count"))?;
                Ok(Box::new(MaxUtf8Bytes(limit as usize)) as Box<dyn Keyword>)
            })
            .with_keyword("x-integerLiteral", |_, _, _| Ok(Box::new(IntegerLiteral)))
            .build(envelope)
            .expect("the envelope schema compiles");
        let names = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .expect("x-uniqueMembers lists names")
                .iter()
                .map(|name| name.as_str().unwrap().to_owned())
                .collect()
        };
        Self {
            schema,
            max_nesting: envelope["x-maxNesting"].as_u64().expect("x-maxNesting") as usize,
            unique_members: names(&envelope["x-uniqueMembers"]),
            unique_in_subscription: names(
                &envelope["properties"]["subscription"]["x-uniqueMembers"],
            ),
        }
    }

    fn verdict(&self, body: &[u8]) -> Verdict {
        let unreadable = Verdict::Invalid(BTreeSet::new());
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return unreadable;
        };
        let members = std::str::from_utf8(body).ok().and_then(members);
        if depth(&value) > self.max_nesting
            || members
                .as_ref()
                .is_some_and(|m| repeats(m, &self.unique_members))
        {
            return unreadable;
        }
        let mut invalid = false;
        let mut blamed = BTreeSet::new();
        for error in self.schema.iter_errors(&value) {
            invalid = true;
            blamed.extend(blamed_member(&error));
        }
        let subscription = members
            .iter()
            .flatten()
            .filter(|(name, _)| name == "subscription")
            .find_map(|(_, raw)| self::members(raw.get()));
        if subscription.is_some_and(|s| repeats(&s, &self.unique_in_subscription)) {
            invalid = true;
            blamed.insert("subscription".to_owned());
        }
        if invalid {
            Verdict::Invalid(blamed)
        } else {
            Verdict::Valid
        }
    }
}

/// `x-maxUtf8Bytes`: a string is at most this many bytes in UTF-8.
struct MaxUtf8Bytes(usize);

impl Keyword for MaxUtf8Bytes {
    fn validate<'i>(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        if self.is_valid(instance) {
            Ok(())
        } else {
            Err(ValidationError::custom(format!(
                "more than {} bytes of UTF-8",
                self.0
            )))
        }
    }

    fn is_valid(&self, instance: &Value) -> bool {
        instance.as_str().is_none_or(|s| s.len() <= self.0)
    }
}

/// `x-integerLiteral`: a number is written without fraction or exponent (`serde_json` reads
/// those, and only those, as integers).
struct IntegerLiteral;

impl Keyword for IntegerLiteral {
    fn validate<'i>(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        if self.is_valid(instance) {
            Ok(())
        } else {
            Err(ValidationError::custom("not written as an integer"))
        }
    }

    fn is_valid(&self, instance: &Value) -> bool {
        !instance.is_number() || instance.is_i64() || instance.is_u64()
    }
}

/// The top-level member an error is about: the missing one, or the first step of its path.
fn blamed_member(error: &ValidationError<'_>) -> Option<String> {
    let path = error.instance_path().as_str();
    if let (ValidationErrorKind::Required { property }, "") = (error.kind(), path) {
        return property.as_str().map(str::to_owned);
    }
    let step = path.split('/').nth(1)?;
    Some(step.replace("~1", "/").replace("~0", "~"))
}

/// Levels of arrays and objects (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// An object's members in order, repeats kept, names decoded; `None` for anything else.
fn members(json: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Members(Vec<(String, Box<RawValue>)>);
    impl<'de> Deserialize<'de> for Members {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Each;
            impl<'de> Visitor<'de> for Each {
                type Value = Members;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                    let mut members = Vec::new();
                    while let Some(name) = map.next_key::<String>()? {
                        members.push((name, map.next_value::<Box<RawValue>>()?));
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(Each)
        }
    }
    serde_json::from_str::<Members>(json).ok().map(|m| m.0)
}

fn repeats(members: &[(String, Box<RawValue>)], unique: &[String]) -> bool {
    unique
        .iter()
        .any(|name| members.iter().filter(|(n, _)| n == name).count() > 1)
}

/// The gateway's verdict agrees with the document's: accepted exactly when valid; when invalid,
/// the member the answer names is one the document blames, and no member is named when the
/// document blames none.
fn assert_agree(name: &str, verdict: &Verdict, status: u16, answer: &Value) {
    match verdict {
        Verdict::Valid => assert_eq!(status, 200, "{name}: the document calls it valid: {answer}"),
        Verdict::Invalid(blamed) => {
            assert_eq!(
                status, 400,
                "{name}: the document calls it invalid ({blamed:?}): {answer}"
            );
            match answer["error"]["field"].as_str() {
                Some(field) => assert!(
                    blamed.contains(field),
                    "{name}: the gateway names `{field}`, the document blames {blamed:?}"
                ),
                None => assert!(
                    blamed.is_empty(),
                    "{name}: the gateway names no field, the document blames {blamed:?}: {answer}"
                ),
            }
        }
    }
}

/// The documented schema of one response, resolved inside the whole document.
fn response_schema(document: &Value, path: &str, method: &str, status: u16) -> Validator {
    let pointer = format!(
        "#/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        path.replace('/', "~1")
    );
    let mut root = document.clone();
    root["$ref"] = Value::from(pointer);
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("{method} {path} documents {status}: {e}"))
}

fn assert_matches(schema: &Validator, what: &str, answer: &Value) {
    let errors: Vec<String> = schema.iter_errors(answer).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {answer} breaks the document: {errors:?}"
    );
}

/// Bodies at the edges of each rule, the ones JSON Schema alone would misjudge among them.
fn boundary_cases() -> Vec<(String, Vec<u8>)> {
    let body = |id: &str, members: &str| {
        format!(
            r#"{{"id":{},"eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"U","subscription":{{}},{members}}}"#,
            json!(id)
        )
        .into_bytes()
    };
    let object = |n: &str| body("edge", &format!(r#""dataloyObject":{n}"#));
    let with_id = |id: String| body(&id, r#""dataloyObject":1"#);
    let time = |t: &str| {
        format!(r#"{{"id":"t","eventTime":{},"objectType":"X","eventType":"U","dataloyObject":1,"subscription":{{}}}}"#, json!(t)).into_bytes()
    };
    let nested = |levels: usize| {
        body(
            "deep",
            &format!(
                r#""dataloyObject":1,"resource":{{"a":{}1{}}}"#,
                "[".repeat(levels - 2),
                "]".repeat(levels - 2)
            ),
        )
    };
    let mut cases = vec![
        ("id of 32 emoji, 128 bytes", with_id("\u{1F600}".repeat(32))),
        ("id of 33 emoji, 132 bytes", with_id("\u{1F600}".repeat(33))),
        ("id of 128 é, 256 bytes in 128 characters", with_id("é".repeat(128))),
        ("id of 64 é, 128 bytes", with_id("é".repeat(64))),
        ("id with a C1 control", with_id("a\u{85}b".into())),
        ("id with DEL", with_id("a\u{7f}b".into())),
        ("id with a zero-width space", with_id("a\u{200b}b".into())),
        ("id with a trailing newline", with_id("ab\n".into())),
        ("id of spaces", with_id("   ".into())),
        ("dataloyObject 1.0", object("1.0")),
        ("dataloyObject 1e2", object("1e2")),
        ("dataloyObject -0", object("-0")),
        ("dataloyObject i64::MAX", object("9223372036854775807")),
        ("dataloyObject i64::MAX + 1", object("9223372036854775808")),
        ("dataloyObject i64::MIN", object("-9223372036854775808")),
        ("dataloyObject i64::MIN - 1", object("-9223372036854775809")),
        ("dataloyObject true", object("true")),
        ("dataloyObject 1e400", object("1e400")),
        ("eventTime 29 February 2000", time("2000-02-29T00:00:00")),
        ("eventTime 29 February 1900", time("1900-02-29T00:00:00")),
        ("eventTime 29 February 0004", time("0004-02-29T00:00:00")),
        ("eventTime 31 April", time("2016-04-31T00:00:00")),
        ("eventTime with a trailing newline", time("2016-09-14T13:37:26\n")),
        ("eventTime with 9 fraction digits and an offset", time("2016-09-14T13:37:26.123456789+23:59")),
        ("eventTime with 10 fraction digits", time("2016-09-14T13:37:26.1234567890")),
        ("eventTime with full-width digits", time("２０16-09-14T13:37:26")),
        ("eventTime with offset +24:00", time("2016-09-14T13:37:26+24:00")),
        ("nesting 127", nested(127)),
        ("nesting 128", nested(128)),
        ("id twice", body("a", r#""dataloyObject":1,"id":"b""#)),
        ("id twice, once escaped", body("a", r#""dataloyObject":1,"i\u0064":"b""#)),
        ("resource twice", body("a", r#""dataloyObject":1,"resource":{},"resource":null"#)),
        ("another member twice", body("a", r#""dataloyObject":1,"x":1,"x":2"#)),
        ("dataloyObjectSelf twice", body("a", r#""dataloyObject":1,"dataloyObjectSelf":1,"dataloyObjectSelf":2"#)),
        ("subscription key twice", br#"{"id":"s","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"U","dataloyObject":1,"subscription":{"key":1,"k\u0065y":2}}"#.to_vec()),
        ("lone surrogate in resource", body("a", r#""dataloyObject":1,"resource":{"s":"\ud800"}"#)),
    ];
    let object_type = |len: usize| {
        format!(r#"{{"id":"o","eventTime":"2016-09-14T13:37:26","objectType":"{}","eventType":"U","dataloyObject":1,"subscription":{{}}}}"#, "T".repeat(len)).into_bytes()
    };
    cases.push(("objectType of 128 characters", object_type(128)));
    cases.push(("objectType of 129 characters", object_type(129)));
    cases
        .into_iter()
        .map(|(name, body)| (name.to_owned(), body))
        .collect()
}

/// Every committed input of the envelope fuzz targets (corpus and regressions).
fn fuzz_inputs() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus/envelope_parse", "regressions/envelope_parse"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("fuzz/{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = format!("fuzz/{dir}/{}", path.file_name().unwrap().to_string_lossy());
            inputs.push((name, std::fs::read(&path).unwrap()));
        }
    }
    assert!(inputs.len() > 100, "the fuzz corpus is there");
    inputs
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut fixtures: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = format!("fixture {}", path.file_name().unwrap().to_string_lossy());
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 2, "the documented samples are there");
    fixtures
}

#[tokio::test]
async fn the_envelope_schema_and_the_gateway_give_the_same_verdict() {
    // Arrange
    let document = document();
    let contract = EnvelopeContract::from_document(&document);
    let answers = |status| response_schema(&document, "/webhooks/dataloy", "post", status);
    let (accepted, invalid) = (answers(200), answers(400));
    let app = spawn_app().await;
    let mut cases = fixtures();
    for (name, body) in accepted_variants() {
        cases.push((format!("accepted variant: {name}"), body));
    }
    for (name, body, _, _) in violations() {
        cases.push((format!("violation: {name}"), body));
    }
    cases.extend(boundary_cases());
    cases.extend(fuzz_inputs());
    let (mut valid, mut refused) = (0, 0);

    for (name, body) in &cases {
        // Act
        let verdict = contract.verdict(body);
        let response = app.post(body.clone()).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("a JSON answer");

        // Assert
        assert_agree(name, &verdict, status, &answer);
        if status == 200 {
            assert_matches(&accepted, name, &answer);
            valid += 1;
        } else {
            assert_matches(&invalid, name, &answer);
            refused += 1;
        }
    }
    assert!(
        valid >= 20 && refused >= 150,
        "{valid} valid, {refused} refused"
    );
}

/// The documented samples are valid without help from the `x-` rules too.
#[test]
fn the_documented_samples_and_examples_are_valid() {
    let document = document();
    let contract = EnvelopeContract::from_document(&document);
    let examples = &document["paths"]["/webhooks/dataloy"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"];
    let examples = examples.as_object().expect("the request has examples");
    assert!(!examples.is_empty());
    for (name, example) in examples {
        let body = serde_json::to_vec(&example["value"]).unwrap();
        assert_eq!(contract.verdict(&body), Verdict::Valid, "example {name}");
        assert!(Envelope::parse(&body).is_ok(), "example {name}");
    }
    for (name, body) in fixtures() {
        assert_eq!(contract.verdict(&body), Verdict::Valid, "{name}");
    }
}

/// The seven envelope members, each drawn from values that keep its rule (mostly) or sit at and
/// around its edges, as JSON text (`None`: absent). About one envelope in five is valid.
fn envelope_members() -> impl Strategy<Value = [Option<String>; 7]> {
    let text = |s: String| Some(json!(s).to_string());
    let id = prop_oneof![
        3 => "[A-Za-z0-9-]{1,64}".prop_map(text),
        1 => "[A-Za-z0-9-]{120,130}".prop_map(text),
        1 => (
            proptest::sample::select(vec!["é", "😀", "中", "a", "\u{85}", "\u{200b}", "\n", "\u{7f}", " "]),
            20usize..70
        )
            .prop_map(move |(c, n)| Some(json!(c.repeat(n)).to_string())),
        1 => "\\PC{0,6}".prop_map(text),
        1 => proptest::sample::select(vec![
            None,
            Some("null".to_owned()),
            Some("\"\"".into()),
            Some("7".into())
        ]),
    ];
    let event_time = prop_oneof![
        // Real dates but for the 29th to 31st of short months and year 0000.
        4 => "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
            .prop_map(text),
        // Every field one past its range, now and then.
        1 => "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])T([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,10})?(Z|z|[+-]([01][0-9]|2[0-5]):[0-6][0-9]| |\n)?"
            .prop_map(text),
        1 => "\\PC{0,4}".prop_map(text),
        1 => proptest::sample::select(vec![
            None,
            Some("null".to_owned()),
            Some("20160914".into())
        ]),
    ];
    let object_type = prop_oneof![
        4 => "[A-Za-z_][A-Za-z0-9_]{0,8}".prop_map(text),
        1 => "[A-Za-z_][A-Za-z0-9_]{125,130}".prop_map(text),
        1 => "[A-Za-z0-9_ .é-]{0,4}".prop_map(text),
        1 => proptest::sample::select(vec![None, Some("null".to_owned()), Some("{}".into())]),
    ];
    let event_type = prop_oneof![
        6 => proptest::sample::select(vec!["\"C\"", "\"U\"", "\"D\""]).prop_map(|t| Some(t.to_owned())),
        1 => proptest::sample::select(vec![
            Some("\"u\"".to_owned()),
            Some("\"X\"".into()),
            Some("\"\"".into()),
            Some("1".into()),
            None,
        ]),
    ];
    let dataloy_object = prop_oneof![
        5 => any::<i64>().prop_map(|n| Some(n.to_string())),
        1 => proptest::sample::select(vec![
            Some("1.0".to_owned()),
            Some("1e2".into()),
            Some("-0".into()),
            Some("0.5".into()),
            Some("9223372036854775807".into()),
            Some("9223372036854775808".into()),
            Some("-9223372036854775809".into()),
            Some("\"1\"".into()),
            Some("null".into()),
            None,
        ]),
    ];
    let subscription = prop_oneof![
        5 => proptest::sample::select(vec![
            Some("{}".to_owned()),
            Some(r#"{"key":1}"#.into()),
            Some(r#"{"key":"k","objectType":null}"#.into()),
            Some(r#"{"a":{"key":1},"b":{"key":2}}"#.into()),
        ]),
        1 => proptest::sample::select(vec![
            Some(r#"{"key":1,"key":2}"#.to_owned()),
            Some(r#"{"k\u0065y":1,"key":2}"#.into()),
            Some("[]".into()),
            Some("\"s\"".into()),
            Some("null".into()),
            None,
        ]),
    ];
    let resource = prop_oneof![
        5 => proptest::sample::select(vec![
            None,
            Some("null".to_owned()),
            Some("{}".into()),
            Some(r#"{"a":[[{"b":null}]]}"#.into()),
        ]),
        1 => proptest::sample::select(vec![Some("[]".to_owned()), Some("1".into())]),
    ];
    (
        id,
        event_time,
        object_type,
        event_type,
        dataloy_object,
        subscription,
        resource,
    )
        .prop_map(|(a, b, c, d, e, f, g)| [a, b, c, d, e, f, g])
}

const MEMBERS: [&str; 7] = [
    "id",
    "eventTime",
    "objectType",
    "eventType",
    "dataloyObject",
    "subscription",
    "resource",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    /// Generated envelopes, most of them broken in one or more members: the document's verdict
    /// is the parser's (what the server answers, as the test above shows for every kind of rule).
    #[test]
    fn generated_envelopes_get_the_same_verdict_from_the_document(
        values in envelope_members(),
        repeated in proptest::option::weighted(0.1, 0usize..7),
    ) {
        thread_local! {
            static CONTRACT: EnvelopeContract = EnvelopeContract::from_document(&document());
        }
        let mut members: Vec<String> = MEMBERS
            .iter()
            .zip(&values)
            .filter_map(|(name, value)| value.as_ref().map(|v| format!("\"{name}\":{v}")))
            .collect();
        if let Some(i) = repeated.filter(|&i| i < members.len()) {
            let again = members[i].clone();
            members.push(again);
        }
        let body = format!("{{{}}}", members.join(","));

        let verdict = CONTRACT.with(|c| c.verdict(body.as_bytes()));
        let parsed = Envelope::parse(body.as_bytes());

        match (&verdict, &parsed) {
            (Verdict::Valid, Ok(_)) => {}
            (Verdict::Invalid(blamed), Err(e)) => match e.field() {
                Some(field) => prop_assert!(blamed.contains(field), "{body}: {e} but {blamed:?}"),
                None => prop_assert!(blamed.is_empty(), "{body}: {e} but {blamed:?}"),
            },
            _ => prop_assert!(false, "{body}: the document says {verdict:?}, the gateway {parsed:?}"),
        }
    }
}

/// `(METHOD, path, listener)` of every operation in the document, the listener read from the
/// path's server (`{port}`: the notification listener, `{admin_port}`: the admin listener).
fn documented_operations(document: &Value) -> BTreeSet<(String, String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        let server = item["servers"][0]["url"]
            .as_str()
            .expect("each path names its listener");
        let listener = match server {
            "http://{host}:{port}" => "notification",
            "http://{host}:{admin_port}" => "admin",
            other => panic!("{path}: unknown server {other}"),
        };
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone(), listener.to_owned()));
            }
        }
    }
    operations
}

fn listener_name(listener: Listener) -> &'static str {
    match listener {
        Listener::Notification => "notification",
        Listener::Admin => "admin",
    }
}

#[tokio::test]
async fn every_route_served_is_documented_and_nothing_else() {
    // Arrange
    let document = document();
    let app = spawn_app().await;
    let served: BTreeSet<(String, String, String)> = Endpoint::ALL
        .iter()
        .map(|e| {
            let listener = listener_name(e.listener()).to_owned();
            (e.method().to_string(), e.path().to_owned(), listener)
        })
        .collect();
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
    ];
    let error = {
        let mut root = document.clone();
        root["$ref"] = json!("#/components/schemas/Error");
        jsonschema::draft202012::new(&root).unwrap()
    };

    // Assert: the document's operations are the routes registered.
    assert_eq!(documented_operations(&document), served);

    for endpoint in Endpoint::ALL {
        let base = match endpoint.listener() {
            Listener::Notification => &app.address,
            Listener::Admin => &app.admin_address,
        };
        let url = format!("{base}{}", endpoint.path());
        let documented = &document["paths"][endpoint.path()];
        for method in methods {
            // Act
            let request = app.client.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            );
            let request = if method == "POST" {
                request.body(minimal(&unique("route")))
            } else {
                request
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();

            // Assert: served as documented, and 405 with `Allow` for any other method.
            match documented.get(method.to_lowercase()) {
                Some(operation) => assert!(
                    operation["responses"].get(status.to_string()).is_some(),
                    "{method} {url}: {status} is not documented"
                ),
                None => {
                    assert_eq!(status, 405, "{method} {url}");
                    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
                    assert_eq!(allow, endpoint.method().as_str(), "{method} {url}");
                    if method != "HEAD" {
                        let body: Value = response.json().await.unwrap();
                        assert_eq!(body["error"]["code"], "method_not_allowed");
                        assert_matches(&error, &format!("{method} {url}"), &body);
                    }
                }
            }
        }
        // The other listener does not serve it.
        let other = match endpoint.listener() {
            Listener::Notification => &app.admin_address,
            Listener::Admin => &app.address,
        };
        let elsewhere = app
            .client
            .request(
                reqwest::Method::from_bytes(endpoint.method().as_str().as_bytes()).unwrap(),
                format!("{other}{}", endpoint.path()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            elsewhere.status(),
            404,
            "{} on the other listener",
            endpoint.path()
        );
    }
    for base in [&app.address, &app.admin_address] {
        for path in [
            "/",
            "/webhooks",
            "/webhooks/dataloy/",
            "/health",
            "/openapi.json",
        ] {
            let response = app
                .client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{base}{path}");
            let body: Value = response.json().await.unwrap();
            assert_matches(&error, path, &body);
        }
    }
}

#[tokio::test]
async fn the_admin_listener_serves_the_document_of_this_build() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(format!("{}/openapi.yaml", app.admin_address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], MEDIA_TYPE);
    assert_eq!(response.text().await.unwrap(), DOCUMENT);
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
}
