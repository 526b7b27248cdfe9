//! Requests into commands, every bad field reported at once (the pipeline
//! turns the violations into one INVALID_ARGUMENT), and the listings' page
//! tokens.

use ta_objects::{Kind, Store as EvidenceStore, is_sha256_hex};
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError, Violations,
    money::Money,
    paging,
    text::{optional_text, require_text, validate_reference},
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    app::{Respond, evidence::Upload, offers::Proposal},
    domain::claim::Outcome,
    storage::claims::{ClaimFilter, DecisionOverdue},
    views,
};

pub(super) const MAX_TEXT: usize = 4000;
pub(super) const MAX_REASON: usize = 2000;
pub(super) const MAX_IDS: usize = 50;

pub(super) fn uuid_field(field: &str, value: &str, what: &str, v: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        v.add(field, format!("must be {what} id (UUID)"));
        Uuid::nil()
    })
}

pub(super) fn claim_id(value: &str, v: &mut Violations) -> Uuid {
    uuid_field("claim_id", value, "a claim", v)
}

pub(super) fn references(field: &str, values: &[String], v: &mut Violations) -> Vec<String> {
    if values.len() > MAX_IDS {
        v.add(field, format!("at most {MAX_IDS}"));
    }
    for (i, value) in values.iter().enumerate() {
        validate_reference(&format!("{field}[{i}]"), value, v);
    }
    let mut out = values.to_vec();
    out.dedup();
    out
}

pub(super) fn evidence_ids(field: &str, values: &[String], v: &mut Violations) -> Vec<Uuid> {
    if values.len() > MAX_IDS {
        v.add(field, format!("at most {MAX_IDS}"));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| uuid_field(&format!("{field}[{i}]"), value, "an evidence", v))
        .collect()
}

pub(super) fn finish(v: Violations) -> Result<(), ServiceError> {
    v.finish(())
}

pub(super) fn time_cursor(fields: &[&str]) -> Option<(OffsetDateTime, Uuid)> {
    let [nanos, id] = fields else { return None };
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

pub(super) fn time_token(kind: &str, at: OffsetDateTime, id: Uuid) -> String {
    paging::token(
        kind,
        &[&at.unix_timestamp_nanos().to_string(), &id.to_string()],
    )
}

/// An upload's metadata, checked against the kind's limits.
pub(super) fn parse_upload(
    meta: Option<&pb::EvidenceMetadata>,
    store: &EvidenceStore,
    v: &mut Violations,
) -> Result<Upload, ServiceError> {
    let Some(meta) = meta else {
        v.add("metadata", "the first message carries the file's metadata");
        return Err(ServiceError::InvalidArgument(Vec::new()));
    };
    let claim_id = uuid_field("metadata.claim_id", &meta.claim_id, "a claim", v);
    let kind = match meta.kind() {
        pb::EvidenceKind::Photo => Some(Kind::Photo),
        pb::EvidenceKind::Video => Some(Kind::Video),
        pb::EvidenceKind::InspectionReport => Some(Kind::InspectionReport),
        pb::EvidenceKind::Document => Some(Kind::Document),
        pb::EvidenceKind::Unspecified => {
            v.add("metadata.kind", "is required");
            None
        }
    };
    let filename = require_text("metadata.filename", &meta.filename, 255, v);
    if filename.contains(['/', '\\']) {
        v.add("metadata.filename", "is a name, without a directory");
    }
    let content_type = meta.content_type.trim().to_ascii_lowercase();
    if let Some(kind) = kind {
        if !kind.content_types().contains(&content_type.as_str()) {
            v.add(
                "metadata.content_type",
                format!(
                    "a {} is one of {}",
                    kind.as_str(),
                    kind.content_types().join(", ")
                ),
            );
        }
        let max = store.limits.max_bytes(kind);
        if meta.size_bytes == 0 || meta.size_bytes > max {
            v.add(
                "metadata.size_bytes",
                format!("must be 1 to {max} bytes for a {}", kind.as_str()),
            );
        }
    }
    if !is_sha256_hex(&meta.sha256_hex) {
        v.add(
            "metadata.sha256_hex",
            "must be the file's SHA-256 in 64 lower-case hex digits",
        );
    }
    let description = optional_text("metadata.description", &meta.description, MAX_TEXT, v);
    let quality_criterion_ids = references(
        "metadata.quality_criterion_ids",
        &meta.quality_criterion_ids,
        v,
    );
    if meta.resume_from > 0 && (!meta.resumable || meta.resume_from >= meta.size_bytes) {
        v.add(
            "metadata.resume_from",
            "is for a resumable upload, below its size",
        );
    }
    let kind = kind.ok_or_else(|| ServiceError::InvalidArgument(Vec::new()))?;
    Ok(Upload {
        claim_id,
        kind,
        filename,
        content_type,
        size: meta.size_bytes,
        sha256_hex: meta.sha256_hex.clone(),
        description,
        quality_criterion_ids,
        resumable: meta.resumable,
        resume_from: meta.resume_from,
    })
}

pub(super) fn respond(
    claim: &str,
    offer: &str,
    reason: &str,
    counter: &[String],
    v: &mut Violations,
) -> Respond {
    let claim_id = claim_id(claim, v);
    if !offer.is_empty() {
        uuid_field("offer_id", offer, "an offer", v);
    }
    Respond {
        claim_id,
        offer_id: offer.to_owned(),
        reason: require_text("reason", reason, MAX_REASON, v),
        counter_evidence: evidence_ids("counter_evidence_ids", counter, v),
    }
}

pub(super) fn parse_offer(
    claim: &str,
    kind: pb::OfferKind,
    refund_amount: Option<&ta_proto::common::Money>,
    message: &str,
    v: &mut Violations,
) -> Result<Proposal, ServiceError> {
    let claim_id = claim_id(claim, v);
    let message = optional_text("message", message, MAX_REASON, v);
    let outcome = match kind {
        pb::OfferKind::FullRefund => {
            if refund_amount.is_some() {
                v.add("refund_amount", "must be unset for a full refund");
            }
            Some(Outcome::FullRefund)
        }
        pb::OfferKind::PartialRefund => {
            Money::positive_from_proto("refund_amount", refund_amount, v)
                .map(Outcome::PartialRefund)
        }
        pb::OfferKind::Unspecified => {
            v.add("kind", "is required");
            None
        }
    };
    let outcome = outcome.ok_or_else(|| ServiceError::InvalidArgument(Vec::new()))?;
    Ok(Proposal {
        claim_id,
        outcome,
        message,
    })
}

/// What a ListClaims request asks for, before it is narrowed to what the
/// caller may see.
pub(super) fn claim_filter(
    req: &pb::ListClaimsRequest,
    now: OffsetDateTime,
    v: &mut Violations,
) -> ClaimFilter {
    let mut filter = ClaimFilter::default();
    for (field, value, slot) in [
        ("contract_id", &req.contract_id, &mut filter.contract_id),
        ("supplier_id", &req.supplier_id, &mut filter.supplier_id),
        (
            "buyer_principal_id",
            &req.buyer_principal_id,
            &mut filter.buyer_principal_id,
        ),
    ] {
        if !value.is_empty() {
            validate_reference(field, value, v);
            *slot = Some(value.clone());
        }
    }
    for (i, status) in req.statuses.iter().enumerate() {
        match pb::ClaimStatus::try_from(*status)
            .ok()
            .and_then(views::status_from_proto)
        {
            Some(s) => filter.statuses.push(s),
            None => v.add(format!("statuses[{i}]"), "is not a claim status"),
        }
    }
    if req.reason != 0 {
        filter.reason = ta_proto::common::ClaimReason::try_from(req.reason)
            .ok()
            .and_then(views::reason_from_proto);
        if filter.reason.is_none() {
            v.add("reason", "is not a claim reason");
        }
    }
    for (field, at, slot) in [
        (
            "filed_after",
            req.filed_after.as_ref(),
            &mut filter.filed_after,
        ),
        (
            "filed_before",
            req.filed_before.as_ref(),
            &mut filter.filed_before,
        ),
    ] {
        if at.is_some() {
            *slot = timestamps::parse_optional(field, at, v);
        }
    }
    if let (Some(after), Some(before)) = (filter.filed_after, filter.filed_before)
        && before <= after
    {
        v.add("filed_before", "must be later than filed_after");
    }
    filter.decision_overdue = req
        .decision_overdue
        .map(|overdue| DecisionOverdue { overdue, now });
    filter
}
