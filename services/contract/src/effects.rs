//! What the contract asks other services to do: supplier-registry's cover
//! and escrow's account, written to the outbox by `app` in the transaction
//! of the change that causes them. Keys derive from the contract, so a
//! repeated step writes the same call once. Pure: this builds the calls and
//! sends nothing.

use ta_proto::{escrow as escrow_pb, supplier as supplier_pb};
use ta_runtime::{ServiceError, money::Money, timestamps};
use ta_workflow::{
    callees::{ESCROW_CALLS, REGISTRY_CALLS},
    outbox::Call,
};
use time::Duration;

use crate::{
    domain::terms::{Scheme, Terms},
    storage::{contracts::ContractRecord, payments::Payment},
    views,
};

pub const SUPPLIER_REGISTRY: &str = REGISTRY_CALLS.name;
pub const ESCROW: &str = ESCROW_CALLS.name;

/// Completions of the outbox calls, by name.
pub mod completion {
    pub const COVER_RESERVED: &str = "cover_reserved";
    pub const ESCROW_OPENED: &str = "escrow_opened";
    pub const COVER_ADJUSTED: &str = "cover_adjusted";
    pub const SCHEDULE_AMENDED: &str = "schedule_amended";
    /// The acceptance's release answered: the account can close (a refusal
    /// goes to the operators' queue, unless there was nothing to release).
    pub const MONEY_MOVED: &str = "money_moved";
    /// A lot's milestone release answered: no longer pending (a refusal
    /// with money still held goes to the operators' queue).
    pub const LOT_RELEASED: &str = "lot_released";
    /// CloseEscrowAccount answered: a refusal leaves money held that nobody
    /// moves, so it goes to the operators' queue.
    pub const ESCROW_CLOSED: &str = "escrow_closed";
    /// Nothing follows; a refusal is logged for operators.
    pub const NOTHING: &str = "nothing";
}

pub fn reserve_cover(contract: &ContractRecord) -> Call<supplier_pb::ReserveCoverRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "ReserveCover",
        request: supplier_pb::ReserveCoverRequest {
            idempotency_key: format!(
                "contract:{}:reserve-cover:{}",
                contract.contract_id,
                activation(contract)
            ),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            amount: Some(contract.total.to_proto()),
        },
        completion: completion::COVER_RESERVED,
    }
}

/// Escrow's schedule: each payment with its amount and due time.
fn scheduled(contract: &ContractRecord, payments: &[Payment]) -> Vec<escrow_pb::ScheduledPayment> {
    let currency = contract.total.currency;
    payments
        .iter()
        .map(|p| escrow_pb::ScheduledPayment {
            milestone_id: p.milestone_id.clone(),
            amount: Some(views::money(p.amount_minor, currency)),
            due_at: Some(timestamps::to_proto(p.due_at)),
            funded_at: None,
        })
        .collect()
}

/// `day` is how long a day of the terms lasts (escrow's hold deadline).
pub fn open_escrow(
    contract: &ContractRecord,
    terms: &Terms,
    payments: &[Payment],
    day: Duration,
) -> Call<escrow_pb::OpenEscrowAccountRequest> {
    Call {
        callee: &ESCROW_CALLS,
        method: "OpenEscrowAccount",
        request: escrow_pb::OpenEscrowAccountRequest {
            idempotency_key: format!(
                "contract:{}:open-escrow:{}",
                contract.contract_id,
                activation(contract)
            ),
            contract_id: contract.contract_id.to_string(),
            buyer_principal_id: contract.buyer_principal_id.clone(),
            supplier_id: contract.supplier_id.to_string(),
            schedule: scheduled(contract, payments),
            payment_scheme: match terms.scheme {
                Scheme::PayLater => escrow_pb::EscrowPaymentScheme::PayLater,
                Scheme::FullPrepayment | Scheme::DepositAndBalance => {
                    escrow_pb::EscrowPaymentScheme::Direct
                }
            } as i32,
            financing_partner_id: terms
                .pay_later
                .as_ref()
                .map(|p| p.financing_partner_id.clone())
                .unwrap_or_default(),
            supplier_owner_principal_id: contract.supplier_principal_id.clone(),
            hold_until: Some(timestamps::to_proto(terms.hold_until(day))),
            reason: String::new(),
        },
        completion: completion::ESCROW_OPENED,
    }
}

/// Moves the cover to `total` for `version`; `then` is
/// [`completion::COVER_ADJUSTED`] for an amendment both signed (escrow's
/// schedule follows), [`completion::NOTHING`] for a compensation.
pub fn adjust_cover(
    contract: &ContractRecord,
    version: u32,
    total: Money,
    then: &'static str,
) -> Call<supplier_pb::AdjustCoverRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "AdjustCover",
        request: supplier_pb::AdjustCoverRequest {
            idempotency_key: format!("contract:{}:adjust-cover:v{version}", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            amount: Some(total.to_proto()),
            contract_version: version,
        },
        completion: then,
    }
}

/// # Errors
/// `Internal`: the contract has no escrow account to amend.
pub fn amend_escrow_schedule(
    contract: &ContractRecord,
    version: u32,
    terms: &Terms,
    payments: &[Payment],
    day: Duration,
) -> Result<Call<escrow_pb::AmendEscrowScheduleRequest>, ServiceError> {
    let Some(account) = &contract.escrow_account_id else {
        return Err(ServiceError::internal("amending a contract without escrow"));
    };
    Ok(Call {
        callee: &ESCROW_CALLS,
        method: "AmendEscrowSchedule",
        request: escrow_pb::AmendEscrowScheduleRequest {
            idempotency_key: format!("contract:{}:amend-escrow:v{version}", contract.contract_id),
            escrow_account_id: account.clone(),
            schedule: scheduled(contract, payments),
            contract_version: version,
            hold_until: Some(timestamps::to_proto(terms.hold_until(day))),
            reason: String::new(),
        },
        completion: completion::SCHEDULE_AMENDED,
    })
}

pub fn release_cover(contract: &ContractRecord) -> Call<supplier_pb::ReleaseCoverRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "ReleaseCover",
        request: supplier_pb::ReleaseCoverRequest {
            idempotency_key: format!("contract:{}:release-cover", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
        },
        completion: completion::NOTHING,
    }
}

pub fn record_completed(
    contract: &ContractRecord,
) -> Call<supplier_pb::RecordCompletedContractRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "RecordCompletedContract",
        request: supplier_pb::RecordCompletedContractRequest {
            idempotency_key: format!("contract:{}:completed", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            buyer_principal_id: contract.buyer_principal_id.clone(),
        },
        completion: completion::NOTHING,
    }
}

/// Everything held goes to the supplier (the goods were accepted); none
/// without an escrow account.
pub fn release_all(
    contract: &ContractRecord,
    reason: &str,
) -> Option<Call<escrow_pb::ReleaseToSupplierRequest>> {
    let account = contract.escrow_account_id.as_ref()?;
    Some(Call {
        callee: &ESCROW_CALLS,
        method: "ReleaseToSupplier",
        request: escrow_pb::ReleaseToSupplierRequest {
            idempotency_key: format!("contract:{}:release-on-acceptance", contract.contract_id),
            escrow_account_id: account.clone(),
            amount: None,
            reason: reason.into(),
            purpose: Some(escrow_pb::Purpose {
                purpose: Some(escrow_pb::purpose::Purpose::Acceptance(true)),
            }),
        },
        completion: completion::MONEY_MOVED,
    })
}

/// One payment milestone released to the supplier because its lot was
/// accepted (none without an escrow account): its own amount under its own
/// purpose (`release:milestone:<id>` moves money once, whatever the key),
/// keyed by the contract, the lot and the milestone.
pub fn release_lot_milestone(
    contract: &ContractRecord,
    lot: u32,
    milestone_id: &str,
    amount: Money,
) -> Option<Call<escrow_pb::ReleaseToSupplierRequest>> {
    let account = contract.escrow_account_id.as_ref()?;
    Some(Call {
        callee: &ESCROW_CALLS,
        method: "ReleaseToSupplier",
        request: escrow_pb::ReleaseToSupplierRequest {
            idempotency_key: format!(
                "contract:{}:release-lot-{lot}:{milestone_id}",
                contract.contract_id
            ),
            escrow_account_id: account.clone(),
            amount: Some(amount.to_proto()),
            reason: format!("lot {lot} accepted: milestone {milestone_id}"),
            purpose: Some(escrow_pb::Purpose {
                purpose: Some(escrow_pb::purpose::Purpose::MilestoneId(
                    milestone_id.to_owned(),
                )),
            }),
        },
        completion: completion::LOT_RELEASED,
    })
}

/// Closes the contract's escrow account (none without one). With
/// `refund_held` (the contract cancelled or refunded in full) escrow refunds
/// whatever it holds in the same step: escrow, not the contract's view of
/// it, knows what was credited meanwhile.
pub fn close_escrow(
    contract: &ContractRecord,
    reason: &str,
    refund_held: bool,
) -> Option<Call<escrow_pb::CloseEscrowAccountRequest>> {
    close_escrow_as(contract, "close-escrow", reason, refund_held)
}

/// [`close_escrow`] under a key of its own (`step`), for a close that
/// follows the first one (escrow's hold deadline passed).
pub fn close_escrow_as(
    contract: &ContractRecord,
    step: &str,
    reason: &str,
    refund_held: bool,
) -> Option<Call<escrow_pb::CloseEscrowAccountRequest>> {
    let account = contract.escrow_account_id.as_ref()?;
    Some(Call {
        callee: &ESCROW_CALLS,
        method: "CloseEscrowAccount",
        request: escrow_pb::CloseEscrowAccountRequest {
            idempotency_key: format!("contract:{}:{step}", contract.contract_id),
            escrow_account_id: account.clone(),
            reason: reason.into(),
            refund_held,
        },
        completion: completion::ESCROW_CLOSED,
    })
}

/// Names one activation in its calls' keys: the version both signed and when.
/// A refused activation voids the signatures, so signing again is a new
/// activation whose calls must not be taken for replays of the refused one.
fn activation(contract: &ContractRecord) -> String {
    let signed_at = contract
        .progress
        .signed_at
        .map_or(0, |t| t.unix_timestamp_nanos() / 1_000);
    format!("v{}-{signed_at}", contract.negotiation.signed_version)
}
