//! What dispute asks other services to do: the callees and the calls each
//! step of a claim writes to the outbox (opening: RecordClaimOpened, then
//! FreezeEscrow, then ConfirmClaimOpened; a resolution: SettleClaim, then
//! RecordClaimClosed, then RecordPenalty; a withdrawal: UnfreezeEscrow, then
//! RecordClaimClosed; the claim as an inquiry to its supplier and the
//! supplier's reply). Pure: builds calls, sends nothing; `app` writes them
//! in the step's transaction. Keys derive from the claim, so a repeated step
//! writes the same call once.

use ta_proto::{contract as contract_pb, escrow as escrow_pb, supplier as supplier_pb};
use ta_runtime::{ServiceError, money::Money, timestamps};
use ta_workflow::{
    callees::{CONTRACT_CALLS, ESCROW_CALLS, REGISTRY_CALLS},
    outbox::Call,
};

use crate::{domain::claim::Outcome, storage::claims::ClaimRecord, views::reason_proto};

pub const CONTRACT: &str = CONTRACT_CALLS.name;
pub const ESCROW: &str = ESCROW_CALLS.name;
pub const SUPPLIER_REGISTRY: &str = REGISTRY_CALLS.name;

/// Completions of the outbox calls, by name; each names the next step.
pub mod completion {
    /// RecordClaimOpened answered: freeze escrow, or the claim is refused.
    pub const CLAIM_RECORDED: &str = "claim_recorded";
    /// FreezeEscrow answered: confirm on the contract, or abandon it.
    pub const ESCROW_FROZEN: &str = "escrow_frozen";
    /// ConfirmClaimOpened answered: the claim negotiates.
    pub const CLAIM_CONFIRMED: &str = "claim_confirmed";
    /// SettleClaim answered: tell the contract.
    pub const SETTLED: &str = "settled";
    /// UnfreezeEscrow of a withdrawal answered: tell the contract.
    pub const UNFROZEN: &str = "unfrozen";
    /// RecordClaimClosed answered: record the penalty, if any.
    pub const CLAIM_CLOSED: &str = "claim_closed";
    /// RecordPenalty answered: every effect is done.
    pub const PENALTY_RECORDED: &str = "penalty_recorded";
    /// RecordInquiry answered: if the supplier answered the claim already,
    /// its reply follows.
    pub const INQUIRY_RECORDED: &str = "inquiry_recorded";
    /// RecordInquiryReply answered: nothing follows (a reply that overtook
    /// its inquiry is sent again once the inquiry is recorded).
    pub const INQUIRY_REPLIED: &str = "inquiry_replied";
    /// Nothing follows; a refusal is logged for operators.
    pub const NOTHING: &str = "nothing";
}

/// The supplier-registry inquiry a claim is (its response rate counts it).
pub fn inquiry_id(claim: &ClaimRecord) -> String {
    format!("dispute:{}", claim.claim_id)
}

fn key(claim: &ClaimRecord, step: &str) -> String {
    format!("dispute:{}:{step}", claim.claim_id)
}

pub fn record_claim_opened(claim: &ClaimRecord) -> Call<contract_pb::RecordClaimOpenedRequest> {
    Call {
        callee: &CONTRACT_CALLS,
        method: "RecordClaimOpened",
        request: contract_pb::RecordClaimOpenedRequest {
            idempotency_key: key(claim, "record-opened"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason_proto(claim.reason) as i32,
        },
        completion: completion::CLAIM_RECORDED,
    }
}

pub fn freeze(claim: &ClaimRecord) -> Call<escrow_pb::FreezeEscrowRequest> {
    Call {
        callee: &ESCROW_CALLS,
        method: "FreezeEscrow",
        request: escrow_pb::FreezeEscrowRequest {
            idempotency_key: key(claim, "freeze"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: format!("claim {} ({}) filed", claim.claim_id, claim.reason.as_str()),
        },
        completion: completion::ESCROW_FROZEN,
    }
}

pub fn confirm_opened(claim: &ClaimRecord) -> Call<contract_pb::ConfirmClaimOpenedRequest> {
    Call {
        callee: &CONTRACT_CALLS,
        method: "ConfirmClaimOpened",
        request: contract_pb::ConfirmClaimOpenedRequest {
            idempotency_key: key(claim, "confirm-opened"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
        },
        completion: completion::CLAIM_CONFIRMED,
    }
}

pub fn abandon_opening(
    claim: &ClaimRecord,
    reason: &str,
) -> Call<contract_pb::AbandonClaimOpeningRequest> {
    Call {
        callee: &CONTRACT_CALLS,
        method: "AbandonClaimOpening",
        request: contract_pb::AbandonClaimOpeningRequest {
            idempotency_key: key(claim, "abandon-opening"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason.into(),
        },
        completion: completion::NOTHING,
    }
}

/// Lifts the claim's freeze; `then` names what follows (the contract is
/// told of a withdrawal, or nothing).
pub fn unfreeze(
    claim: &ClaimRecord,
    reason: &str,
    then: &'static str,
) -> Call<escrow_pb::UnfreezeEscrowRequest> {
    Call {
        callee: &ESCROW_CALLS,
        method: "UnfreezeEscrow",
        request: escrow_pb::UnfreezeEscrowRequest {
            idempotency_key: key(claim, "unfreeze"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason.into(),
        },
        completion: then,
    }
}

/// The resolution's money, atomically in escrow: the refund, the rest
/// released when the goods had shipped, the freeze lifted.
pub fn settle(claim: &ClaimRecord) -> Result<Call<escrow_pb::SettleClaimRequest>, ServiceError> {
    let Some(resolution) = &claim.claim.resolution else {
        return Err(ServiceError::internal(
            "settling a claim without a resolution",
        ));
    };
    Ok(Call {
        callee: &ESCROW_CALLS,
        method: "SettleClaim",
        request: escrow_pb::SettleClaimRequest {
            idempotency_key: key(claim, "settle"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            refund: Some(resolution.refund.to_proto()),
            release_rest: claim.goods_shipped && resolution.outcome != Outcome::FullRefund,
            // Escrow keeps at most 500 characters of a reason.
            reason: format!("claim {}: {}", claim.claim_id, resolution.reason)
                .chars()
                .take(500)
                .collect(),
        },
        completion: completion::SETTLED,
    })
}

/// Tells the contract how the claim ended.
pub fn record_closed(claim: &ClaimRecord) -> Call<contract_pb::RecordClaimClosedRequest> {
    let (closure, refunded) = match &claim.claim.resolution {
        None => (contract_pb::ClaimClosure::Withdrawn, None),
        Some(r) => (
            match r.outcome {
                Outcome::FullRefund => contract_pb::ClaimClosure::FullRefund,
                Outcome::PartialRefund(_) => contract_pb::ClaimClosure::PartialRefund,
                Outcome::ReleaseToSupplier => contract_pb::ClaimClosure::ReleaseToSupplier,
            },
            Some(r.refund).filter(|m| m.amount_minor > 0),
        ),
    };
    Call {
        callee: &CONTRACT_CALLS,
        method: "RecordClaimClosed",
        request: contract_pb::RecordClaimClosedRequest {
            idempotency_key: key(claim, "record-closed"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            closure: closure as i32,
            refunded: refunded.map(Money::to_proto),
            new_shipment_deadline: claim.new_shipment_deadline.map(timestamps::to_proto),
        },
        completion: completion::CLAIM_CLOSED,
    }
}

/// The claim, as an inquiry to its supplier (once: the key and the
/// inquiry id are the claim's).
pub fn record_inquiry(claim: &ClaimRecord) -> Call<supplier_pb::RecordInquiryRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "RecordInquiry",
        request: supplier_pb::RecordInquiryRequest {
            idempotency_key: key(claim, "inquiry"),
            supplier_id: claim.supplier_id.clone(),
            inquiry_id: inquiry_id(claim),
        },
        completion: completion::INQUIRY_RECORDED,
    }
}

/// The supplier answered the claim. Written at each answer under one key
/// per `step`, so only the first is sent; supplier-registry counts one
/// reply per inquiry whatever arrives.
pub fn record_inquiry_reply(
    claim: &ClaimRecord,
    step: &str,
) -> Call<supplier_pb::RecordInquiryReplyRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "RecordInquiryReply",
        request: supplier_pb::RecordInquiryReplyRequest {
            idempotency_key: key(claim, step),
            supplier_id: claim.supplier_id.clone(),
            inquiry_id: inquiry_id(claim),
        },
        completion: completion::INQUIRY_REPLIED,
    }
}

pub fn record_penalty(
    claim: &ClaimRecord,
    points: u32,
    reason: &str,
) -> Call<supplier_pb::RecordPenaltyRequest> {
    Call {
        callee: &REGISTRY_CALLS,
        method: "RecordPenalty",
        request: supplier_pb::RecordPenaltyRequest {
            idempotency_key: key(claim, "penalty"),
            supplier_id: claim.supplier_id.clone(),
            claim_id: claim.claim_id.to_string(),
            points,
            reason: reason.into(),
        },
        completion: completion::PENALTY_RECORDED,
    }
}
