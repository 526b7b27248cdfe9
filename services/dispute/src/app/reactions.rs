//! How a claim reacts to what happens elsewhere: the answers of its outbox
//! calls, each naming the next step (opening: RecordClaimOpened, then
//! FreezeEscrow, then ConfirmClaimOpened; a resolution: SettleClaim, then
//! RecordClaimClosed, then RecordPenalty; a withdrawal: UnfreezeEscrow, then
//! RecordClaimClosed; the claim opened: RecordInquiry, and the supplier's
//! reply after it if it came first), and its automatic escalation timer. Each reaction runs
//! in the transaction that records the answer or fires the timer, so it
//! happens exactly once.

use std::sync::Arc;

use sqlx::PgConnection;
use ta_proto::{contract as contract_pb, escrow as escrow_pb, supplier as supplier_pb};
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
    timestamps,
};
use ta_workflow::{
    Handled,
    outbox::{Answer, CompletionHandler, Delivery},
    timers::{DueTimer, TimerHandler},
};
use uuid::Uuid;

use super::{AUTO_ESCALATION, Flows, claims, closing, opening, system};
use crate::{
    domain::{claim::Escalator, status::Status},
    effects::completion,
    storage::claims::lock_claim,
};

fn claim_id(text: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(text).map_err(|_| ServiceError::internal(format!("`{text}` is not a claim id")))
}

fn held_of(account: Option<&escrow_pb::EscrowAccount>) -> Option<Money> {
    let held = account?.held.as_ref()?;
    Some(Money::new(
        held.amount_minor,
        Currency::parse(&held.currency_code)?,
    ))
}

/// The relay's completion handler. Contract's has the same shape, which the
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
        match delivery.completion.as_str() {
            completion::CLAIM_RECORDED => {
                let r: contract_pb::RecordClaimOpenedRequest = delivery.decode_request()?;
                let recorded = match answer {
                    Answer::Accepted(_) => {
                        let response: contract_pb::RecordClaimOpenedResponse = answer.decode()?;
                        opening::Recorded::Accepted {
                            goods_shipped: response.contract.as_ref().map(|c| {
                                matches!(
                                    c.status_before_dispute(),
                                    contract_pb::ContractStatus::Shipped
                                        | contract_pb::ContractStatus::Delivered
                                )
                            }),
                        }
                    }
                    Answer::Refused { message, .. } => opening::Recorded::Refused(message.clone()),
                };
                Handled::done_after(
                    opening::claim_recorded(tx, flows, claim_id(&r.claim_id)?, recorded, now).await,
                )
            }
            completion::ESCROW_FROZEN => {
                let r: escrow_pb::FreezeEscrowRequest = delivery.decode_request()?;
                let outcome = match answer {
                    Answer::Accepted(_) => {
                        let response: escrow_pb::FreezeEscrowResponse = answer.decode()?;
                        Ok(held_of(response.account.as_ref()))
                    }
                    Answer::Refused { message, .. } => Err(message.as_str()),
                };
                Handled::done_after(
                    opening::escrow_frozen(tx, flows, claim_id(&r.claim_id)?, outcome, now).await,
                )
            }
            completion::CLAIM_CONFIRMED => {
                let r: contract_pb::ConfirmClaimOpenedRequest = delivery.decode_request()?;
                Handled::done_after(
                    opening::claim_confirmed(
                        tx,
                        flows,
                        claim_id(&r.claim_id)?,
                        answer.refusal(),
                        now,
                    )
                    .await,
                )
            }
            completion::SETTLED | completion::UNFROZEN => {
                let id = if method == "SettleClaim" {
                    let r: escrow_pb::SettleClaimRequest = delivery.decode_request()?;
                    r.claim_id
                } else {
                    let r: escrow_pb::UnfreezeEscrowRequest = delivery.decode_request()?;
                    r.claim_id
                };
                closing::money_done(tx, flows, claim_id(&id)?, answer.refusal(), now).await
            }
            completion::CLAIM_CLOSED => {
                let r: contract_pb::RecordClaimClosedRequest = delivery.decode_request()?;
                closing::contract_closed(tx, flows, claim_id(&r.claim_id)?, answer.refusal(), now)
                    .await
            }
            completion::PENALTY_RECORDED => {
                let r: supplier_pb::RecordPenaltyRequest = delivery.decode_request()?;
                closing::penalty_recorded(tx, flows, claim_id(&r.claim_id)?, answer.refusal(), now)
                    .await
            }
            completion::INQUIRY_RECORDED => {
                let r: supplier_pb::RecordInquiryRequest = delivery.decode_request()?;
                let id = claim_id(r.inquiry_id.trim_start_matches("dispute:"))?;
                if let Some(message) = answer.refusal() {
                    tracing::warn!(claim_id = %id, message, "supplier-registry refused the claim's inquiry; the response rate misses it");
                    return Ok(Handled::Done);
                }
                opening::inquiry_recorded(tx, flows, id).await?;
                Ok(Handled::Done)
            }
            completion::INQUIRY_REPLIED => {
                if let Answer::Refused { code, message } = answer {
                    if *code == tonic::Code::NotFound {
                        tracing::info!(
                            message,
                            "a reply overtook its inquiry; it follows the inquiry"
                        );
                    } else {
                        tracing::warn!(
                            message,
                            "supplier-registry refused the supplier's reply to a claim"
                        );
                    }
                }
                Ok(Handled::Done)
            }
            _ => match answer.refusal() {
                // The freeze of a claim the contract dropped: refused, the
                // account would stay frozen for a claim that never opened.
                Some(message) if method == "UnfreezeEscrow" => {
                    let r: escrow_pb::UnfreezeEscrowRequest = delivery.decode_request()?;
                    closing::freeze_not_lifted(tx, claim_id(&r.claim_id)?, message, now).await
                }
                _ => Ok(delivery.follow_up_answered(answer)),
            },
        }
    }
}

pub struct Timers {
    pub flows: Arc<Flows>,
}

impl TimerHandler for Timers {
    async fn fire(&self, tx: &mut PgConnection, timer: &DueTimer) -> Result<(), ServiceError> {
        let now = timestamps::now();
        match timer.kind.as_str() {
            AUTO_ESCALATION => {
                let mut claim = lock_claim(tx, claim_id(&timer.subject_id)?).await?;
                if claim.claim.status != Status::Negotiating {
                    return Ok(());
                }
                // The timer is due at `auto_escalate_at`; a clock a hair
                // behind the database's must not refuse it.
                let at = now.max(claim.claim.auto_escalate_at);
                claims::escalate(
                    tx,
                    &self.flows,
                    &mut claim,
                    &system(),
                    Escalator::Timer,
                    "the negotiation window ran out without a settlement",
                    at,
                )
                .await?;
                Ok(())
            }
            other => Err(ServiceError::internal(format!(
                "unknown dispute timer kind {other}"
            ))),
        }
    }
}
