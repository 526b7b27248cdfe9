//! Escrow's payments, as its feed tells them: money received for a
//! milestone (in full or short), and a payment deadline passed unpaid.

use sqlx::PgConnection;
use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError,
    auth::Actor,
    money::{Money, readable},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ContractFlows, Flows, Step, cancellation::cancel, funded_minor, system};
use crate::{
    domain::status::{Action, Status},
    effects,
    storage::{
        contracts::{ContractRecord, lock_contract},
        payments::{mark_funded, mark_overdue, payments},
    },
};

/// The status a funding change applies to: the contract's, or the one a
/// claim interrupted.
pub(super) fn funding_target(contract: &mut ContractRecord) -> &mut Status {
    if contract.negotiation.status == Status::InDispute
        && let Some(prior) = contract.status_before_dispute.as_mut()
    {
        return prior;
    }
    &mut contract.negotiation.status
}

/// Money escrow received for a payment milestone (from its feed).
pub struct ReceivedPayment<'a> {
    pub milestone_id: &'a str,
    pub amount: Option<Money>,
    /// Whether the milestone is now paid in full; a short credit is not.
    pub milestone_paid: bool,
}

/// Escrow received money for a payment milestone (from its feed).
pub async fn payment_received(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    payment: &ReceivedPayment<'_>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let milestone_id = payment.milestone_id;
    let mut contract = lock_contract(tx, contract_id).await?;
    let escrow = Actor {
        principal_id: effects::ESCROW.into(),
        role: ta_runtime::auth::Role::Service,
    };
    if contract.negotiation.status == Status::Cancelled {
        // A credit that overtook the cancellation: escrow refunds it (the
        // cancellation closes the account refunding what it holds, and a
        // closed account refunds late credits at once); the parties see why.
        let received = payment.amount.map_or_else(|| "money".to_owned(), readable);
        flows
            .record(
                tx,
                &mut contract,
                &escrow,
                Step {
                    event: pb::ContractEventType::PaymentReceived,
                    action: "payment.after_cancellation",
                    detail: format!(
                        "{received} for payment {milestone_id} reached escrow after the cancellation: escrow refunds it to the buyer"
                    ),
                    money: payment.amount,
                },
                now,
            )
            .await?;
        return Ok(());
    }
    if payment.milestone_paid {
        if !mark_funded(tx, contract_id, milestone_id, now).await? {
            return Ok(());
        }
    } else if !matches!(
        funding_target(&mut contract),
        Status::AwaitingPayment | Status::PartiallyFunded
    ) {
        return Ok(());
    }
    let payments = payments(tx, contract_id).await?;
    let all_funded = payments.iter().all(|p| p.funded_at.is_some());
    let action = if all_funded {
        Action::FullyFunded
    } else {
        Action::PaymentReceived
    };
    let target = funding_target(&mut contract);
    match target.next(action) {
        Ok(next) => *target = next,
        Err(_) => {
            tracing::warn!(%contract_id, status = target.as_str(), "payment for a contract not awaiting it");
        }
    }
    let funded = readable(Money::new(
        funded_minor(&payments)?,
        contract.total.currency,
    ));
    let detail = if all_funded {
        format!(
            "payment {milestone_id} received in escrow; fully funded ({funded}): the supplier can produce and ship"
        )
    } else if payment.milestone_paid {
        format!(
            "payment {milestone_id} received in escrow; {funded} of {} funded",
            readable(contract.total)
        )
    } else {
        let received = payment.amount.map_or_else(|| "money".to_owned(), readable);
        format!(
            "{received} received in escrow toward payment {milestone_id}, short of its amount: the rest is still due"
        )
    };
    flows
        .record(
            tx,
            &mut contract,
            &escrow,
            Step {
                event: if all_funded {
                    pb::ContractEventType::Funded
                } else {
                    pb::ContractEventType::PaymentReceived
                },
                action: "payment.received",
                detail,
                money: payment.amount,
            },
            now,
        )
        .await?;
    Ok(())
}

/// Escrow's payment deadline passed unpaid: an unfunded contract is
/// cancelled (cover released, anything funded refunded, escrow closed).
pub async fn payment_overdue(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    milestone_id: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if !mark_overdue(tx, contract_id, milestone_id).await? {
        return Ok(());
    }
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded
    ) {
        return Ok(());
    }
    cancel(
        tx,
        flows,
        &mut contract,
        &system(),
        &format!("the payment deadline of {milestone_id} passed unfunded"),
        now,
    )
    .await?;
    Ok(())
}
