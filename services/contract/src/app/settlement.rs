//! Escrow's answers about the money it holds: the release on acceptance,
//! the account's close, and its hold deadline passing. A refusal that
//! leaves money held nobody else moves goes to the operators' queue.

use sqlx::PgConnection;
use ta_proto::escrow as escrow_pb;
use ta_runtime::{
    ServiceError,
    money::{Money, readable},
};
use ta_workflow::Handled;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Flows, cancellation::cancel, fulfilment::accept, note, system};
use crate::{
    domain::status::Status,
    effects,
    storage::contracts::{find_by_escrow_account, lock_contract},
    views::readable_time,
};

/// Whether a refused release had nothing to move: escrow held nothing more
/// (what the acceptance would have released went with a claim's settlement
/// or refund). Escrow names it `NOTHING_HELD`; older answers say so in words.
fn nothing_held(refusal: &str) -> bool {
    refusal.starts_with("NOTHING_HELD") || refusal.contains("holds nothing")
}

/// Escrow answered the release of everything held on acceptance: the
/// account closes. A refusal with money still held goes to the operators'
/// queue (with a timeline entry): nobody else would move that money.
pub async fn released_on_acceptance(
    tx: &mut PgConnection,
    flows: &Flows,
    escrow_account_id: &str,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let Some(contract) = find_by_escrow_account(tx, escrow_account_id).await? else {
        return Err(ServiceError::internal("money moved for an unknown account"));
    };
    match refusal {
        Some(refusal) if !nothing_held(refusal) => {
            let why = format!(
                "escrow refused to release account {escrow_account_id} to the supplier on acceptance: {refusal}"
            );
            note(
                tx,
                &contract,
                "escrow.release_refused",
                format!("{why}; the money stays held until an operator resolves it"),
                None,
                now,
            )
            .await?;
            Ok(Handled::Escalate(why))
        }
        _ => {
            flows
                .outbox
                .write(
                    tx,
                    effects::close_escrow(&contract, "goods accepted", false),
                )
                .await?;
            Ok(Handled::Done)
        }
    }
}

/// Escrow answered CloseEscrowAccount: a refusal leaves the account open
/// with money nobody moves, so it goes to the operators' queue.
pub async fn escrow_closed(
    tx: &mut PgConnection,
    request: &escrow_pb::CloseEscrowAccountRequest,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let Some(refusal) = refusal else {
        return Ok(Handled::Done);
    };
    let account = &request.escrow_account_id;
    if refusal.starts_with("ACCOUNT_CLOSED") || refusal.contains("the account is closed") {
        // Closed already (an emptying release closes it; a closed account
        // refunds late credits at once): what this close was for is done.
        tracing::info!(account, "escrow account already closed");
        return Ok(Handled::Done);
    }
    let why = format!(
        "escrow refused to close account {account}{} ({}): {refusal}",
        if request.refund_held {
            ", refunding what it holds"
        } else {
            ""
        },
        request.reason
    );
    if let Some(contract) = find_by_escrow_account(tx, account).await? {
        note(
            tx,
            &contract,
            "escrow.close_refused",
            format!("{why}; an operator resolves it"),
            None,
            now,
        )
        .await?;
    }
    Ok(Handled::Escalate(why))
}

/// Escrow's hold deadline for the account passed with money held and no
/// freeze: the latest time the contract promised to have released or
/// refunded it. What the contract's state implies:
///
/// | contract | decision |
/// |---|---|
/// | shipped or delivered, its acceptance deadline passed | the goods count as accepted: everything held goes to the supplier |
/// | shipped or delivered, its acceptance deadline ahead (received late) | nothing yet: the contract's own acceptance timer releases it |
/// | signed, not shipped | the order cannot arrive in time any more: cancelled, everything held refunded |
/// | cancelled or refunded | the close refunding what is held is written again |
/// | completed, in dispute, or anything else | an operator decides (the acceptance's release is spent; a dispute freezes) |
pub async fn hold_deadline_passed(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    held: Option<Money>,
    sequence: u64,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    let held_text = held.map_or_else(|| "money".to_owned(), readable);
    let status = contract.negotiation.status;
    match status {
        Status::Shipped | Status::Delivered
            if contract
                .progress
                .acceptance_due_at
                .is_none_or(|due| due <= now) =>
        {
            accept(
                tx,
                flows,
                &mut contract,
                &system(),
                "automatic",
                "escrow's hold deadline passed with the acceptance deadline",
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::Shipped | Status::Delivered => {
            let due = contract
                .progress
                .acceptance_due_at
                .map_or_else(String::new, readable_time);
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!(
                    "escrow's hold deadline passed holding {held_text}: the goods were received late, so the contract's own acceptance deadline ({due}) comes later and releases it then"
                ),
                held,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded => {
            cancel(
                tx,
                flows,
                &mut contract,
                &system(),
                "escrow's hold deadline passed before the goods shipped",
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::Cancelled | Status::Refunded => {
            flows
                .outbox
                .write(
                    tx,
                    effects::close_escrow_as(
                        &contract,
                        &format!("close-escrow-after-deadline-{sequence}"),
                        &format!(
                            "contract {}: escrow's hold deadline passed",
                            status.as_str()
                        ),
                        true,
                    ),
                )
                .await?;
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!(
                    "escrow's hold deadline passed holding {held_text} for a {} contract: escrow is asked again to refund it and close",
                    status.as_str()
                ),
                held,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        _ => {
            let why = format!(
                "escrow's hold deadline passed holding {held_text} for contract {contract_id}, which is {}: {}",
                status.as_str(),
                match status {
                    Status::Completed =>
                        "the acceptance's release is spent; an operator releases or refunds the rest",
                    Status::InDispute =>
                        "a claim should have frozen the account; an operator looks into it",
                    _ => "the contract holds no money in this state; an operator looks into it",
                }
            );
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!("{why}; until then the money stays held"),
                held,
                now,
            )
            .await?;
            Ok(Handled::Escalate(why))
        }
    }
}
