//! How the contract reacts to what happens elsewhere: the answers of its
//! outbox calls, escrow's event feed, and its own timers. Each reaction runs
//! in the transaction that records the answer, advances the feed cursor or
//! fires the timer, so it happens exactly once.

use std::sync::Arc;

use sqlx::PgConnection;
use ta_proto::{escrow as escrow_pb, supplier as supplier_pb};
use ta_runtime::{ServiceError, money::Money, timestamps};
use ta_workflow::{
    Handled,
    consumer::{EventHandler, FeedItem, Subscription},
    outbox::{Answer, CompletionHandler, Delivery},
    timers::{DueTimer, TimerHandler},
};
use uuid::Uuid;

use super::{
    ACCEPTANCE_DUE, CLAIM_CONFIRMATION, Flows, LOT_ACCEPTANCE_DUE, SHIPMENT_DUE, UNSHIPPED_CANCEL,
    activation, amendments, claims, fulfilment, funding, lots, settlement,
};
use crate::{effects::completion, storage::contracts::exists};

fn contract_id(text: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(text)
        .map_err(|_| ServiceError::internal(format!("`{text}` is not a contract id")))
}

/// The relay's completion handler. Dispute's has the same shape, which the
/// trait dictates; what each answer does is this service's own.
pub struct Completions {
    pub flows: Arc<Flows>,
}

impl CompletionHandler for Completions {
    async fn complete(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        answer: &Answer,
    ) -> Result<Handled, ServiceError> {
        let now = timestamps::now();
        let flows = &self.flows;
        let method = delivery.method_name();
        // Closes written before they had a completion of their own named
        // `nothing`: the method says what they are.
        if method == "CloseEscrowAccount" {
            let request: escrow_pb::CloseEscrowAccountRequest = delivery.decode_request()?;
            return settlement::escrow_closed(tx, &request, answer.refusal(), now).await;
        }
        match delivery.completion.as_str() {
            completion::COVER_RESERVED => {
                let request: supplier_pb::ReserveCoverRequest = delivery.decode_request()?;
                Handled::done_after(
                    activation::cover_reserved(
                        tx,
                        flows,
                        contract_id(&request.contract_id)?,
                        answer.refusal(),
                        now,
                    )
                    .await,
                )
            }
            completion::ESCROW_OPENED => {
                let request: escrow_pb::OpenEscrowAccountRequest = delivery.decode_request()?;
                let outcome = match answer {
                    Answer::Accepted(_) => Ok(answer.decode()?),
                    Answer::Refused { message, .. } => Err(message.clone()),
                };
                Handled::done_after(
                    activation::escrow_opened(
                        tx,
                        flows,
                        contract_id(&request.contract_id)?,
                        outcome,
                        now,
                    )
                    .await,
                )
            }
            completion::COVER_ADJUSTED => {
                let request: supplier_pb::AdjustCoverRequest = delivery.decode_request()?;
                Handled::done_after(
                    amendments::cover_adjusted(
                        tx,
                        flows,
                        contract_id(&request.contract_id)?,
                        request.contract_version,
                        answer.refusal(),
                        now,
                    )
                    .await,
                )
            }
            completion::SCHEDULE_AMENDED => {
                let request: escrow_pb::AmendEscrowScheduleRequest = delivery.decode_request()?;
                let schedule = match answer {
                    Answer::Accepted(_) => {
                        let response: escrow_pb::AmendEscrowScheduleResponse = answer.decode()?;
                        Ok(response.account.map(|a| a.schedule).unwrap_or_default())
                    }
                    Answer::Refused { message, .. } => Err(message.as_str()),
                };
                Handled::done_after(
                    amendments::schedule_amended(
                        tx,
                        flows,
                        &request.escrow_account_id,
                        request.contract_version,
                        schedule.as_deref().map_err(|m| *m),
                        now,
                    )
                    .await,
                )
            }
            completion::MONEY_MOVED => {
                let request: escrow_pb::ReleaseToSupplierRequest = delivery.decode_request()?;
                settlement::released_on_acceptance(
                    tx,
                    flows,
                    &request.escrow_account_id,
                    answer.refusal(),
                    now,
                )
                .await
            }
            completion::LOT_RELEASED => {
                let request: escrow_pb::ReleaseToSupplierRequest = delivery.decode_request()?;
                lots::lot_released(tx, &request, answer.refusal(), now).await
            }
            _ => Ok(delivery.follow_up_answered(answer)),
        }
    }
}

/// Escrow's feed, as the contract follows it: funding and overdue payments.
pub fn escrow_subscription()
-> Subscription<escrow_pb::StreamEscrowEventsRequest, escrow_pb::StreamEscrowEventsResponse> {
    Subscription {
        cursor: "escrow",
        producer: crate::effects::ESCROW,
        method: "/tradeassurance.escrow.v1.EscrowService/StreamEscrowEvents",
        request: |after_sequence| escrow_pb::StreamEscrowEventsRequest { after_sequence },
        item: |response| {
            response.event.as_ref().map(|event| FeedItem {
                sequence: event.sequence,
                traceparent: Some(response.traceparent.clone()).filter(|t| !t.is_empty()),
            })
        },
    }
}

pub struct EscrowEvents {
    pub flows: Arc<Flows>,
}

impl EventHandler<escrow_pb::StreamEscrowEventsResponse> for EscrowEvents {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        sequence: u64,
        response: &escrow_pb::StreamEscrowEventsResponse,
    ) -> Result<Handled, ServiceError> {
        let Some(event) = &response.event else {
            return Ok(Handled::Done);
        };
        let Ok(id) = Uuid::parse_str(&event.contract_id) else {
            return Ok(Handled::Done);
        };
        if !exists(tx, id).await? {
            // Another platform's account (or a test's): not ours to follow.
            return Ok(Handled::Done);
        }
        let now = timestamps::now();
        let amount = event.amount.as_ref().and_then(|m| {
            let mut v = ta_runtime::Violations::new();
            Money::positive_from_proto("amount", Some(m), &mut v)
        });
        match escrow_pb::EscrowEventType::try_from(event.r#type) {
            Ok(escrow_pb::EscrowEventType::PaymentSucceeded) => {
                // A short credit (a bank's fee taken out of a transfer) is
                // money received, not the milestone paid: escrow's schedule
                // in the event says which.
                let milestone_paid = event.account.as_ref().is_none_or(|account| {
                    account
                        .schedule
                        .iter()
                        .any(|p| p.milestone_id == event.milestone_id && p.funded_at.is_some())
                });
                let payment = funding::ReceivedPayment {
                    milestone_id: &event.milestone_id,
                    amount,
                    milestone_paid,
                };
                funding::payment_received(tx, &self.flows, id, &payment, now).await?;
                Ok(Handled::Done)
            }
            Ok(escrow_pb::EscrowEventType::PaymentOverdue) => {
                funding::payment_overdue(tx, &self.flows, id, &event.milestone_id, now).await?;
                Ok(Handled::Done)
            }
            Ok(escrow_pb::EscrowEventType::HoldDeadlinePassed) => {
                settlement::hold_deadline_passed(tx, &self.flows, id, amount, sequence, now).await
            }
            _ => Ok(Handled::Done),
        }
    }
}

pub struct Timers {
    pub flows: Arc<Flows>,
}

impl TimerHandler for Timers {
    async fn fire(&self, tx: &mut PgConnection, timer: &DueTimer) -> Result<(), ServiceError> {
        let now = timestamps::now();
        let id = contract_id(&timer.subject_id)?;
        match timer.kind.as_str() {
            SHIPMENT_DUE => fulfilment::shipment_due(tx, &self.flows, id, now).await,
            ACCEPTANCE_DUE => fulfilment::acceptance_due(tx, &self.flows, id, now).await,
            UNSHIPPED_CANCEL => fulfilment::unshipped_cancel(tx, &self.flows, id, now).await,
            CLAIM_CONFIRMATION => claims::claim_confirmation_due(tx, &self.flows, id, now).await,
            LOT_ACCEPTANCE_DUE => lots::lot_acceptance_due(tx, &self.flows, id, now).await,
            other => Err(ServiceError::internal(format!(
                "unknown contract timer kind {other}"
            ))),
        }
    }
}
