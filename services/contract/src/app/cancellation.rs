//! Cancelling before shipment: asked by a party or an arbiter, or decided
//! by a deadline (a payment overdue, nothing shipped, escrow's hold
//! deadline).

use sqlx::PgConnection;
use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal, Role},
    money::{Money, readable},
};
use time::OffsetDateTime;

use super::{ContractFlows, Flows, Step, drafting::ById, funded_minor, lots, party_of};
use crate::{
    domain::{
        negotiation::Party,
        status::{Action, Status},
    },
    effects,
    storage::{
        contracts::{ContractRecord, lock_contract},
        fulfilment::shipments,
        payments::payments,
    },
};

/// Cancels before shipment: timers stop, the cover is released, anything
/// funded goes back to the buyer and the escrow account closes. What the
/// acceptance of a lot released stays the supplier's; while such a release
/// is on its way to escrow the cancellation waits (refused, and a timer's
/// tried again), so the close cannot refund the lot's money first.
pub async fn cancel(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let had_cover = matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded
    );
    let next = contract.negotiation.status.next(Action::Cancel)?;
    let lot_shipments = shipments(tx, contract.contract_id).await?;
    if let Some(lot) = lots::release_pending(&lot_shipments) {
        return Err(ServiceError::FailedPrecondition(format!(
            "lot {lot} was accepted and escrow is releasing its milestones: cancel once the release went through"
        )));
    }
    contract.negotiation.status = next;
    contract.cancellation_reason = reason.to_owned();
    flows.cancel_timers(tx, contract.contract_id).await?;
    let payments = payments(tx, contract.contract_id).await?;
    let funded = funded_minor(&payments)?
        .saturating_sub(lots::released_by_lots(&lot_shipments)?)
        .max(0);
    if had_cover {
        flows
            .outbox
            .write(tx, effects::release_cover(contract))
            .await?;
        flows
            .outbox
            .write(
                tx,
                effects::close_escrow(contract, &format!("contract cancelled: {reason}"), true),
            )
            .await?;
    }
    let detail = if funded > 0 {
        format!(
            "cancelled: {reason}; {} refunded from escrow, cover released",
            readable(Money::new(funded, contract.total.currency))
        )
    } else if had_cover {
        format!(
            "cancelled: {reason}; nothing was funded; cover released, escrow closed (money credited meanwhile goes back to the buyer)"
        )
    } else {
        format!("cancelled: {reason}")
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event: pb::ContractEventType::Cancelled,
                action: "contract.cancelled",
                detail,
                money: (funded > 0).then(|| Money::new(funded, contract.total.currency)),
            },
            now,
        )
        .await
}

/// A party or an arbiter cancels (why: `cmd.text`). A funded contract's
/// buyer may cancel only once the shipment deadline passed unshipped.
pub async fn cancel_contract(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ById,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    if principal.role != Role::Arbiter {
        let party = party_of(principal, &contract)?;
        if contract.negotiation.status == Status::Funded
            && party == Party::Buyer
            && !contract.progress.shipment_overdue
        {
            return Err(ServiceError::FailedPrecondition(
                "the contract is funded: the buyer may cancel only once the shipment deadline passed unshipped"
                    .into(),
            ));
        }
    }
    cancel(
        tx,
        flows,
        &mut contract,
        &Actor::of(principal),
        &cmd.text,
        now,
    )
    .await
}
