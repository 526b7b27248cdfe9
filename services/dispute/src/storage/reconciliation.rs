//! The claims the cross-service reconciliation compares with escrow's
//! freezes: every claim not final or whose effects are still on their way,
//! and the claims escrow's freezes name. Only the facts it needs.

use sqlx::{FromRow, PgPool};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::status::Status;

pub struct ClaimFacts {
    pub claim_id: String,
    pub contract_id: String,
    pub escrow_account_id: String,
    pub supplier_id: String,
    pub status: Status,
    /// Every effect of its last change was acknowledged.
    pub effects_done: bool,
    pub updated_at: OffsetDateTime,
}

#[derive(FromRow)]
struct Row {
    claim_id: String,
    contract_id: String,
    escrow_account_id: String,
    supplier_id: String,
    status: String,
    effects_done: bool,
    updated_at: OffsetDateTime,
}

/// `frozen_for`: the claim ids escrow's active freezes name (ids that are
/// no UUID are simply not found).
pub async fn claims_to_compare(
    pool: &PgPool,
    frozen_for: &[String],
) -> Result<Vec<ClaimFacts>, ServiceError> {
    let frozen_for: Vec<Uuid> = frozen_for
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    // The first half is what `claims_to_reconcile` (a partial index) holds.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT claim_id::text, contract_id, escrow_account_id, supplier_id, status, \
         effects_completed_at IS NOT NULL AS effects_done, updated_at \
         FROM dispute.claims \
         WHERE status IN ('opening', 'negotiating', 'escalated') \
         OR (effects_completed_at IS NULL AND status <> 'refused') \
         UNION \
         SELECT claim_id::text, contract_id, escrow_account_id, supplier_id, status, \
         effects_completed_at IS NOT NULL, updated_at \
         FROM dispute.claims WHERE claim_id = ANY($1)",
    )
    .bind(&frozen_for)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status = Status::parse(&r.status).ok_or_else(|| {
                ServiceError::internal(format!("unknown claim status {}", r.status))
            })?;
            Ok(ClaimFacts {
                claim_id: r.claim_id,
                contract_id: r.contract_id,
                escrow_account_id: r.escrow_account_id,
                supplier_id: r.supplier_id,
                status,
                effects_done: r.effects_done,
                updated_at: r.updated_at,
            })
        })
        .collect()
}
