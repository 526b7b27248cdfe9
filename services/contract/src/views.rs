//! The contract in proto, as the API answers it and its feed carries it,
//! and the moments of its timeline as people read them. Pure: the caller
//! loads what a view shows.

use ta_proto::{common::Money as PbMoney, contract as pb};
use ta_runtime::{ServiceError, auth::Actor, money::Money, timestamps};
use time::{Duration, OffsetDateTime};

use crate::{
    domain::{
        negotiation::{Party, Protection, Signature},
        status::Status,
        terms::{Inspection, Terms},
    },
    storage::{
        contracts::ContractRecord,
        fulfilment::{ReportRecord, ShipmentRecord},
        payments::Payment,
        versions::LoadedTerms,
    },
};

/// A moment as people read it in the timeline: `2026-12-31 14:05 UTC`.
pub fn readable_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
}

pub fn money(amount_minor: i64, currency: ta_runtime::money::Currency) -> PbMoney {
    Money::new(amount_minor, currency).to_proto()
}

fn ts(at: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    at.map(timestamps::to_proto)
}

pub fn status_proto(status: Status) -> pb::ContractStatus {
    use pb::ContractStatus as P;
    match status {
        Status::Draft => P::Draft,
        Status::AwaitingSignatures => P::AwaitingSignatures,
        Status::Activating => P::Activating,
        Status::AwaitingPayment => P::AwaitingPayment,
        Status::PartiallyFunded => P::PartiallyFunded,
        Status::Funded => P::Funded,
        Status::SignedUnprotected => P::SignedUnprotected,
        Status::Shipped => P::Shipped,
        Status::Delivered => P::Delivered,
        Status::Completed => P::Completed,
        Status::InDispute => P::InDispute,
        Status::Cancelled => P::Cancelled,
        Status::Refunded => P::Refunded,
    }
}

pub fn status_from_proto(status: pb::ContractStatus) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_proto(*s) == status)
}

fn signature_proto(s: &Signature) -> pb::Signature {
    pb::Signature {
        party: match s.party {
            Party::Buyer => pb::ContractParty::Buyer,
            Party::Supplier => pb::ContractParty::Supplier,
        } as i32,
        principal_id: s.principal_id.clone(),
        version: s.version,
        signed_at: Some(timestamps::to_proto(s.signed_at)),
    }
}

pub fn report_proto(record: &ReportRecord) -> Result<pb::InspectionReport, ServiceError> {
    <pb::InspectionReport as prost::Message>::decode(record.report.as_slice())
        .map_err(|_| ServiceError::internal("a stored inspection report does not decode"))
}

/// A shipment (a lot) with its own receipt, acceptance and release.
fn shipment_proto(s: &ShipmentRecord, currency: ta_runtime::money::Currency) -> pb::Shipment {
    pb::Shipment {
        carrier: s.carrier.clone(),
        tracking_number: s.tracking_number.clone(),
        shipped_at: Some(timestamps::to_proto(s.shipped_at)),
        late: s.late,
        r#final: s.r#final,
        lot: s.lot(),
        received_at: ts(s.received_at),
        acceptance_due_at: ts(s.acceptance_due_at),
        accepted_at: ts(s.accepted_at),
        acceptance: acceptance_proto(s.acceptance.as_deref()) as i32,
        released_milestone_ids: s.released_milestones.clone(),
        released: (!s.released_milestones.is_empty()).then(|| money(s.released_minor, currency)),
        release_pending: !s.release_pending.is_empty(),
    }
}

fn acceptance_proto(kind: Option<&str>) -> pb::AcceptanceKind {
    match kind {
        Some("explicit") => pb::AcceptanceKind::Explicit,
        Some("automatic") => pb::AcceptanceKind::Automatic,
        Some("claim_outcome") => pb::AcceptanceKind::ClaimOutcome,
        _ => pb::AcceptanceKind::Unspecified,
    }
}

/// What a contract's view shows beyond its row: the terms in force, the
/// payments, the latest inspection report and the shipments.
pub struct ContractFacts {
    pub terms: Terms,
    pub payments: Vec<Payment>,
    pub latest_report: Option<ReportRecord>,
    pub shipments: Vec<ShipmentRecord>,
}

/// The contract as the API shows it, with its milestones; `day` is how long
/// a day of the terms lasts.
pub fn contract_proto(
    contract: &ContractRecord,
    facts: &ContractFacts,
    day: Duration,
) -> Result<pb::Contract, ServiceError> {
    let n = &contract.negotiation;
    let p = &contract.progress;
    let terms = &facts.terms;
    let payments = &facts.payments;
    let latest_report = &facts.latest_report;
    let shipments = &facts.shipments;
    let shipment_deadline = p.shipment_deadline.unwrap_or(terms.shipment_deadline);

    let mut milestones: Vec<pb::Milestone> = if payments.is_empty() {
        terms
            .milestones
            .iter()
            .map(|m| pb::Milestone {
                kind: pb::MilestoneKind::Payment as i32,
                payment_milestone_id: m.milestone_id.clone(),
                due_at: p
                    .signed_at
                    .map(|s| timestamps::to_proto(m.due_at(s, terms.shipment_deadline, day))),
                reached_at: None,
            })
            .collect()
    } else {
        payments
            .iter()
            .map(|pay| pb::Milestone {
                kind: pb::MilestoneKind::Payment as i32,
                payment_milestone_id: pay.milestone_id.clone(),
                due_at: Some(timestamps::to_proto(pay.due_at)),
                reached_at: ts(pay.funded_at),
            })
            .collect()
    };
    if !matches!(terms.inspection, Inspection::None) {
        milestones.push(pb::Milestone {
            kind: pb::MilestoneKind::Inspection as i32,
            due_at: Some(timestamps::to_proto(shipment_deadline)),
            reached_at: latest_report
                .as_ref()
                .filter(|r| r.passed)
                .map(|r| timestamps::to_proto(r.submitted_at)),
            ..Default::default()
        });
    }
    let final_shipment = shipments.iter().find(|s| s.r#final);
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Shipment as i32,
        due_at: Some(timestamps::to_proto(shipment_deadline)),
        reached_at: final_shipment.map(|s| timestamps::to_proto(s.shipped_at)),
        ..Default::default()
    });
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Receipt as i32,
        due_at: Some(timestamps::to_proto(terms.delivery_deadline)),
        reached_at: ts(p.received_at),
        ..Default::default()
    });
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Acceptance as i32,
        due_at: ts(p.acceptance_due_at),
        reached_at: ts(p.accepted_at),
        ..Default::default()
    });

    let all_shipments: Vec<pb::Shipment> = shipments
        .iter()
        .map(|s| shipment_proto(s, contract.total.currency))
        .collect();
    Ok(pb::Contract {
        contract_id: contract.contract_id.to_string(),
        buyer_principal_id: contract.buyer_principal_id.clone(),
        supplier_id: contract.supplier_id.to_string(),
        protection: match n.protection {
            Protection::TradeAssurance => pb::Protection::TradeAssurance,
            Protection::None => pb::Protection::None,
        } as i32,
        status: status_proto(n.status) as i32,
        status_before_dispute: contract
            .status_before_dispute
            .map_or(pb::ContractStatus::Unspecified, status_proto)
            as i32,
        latest_version: n.latest_version,
        signed_version: n.signed_version,
        total: Some(contract.total.to_proto()),
        signatures: n.signatures.iter().map(signature_proto).collect(),
        escrow_account_id: contract.escrow_account_id.clone().unwrap_or_default(),
        milestones,
        latest_inspection_report: latest_report.as_ref().map(report_proto).transpose()?,
        shipment: all_shipments.first().cloned(),
        acceptance: acceptance_proto(p.acceptance.as_deref()) as i32,
        claim_window_ends_at: p
            .received_at
            .map(|r| timestamps::to_proto(r + day * terms.claim_window_days)),
        open_claim_id: contract.open_claim_id.clone().unwrap_or_default(),
        cancellation_reason: contract.cancellation_reason.clone(),
        activation_refusal: contract.activation_refusal.clone(),
        supplier_principal_id: contract.supplier_principal_id.clone(),
        shipments: all_shipments,
        pending_amendment_version: n.pending_amendment,
        amendment_signatures: n.amendment_signatures.iter().map(signature_proto).collect(),
        claim_pending_confirmation: p.claim_pending,
        agreed_shipment_deadline: ts(p.agreed_shipment_deadline),
        external_reference: contract.external_reference.clone().unwrap_or_default(),
        created_at: Some(timestamps::to_proto(contract.created_at)),
        updated_at: Some(timestamps::to_proto(contract.updated_at)),
    })
}

pub fn version_proto(loaded: &LoadedTerms) -> pb::ContractVersion {
    let v = &loaded.version;
    pb::ContractVersion {
        contract_id: v.contract_id.to_string(),
        version: v.version,
        terms: Some(loaded.proto.clone()),
        total: Some(v.total.to_proto()),
        created_by: Some(
            Actor::stored(v.created_by_principal_id.clone(), &v.created_by_role).to_proto(),
        ),
        created_at: Some(timestamps::to_proto(v.created_at)),
        change_note: v.change_note.clone(),
    }
}

/// The feed event of a step: the contract after it. Escrow's
/// `escrow_event` and dispute's `event` open alike (`sequence` left to the
/// feed, the type, the time), but each fills its own generated message,
/// which share no Rust type to write that once for.
pub fn contract_event(
    event: pb::ContractEventType,
    actor: &Actor,
    at: OffsetDateTime,
    contract: pb::Contract,
) -> pb::ContractEvent {
    pb::ContractEvent {
        sequence: 0,
        r#type: event as i32,
        occurred_at: Some(timestamps::to_proto(at)),
        actor: Some(actor.to_proto()),
        contract: Some(contract),
    }
}
