//! A fake Dataloy for the subscription keeper's tests: a real HTTP server on 127.0.0.1 with the
//! OAuth2 token endpoint (tokens that expire, "Token expired." answers) and the
//! `WebhookSubscription` resource in the shapes docs/subscriptions.md assumes. Like Dataloy it
//! POSTs notifications to each active subscription's URL and deactivates a subscription after a
//! configurable number of failed deliveries. Also an in-test TCP proxy, to cut the path from
//! Dataloy to the gateway.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub const CLIENT_ID: &str = "gateway";
pub const AUDIENCE: &str = "https://dataloy";

#[derive(Clone)]
pub struct FakeOptions {
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// Failed deliveries after which a subscription is deactivated.
    pub failures_before_deactivation: u32,
    /// Dataloy before 6.10 knows no `doNotUnsubscribe` and deactivates regardless.
    pub honours_do_not_unsubscribe: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            client_secret: "fake-dataloy-secret".into(),
            token_lifetime: Duration::from_secs(3600),
            failures_before_deactivation: 5,
            honours_do_not_unsubscribe: true,
        }
    }
}

/// A request to the `WebhookSubscription` resource.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
}

struct Subscription {
    value: Value,
    failures: u32,
}

struct State {
    options: FakeOptions,
    base: String,
    next_key: u64,
    subscriptions: Vec<Subscription>,
    /// Token -> when it expires; `None` once expired by the test.
    tokens: HashMap<String, Option<Instant>>,
    tokens_issued: u32,
    token_refusals: u32,
    expired_refusals: u32,
    requests: Vec<Recorded>,
    refuse_creates: bool,
    /// Answers creates 201 without keeping the subscription (a lost create).
    lose_creates: bool,
    /// Answers every valid token request with this body instead of a token.
    token_answer: Option<Value>,
    /// Answers the list with this body instead of the subscriptions held.
    list_answer: Option<Value>,
}

pub struct FakeDataloy {
    pub base_url: String,
    pub token_url: String,
    state: Arc<Mutex<State>>,
    handle: ServerHandle,
    http: reqwest::Client,
}

impl FakeDataloy {
    pub async fn start(options: FakeOptions) -> FakeDataloy {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), options).await
    }

    /// Starts on `port` (one a test kept closed until now).
    pub async fn start_at(port: u16, options: FakeOptions) -> FakeDataloy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
        Self::start_on(listener, options).await
    }

    async fn start_on(listener: TcpListener, options: FakeOptions) -> FakeDataloy {
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            options,
            base: base_url.clone(),
            next_key: 243_885_046,
            subscriptions: Vec::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            token_refusals: 0,
            expired_refusals: 0,
            requests: Vec::new(),
            refuse_creates: false,
            lose_creates: false,
            token_answer: None,
            list_answer: None,
        }));
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/oauth/token", web::post().to(token))
                .route("/ws/rest/WebhookSubscription", web::get().to(list))
                .route("/ws/rest/WebhookSubscription", web::post().to(create))
                .route("/ws/rest/WebhookSubscription/{key}", web::put().to(update))
                .route(
                    "/ws/rest/WebhookSubscription/{key}",
                    web::delete().to(delete),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeDataloy {
            token_url: format!("{base_url}/oauth/token"),
            base_url,
            state,
            handle,
            // A fresh connection per delivery, so a cut network (see `Proxy`) fails it.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    /// The subscriptions as `GET /WebhookSubscription` returns them.
    pub fn subscriptions(&self) -> Vec<Value> {
        let state = self.state.lock();
        state
            .subscriptions
            .iter()
            .map(|s| s.value.clone())
            .collect()
    }

    pub fn active_subscriptions(&self) -> Vec<Value> {
        self.subscriptions()
            .into_iter()
            .filter(|s| s["isSubscriptionActive"] == true)
            .collect()
    }

    /// Adds a subscription as if someone had created it earlier; `attributes` are merged into
    /// an active HTTP subscription for `object_type`/`event_type` at `url`. Returns its key.
    pub fn seed(&self, object_type: &str, event_type: &str, url: &str, attributes: Value) -> u64 {
        let mut state = self.state.lock();
        let body = json!({
            "objectType": object_type, "eventType": event_type,
            "channelInfo": {"channelType": "HTTP", "url": url}, "doNotUnsubscribe": false
        });
        let key = state.insert(&body);
        let value = &mut state.subscriptions.last_mut().unwrap().value;
        for (name, attribute) in attributes.as_object().unwrap() {
            value[name] = attribute.clone();
        }
        key
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().requests.clone()
    }

    pub fn list_calls(&self) -> usize {
        self.requests().iter().filter(|r| r.method == "GET").count()
    }

    /// Creates, updates and deletes received.
    pub fn changes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn tokens_issued(&self) -> u32 {
        self.state.lock().tokens_issued
    }

    pub fn token_refusals(&self) -> u32 {
        self.state.lock().token_refusals
    }

    /// Requests refused with "Token expired.".
    pub fn expired_refusals(&self) -> u32 {
        self.state.lock().expired_refusals
    }

    /// Every token issued so far expires now.
    pub fn expire_tokens(&self) {
        for expiry in self.state.lock().tokens.values_mut() {
            *expiry = None;
        }
    }

    pub fn set_client_secret(&self, secret: &str) {
        self.state.lock().options.client_secret = secret.to_owned();
    }

    pub fn refuse_creates(&self, refuse: bool) {
        self.state.lock().refuse_creates = refuse;
    }

    /// Creates answer 201 but the subscription never shows in the list.
    pub fn lose_creates(&self, lose: bool) {
        self.state.lock().lose_creates = lose;
    }

    /// A valid token request is answered 200 with `body` (e.g. a malformed token response).
    pub fn answer_tokens_with(&self, body: Value) {
        self.state.lock().token_answer = Some(body);
    }

    /// The list is answered with `body`, whatever the fake holds.
    pub fn answer_list_with(&self, body: Value) {
        self.state.lock().list_answer = Some(body);
    }

    /// Sends notification `id` about a `object_type`/`event_type` change to every active
    /// subscription for it, as Dataloy does; counts failures and deactivates as configured.
    /// Returns the status each delivery got (0 when the connection failed).
    pub async fn notify(&self, object_type: &str, event_type: &str, id: &str) -> Vec<u16> {
        let targets: Vec<(u64, String, Value)> = {
            let state = self.state.lock();
            state
                .subscriptions
                .iter()
                .filter(|s| {
                    s.value["isSubscriptionActive"] == true
                        && s.value["objectType"] == object_type
                        && s.value["eventType"] == event_type
                })
                .map(|s| {
                    let key = s.value["key"].as_u64().unwrap();
                    let url = s.value["channelInfo"]["url"].as_str().unwrap().to_owned();
                    let body = json!({
                        "id": id,
                        "eventTime": "2016-09-14T13:37:26",
                        "objectType": object_type,
                        "eventType": event_type,
                        "dataloyObject": 244070007,
                        "dataloyObjectSelf": format!("{}/ws/rest/{object_type}/244070007", state.base),
                        "subscription": {
                            "key": key,
                            "self": s.value["self"],
                            "objectType": object_type,
                            "dataloyObject": null,
                            "eventType": event_type,
                            "url": url,
                        },
                        "resource": {"key": 244070007, "self": format!("{}/ws/rest/{object_type}/244070007", state.base)}
                    });
                    (key, url, body)
                })
                .collect()
        };
        let mut statuses = Vec::new();
        for (key, url, body) in targets {
            let status = match self.http.post(&url).json(&body).send().await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            };
            self.state
                .lock()
                .delivered(key, (200..300).contains(&status));
            statuses.push(status);
        }
        statuses
    }
}

impl State {
    /// Stores a subscription made from a create body, in the shape the list returns.
    fn insert(&mut self, body: &Value) -> u64 {
        self.next_key += 1;
        let key = self.next_key;
        let base = &self.base;
        let channel_type = match &body["channelInfo"]["channelType"] {
            Value::String(code) => code.clone(),
            other => other["channelTypeCode"]
                .as_str()
                .unwrap_or("HTTP")
                .to_owned(),
        };
        let script = body["dlpAlertScript"]["scriptCode"].as_str().map(|code| {
            json!({"key": 318269643, "self": format!("{base}/ws/rest/DlpAlertScript/318269643"),
                   "scriptCode": code, "scriptName": "Bunkered Unit Price updated"})
        });
        let value = json!({
            "key": key,
            "self": format!("{base}/ws/rest/WebhookSubscription/{key}"),
            "isSubscriptionActive": true,
            "user": {"key": 999999, "self": format!("{base}/ws/rest/User/999999"), "userCode": "DATALOY"},
            "objectType": body.get("objectType").cloned().unwrap_or(Value::Null),
            "dataloyObject": body.get("dataloyObject").cloned().unwrap_or(Value::Null),
            "url": null,
            "dlpAlertScript": script,
            "eventType": body.get("eventType").cloned().unwrap_or(Value::Null),
            "unsubscriptionDate": null,
            "doNotUnsubscribe": body.get("doNotUnsubscribe").cloned().unwrap_or(json!(false)),
            "json": body.get("json").cloned().unwrap_or(Value::Null),
            "expression": body.get("expression").cloned().unwrap_or(Value::Null),
            "channelInfo": {
                "key": key - 1,
                "self": format!("{base}/ws/rest/ChannelInfo/{}", key - 1),
                "channelType": {"key": 311504704, "self": format!("{base}/ws/rest/ChannelType/311504704"),
                                "channelTypeCode": channel_type},
                "url": body["channelInfo"]["url"],
            }
        });
        self.subscriptions.push(Subscription { value, failures: 0 });
        key
    }

    fn delivered(&mut self, key: u64, ok: bool) {
        let limit = self.options.failures_before_deactivation;
        let honours = self.options.honours_do_not_unsubscribe;
        let Some(sub) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.value["key"] == key)
        else {
            return;
        };
        if ok {
            sub.failures = 0;
            return;
        }
        sub.failures += 1;
        let kept = honours && sub.value["doNotUnsubscribe"] == true;
        if sub.failures >= limit && !kept {
            sub.value["isSubscriptionActive"] = json!(false);
            sub.value["unsubscriptionDate"] = json!(dataloy_now());
        }
    }

    /// `None` when the bearer token is valid; otherwise the 401 answer.
    fn refusal(&mut self, request: &HttpRequest) -> Option<HttpResponse> {
        let token = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match self.tokens.get(token) {
            Some(Some(expires)) if Instant::now() < *expires => None,
            Some(_) => {
                self.expired_refusals += 1;
                Some(HttpResponse::Unauthorized().json(json!({"message": "Token expired."})))
            }
            None => Some(HttpResponse::Unauthorized().json(json!({"message": "Unauthorized"}))),
        }
    }

    fn record(&mut self, request: &HttpRequest, body: Option<Value>) {
        self.requests.push(Recorded {
            method: request.method().to_string(),
            path: request.path().to_owned(),
            body,
        });
    }
}

/// Now as Dataloy writes times: local date-time without zone (the fake's zone is UTC).
fn dataloy_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    chrono::DateTime::from_timestamp(now, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

async fn token(state: web::Data<Mutex<State>>, body: web::Json<Value>) -> HttpResponse {
    let mut state = state.lock();
    let secret = body["client_secret"].as_str().unwrap_or("");
    let valid = body["grant_type"] == "client_credentials"
        && body["client_id"] == CLIENT_ID
        && body["audience"] == AUDIENCE
        && secret == state.options.client_secret;
    if !valid {
        state.token_refusals += 1;
        // Careless servers echo what they were sent; the gateway must not repeat it.
        return HttpResponse::Unauthorized().json(json!({
            "error": "access_denied",
            "error_description": format!("Unauthorized client {} with secret {secret}", body["client_id"]),
        }));
    }
    if let Some(answer) = &state.token_answer {
        return HttpResponse::Ok().json(answer);
    }
    state.tokens_issued += 1;
    let token = format!("token-{}-{}", state.tokens_issued, fastrand::u64(..));
    let lifetime = state.options.token_lifetime;
    state
        .tokens
        .insert(token.clone(), Some(Instant::now() + lifetime));
    HttpResponse::Ok().json(json!({
        "access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"
    }))
}

async fn list(state: web::Data<Mutex<State>>, request: HttpRequest) -> HttpResponse {
    let mut state = state.lock();
    if let Some(refused) = state.refusal(&request) {
        return refused;
    }
    state.record(&request, None);
    if let Some(answer) = &state.list_answer {
        return HttpResponse::Ok().json(answer);
    }
    let all: Vec<Value> = state
        .subscriptions
        .iter()
        .map(|s| s.value.clone())
        .collect();
    HttpResponse::Ok().json(all)
}

async fn create(
    state: web::Data<Mutex<State>>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let mut state = state.lock();
    if let Some(refused) = state.refusal(&request) {
        return refused;
    }
    state.record(&request, Some(body.0.clone()));
    if state.refuse_creates {
        return HttpResponse::InternalServerError().json(json!({"message": "Internal error"}));
    }
    let target_ok = (body["objectType"].is_string() && body["eventType"].is_string())
        != body["dlpAlertScript"]["scriptCode"].is_string();
    if !target_ok || !body["channelInfo"]["url"].is_string() {
        return HttpResponse::BadRequest().json(json!({"message": "Invalid subscription"}));
    }
    state.insert(&body);
    let created = state.subscriptions.last().unwrap().value.clone();
    if state.lose_creates {
        state.subscriptions.pop();
    }
    HttpResponse::Created().json(created)
}

async fn update(
    state: web::Data<Mutex<State>>,
    request: HttpRequest,
    key: web::Path<u64>,
    body: web::Json<Value>,
) -> HttpResponse {
    let mut state = state.lock();
    if let Some(refused) = state.refusal(&request) {
        return refused;
    }
    state.record(&request, Some(body.0.clone()));
    let key = key.into_inner();
    let Some(sub) = state
        .subscriptions
        .iter_mut()
        .find(|s| s.value["key"] == key)
    else {
        return HttpResponse::NotFound().json(json!({"message": "Not found"}));
    };
    for name in ["json", "expression", "doNotUnsubscribe"] {
        if let Some(value) = body.get(name) {
            sub.value[name] = value.clone();
        }
    }
    HttpResponse::Ok().json(sub.value.clone())
}

async fn delete(
    state: web::Data<Mutex<State>>,
    request: HttpRequest,
    key: web::Path<u64>,
) -> HttpResponse {
    let mut state = state.lock();
    if let Some(refused) = state.refusal(&request) {
        return refused;
    }
    state.record(&request, None);
    let key = key.into_inner();
    state.subscriptions.retain(|s| s.value["key"] != key);
    HttpResponse::NoContent().finish()
}

/// A TCP proxy standing for the network between Dataloy and the gateway: while down it drops
/// every connection, so deliveries fail as they would during an outage.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    target: Arc<Mutex<Option<u16>>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let target: Arc<Mutex<Option<u16>>> = Arc::default();
        let (up_task, target_task) = (up.clone(), target.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *target_task.lock();
                let (true, Some(target)) = (up_task.load(Ordering::SeqCst), target) else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { port, up, target }
    }

    pub fn forward_to(&self, port: u16) {
        *self.target.lock() = Some(port);
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}
