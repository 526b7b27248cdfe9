//! Release per milestone: the lots before the final shipment, received and
//! accepted on their own, each acceptance releasing the payment milestones
//! the terms tie to its lot (one ReleaseToSupplier per milestone through the
//! outbox, keyed by the contract, the lot and the milestone), and escrow's
//! answers to those releases. The rules are in [`crate::domain::lots`]; the
//! final shipment's receipt and acceptance stay in [`super::fulfilment`].

use sqlx::PgConnection;
use ta_proto::{contract as pb, escrow as escrow_pb};
use ta_runtime::{
    ServiceError,
    auth::Actor,
    money::{Money, readable},
};
use ta_workflow::Handled;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ContractFlows, Flows, LOT_ACCEPTANCE_DUE, Step, funded_minor, note, system};
use crate::{
    domain::{
        lots::{
            LotFacts, check_lot_acceptance, check_lot_receipt, lot_release, lots_due, next_lot_due,
        },
        negotiation::Protection,
        status::Status,
        terms::Terms,
    },
    effects,
    storage::{
        contracts::{ContractRecord, find_by_escrow_account, lock_contract},
        fulfilment::{
            ShipmentRecord, record_lot_acceptance, record_lot_receipt, release_answered, shipments,
        },
        payments::payments,
        versions::load_terms,
    },
    views::readable_time,
};

/// A lot's facts, if it shipped and is not the final shipment (the final
/// one is the contract's own receipt and acceptance).
fn lot_facts(shipments: &[ShipmentRecord], lot: u32) -> Option<LotFacts> {
    shipments
        .iter()
        .find(|s| s.lot() == lot && !s.r#final)
        .map(|s| LotFacts {
            lot,
            shipped_at: s.shipped_at,
            received_at: s.received_at,
            accepted_at: s.accepted_at,
        })
}

/// What the lots' own acceptances released (pending or answered).
pub fn released_by_lots(shipments: &[ShipmentRecord]) -> Result<i64, ServiceError> {
    shipments
        .iter()
        .try_fold(0_i64, |sum, s| sum.checked_add(s.released_minor))
        .ok_or_else(|| ServiceError::internal("the lots' releases overflow an i64"))
}

/// The first lot whose release escrow has not answered yet.
pub fn release_pending(shipments: &[ShipmentRecord]) -> Option<u32> {
    shipments
        .iter()
        .find(|s| !s.release_pending.is_empty())
        .map(ShipmentRecord::lot)
}

/// The latest receipt of a lot before the final one that is not accepted
/// yet: a goods claim about it runs from then.
pub fn open_lot_receipt(shipments: &[ShipmentRecord]) -> Option<OffsetDateTime> {
    shipments
        .iter()
        .filter(|s| !s.r#final && s.accepted_at.is_none())
        .filter_map(|s| s.received_at)
        .max()
}

/// Schedules the lot acceptance timer at the earliest deadline of the lots
/// received and not accepted, or cancels it when there is none.
pub async fn schedule_lot_timer(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let lots = lot_deadlines(&shipments(tx, contract_id).await?);
    match next_lot_due(&lots) {
        Some(due) => {
            flows
                .schedule_at(tx, LOT_ACCEPTANCE_DUE, contract_id, due, now)
                .await
        }
        None => {
            flows
                .timers
                .cancel(tx, LOT_ACCEPTANCE_DUE, &contract_id.to_string())
                .await?;
            Ok(())
        }
    }
}

fn lot_deadlines(shipments: &[ShipmentRecord]) -> Vec<(u32, Option<OffsetDateTime>, bool)> {
    shipments
        .iter()
        .filter(|s| !s.r#final)
        .map(|s| (s.lot(), s.acceptance_due_at, s.accepted_at.is_some()))
        .collect()
}

/// Who acts on which lot of a contract under its signed terms, and when.
pub struct OnLot<'a> {
    pub terms: &'a Terms,
    pub actor: &'a Actor,
    pub lot: u32,
    pub now: OffsetDateTime,
}

/// The buyer confirms a lot's receipt at `received_at`: the lot counts as
/// accepted at its acceptance deadline unless claimed first.
pub async fn receive_lot(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    on: &OnLot<'_>,
    received_at: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let OnLot {
        terms,
        actor,
        lot,
        now,
    } = *on;
    let id = contract.contract_id;
    let shipments = shipments(tx, id).await?;
    check_lot_receipt(
        contract.negotiation.status,
        lot,
        lot_facts(&shipments, lot).as_ref(),
        received_at,
    )?;
    let due = terms.acceptance_after_receipt(received_at, flows.settings.day);
    record_lot_receipt(tx, id, lot, received_at, Some(due)).await?;
    schedule_lot_timer(tx, flows, id, now).await?;
    let window_ends = received_at + flows.settings.day * terms.claim_window_days;
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::ReceiptConfirmed,
                "lot.received",
                format!(
                    "the buyer confirmed receipt of lot {lot} of {}; claims about it are possible until {}, and it counts as accepted at {} unless claimed",
                    terms.lots(),
                    readable_time(window_ends),
                    readable_time(due)
                ),
            ),
            now,
        )
        .await
}

/// A lot before the final one is accepted (`kind`: `explicit` or
/// `automatic`): the funded milestones the terms tie to it are released to
/// the supplier through the outbox, one call per milestone; the contract
/// goes on.
pub async fn accept_lot(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    on: &OnLot<'_>,
    kind: &'static str,
    note: &str,
) -> Result<pb::Contract, ServiceError> {
    let OnLot {
        terms,
        actor,
        lot,
        now,
    } = *on;
    let id = contract.contract_id;
    let shipments = shipments(tx, id).await?;
    check_lot_acceptance(
        contract.negotiation.status,
        lot,
        lot_facts(&shipments, lot).as_ref(),
    )?;
    let payments = payments(tx, id).await?;
    let release = lot_release(terms, lot, |milestone| {
        payments
            .iter()
            .any(|p| p.milestone_id == milestone && p.funded_at.is_some())
    })?;
    let protected = contract.negotiation.protection == Protection::TradeAssurance
        && contract.escrow_account_id.is_some();
    let (released, released_minor) = if protected {
        for (milestone, amount) in &release.milestones {
            flows
                .outbox
                .write(
                    tx,
                    effects::release_lot_milestone(contract, lot, milestone, *amount),
                )
                .await?;
        }
        let ids: Vec<String> = release.milestones.iter().map(|(m, _)| m.clone()).collect();
        (ids, release.total.amount_minor)
    } else {
        (Vec::new(), 0)
    };
    record_lot_acceptance(tx, id, lot, kind, &released, released_minor, now).await?;
    schedule_lot_timer(tx, flows, id, now).await?;
    let how = match kind {
        "automatic" => format!(
            "lot {lot} accepted automatically: its inspection period and claim window lapsed without a claim"
        ),
        _ => format!("the buyer accepted lot {lot}"),
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(" (\"{note}\")")
    };
    let currency = contract.total.currency;
    let detail = if protected && !released.is_empty() {
        let held_after = funded_minor(&payments)?
            .checked_sub(released_by_lots(&shipments)?)
            .and_then(|h| h.checked_sub(released_minor))
            .unwrap_or(0);
        format!(
            "{how}{note}; {} released to the supplier (milestone {}){}; {} stays held for the rest of the order",
            readable(release.total),
            released.join(", "),
            if release.unfunded.is_empty() {
                String::new()
            } else {
                format!(
                    ", milestone {} not funded: released with the final acceptance",
                    release.unfunded.join(", ")
                )
            },
            readable(Money::new(held_after.max(0), currency))
        )
    } else if protected {
        format!("{how}{note}; no funded milestone is tied to it: nothing released")
    } else {
        format!("{how}{note}")
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event: pb::ContractEventType::LotAccepted,
                action: "lot.accepted",
                detail,
                money: (protected && !released.is_empty()).then_some(release.total),
            },
            now,
        )
        .await
}

/// The lot acceptance timer fired: every received lot whose deadline passed
/// without a claim is accepted; the timer moves to the next one.
pub async fn lot_acceptance_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
            | Status::Shipped
            | Status::Delivered
    ) {
        // Ended, or a claim paused it (its end schedules it again).
        return Ok(());
    }
    let terms = load_terms(tx, contract_id, contract.negotiation.signed_version)
        .await?
        .terms;
    let due = lots_due(&lot_deadlines(&shipments(tx, contract_id).await?), now);
    let actor = system();
    for lot in due {
        let on = OnLot {
            terms: &terms,
            actor: &actor,
            lot,
            now,
        };
        accept_lot(tx, flows, &mut contract, &on, "automatic", "").await?;
    }
    schedule_lot_timer(tx, flows, contract_id, now).await
}

/// Escrow answered the release of one lot milestone: no longer pending. A
/// refusal while the contract goes on leaves the milestone's money held
/// that nobody else would move before the final acceptance: an operator
/// item. After the final acceptance, a cancellation or a full refund took
/// what was held, a refusal only says so.
pub async fn lot_released(
    tx: &mut PgConnection,
    request: &escrow_pb::ReleaseToSupplierRequest,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let account = &request.escrow_account_id;
    let Some(contract) = find_by_escrow_account(tx, account).await? else {
        return Err(ServiceError::internal(
            "a lot released for an unknown account",
        ));
    };
    let milestone = match request.purpose.as_ref().and_then(|p| p.purpose.as_ref()) {
        Some(escrow_pb::purpose::Purpose::MilestoneId(m)) => m.clone(),
        _ => {
            return Err(ServiceError::internal(
                "a lot release without its milestone",
            ));
        }
    };
    let lot = release_answered(tx, contract.contract_id, &milestone)
        .await?
        .map_or_else(|| "?".to_owned(), |l| l.to_string());
    let amount = request.amount.as_ref().and_then(|m| {
        let mut v = ta_runtime::Violations::new();
        Money::positive_from_proto("amount", Some(m), &mut v)
    });
    let amount_text = amount.map_or_else(|| "its amount".to_owned(), readable);
    match refusal {
        None => {
            note(
                tx,
                &contract,
                "escrow.lot_released",
                format!(
                    "escrow released {amount_text} (milestone {milestone}) to the supplier for lot {lot}"
                ),
                amount,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Some(refusal) if contract.negotiation.status.is_terminal() => {
            note(
                tx,
                &contract,
                "escrow.lot_release_superseded",
                format!(
                    "escrow did not release milestone {milestone} for lot {lot} ({refusal}): the contract is {} and its final step moved what was held",
                    contract.negotiation.status.as_str()
                ),
                None,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Some(refusal) => {
            let why = format!(
                "escrow refused to release milestone {milestone} ({amount_text}) of account {account} for lot {lot}: {refusal}"
            );
            note(
                tx,
                &contract,
                "escrow.lot_release_refused",
                format!("{why}; the money stays held until an operator resolves it"),
                None,
                now,
            )
            .await?;
            Ok(Handled::Escalate(why))
        }
    }
}
