//! The HTTP API, hosted-gateway style: JSON in and out, an `Idempotency-Key`
//! on every POST, errors as `{"error": {"code", "message"}}`.
//!
//! | Call | Answer |
//! |---|---|
//! | `POST /v1/charges` | 200 the charge, `succeeded` or `failed` (a decline) |
//! | `POST /v1/bank_transfers` | 200 `pending`, with the instructions |
//! | `POST /v1/pay_later` | 200 `pending`, with the loan reference |
//! | `POST /v1/payouts`, `POST /v1/refunds` | 200 `pending` |
//! | `GET /v1/operations/{idempotency_key}` | 200 the operation, 404 never seen |
//! | `POST /v1/operations/{idempotency_key}/void` | 200 the operation, or `voided`: nothing will ever be done under the key (422 `operation_voided` after) |
//! | `POST /sandbox/bank_transfers/{id}/credit` `{amount_minor?}` | 200 credited |
//! | `POST /sandbox/pay_later/{id}/disburse`, `.../reject` `{failure_code?}` | 200 |
//! | `POST /sandbox/transfers/{id}/pay`, `.../fail` `{failure_code?, failure_message?}` | 200 |
//! | `GET`/`PUT /sandbox/faults` | 200 the faults in force |
//! | `GET /sandbox/books`, `/sandbox/events`, `/sandbox/operations` | 200 |
//! | `POST /sandbox/webhooks/redeliver/{event_id}` | 202 |
//! | `GET /healthz` | readiness: 200 once migrated, else 503 |
//! | `GET /livez` | liveness: 200 while the process answers |
//!
//! Errors: 400 `idempotency_key_missing` / `invalid_request`, 401
//! `unauthorized` (when `GATEWAY_SANDBOX_API_KEY` is set), 404
//! `resource_missing` (no such key or id; `no_such_route` for a path),
//! 409 `not_pending`, 422 `idempotency_key_reused` / `source_unknown` /
//! `currency_mismatch` / `refund_exceeds_collected`, 503
//! `gateway_unavailable` (nothing done; `Retry-After: 1`), 500
//! `internal_error` (it may have acted). A replay carries
//! `Idempotent-Replayed: true`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    app::{Gateway, Settle},
    domain::{Kind, Refusal, requests::check_key},
};

/// What the handlers share.
pub struct Shared {
    pub gateway: Gateway,
    pub api_key: Option<String>,
    /// Set once the migrations ran.
    pub ready: AtomicBool,
    /// Turns true when the server drains: held answers are let go.
    pub draining: watch::Receiver<bool>,
}

type AppState = Arc<Shared>;

pub fn router(shared: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/charges", post(charge))
        .route("/v1/bank_transfers", post(bank_transfer))
        .route("/v1/pay_later", post(pay_later))
        .route("/v1/payouts", post(payout))
        .route("/v1/refunds", post(refund))
        .route("/v1/operations/{key}", get(operation))
        .route("/v1/operations/{key}/void", post(void));
    let control = Router::new()
        .route("/sandbox/bank_transfers/{id}/credit", post(credit))
        .route("/sandbox/pay_later/{id}/disburse", post(disburse))
        .route("/sandbox/pay_later/{id}/reject", post(reject))
        .route("/sandbox/transfers/{id}/pay", post(pay))
        .route("/sandbox/transfers/{id}/fail", post(fail))
        .route("/sandbox/faults", get(faults).put(put_faults))
        .route("/sandbox/books", get(books))
        .route("/sandbox/events", get(events))
        .route("/sandbox/operations", get(operations))
        .route("/sandbox/webhooks/redeliver/{event_id}", post(redeliver));
    v1.merge(control)
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .fallback(not_found)
        .with_state(shared)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::Invalid { .. } => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::NotFound(_) | Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::NotPending(_) => StatusCode::CONFLICT,
            Refusal::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = json_response(status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Result<Value, Refusal>) -> Response {
    match body {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(refusal) => refusal.into_response(),
    }
}

/// `Authorization: Bearer <GATEWAY_SANDBOX_API_KEY>` when a key is set.
async fn authorize(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &shared.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Refusal::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(shared): State<AppState>) -> Response {
    if shared.ready.load(Ordering::Acquire) {
        json_response(StatusCode::OK, &json!({ "status": "serving" }))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "starting" }),
        )
    }
}

/// Liveness: the process answers, whatever the database does.
async fn livez() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "live" }))
}

async fn not_found() -> Response {
    Refusal::NoRoute.into_response()
}

// --- /v1 ----------------------------------------------------------------------------

async fn act(shared: AppState, kind: Kind, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let key = match check_key(key) {
        Ok(key) => key.to_owned(),
        Err(refusal) => return refusal.into_response(),
    };
    let answer = match shared.gateway.act(kind, &key, &body).await {
        Ok(answer) => answer,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(hang) = answer.hang {
        tracing::info!(%key, ?hang, "holding the answer (time-out fault)");
        let mut draining = shared.draining.clone();
        tokio::select! {
            () = tokio::time::sleep(hang) => {}
            _ = draining.wait_for(|d| *d) => {}
        }
    }
    let mut response = json_response(StatusCode::OK, &answer.body);
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn charge(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    act(s, Kind::Charge, headers, body).await
}

async fn bank_transfer(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    act(s, Kind::BankTransfer, headers, body).await
}

async fn pay_later(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    act(s, Kind::PayLater, headers, body).await
}

async fn payout(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    act(s, Kind::Payout, headers, body).await
}

async fn refund(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    act(s, Kind::Refund, headers, body).await
}

async fn operation(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    ok(s.gateway.operation(&key).await)
}

async fn void(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    ok(s.gateway.void(&key).await)
}

// --- /sandbox -----------------------------------------------------------------------

/// The optional bodies of the control calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    amount_minor: Option<i64>,
    failure_code: Option<String>,
    failure_message: Option<String>,
}

fn control_body(body: &[u8]) -> Result<ControlBody, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ControlBody::default());
    }
    serde_json::from_slice(body).map_err(|e| Refusal::invalid(format!("invalid JSON body: {e}")))
}

async fn control(
    shared: AppState,
    id: String,
    kinds: &[Kind],
    body: Bytes,
    how: impl FnOnce(ControlBody) -> Settle,
) -> Response {
    match control_body(&body) {
        Ok(parsed) => ok(shared.gateway.settle(&id, kinds, how(parsed)).await),
        Err(refusal) => refusal.into_response(),
    }
}

fn failure(body: ControlBody, default_code: &str, default_message: &str) -> Settle {
    Settle::Fail {
        code: body.failure_code.unwrap_or_else(|| default_code.to_owned()),
        message: body
            .failure_message
            .unwrap_or_else(|| default_message.to_owned()),
    }
}

async fn credit(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    control(s, id, &[Kind::BankTransfer], body, |b| {
        Settle::Credit(b.amount_minor)
    })
    .await
}

async fn disburse(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    control(s, id, &[Kind::PayLater], body, |_| Settle::Succeed).await
}

async fn reject(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    control(s, id, &[Kind::PayLater], body, |b| {
        failure(
            b,
            "partner_rejected",
            "the financing partner rejected the application",
        )
    })
    .await
}

async fn pay(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    control(s, id, &[Kind::Payout, Kind::Refund], body, |_| {
        Settle::Succeed
    })
    .await
}

async fn fail(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    control(s, id, &[Kind::Payout, Kind::Refund], body, |b| {
        failure(
            b,
            "transfer_failed",
            "the receiving bank returned the transfer",
        )
    })
    .await
}

fn faults_body(faults: Result<crate::domain::FaultSettings, Refusal>) -> Response {
    ok(faults.map(|f| serde_json::to_value(f).unwrap_or(Value::Null)))
}

async fn faults(State(s): State<AppState>) -> Response {
    faults_body(s.gateway.faults().await)
}

async fn put_faults(State(s): State<AppState>, body: Bytes) -> Response {
    faults_body(s.gateway.put_faults(&body).await)
}

async fn books(State(s): State<AppState>) -> Response {
    ok(s.gateway.books().await)
}

async fn events(State(s): State<AppState>) -> Response {
    ok(s.gateway.events().await)
}

async fn operations(State(s): State<AppState>) -> Response {
    ok(s.gateway.operations().await)
}

async fn redeliver(State(s): State<AppState>, Path(event_id): Path<String>) -> Response {
    match s.gateway.redeliver(&event_id).await {
        Ok(body) => json_response(StatusCode::ACCEPTED, &body),
        Err(refusal) => refusal.into_response(),
    }
}
