//! Evidence records of a claim: one per file (by SHA-256) per claim. The
//! files themselves are in the evidence store.

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct EvidenceRecord {
    pub evidence_id: Uuid,
    pub claim_id: Uuid,
    pub kind: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256_hex: String,
    pub description: String,
    pub quality_criterion_ids: Vec<String>,
    pub uploaded_by_principal_id: String,
    pub uploaded_by_role: String,
    pub uploaded_at: OffsetDateTime,
}

const EVIDENCE_COLUMNS: &str = "evidence_id, claim_id, kind, filename, content_type, size_bytes, \
    sha256_hex, description, quality_criterion_ids, uploaded_by_principal_id, uploaded_by_role, \
    uploaded_at";

/// Records evidence; the same file on the same claim is the evidence already
/// recorded (returned, nothing changes).
pub async fn insert_evidence(
    tx: &mut PgConnection,
    e: &EvidenceRecord,
) -> Result<(EvidenceRecord, bool), ServiceError> {
    let inserted: Option<EvidenceRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO dispute.evidence ({EVIDENCE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (claim_id, sha256_hex) DO NOTHING RETURNING {EVIDENCE_COLUMNS}"
    )))
    .bind(e.evidence_id)
    .bind(e.claim_id)
    .bind(&e.kind)
    .bind(&e.filename)
    .bind(&e.content_type)
    .bind(e.size_bytes)
    .bind(&e.sha256_hex)
    .bind(&e.description)
    .bind(&e.quality_criterion_ids)
    .bind(&e.uploaded_by_principal_id)
    .bind(&e.uploaded_by_role)
    .bind(e.uploaded_at)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing: EvidenceRecord = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVIDENCE_COLUMNS} FROM dispute.evidence WHERE claim_id = $1 AND sha256_hex = $2"
    )))
    .bind(e.claim_id)
    .bind(&e.sha256_hex)
    .fetch_one(&mut *tx)
    .await?;
    Ok((existing, false))
}

/// What NOT_FOUND calls an evidence record: "evidence <id> not found", for
/// an id that does not exist and for one of a claim the caller may not see.
pub const EVIDENCE: &str = "evidence";

pub async fn get_evidence(
    conn: &mut PgConnection,
    evidence_id: Uuid,
) -> Result<EvidenceRecord, ServiceError> {
    let row: Option<EvidenceRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVIDENCE_COLUMNS} FROM dispute.evidence WHERE evidence_id = $1"
    )))
    .bind(evidence_id)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| ServiceError::not_found(EVIDENCE, evidence_id))
}

/// A claim's evidence, oldest first, after the `(uploaded_at, evidence_id)`
/// cursor.
pub async fn list_evidence(
    conn: &mut PgConnection,
    claim_id: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<EvidenceRecord>, ServiceError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVIDENCE_COLUMNS} FROM dispute.evidence WHERE claim_id = $1 AND \
         ($2::timestamptz IS NULL OR (uploaded_at, evidence_id) > ($2, $3)) \
         ORDER BY uploaded_at, evidence_id LIMIT $4"
    )))
    .bind(claim_id)
    .bind(after.map(|(at, _)| at))
    .bind(after.map_or(Uuid::nil(), |(_, id)| id))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub async fn count_evidence(conn: &mut PgConnection, claim_id: Uuid) -> Result<u32, ServiceError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dispute.evidence WHERE claim_id = $1")
        .bind(claim_id)
        .fetch_one(conn)
        .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The ids among `ids` that are not evidence of the claim.
pub async fn unknown_evidence(
    conn: &mut PgConnection,
    claim_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, ServiceError> {
    let known: Vec<Uuid> = sqlx::query_scalar(
        "SELECT evidence_id FROM dispute.evidence WHERE claim_id = $1 AND evidence_id = ANY($2)",
    )
    .bind(claim_id)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(ids
        .iter()
        .filter(|id| !known.contains(id))
        .copied()
        .collect())
}
