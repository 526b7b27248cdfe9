//! The gateway's webhooks, applied once per event id.
//!
//! An event names escrow's own record (`data.client_reference`: the funding
//! attempt or gateway transfer it is about) and the gateway's id of the
//! operation. A credit posts its attempt's hold (money beyond what the
//! payment still needs, or for an attempt that ended, is parked in suspense
//! and sent back against the payment that brought it); a failure voids it; a
//! payout or refund report settles its transfer. An event about a record
//! escrow does not know may have overtaken the commit that wrote it: it is
//! answered "retry later" without recording anything, not even its id, so
//! the gateway delivers it again; once it is older than the retry window it
//! is recorded as an unmatched item for an operator instead.

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{
    ServiceError,
    pipeline::{Mutations, Prepared},
    timestamps,
};
use time::OffsetDateTime;
use tonic::{Request, Status};

use crate::{
    domain::funding::CreditOutcome,
    gateway::{
        event::{EventAction, GatewayEvent},
        signature::SignatureError,
    },
    storage::{
        accounts,
        attempts::{self, AttemptGateway},
        gateway_events::{self, EventResult},
        transfers,
    },
    views::attempt_proto,
};

use super::{
    context::{Flows, after},
    funding,
    transfers::{Settled, client_reference, settle},
};

/// The message of the error that rolls an event back for redelivery.
const RETRY_LATER: &str = "the event names a payment escrow does not know yet; deliver it again";

/// HandleGatewayWebhook, whichever transport delivered it (gRPC, or HTTP as
/// a hosted gateway posts it, as the gateway's service principal): the
/// signature first, then the event's checks, then [`receive`]. A
/// redelivery over either path replays the first answer.
pub async fn handle(
    flows: &Flows,
    mutations: &Mutations,
    request: Request<pb::HandleGatewayWebhookRequest>,
) -> Result<pb::HandleGatewayWebhookResponse, Status> {
    // The signature first: nothing of an unauthenticated event is read.
    {
        let req = request.get_ref();
        authenticate(
            flows,
            &req.signature,
            &req.payload,
            timestamps::now().unix_timestamp(),
        )
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    }
    // A redelivery is re-signed: the stored request is the event alone,
    // so it replays the first answer instead of looking like key reuse.
    let mut request = request;
    request.get_mut().signature.clear();
    let prepared = mutations.prepare(request, |req, _, v| {
        let event = match GatewayEvent::parse(&req.payload) {
            Ok(event) => event,
            Err(message) => {
                v.add("payload", message);
                return Err(ServiceError::InvalidArgument(Vec::new()));
            }
        };
        v.require(
            event.id == req.idempotency_key,
            "idempotency_key",
            "must be the gateway event's id",
        );
        event.check(v);
        Ok(event)
    })?;
    Ok(receive(flows, mutations, &prepared).await?)
}

/// Checks a webhook's signature header over `payload` at `now` (Unix
/// seconds) with the gateway's secret and tolerance.
///
/// # Errors
/// Unsigned, badly signed or stale: see [`SignatureError`].
pub fn authenticate(
    flows: &Flows,
    signature: &str,
    payload: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let tolerance = i64::try_from(flows.settings.webhook_tolerance.as_secs()).unwrap_or(300);
    flows
        .settings
        .webhook_secret
        .verify(signature, payload, now, tolerance)
}

/// Applies an authenticated, parsed event under its id: the stored answer for
/// a redelivery, RETRY_LATER (nothing recorded) for an event that overtook
/// its record, or what applying it did.
pub async fn receive(
    flows: &Flows,
    mutations: &Mutations,
    prepared: &Prepared<pb::HandleGatewayWebhookRequest, GatewayEvent>,
) -> Result<pb::HandleGatewayWebhookResponse, ServiceError> {
    let applied = mutations
        .answer(prepared, async |tx| {
            match apply(tx, flows, &prepared.command, timestamps::now()).await? {
                Some(response) => Ok(response),
                None => Err(ServiceError::Unavailable(RETRY_LATER.into())),
            }
        })
        .await;
    match applied {
        Err(ServiceError::Unavailable(message)) if message == RETRY_LATER => {
            Ok(pb::HandleGatewayWebhookResponse {
                outcome: pb::WebhookOutcome::RetryLater as i32,
                funding_attempt: None,
            })
        }
        other => other,
    }
}

/// Applies `event` in the caller's transaction; `None` when it must be
/// delivered again later.
pub async fn apply(
    conn: &mut PgConnection,
    flows: &Flows,
    event: &GatewayEvent,
    now: OffsetDateTime,
) -> Result<Option<pb::HandleGatewayWebhookResponse>, ServiceError> {
    let reference = event.data.reference.as_str();
    let client = client_reference(event.data.client_reference.as_deref());
    let recent = (now.unix_timestamp() - event.created)
        < i64::try_from(flows.settings.webhook_retry_window.as_secs()).unwrap_or(3600);
    let mut result = EventResult {
        outcome: "ignored",
        unmatched: None,
        amount: None,
        funding_attempt_id: None,
        refund_reference: None,
    };
    // Recorded first: a twin of this event under another caller's key waits
    // here for our commit, then finds it seen. Rolled back with the rest when
    // the event must come again.
    if !gateway_events::record_event(
        conn,
        &event.id,
        &event.kind,
        reference,
        event.data.client_reference.as_deref(),
        now,
    )
    .await?
    {
        let attempt = match gateway_events::event_attempt(conn, &event.id).await? {
            Some(id) => Some(attempt_proto(&attempts::attempt_view(conn, id).await?)),
            None => None,
        };
        return Ok(Some(pb::HandleGatewayWebhookResponse {
            outcome: pb::WebhookOutcome::Duplicate as i32,
            funding_attempt: attempt,
        }));
    }
    let currency_text;
    let refund_reference;
    match event.action() {
        EventAction::Ignored => {}
        action @ (EventAction::Credit | EventAction::PaymentFailed) => {
            let attempt_id = match client {
                Some(id) if attempts::attempt_exists(conn, id).await? => Some(id),
                _ => attempts::attempt_by_reference(conn, reference).await?,
            };
            let Some(attempt_id) = attempt_id else {
                if recent {
                    return Ok(None);
                }
                result.unmatched = Some("UNKNOWN_REFERENCE");
                result.amount = event
                    .data
                    .amount_minor
                    .zip(event.data.currency_code.as_deref());
                return finish(conn, event, result).await.map(Some);
            };
            result.funding_attempt_id = Some(attempt_id);
            let attempt = attempts::attempt_view(conn, attempt_id).await?;
            // The account first, as every path that touches an attempt does
            // (FundEscrow's record of the answer races this webhook).
            accounts::lock_account(conn, attempt.escrow_account_id).await?;
            if attempt.gateway_reference.is_none() && !reference.is_empty() {
                attempts::insert_attempt_gateway(
                    conn,
                    attempt_id,
                    &AttemptGateway {
                        reference: reference.to_owned(),
                        ..Default::default()
                    },
                )
                .await?;
            }
            if action == EventAction::PaymentFailed {
                let code = event
                    .data
                    .failure_code
                    .clone()
                    .unwrap_or_else(|| event.kind.replace('.', "_"));
                result.outcome = if funding::fail(conn, flows, attempt_id, &code, now).await? {
                    "applied"
                } else {
                    "duplicate"
                };
            } else {
                let (Some(received), Some(currency)) =
                    (event.data.amount_minor, event.data.currency_code.as_deref())
                else {
                    return Err(ServiceError::invalid(
                        "payload.data.amount_minor",
                        "a credit must say how much arrived, and in which currency",
                    ));
                };
                if currency != attempt.currency {
                    return Err(ServiceError::invalid(
                        "payload.data.currency_code",
                        format!("must be the payment's currency, {}", attempt.currency),
                    ));
                }
                // A card's charge is one credit, whatever event reports it.
                let credit_id = if attempt.method == "card" && !reference.is_empty() {
                    reference
                } else {
                    event.id.as_str()
                };
                let source = if reference.is_empty() {
                    attempt.gateway_reference.as_deref().unwrap_or_default()
                } else {
                    reference
                };
                let credited =
                    funding::credit(conn, flows, attempt_id, credit_id, source, received, now)
                        .await?;
                currency_text = attempt.currency.clone();
                let parked = match credited.outcome {
                    CreditOutcome::Applied { to_suspense, .. } => to_suspense,
                    CreditOutcome::Suspended { to_suspense } => to_suspense,
                    CreditOutcome::Duplicate => 0,
                };
                result.outcome = if credited.outcome == CreditOutcome::Duplicate {
                    "duplicate"
                } else {
                    "applied"
                };
                result.amount = Some((received, &currency_text));
                if parked > 0 {
                    result.unmatched = Some("LATE_CREDIT");
                    result.amount = Some((parked, &currency_text));
                    refund_reference = credited
                        .suspense_refund
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    result.refund_reference = Some(&refund_reference);
                }
            }
        }
        action @ (EventAction::TransferPaid | EventAction::TransferFailed) => {
            let Some(row) = transfers::lock_named(conn, client, reference).await? else {
                if recent {
                    return Ok(None);
                }
                result.unmatched = Some("UNKNOWN_REFERENCE");
                return finish(conn, event, result).await.map(Some);
            };
            if row.gateway_reference.is_none() && !reference.is_empty() {
                transfers::accept(
                    conn,
                    row.id,
                    reference,
                    after(flows.settings.payout_expiry, now),
                )
                .await?;
            }
            let paid = action == EventAction::TransferPaid;
            let code = event.data.failure_code.clone().unwrap_or_default();
            result.outcome = match settle(conn, flows, row.id, paid, &code).await? {
                Settled::Applied => "applied",
                Settled::Duplicate => "duplicate",
                Settled::PaidAfterFailure { uncovered_minor } => {
                    if uncovered_minor > 0 {
                        currency_text = row.currency.clone();
                        result.unmatched = Some("PAID_AFTER_FAILURE");
                        result.amount = Some((uncovered_minor, &currency_text));
                    }
                    "applied"
                }
                Settled::FailedAfterPaid => {
                    tracing::warn!(gateway_transfer_id = %row.id, event_id = %event.id, "the gateway reported a paid transfer failed; nothing moved");
                    "duplicate"
                }
            };
        }
    }
    finish(conn, event, result).await.map(Some)
}

/// Records the event and what became of it, and builds the answer.
async fn finish(
    conn: &mut PgConnection,
    event: &GatewayEvent,
    result: EventResult<'_>,
) -> Result<pb::HandleGatewayWebhookResponse, ServiceError> {
    gateway_events::finish_event(conn, &event.id, &result).await?;
    let funding_attempt = match result.funding_attempt_id {
        Some(id) => Some(attempt_proto(&attempts::attempt_view(conn, id).await?)),
        None => None,
    };
    Ok(pb::HandleGatewayWebhookResponse {
        outcome: match result.outcome {
            "applied" => pb::WebhookOutcome::Applied,
            "duplicate" => pb::WebhookOutcome::Duplicate,
            _ => pb::WebhookOutcome::Ignored,
        } as i32,
        funding_attempt,
    })
}
