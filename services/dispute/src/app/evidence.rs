//! Evidence of a claim: who may add it and when (checked before any
//! byte is taken, and again in the transaction that records it), and its
//! record once the file is in the store.

use sqlx::PgConnection;
use ta_objects::Kind;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ClaimFlows, Flows, Step, check_can_read, is_open};
use crate::storage::{
    claims,
    evidence::{self, EvidenceRecord},
};

/// An upload's metadata, checked against the kind's limits.
pub struct Upload {
    pub claim_id: Uuid,
    pub kind: Kind,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub sha256_hex: String,
    pub description: String,
    pub quality_criterion_ids: Vec<String>,
    pub resumable: bool,
    pub resume_from: u64,
}

/// Who may add evidence, before any byte is taken: the claim's parties and
/// operators, while it is negotiating or escalated.
pub async fn check_may_add(
    conn: &mut PgConnection,
    principal: &Principal,
    claim_id: Uuid,
) -> Result<(), ServiceError> {
    let claim = claims::get_claim(conn, claim_id).await?;
    check_can_read(principal, &claim)?;
    if !is_open(&claim) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the claim is {}: evidence is added only while it is negotiating or escalated",
            claim.claim.status.as_str()
        )));
    }
    Ok(())
}

/// Records the uploaded file as evidence of the claim; the same file again
/// is the evidence already recorded, and tells nothing new.
pub async fn add_evidence(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Upload,
    now: OffsetDateTime,
) -> Result<EvidenceRecord, ServiceError> {
    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
    if !is_open(&claim) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the claim is {}: evidence is added only while it is open",
            claim.claim.status.as_str()
        )));
    }
    let (evidence, new) = evidence::insert_evidence(
        tx,
        &EvidenceRecord {
            evidence_id: Uuid::now_v7(),
            claim_id: cmd.claim_id,
            kind: cmd.kind.as_str().into(),
            filename: cmd.filename.clone(),
            content_type: cmd.content_type.clone(),
            size_bytes: i64::try_from(cmd.size).unwrap_or(i64::MAX),
            sha256_hex: cmd.sha256_hex.clone(),
            description: cmd.description.clone(),
            quality_criterion_ids: cmd.quality_criterion_ids.clone(),
            uploaded_by_principal_id: principal.subject.clone(),
            uploaded_by_role: principal.role.as_str().into(),
            uploaded_at: now,
        },
    )
    .await?;
    if new {
        let s = Step::new(
            pb::DisputeEventType::EvidenceAdded,
            "evidence.added",
            format!(
                "{} added by the {}: {} ({}, {} bytes, sha256 {})",
                cmd.kind.as_str(),
                principal.role,
                cmd.filename,
                cmd.content_type,
                cmd.size,
                cmd.sha256_hex
            ),
        );
        let evidence_id = evidence.evidence_id.to_string();
        flows
            .record_evidence(tx, &mut claim, &Actor::of(principal), s, evidence_id, now)
            .await?;
    }
    Ok(evidence)
}
