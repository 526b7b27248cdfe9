//! Domain records to protobuf, in the view each caller may see: a supplier's
//! private fields (owner, licence, contacts) only to its owner, operators and
//! services; a reviewer's name only to operators, services and the reviewer.
//! And the feed's events: the facts of one change, not the supplier's view.

use ta_proto::supplier as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal, Role},
    money::Money,
    timestamps,
};

use crate::{
    domain::{Status as SupplierStatus, Supplier, Verification},
    storage::{Reservation, ReviewRow},
};

/// Whether `principal` sees the private view of `supplier` (contacts,
/// licence number, owner): its owner, staff, platform back ends and services.
pub fn sees_private_view(principal: &Principal, supplier: &Supplier) -> bool {
    principal.sees_everything()
        || (principal.role == Role::Supplier && principal.subject == supplier.owner_principal_id)
}

pub fn supplier_to_proto(s: &Supplier, private: bool) -> pb::Supplier {
    let cover = s.cover();
    let private_text = |text: &str| {
        if private {
            text.to_owned()
        } else {
            String::new()
        }
    };
    pb::Supplier {
        supplier_id: s.id.to_string(),
        owner_principal_id: private_text(&s.owner_principal_id),
        legal_name: s.legal_name.clone(),
        country_code: s.country_code.clone(),
        business_licence_number: private_text(&s.business_licence_number),
        contacts: if private {
            s.contacts
                .iter()
                .map(|c| pb::Contact {
                    name: c.name.clone(),
                    email: c.email.clone(),
                    phone: c.phone.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        verification_status: verification_to_proto(s.verification) as i32,
        verification_rejection_reason: s.verification_rejection_reason.clone(),
        status: status_to_proto(s.status) as i32,
        status_reason: s.status_reason.clone(),
        enrolled: s.enrolled(),
        trade_assurance_badge: s.has_badge(),
        ta_limit: cover.map(|c| c.limit.to_proto()),
        cover_reserved: cover.map(|c| c.reserved.to_proto()),
        cover_remaining: cover.map(|c| c.remaining.to_proto()),
        review_count: u32::try_from(s.review_count).unwrap_or(u32::MAX),
        average_rating_centi: s.average_rating_centi(),
        inquiry_count: u32::try_from(s.inquiry_count).unwrap_or(u32::MAX),
        response_rate_basis_points: s.response_rate_basis_points(),
        penalty_points: u32::try_from(s.penalty_points).unwrap_or(0),
        created_at: Some(timestamps::to_proto(s.created_at)),
        updated_at: Some(timestamps::to_proto(s.updated_at)),
        private_view: private,
    }
}

/// The supplier in the view `principal` may see.
pub fn supplier_for(principal: &Principal, s: &Supplier) -> pb::Supplier {
    supplier_to_proto(s, sees_private_view(principal, s))
}

pub fn verification_to_proto(verification: Verification) -> pb::VerificationStatus {
    match verification {
        Verification::Unverified => pb::VerificationStatus::Unverified,
        Verification::Submitted => pb::VerificationStatus::Submitted,
        Verification::Verified => pb::VerificationStatus::Verified,
        Verification::Rejected => pb::VerificationStatus::Rejected,
    }
}

pub fn status_to_proto(status: SupplierStatus) -> pb::SupplierStatus {
    match status {
        SupplierStatus::Active => pb::SupplierStatus::Active,
        SupplierStatus::Restricted => pb::SupplierStatus::Restricted,
        SupplierStatus::Suspended => pb::SupplierStatus::Suspended,
    }
}

pub fn reservation_to_proto(r: &Reservation) -> Result<pb::CoverReservation, ServiceError> {
    Ok(pb::CoverReservation {
        supplier_id: r.supplier_id.to_string(),
        contract_id: r.contract_id.clone(),
        amount: Some(r.amount()?.to_proto()),
        status: if r.is_active() {
            pb::CoverReservationStatus::Active
        } else {
            pb::CoverReservationStatus::Released
        } as i32,
        reserved_at: Some(timestamps::to_proto(r.reserved_at)),
        released_at: r.released_at.map(timestamps::to_proto),
        contract_version: u32::try_from(r.contract_version).unwrap_or(1),
    })
}

/// Reviewers are named to operators, services and themselves only.
pub fn review_to_proto(principal: &Principal, r: &ReviewRow) -> pb::Review {
    let named = principal.sees_everything() || principal.subject == r.buyer_principal_id;
    pb::Review {
        supplier_id: r.supplier_id.to_string(),
        contract_id: r.contract_id.clone(),
        buyer_principal_id: if named {
            r.buyer_principal_id.clone()
        } else {
            String::new()
        },
        rating: u32::try_from(r.rating).unwrap_or(0),
        comment: r.comment.clone(),
        created_at: Some(timestamps::to_proto(r.created_at)),
    }
}

/// One fact the feed tells about a supplier; what it needs beyond the
/// supplier as it is after the change.
#[derive(Clone, Copy, Debug)]
pub enum SupplierFact<'a> {
    Registered,
    VerificationSubmitted,
    Verified,
    VerificationRejected,
    Enrolled,
    /// The TA limit changed from `previous`.
    LimitSet {
        previous: Option<Money>,
    },
    /// The status was set (from `previous`).
    StatusChanged {
        previous: SupplierStatus,
    },
    PenaltyRecorded {
        claim_id: &'a str,
        points: u32,
        reason: &'a str,
    },
}

/// The feed event of `fact` about `s` (after the change) by `actor`, and its
/// kind as the feed stores it: ids and the values the change set, never the
/// supplier's view.
pub fn supplier_event(
    fact: &SupplierFact<'_>,
    actor: &Actor,
    s: &Supplier,
) -> (&'static str, pb::SupplierEvent) {
    use pb::SupplierEventType as Type;
    let base = pb::SupplierEvent {
        sequence: 0,
        r#type: Type::Unspecified as i32,
        occurred_at: Some(timestamps::to_proto(s.updated_at)),
        actor: Some(actor.to_proto()),
        supplier_id: s.id.to_string(),
        ..pb::SupplierEvent::default()
    };
    let verification = verification_to_proto(s.verification) as i32;
    let (kind, event) = match *fact {
        SupplierFact::Registered => (
            Type::Registered,
            pb::SupplierEvent {
                owner_principal_id: s.owner_principal_id.clone(),
                country_code: s.country_code.clone(),
                verification_status: verification,
                status: status_to_proto(s.status) as i32,
                ..base
            },
        ),
        SupplierFact::VerificationSubmitted => (
            Type::VerificationSubmitted,
            pb::SupplierEvent {
                verification_status: verification,
                ..base
            },
        ),
        SupplierFact::Verified => (
            Type::Verified,
            pb::SupplierEvent {
                verification_status: verification,
                ..base
            },
        ),
        SupplierFact::VerificationRejected => (
            Type::VerificationRejected,
            pb::SupplierEvent {
                verification_status: verification,
                reason: s.verification_rejection_reason.clone(),
                ..base
            },
        ),
        SupplierFact::Enrolled => (
            Type::Enrolled,
            pb::SupplierEvent {
                ta_limit: s.ta_limit.map(|m| m.to_proto()),
                ..base
            },
        ),
        SupplierFact::LimitSet { previous } => (
            Type::LimitSet,
            pb::SupplierEvent {
                ta_limit: s.ta_limit.map(|m| m.to_proto()),
                previous_ta_limit: previous.map(|m| m.to_proto()),
                ..base
            },
        ),
        SupplierFact::StatusChanged { previous } => (
            Type::StatusChanged,
            pb::SupplierEvent {
                status: status_to_proto(s.status) as i32,
                previous_status: status_to_proto(previous) as i32,
                reason: s.status_reason.clone(),
                ..base
            },
        ),
        SupplierFact::PenaltyRecorded {
            claim_id,
            points,
            reason,
        } => (
            Type::PenaltyRecorded,
            pb::SupplierEvent {
                claim_id: claim_id.to_owned(),
                penalty_points: points,
                total_penalty_points: u32::try_from(s.penalty_points).unwrap_or(0),
                reason: reason.to_owned(),
                ..base
            },
        ),
    };
    let name = kind
        .as_str_name()
        .trim_start_matches("SUPPLIER_EVENT_TYPE_");
    (
        name,
        pb::SupplierEvent {
            r#type: kind as i32,
            ..event
        },
    )
}
