//! Dispute's records in proto: the claim as the API shows it and the feed
//! carries it, its offers and evidence, and the enums both ways. Pure.

use ta_objects::Kind;
use ta_proto::{
    common::{Actor as PbActor, ClaimReason as PbReason},
    dispute as pb, ops,
};
use ta_runtime::{auth::Actor, money::Money, timestamps};
use time::OffsetDateTime;

use crate::{
    domain::{
        claim::{Offer, OfferStatus, Outcome, Party, Reason, Remedy},
        reconciliation::{Difference, Figure, Kind as DifferenceKind, Reconciled},
        status::Status,
    },
    storage::{StoredActor, claims::ClaimRecord, evidence::EvidenceRecord},
};

fn stored_actor_proto(actor: &StoredActor) -> PbActor {
    Actor::stored(actor.principal_id.clone(), &actor.role).to_proto()
}

pub fn reason_proto(reason: Reason) -> PbReason {
    match reason {
        Reason::LateShipment => PbReason::LateShipment,
        Reason::NonDelivery => PbReason::NonDelivery,
        Reason::QualityMismatch => PbReason::QualityMismatch,
        Reason::Damage => PbReason::Damage,
        Reason::ShortQuantity => PbReason::ShortQuantity,
        Reason::Other => PbReason::Other,
    }
}

pub fn reason_from_proto(reason: PbReason) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| reason_proto(*r) == reason)
}

pub fn remedy_proto(remedy: Remedy) -> pb::Remedy {
    match remedy {
        Remedy::Refund => pb::Remedy::Refund,
        Remedy::ReturnAndRefund => pb::Remedy::ReturnAndRefund,
        Remedy::Reshipment => pb::Remedy::Reshipment,
    }
}

pub fn status_proto(status: Status) -> pb::ClaimStatus {
    use pb::ClaimStatus as P;
    match status {
        Status::Opening => P::Opening,
        Status::Negotiating => P::Negotiating,
        Status::Escalated => P::Escalated,
        Status::Settled => P::Settled,
        Status::Decided => P::Decided,
        Status::Withdrawn => P::Withdrawn,
        Status::Refused => P::Refused,
    }
}

pub fn status_from_proto(status: pb::ClaimStatus) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_proto(*s) == status)
}

fn outcome_proto(outcome: Outcome) -> pb::ClaimOutcome {
    match outcome {
        Outcome::FullRefund => pb::ClaimOutcome::FullRefund,
        Outcome::PartialRefund(_) => pb::ClaimOutcome::PartialRefund,
        Outcome::ReleaseToSupplier => pb::ClaimOutcome::ReleaseToSupplier,
    }
}

fn offer_proto(offer: &Offer, held: Money) -> pb::Offer {
    let (kind, refund) = match offer.outcome {
        Outcome::PartialRefund(amount) => (pb::OfferKind::PartialRefund, amount),
        _ => (pb::OfferKind::FullRefund, held),
    };
    pb::Offer {
        offer_id: offer.offer_id.clone(),
        kind: kind as i32,
        refund_amount: Some(refund.to_proto()),
        message: offer.message.clone(),
        status: match offer.status {
            OfferStatus::Open => pb::OfferStatus::Open,
            OfferStatus::Accepted => pb::OfferStatus::Accepted,
            OfferStatus::Rejected => pb::OfferStatus::Rejected,
            OfferStatus::Superseded => pb::OfferStatus::Superseded,
            OfferStatus::Lapsed => pb::OfferStatus::Lapsed,
        } as i32,
        made_at: Some(timestamps::to_proto(offer.made_at)),
        responded_at: offer.responded_at.map(timestamps::to_proto),
        rejection_reason: offer.rejection_reason.clone(),
        counter_evidence_ids: offer.counter_evidence_ids.clone(),
        made_by: match offer.made_by {
            Party::Supplier => pb::OfferParty::Supplier,
            Party::Buyer => pb::OfferParty::Buyer,
        } as i32,
    }
}

/// The claim as the API shows it.
pub fn claim_proto(c: &ClaimRecord, evidence_count: u32) -> pb::Claim {
    let claim = &c.claim;
    let ts = |at: Option<OffsetDateTime>| at.map(timestamps::to_proto);
    let negotiating = !matches!(claim.status, Status::Opening | Status::Refused);
    pb::Claim {
        claim_id: c.claim_id.to_string(),
        contract_id: c.contract_id.clone(),
        escrow_account_id: c.escrow_account_id.clone(),
        buyer_principal_id: c.buyer_principal_id.clone(),
        supplier_id: c.supplier_id.clone(),
        reason: reason_proto(c.reason) as i32,
        quality_criterion_ids: c.quality_criterion_ids.clone(),
        amount_claimed: Some(claim.amount_claimed.to_proto()),
        description: c.description.clone(),
        status: status_proto(claim.status) as i32,
        offers: claim
            .offers
            .iter()
            .map(|o| offer_proto(o, claim.held))
            .collect(),
        evidence_count,
        filed_at: Some(timestamps::to_proto(claim.filed_at)),
        negotiation_ends_at: negotiating.then(|| timestamps::to_proto(claim.negotiation_ends_at)),
        auto_escalate_at: negotiating.then(|| timestamps::to_proto(claim.auto_escalate_at)),
        supplier_rejected_at: ts(c.supplier_rejected_at),
        supplier_rejection_reason: c.supplier_rejection_reason.clone(),
        supplier_counter_evidence_ids: c.supplier_counter_evidence_ids.clone(),
        escalated_at: ts(claim.escalated_at),
        escalated_by: c.escalated_by.as_ref().map(stored_actor_proto),
        escalation_reason: c.escalation_reason.clone(),
        decision_due_at: ts(c.decision_due_at),
        resolution: claim.resolution.as_ref().map(|r| pb::ClaimResolution {
            outcome: outcome_proto(r.outcome) as i32,
            refund_amount: Some(r.refund.to_proto()),
            reason: r.reason.clone(),
            penalty_points: r.penalty_points,
            accepted_offer_id: c.accepted_offer_id.clone(),
            resolved_by: c.resolved_by.as_ref().map(stored_actor_proto),
            resolved_at: ts(c.resolved_at),
            new_shipment_deadline: ts(c.new_shipment_deadline),
        }),
        withdrawn_at: ts(c.withdrawn_at),
        withdrawal_reason: c.withdrawal_reason.clone(),
        effects_completed_at: ts(c.effects_completed_at),
        updated_at: Some(timestamps::to_proto(c.updated_at)),
        refusal_reason: c.refusal_reason.clone(),
        supplier_principal_id: c.supplier_principal_id.clone(),
        remedy: remedy_proto(c.remedy) as i32,
    }
}

/// The feed's event of one step: the claim after it.
pub fn event(
    event: pb::DisputeEventType,
    now: OffsetDateTime,
    actor: &Actor,
    claim: pb::Claim,
    evidence_id: String,
) -> pb::DisputeEvent {
    pb::DisputeEvent {
        sequence: 0,
        r#type: event as i32,
        occurred_at: Some(timestamps::to_proto(now)),
        actor: Some(actor.to_proto()),
        claim: Some(claim),
        evidence_id,
    }
}

fn kind_proto(kind: &str) -> pb::EvidenceKind {
    match Kind::parse(kind) {
        Some(Kind::Photo) => pb::EvidenceKind::Photo,
        Some(Kind::Video) => pb::EvidenceKind::Video,
        Some(Kind::InspectionReport) => pb::EvidenceKind::InspectionReport,
        Some(Kind::Document) | None => pb::EvidenceKind::Document,
    }
}

pub fn evidence_proto(e: &EvidenceRecord) -> pb::Evidence {
    pb::Evidence {
        evidence_id: e.evidence_id.to_string(),
        metadata: Some(pb::EvidenceMetadata {
            claim_id: e.claim_id.to_string(),
            kind: kind_proto(&e.kind) as i32,
            filename: e.filename.clone(),
            content_type: e.content_type.clone(),
            size_bytes: u64::try_from(e.size_bytes).unwrap_or(0),
            sha256_hex: e.sha256_hex.clone(),
            description: e.description.clone(),
            quality_criterion_ids: e.quality_criterion_ids.clone(),
            resumable: false,
            resume_from: 0,
        }),
        uploaded_by: Some(
            Actor::stored(e.uploaded_by_principal_id.clone(), &e.uploaded_by_role).to_proto(),
        ),
        uploaded_at: Some(timestamps::to_proto(e.uploaded_at)),
    }
}

/// The most differences one answer lists; all are counted.
const DIFFERENCES_LISTED: usize = 1_000;

pub fn reconciliation_proto(outcome: &Reconciled) -> ops::ReconcilePlatformResponse {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    ops::ReconcilePlatformResponse {
        checked_at: Some(timestamps::to_proto(outcome.checked_at)),
        differences: outcome
            .report
            .differences
            .iter()
            .take(DIFFERENCES_LISTED)
            .map(difference_proto)
            .collect(),
        differences_total: count(outcome.report.differences.len()),
        reservations_checked: count(outcome.reservations),
        contracts_checked: count(outcome.contracts),
        accounts_checked: count(outcome.accounts),
        claims_checked: count(outcome.claims),
        rows_unsettled: count(outcome.report.unsettled),
    }
}

fn difference_proto(difference: &Difference) -> ops::Difference {
    let figure = |f: &Figure| ops::Figure {
        service: f.service.to_owned(),
        state: f.state.clone(),
        amount: f.amount.map(Money::to_proto),
    };
    ops::Difference {
        kind: difference_kind_proto(difference.kind) as i32,
        contract_id: difference.ids.contract_id.clone(),
        supplier_id: difference.ids.supplier_id.clone(),
        escrow_account_id: difference.ids.escrow_account_id.clone(),
        claim_id: difference.ids.claim_id.clone(),
        left: Some(figure(&difference.left)),
        right: Some(figure(&difference.right)),
        summary: difference.summary.clone(),
    }
}

fn difference_kind_proto(kind: DifferenceKind) -> ops::DifferenceKind {
    use ops::DifferenceKind as P;
    match kind {
        DifferenceKind::CoverWithoutContract => P::CoverWithoutContract,
        DifferenceKind::CoverOfEndedContract => P::CoverOfEndedContract,
        DifferenceKind::CoverAmountDiffers => P::CoverAmountDiffers,
        DifferenceKind::ContractWithoutCover => P::ContractWithoutCover,
        DifferenceKind::ContractWithoutOpenAccount => P::ContractWithoutOpenAccount,
        DifferenceKind::AccountTotalDiffers => P::AccountTotalDiffers,
        DifferenceKind::MoneyHeldForEndedContract => P::MoneyHeldForEndedContract,
        DifferenceKind::OpenClaimWithoutFreeze => P::OpenClaimWithoutFreeze,
        DifferenceKind::FreezeWithoutOpenClaim => P::FreezeWithoutOpenClaim,
    }
}
