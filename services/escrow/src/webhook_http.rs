//! The gateway's webhooks over HTTP, as a hosted gateway delivers them:
//! `POST /v1/gateway-webhooks` with the event's JSON as the body and its
//! signature in the `Gateway-Signature` header (`t=<unix seconds>,v1=<hex>`).
//!
//! Each delivery runs exactly what the gRPC method `HandleGatewayWebhook`
//! runs (`app::gateway_events::handle`: the signature check, the event's
//! checks, one application per event id, under the gRPC method's path), as
//! the gateway's service principal, so a redelivery over either path replays
//! the first answer. The answer in HTTP terms:
//!
//! | Outcome | Status |
//! |---|---|
//! | applied, duplicate, ignored | 200, `{"outcome": "..."}` |
//! | the event names a payment not recorded yet | 503 with `Retry-After`: deliver again |
//! | bad or stale signature | 401 |
//! | not the gateway's event JSON, or a malformed field | 400 with the field violations |
//! | escrow's database unavailable | 503 |
//! | anything else | 500, with no internal detail |

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use ta_proto::escrow as pb;
use ta_runtime::{
    auth::{Caller, Principal, Role},
    pipeline::Mutations,
};
use ta_workflow::Shutdown;

use crate::{app, app::context::Flows, storage};

/// The header the gateway signs its events in.
pub const SIGNATURE_HEADER: &str = "gateway-signature";
/// The path events are posted to.
pub const PATH: &str = "/v1/gateway-webhooks";
/// The gateway's principal: the same as when it calls the gRPC method.
pub const GATEWAY_PRINCIPAL: &str = "payment-gateway";
/// How long the gateway should wait before delivering an event again.
const RETRY_AFTER_SECONDS: &str = "2";
/// The largest event body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// What the endpoint runs deliveries with: the shared pipeline over escrow's
/// database, and the use cases' context.
pub struct Webhooks {
    mutations: Mutations,
    flows: Arc<Flows>,
}

impl Webhooks {
    pub fn new(pool: sqlx::PgPool, flows: Arc<Flows>) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA),
            flows,
        }
    }
}

/// Serves the webhook endpoint on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, webhooks: Arc<Webhooks>, mut shutdown: Shutdown) {
    let app = router(webhooks);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "the webhook endpoint cannot listen (ESCROW_WEBHOOK_LISTEN_ADDR)");
            return;
        }
    };
    tracing::info!(%addr, path = PATH, "serving the gateway's webhooks over HTTP");
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "the webhook endpoint stopped");
    }
}

pub fn router(webhooks: Arc<Webhooks>) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(webhooks)
}

async fn receive(
    State(webhooks): State<Arc<Webhooks>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The event's id is its idempotency key; an unreadable body is refused
    // by the method's own checks (after the signature).
    let event_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let mut request = tonic::Request::new(pb::HandleGatewayWebhookRequest {
        idempotency_key: event_id,
        payload: body.to_vec(),
        signature,
    });
    request.extensions_mut().insert(Caller {
        principal: Principal {
            subject: GATEWAY_PRINCIPAL.into(),
            role: Role::Service,
        },
        method: format!("/{}/HandleGatewayWebhook", crate::ESCROW_SERVICE),
    });
    match app::gateway_events::handle(&webhooks.flows, &webhooks.mutations, request).await {
        Ok(response) => answer(&response),
        Err(status) => refusal(&status),
    }
}

fn answer(response: &pb::HandleGatewayWebhookResponse) -> Response {
    let outcome =
        pb::WebhookOutcome::try_from(response.outcome).unwrap_or(pb::WebhookOutcome::Unspecified);
    let name = outcome
        .as_str_name()
        .trim_start_matches("WEBHOOK_OUTCOME_")
        .to_ascii_lowercase();
    let body = serde_json::json!({ "outcome": name }).to_string();
    if outcome == pb::WebhookOutcome::RetryLater {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, RETRY_AFTER_SECONDS),
                (header::CONTENT_TYPE, "application/json"),
            ],
            body,
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn refusal(status: &tonic::Status) -> Response {
    use tonic::Code;
    let http = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The status's message is already what a caller may read (INTERNAL
    // carries none of escrow's internals).
    let mut violations = Vec::new();
    {
        use tonic_types::StatusExt;
        if let Some(bad) = status.get_error_details().bad_request() {
            for v in &bad.field_violations {
                violations
                    .push(serde_json::json!({ "field": v.field, "description": v.description }));
            }
        }
    }
    let body = serde_json::json!({
        "error": { "code": format!("{:?}", status.code()), "message": status.message(), "field_violations": violations }
    })
    .to_string();
    if http == StatusCode::SERVICE_UNAVAILABLE {
        return (
            http,
            [
                (header::RETRY_AFTER, RETRY_AFTER_SECONDS),
                (header::CONTENT_TYPE, "application/json"),
            ],
            body,
        )
            .into_response();
    }
    (http, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
