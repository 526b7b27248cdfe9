//! The sandbox served in-process on 127.0.0.1:0 over a test database, a
//! JSON client for it, and a webhook receiver that records what it gets.

#![allow(dead_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use escrow::gateway::signature::WebhookSecret;
use payment_gateway_sandbox::{
    config::{Options, WebhookTarget},
    domain::FaultSettings,
    server,
};
use serde_json::Value;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub static MIGRATOR: &sqlx::migrate::Migrator = &payment_gateway_sandbox::storage::MIGRATOR;

pub const SECRET: &str = "whsec_test_0123456789abcdef0123456789abcdef";

pub fn secret() -> WebhookSecret {
    WebhookSecret::new(SECRET).unwrap()
}

/// Quick settings: payouts and refunds settle at once, fast polling, fast
/// redelivery, no webhooks.
pub fn options() -> Options {
    Options {
        api_key: None,
        webhook: None,
        settle_after: Duration::ZERO,
        auto_credit_after: None,
        poll_interval: Duration::from_millis(50),
        faults: FaultSettings::default(),
        seed: Some(42),
    }
}

/// `options()` delivering webhooks to `receiver`.
pub fn options_to(receiver: &Receiver) -> Options {
    Options {
        webhook: Some(WebhookTarget {
            url: receiver.url(),
            secret: secret(),
            timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(5),
        }),
        ..options()
    }
}

pub struct Sandbox {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

/// An answer: status and JSON body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Sandbox {
    pub async fn start(pool: PgPool, options: Options) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(options, pool, listener, async {
            let _ = stopped.await;
        }));
        payment_gateway_sandbox::workers::install_crypto_provider();
        let sandbox = Self {
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        };
        wait_until("the sandbox to be ready", || async {
            sandbox.get("/healthz").await.is_ok_and(|r| r.status == 200)
        })
        .await;
        sandbox
    }

    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|e| e.to_string())?
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            replayed,
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await?;
        Ok(Self::reply(response).await)
    }

    /// POST `body` under `key` (None: no header).
    pub async fn post_with(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        Ok(Self::reply(request.send().await?).await)
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.post_with(path, Some(key), body, None).await.unwrap()
    }

    /// A control call (no idempotency key).
    pub async fn control(&self, path: &str, body: &Value) -> Reply {
        self.post_with(path, None, body, None).await.unwrap()
    }

    pub async fn put_faults(&self, faults: &Value) -> Reply {
        let response = self
            .client
            .put(format!("{}/sandbox/faults", self.base))
            .body(faults.to_string())
            .send()
            .await
            .unwrap();
        let reply = Self::reply(response).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply
    }

    pub async fn operation(&self, key: &str) -> Reply {
        self.get(&format!("/v1/operations/{key}")).await.unwrap()
    }

    /// The books' line for `currency`.
    pub async fn books(&self, currency: &str) -> Value {
        let books = self.get("/sandbox/books").await.unwrap().body;
        books["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["currency"] == currency)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub async fn events(&self) -> Vec<Value> {
        self.get("/sandbox/events").await.unwrap().body["events"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Polls `check` until it holds; panics after a minute (a liveness bound,
/// not a timing assertion).
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One webhook as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub signature: String,
    pub body: Vec<u8>,
    pub event: Value,
    /// Unix seconds when it arrived.
    pub at: i64,
    pub answered: u16,
}

/// A webhook receiver on 127.0.0.1:0 that refuses the first `refuse_first`
/// deliveries with 503 and `Retry-After: 1`, then answers 200.
#[derive(Clone)]
pub struct Receiver {
    pub address: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

struct ReceiverState {
    refuse_first: usize,
    received: Vec<Received>,
}

impl Receiver {
    pub async fn start(refuse_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            refuse_first,
            received: Vec::new(),
        }));
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.address)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// What arrived about the operation `reference`.
    pub fn about(&self, reference: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.event["data"]["reference"] == reference)
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let refuse = state.received.len() < state.refuse_first;
    let answered = if refuse { 503 } else { 200 };
    state.received.push(Received {
        signature: headers
            .get("gateway-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        at: time::OffsetDateTime::now_utc().unix_timestamp(),
        answered,
    });
    if refuse {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "not yet",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}
