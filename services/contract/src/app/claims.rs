//! Claims, as dispute reports them: opened in two phases (recorded under
//! the contract's lock, so a claim and an acceptance never both win, then
//! confirmed or abandoned), and closed with the decision's effect on the
//! contract.

use sqlx::PgConnection;
use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal},
    money::{Money, readable},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ACCEPTANCE_DUE, CLAIM_CONFIRMATION, ContractFlows, Flows, LOT_ACCEPTANCE_DUE, SHIPMENT_DUE,
    Step, UNSHIPPED_CANCEL, contract_view, drafting::ById, lots, system,
};
use crate::{
    domain::{
        fulfilment::{ClaimFacts, ClaimReason, check_claim},
        status::{Action, Status},
    },
    effects,
    storage::{
        contracts::{ContractRecord, current_version, lock_contract},
        fulfilment::{accept_remaining_lots, shift_lot_deadlines, shipments},
        versions::load_terms,
    },
    views::readable_time,
};

/// Dispute records a claim on a contract.
pub struct ClaimOpen {
    pub contract_id: Uuid,
    pub claim_id: String,
    pub reason: ClaimReason,
}

/// Dispute gives up opening a claim it recorded.
pub struct ClaimAbandon {
    pub contract_id: Uuid,
    pub claim_id: String,
    pub reason: String,
}

/// How dispute reports a claim's end, as sent: the refund is checked
/// against the contract's currency under its lock.
pub struct ClaimClose {
    pub contract_id: Uuid,
    pub claim_id: String,
    pub closure: pb::ClaimClosure,
    pub refunded: Option<ta_proto::common::Money>,
    pub new_shipment_deadline: Option<OffsetDateTime>,
}

/// [`record_claim_opened`] on the contract, locked.
pub async fn open_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ClaimOpen,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    record_claim_opened(
        tx,
        flows,
        &mut contract,
        &Actor::of(principal),
        &cmd.claim_id,
        cmd.reason,
        now,
    )
    .await
}

/// [`confirm_claim_opened`] on the contract, locked (the claim: `cmd.text`).
pub async fn confirm_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ById,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    let actor = Actor::of(principal);
    confirm_claim_opened(tx, flows, &mut contract, &actor, &cmd.text, now).await
}

/// [`abandon_claim_opening`] on the contract, locked.
pub async fn abandon_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ClaimAbandon,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    let actor = Actor::of(principal);
    let (claim, reason) = (&cmd.claim_id, &cmd.reason);
    abandon_claim_opening(tx, flows, &mut contract, &actor, claim, reason, now).await
}

/// Dispute never confirmed the claim recorded on the contract in time: it
/// is dropped and the contract resumes.
pub async fn claim_confirmation_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    let Some(claim) = contract.open_claim_id.clone() else {
        return Ok(());
    };
    if !contract.progress.claim_pending {
        return Ok(());
    }
    abandon_claim_opening(
        tx,
        flows,
        &mut contract,
        &system(),
        &claim,
        "dispute did not confirm it in time",
        now,
    )
    .await?;
    Ok(())
}

/// [`record_claim_closed`] on the contract, locked; a refund is money in
/// the contract's currency.
pub async fn close_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ClaimClose,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    let refunded = match &cmd.refunded {
        Some(m) if m.amount_minor != 0 => {
            let mut v = Violations::new();
            let money = Money::positive_from_proto("refunded", Some(m), &mut v);
            let money = v.finish_some("refunded", money)?;
            if money.currency != contract.total.currency {
                return Err(ServiceError::invalid(
                    "refunded.currency_code",
                    format!(
                        "must be the contract's currency, {}",
                        contract.total.currency
                    ),
                ));
            }
            Some(money)
        }
        _ => None,
    };
    record_claim_closed(
        tx,
        flows,
        &mut contract,
        &Actor::of(principal),
        &ClaimClosed {
            claim_id: &cmd.claim_id,
            closure: cmd.closure,
            refunded,
            new_shipment_deadline: cmd.new_shipment_deadline,
        },
        now,
    )
    .await
}

pub fn claim_reason(reason: ta_proto::common::ClaimReason) -> Option<ClaimReason> {
    use ta_proto::common::ClaimReason as P;
    Some(match reason {
        P::LateShipment => ClaimReason::LateShipment,
        P::NonDelivery => ClaimReason::NotReceived,
        P::QualityMismatch => ClaimReason::QualityMismatch,
        P::Damage => ClaimReason::Damaged,
        P::ShortQuantity => ClaimReason::ShortQuantity,
        P::Other => ClaimReason::Other,
        P::Unspecified => return None,
    })
}

/// Phase one of opening a claim: decides it (so a claim and an acceptance
/// never both win), pauses the timers and waits for dispute's confirmation.
pub async fn record_claim_opened(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    reason: ClaimReason,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    if contract.open_claim_id.as_deref() == Some(claim_id) {
        return contract_view(tx, contract, flows.settings.day).await;
    }
    let mut loaded = load_terms(tx, contract.contract_id, current_version(contract)).await?;
    if let Some(deadline) = contract.progress.shipment_deadline {
        loaded.terms.shipment_deadline = deadline;
    }
    let shipments = shipments(tx, contract.contract_id).await?;
    check_claim(
        &ClaimFacts {
            protection: contract.negotiation.protection,
            status: contract.negotiation.status,
            open_claim_id: contract.open_claim_id.as_deref(),
            terms: &loaded.terms,
            shipped_at: shipments.iter().find(|s| s.r#final).map(|s| s.shipped_at),
            received_at: contract
                .progress
                .received_at
                .or_else(|| lots::open_lot_receipt(&shipments)),
            lot_release_pending: lots::release_pending(&shipments),
            day: flows.settings.day,
        },
        reason,
        now,
    )?;
    contract.status_before_dispute = Some(contract.negotiation.status);
    contract.negotiation.status = contract.negotiation.status.next(Action::OpenClaim)?;
    contract.open_claim_id = Some(claim_id.to_owned());
    contract.progress.claim_pending = true;
    contract.progress.claim_reason = Some(format!("{reason:?}"));
    contract.progress.paused_at = Some(now);
    let subject = contract.contract_id.to_string();
    flows.timers.cancel(tx, SHIPMENT_DUE, &subject).await?;
    flows.timers.cancel(tx, UNSHIPPED_CANCEL, &subject).await?;
    flows.timers.cancel(tx, ACCEPTANCE_DUE, &subject).await?;
    flows
        .timers
        .cancel(tx, LOT_ACCEPTANCE_DUE, &subject)
        .await?;
    flows
        .schedule_at(
            tx,
            CLAIM_CONFIRMATION,
            contract.contract_id,
            now + flows.settings.claim_confirmation,
            now,
        )
        .await?;
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::ClaimOpened,
                "claim.recorded",
                format!(
                    "claim {claim_id} ({}) recorded: timers paused, money stays held; awaiting dispute's confirmation",
                    reason.label()
                ),
            ),
            now,
        )
        .await
}

pub async fn confirm_claim_opened(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, claim_id)?;
    if !contract.progress.claim_pending {
        return contract_view(tx, contract, flows.settings.day).await;
    }
    contract.progress.claim_pending = false;
    flows
        .timers
        .cancel(tx, CLAIM_CONFIRMATION, &contract.contract_id.to_string())
        .await?;
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::ClaimOpened,
                "claim.opened",
                format!("claim {claim_id} opened by dispute; escrow frozen for it"),
            ),
            now,
        )
        .await
}

fn require_open_claim(contract: &ContractRecord, claim_id: &str) -> Result<(), ServiceError> {
    match contract.open_claim_id.as_deref() {
        Some(open) if open == claim_id => Ok(()),
        Some(open) => Err(ServiceError::FailedPrecondition(format!(
            "claim {claim_id} is not the open claim of this contract ({open} is)"
        ))),
        None => Err(ServiceError::FailedPrecondition(format!(
            "the contract is {}: no claim is open",
            contract.negotiation.status.as_str()
        ))),
    }
}

/// The claim ends without a decision on the goods: the contract resumes where
/// the claim interrupted it and its timers run again, moved forward by the
/// time they were paused.
async fn resume(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let prior = contract
        .status_before_dispute
        .ok_or_else(|| ServiceError::internal("a claim without the status it interrupted"))?;
    contract.negotiation.status = contract.negotiation.status.next(Action::Resume { prior })?;
    end_claim(contract);
    let paused = contract
        .progress
        .paused_at
        .take()
        .map_or(time::Duration::ZERO, |at| now - at);
    flows
        .timers
        .cancel(tx, CLAIM_CONFIRMATION, &contract.contract_id.to_string())
        .await?;
    // Lots received before the final shipment: their acceptance deadlines
    // were paused with the rest.
    shift_lot_deadlines(tx, contract.contract_id, paused).await?;
    lots::schedule_lot_timer(tx, flows, contract.contract_id, now).await?;
    match contract.negotiation.status {
        Status::Shipped | Status::Delivered => {
            if let Some(due) = contract.progress.acceptance_due_at.as_mut() {
                *due += paused;
                let due = *due;
                flows
                    .schedule_at(tx, ACCEPTANCE_DUE, contract.contract_id, due, now)
                    .await?;
            }
        }
        _ if contract.progress.shipment_overdue => {
            // Still unshipped after a claim about it: a whole claim window
            // more before the order is given up.
            let loaded = load_terms(tx, contract.contract_id, current_version(contract)).await?;
            let give_up = now + flows.settings.day * loaded.terms.claim_window_days;
            flows
                .schedule_at(tx, UNSHIPPED_CANCEL, contract.contract_id, give_up, now)
                .await?;
        }
        _ => {
            if let Some(deadline) = contract.progress.shipment_deadline {
                flows
                    .schedule_at(tx, SHIPMENT_DUE, contract.contract_id, deadline, now)
                    .await?;
            }
        }
    }
    Ok(())
}

fn end_claim(contract: &mut ContractRecord) {
    contract.status_before_dispute = None;
    contract.open_claim_id = None;
    contract.progress.claim_pending = false;
    contract.progress.claim_reason = None;
}

pub async fn abandon_claim_opening(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, claim_id)?;
    if !contract.progress.claim_pending {
        return Err(ServiceError::FailedPrecondition(format!(
            "claim {claim_id} was confirmed: it ends with RecordClaimClosed"
        )));
    }
    resume(tx, flows, contract, now).await?;
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::ClaimClosed,
                "claim.abandoned",
                format!("claim {claim_id} was not opened ({reason}); the contract resumes"),
            ),
            now,
        )
        .await
}

/// How a claim ended, as dispute reports it.
pub struct ClaimClosed<'a> {
    pub claim_id: &'a str,
    pub closure: pb::ClaimClosure,
    pub refunded: Option<Money>,
    pub new_shipment_deadline: Option<OffsetDateTime>,
}

pub async fn record_claim_closed(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    closed: &ClaimClosed<'_>,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, closed.claim_id)?;
    let prior = contract
        .status_before_dispute
        .ok_or_else(|| ServiceError::internal("a claim without the status it interrupted"))?;
    let claim_id = closed.claim_id;
    let on_goods = matches!(prior, Status::Shipped | Status::Delivered);
    if let Some(deadline) = closed.new_shipment_deadline {
        if on_goods {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "only for goods not shipped yet",
            ));
        }
        if deadline <= now {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "must be in the future",
            ));
        }
    }
    let refunded = closed.refunded.filter(|m| m.amount_minor > 0);
    let (event, action, detail) = match closed.closure {
        pb::ClaimClosure::Withdrawn => {
            resume(tx, flows, contract, now).await?;
            (
                pb::ContractEventType::ClaimClosed,
                "claim.withdrawn",
                format!("claim {claim_id} withdrawn by the buyer; the contract resumes"),
            )
        }
        pb::ClaimClosure::FullRefund => {
            contract.negotiation.status = contract.negotiation.status.next(Action::FullRefund)?;
            end_claim(contract);
            contract.progress.paused_at = None;
            flows.cancel_timers(tx, contract.contract_id).await?;
            flows
                .outbox
                .write(tx, effects::release_cover(contract))
                .await?;
            // Escrow refunded the claim as dispute decided it; whatever it
            // holds beyond that (money credited after the freeze) goes back
            // too, decided by escrow with what it holds when it closes.
            flows
                .outbox
                .write(
                    tx,
                    effects::close_escrow(
                        contract,
                        &format!("claim {claim_id} refunded in full"),
                        true,
                    ),
                )
                .await?;
            (
                pb::ContractEventType::Refunded,
                "claim.refunded",
                format!("claim {claim_id} decided: full refund to the buyer; cover released"),
            )
        }
        pb::ClaimClosure::PartialRefund | pb::ClaimClosure::ReleaseToSupplier if on_goods => {
            contract.negotiation.status = contract
                .negotiation
                .status
                .next(Action::ClaimSettledOnGoods { prior })?;
            end_claim(contract);
            contract.progress.paused_at = None;
            contract.progress.accepted_at = Some(now);
            contract.progress.acceptance = Some("claim_outcome".into());
            accept_remaining_lots(tx, contract.contract_id, "claim_outcome", false, now).await?;
            flows.cancel_timers(tx, contract.contract_id).await?;
            flows
                .outbox
                .write(tx, effects::release_cover(contract))
                .await?;
            flows
                .outbox
                .write(tx, effects::record_completed(contract))
                .await?;
            flows
                .outbox
                .write(
                    tx,
                    effects::close_escrow(contract, &format!("claim {claim_id} settled"), false),
                )
                .await?;
            (
                pb::ContractEventType::ClaimClosed,
                "claim.settled",
                match refunded {
                    Some(m) => format!(
                        "claim {claim_id} decided: {} refunded, the rest released to the supplier; goods accepted, completed",
                        readable(m)
                    ),
                    None => format!(
                        "claim {claim_id} decided for the supplier: everything released; goods accepted, completed"
                    ),
                },
            )
        }
        pb::ClaimClosure::PartialRefund | pb::ClaimClosure::ReleaseToSupplier => {
            // A goods claim before the final shipment was about the lots
            // received and not accepted: its decision settles them (their
            // milestones go with the final acceptance, on what is held).
            let about_lots = !matches!(
                contract.progress.claim_reason.as_deref(),
                Some("LateShipment" | "NotReceived")
            );
            if about_lots {
                accept_remaining_lots(tx, contract.contract_id, "claim_outcome", true, now).await?;
            }
            resume(tx, flows, contract, now).await?;
            if let Some(deadline) = closed.new_shipment_deadline {
                contract.progress.agreed_shipment_deadline = Some(deadline);
                contract.progress.shipment_deadline = Some(deadline);
                contract.progress.shipment_overdue = false;
                flows
                    .schedule_at(tx, SHIPMENT_DUE, contract.contract_id, deadline, now)
                    .await?;
            }
            (
                pb::ContractEventType::ClaimClosed,
                "claim.settled",
                format!(
                    "claim {claim_id} decided{}{}; the contract resumes",
                    refunded.map_or(String::new(), |m| format!(": {} refunded", readable(m))),
                    closed
                        .new_shipment_deadline
                        .map_or(String::new(), |d| format!(
                            ", new shipment deadline {}",
                            readable_time(d)
                        ))
                ),
            )
        }
        pb::ClaimClosure::Unspecified => {
            return Err(ServiceError::invalid("closure", "is required"));
        }
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event,
                action,
                detail,
                money: refunded,
            },
            now,
        )
        .await
}
