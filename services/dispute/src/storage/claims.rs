//! A claim's row: inserted when filed, locked and saved with its offers at
//! every step, read and listed for the API, counted for the gauges.

use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder, Row as _};
use ta_runtime::{
    OrConflict, ServiceError,
    money::{Currency, Money},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoredActor, actor_of, currency_of, offers, outcome_name, outcome_of};
use crate::domain::{
    claim::{Claim, Reason, Remedy, Resolution},
    status::Status,
};

/// One claim's row with its offers: the domain's claim and what the API
/// shows around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRecord {
    pub claim_id: Uuid,
    pub contract_id: String,
    pub escrow_account_id: String,
    pub buyer_principal_id: String,
    pub supplier_id: String,
    pub supplier_principal_id: String,
    pub reason: Reason,
    pub remedy: Remedy,
    pub quality_criterion_ids: Vec<String>,
    pub description: String,
    pub goods_shipped: bool,
    pub claim: Claim,
    pub supplier_rejected_at: Option<OffsetDateTime>,
    pub supplier_rejection_reason: String,
    pub supplier_counter_evidence_ids: Vec<String>,
    pub escalated_by: Option<StoredActor>,
    pub escalation_reason: String,
    pub decision_due_at: Option<OffsetDateTime>,
    pub accepted_offer_id: String,
    pub resolved_by: Option<StoredActor>,
    pub resolved_at: Option<OffsetDateTime>,
    pub withdrawn_at: Option<OffsetDateTime>,
    pub withdrawal_reason: String,
    pub refusal_reason: String,
    pub effects_completed_at: Option<OffsetDateTime>,
    /// A decided new shipment date (goods not shipped yet).
    pub new_shipment_deadline: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
}

impl ClaimRecord {
    pub fn currency(&self) -> Currency {
        self.claim.held.currency
    }
}

#[derive(FromRow)]
struct ClaimRow {
    claim_id: Uuid,
    contract_id: String,
    escrow_account_id: String,
    buyer_principal_id: String,
    supplier_id: String,
    supplier_principal_id: String,
    reason: String,
    quality_criterion_ids: Vec<String>,
    currency: String,
    amount_claimed_minor: i64,
    held_minor: i64,
    description: String,
    status: String,
    goods_shipped: bool,
    filed_at: OffsetDateTime,
    negotiation_ends_at: OffsetDateTime,
    auto_escalate_at: OffsetDateTime,
    supplier_rejected_at: Option<OffsetDateTime>,
    supplier_rejection_reason: String,
    supplier_counter_evidence_ids: Vec<String>,
    escalated_at: Option<OffsetDateTime>,
    escalated_by_principal_id: String,
    escalated_by_role: String,
    escalation_reason: String,
    decision_due_at: Option<OffsetDateTime>,
    outcome: Option<String>,
    refund_minor: Option<i64>,
    resolution_reason: String,
    penalty_points: i32,
    accepted_offer_id: String,
    resolved_by_principal_id: String,
    resolved_by_role: String,
    resolved_at: Option<OffsetDateTime>,
    withdrawn_at: Option<OffsetDateTime>,
    withdrawal_reason: String,
    refusal_reason: String,
    effects_completed_at: Option<OffsetDateTime>,
    updated_at: OffsetDateTime,
    remedy: String,
    new_shipment_deadline: Option<OffsetDateTime>,
}

const CLAIM_COLUMNS: &str = "claim_id, contract_id, escrow_account_id, buyer_principal_id, \
    supplier_id, supplier_principal_id, reason, quality_criterion_ids, currency, \
    amount_claimed_minor, held_minor, description, status, goods_shipped, filed_at, \
    negotiation_ends_at, auto_escalate_at, supplier_rejected_at, supplier_rejection_reason, \
    supplier_counter_evidence_ids, escalated_at, escalated_by_principal_id, escalated_by_role, \
    escalation_reason, decision_due_at, outcome, refund_minor, resolution_reason, \
    penalty_points, accepted_offer_id, resolved_by_principal_id, resolved_by_role, resolved_at, \
    withdrawn_at, withdrawal_reason, refusal_reason, effects_completed_at, updated_at, remedy, \
    new_shipment_deadline";

async fn record_of(conn: &mut PgConnection, r: ClaimRow) -> Result<ClaimRecord, ServiceError> {
    let currency = currency_of(&r.currency)?;
    let status = Status::parse(&r.status)
        .ok_or_else(|| ServiceError::internal(format!("unknown claim status {}", r.status)))?;
    let reason = Reason::parse(&r.reason)
        .ok_or_else(|| ServiceError::internal(format!("unknown claim reason {}", r.reason)))?;
    let resolution = match (r.outcome.as_deref(), r.refund_minor) {
        (Some(outcome), Some(refund)) => {
            let refund = Money::new(refund, currency);
            Some(Resolution {
                outcome: outcome_of(outcome, refund)?,
                refund,
                reason: r.resolution_reason.clone(),
                penalty_points: u32::try_from(r.penalty_points).unwrap_or(0),
            })
        }
        _ => None,
    };
    let offers = offers::offers_of(conn, r.claim_id, currency).await?;
    Ok(ClaimRecord {
        claim_id: r.claim_id,
        contract_id: r.contract_id,
        escrow_account_id: r.escrow_account_id,
        buyer_principal_id: r.buyer_principal_id,
        supplier_id: r.supplier_id,
        supplier_principal_id: r.supplier_principal_id,
        reason,
        remedy: Remedy::parse(&r.remedy)
            .ok_or_else(|| ServiceError::internal(format!("unknown remedy {}", r.remedy)))?,
        quality_criterion_ids: r.quality_criterion_ids,
        description: r.description,
        goods_shipped: r.goods_shipped,
        claim: Claim {
            status,
            filed_at: r.filed_at,
            negotiation_ends_at: r.negotiation_ends_at,
            auto_escalate_at: r.auto_escalate_at,
            amount_claimed: Money::new(r.amount_claimed_minor, currency),
            held: Money::new(r.held_minor, currency),
            offers,
            escalated_at: r.escalated_at,
            resolution,
        },
        supplier_rejected_at: r.supplier_rejected_at,
        supplier_rejection_reason: r.supplier_rejection_reason,
        supplier_counter_evidence_ids: r.supplier_counter_evidence_ids,
        escalated_by: actor_of(r.escalated_by_principal_id, r.escalated_by_role),
        escalation_reason: r.escalation_reason,
        decision_due_at: r.decision_due_at,
        accepted_offer_id: r.accepted_offer_id,
        resolved_by: actor_of(r.resolved_by_principal_id, r.resolved_by_role),
        resolved_at: r.resolved_at,
        withdrawn_at: r.withdrawn_at,
        withdrawal_reason: r.withdrawal_reason,
        refusal_reason: r.refusal_reason,
        effects_completed_at: r.effects_completed_at,
        new_shipment_deadline: r.new_shipment_deadline,
        updated_at: r.updated_at,
    })
}

/// Inserts a new claim (no offers yet). A second claim in progress on the
/// same contract is ALREADY_EXISTS.
pub async fn insert_claim(tx: &mut PgConnection, c: &ClaimRecord) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO dispute.claims (claim_id, contract_id, escrow_account_id, \
         buyer_principal_id, supplier_id, supplier_principal_id, reason, quality_criterion_ids, \
         currency, amount_claimed_minor, held_minor, description, status, goods_shipped, \
         filed_at, negotiation_ends_at, auto_escalate_at, updated_at, remedy) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19)",
    )
    .bind(c.claim_id)
    .bind(&c.contract_id)
    .bind(&c.escrow_account_id)
    .bind(&c.buyer_principal_id)
    .bind(&c.supplier_id)
    .bind(&c.supplier_principal_id)
    .bind(c.reason.as_str())
    .bind(&c.quality_criterion_ids)
    .bind(c.currency().as_str())
    .bind(c.claim.amount_claimed.amount_minor)
    .bind(c.claim.held.amount_minor)
    .bind(&c.description)
    .bind(c.claim.status.as_str())
    .bind(c.goods_shipped)
    .bind(c.claim.filed_at)
    .bind(c.claim.negotiation_ends_at)
    .bind(c.claim.auto_escalate_at)
    .bind(c.updated_at)
    .bind(c.remedy.as_str())
    .execute(tx)
    .await
    .or_conflict(|| ServiceError::Refused {
        reason: "CLAIM_ALREADY_OPEN",
        subject: format!("contracts/{}", c.contract_id),
        message: format!("contract {} already has a claim in progress", c.contract_id),
    })?;
    Ok(())
}

/// Saves the claim's changing columns and its offers (new ones inserted,
/// known ones updated).
pub async fn save_claim(
    tx: &mut PgConnection,
    c: &mut ClaimRecord,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    c.updated_at = now;
    let resolution = c.claim.resolution.as_ref();
    let escalated_by = c.escalated_by.clone().unwrap_or_default();
    let resolved_by = c.resolved_by.clone().unwrap_or_default();
    sqlx::query(
        "UPDATE dispute.claims SET held_minor = $2, status = $3, negotiation_ends_at = $4, \
         auto_escalate_at = $5, supplier_rejected_at = $6, supplier_rejection_reason = $7, \
         supplier_counter_evidence_ids = $8, escalated_at = $9, escalated_by_principal_id = $10, \
         escalated_by_role = $11, escalation_reason = $12, decision_due_at = $13, outcome = $14, \
         refund_minor = $15, resolution_reason = $16, penalty_points = $17, \
         accepted_offer_id = $18, resolved_by_principal_id = $19, resolved_by_role = $20, \
         resolved_at = $21, withdrawn_at = $22, withdrawal_reason = $23, refusal_reason = $24, \
         effects_completed_at = $25, updated_at = $26, new_shipment_deadline = $27, \
         goods_shipped = $28 \
         WHERE claim_id = $1",
    )
    .bind(c.claim_id)
    .bind(c.claim.held.amount_minor)
    .bind(c.claim.status.as_str())
    .bind(c.claim.negotiation_ends_at)
    .bind(c.claim.auto_escalate_at)
    .bind(c.supplier_rejected_at)
    .bind(&c.supplier_rejection_reason)
    .bind(&c.supplier_counter_evidence_ids)
    .bind(c.claim.escalated_at)
    .bind(&escalated_by.principal_id)
    .bind(&escalated_by.role)
    .bind(&c.escalation_reason)
    .bind(c.decision_due_at)
    .bind(resolution.map(|r| outcome_name(r.outcome)))
    .bind(resolution.map(|r| r.refund.amount_minor))
    .bind(resolution.map_or("", |r| r.reason.as_str()))
    .bind(resolution.map_or(0, |r| i32::try_from(r.penalty_points).unwrap_or(100)))
    .bind(&c.accepted_offer_id)
    .bind(&resolved_by.principal_id)
    .bind(&resolved_by.role)
    .bind(c.resolved_at)
    .bind(c.withdrawn_at)
    .bind(&c.withdrawal_reason)
    .bind(&c.refusal_reason)
    .bind(c.effects_completed_at)
    .bind(c.updated_at)
    .bind(c.new_shipment_deadline)
    .bind(c.goods_shipped)
    .execute(&mut *tx)
    .await?;
    offers::save_offers(tx, c.claim_id, &c.claim).await
}

/// What NOT_FOUND calls a claim: "claim <id> not found", for an id that
/// does not exist and, through `app::check_can_read`, for one the caller may
/// not see.
pub const CLAIM: &str = "claim";

/// The claim, locked for the rest of the transaction.
pub async fn lock_claim(
    tx: &mut PgConnection,
    claim_id: Uuid,
) -> Result<ClaimRecord, ServiceError> {
    let row: Option<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CLAIM_COLUMNS} FROM dispute.claims WHERE claim_id = $1 FOR UPDATE"
    )))
    .bind(claim_id)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ServiceError::not_found(CLAIM, claim_id))?;
    record_of(tx, row).await
}

pub async fn get_claim(
    conn: &mut PgConnection,
    claim_id: Uuid,
) -> Result<ClaimRecord, ServiceError> {
    let row: Option<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CLAIM_COLUMNS} FROM dispute.claims WHERE claim_id = $1"
    )))
    .bind(claim_id)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or_else(|| ServiceError::not_found(CLAIM, claim_id))?;
    record_of(conn, row).await
}

/// Whether the buyer withdrew a claim of this reason on the contract: it
/// may not be filed again.
pub async fn withdrawn_before(
    conn: &mut PgConnection,
    contract_id: &str,
    reason: Reason,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dispute.claims WHERE contract_id = $1 AND reason = $2 \
         AND status = 'withdrawn')",
    )
    .bind(contract_id)
    .bind(reason.as_str())
    .fetch_one(conn)
    .await?)
}

/// What a listing is narrowed to; `None` is no condition.
#[derive(Clone, Debug, Default)]
pub struct ClaimFilter {
    pub buyer_principal_id: Option<String>,
    pub supplier_principal_id: Option<String>,
    pub contract_id: Option<String>,
    pub supplier_id: Option<String>,
    pub statuses: Vec<Status>,
    pub reason: Option<Reason>,
    /// Filed at or after.
    pub filed_after: Option<OffsetDateTime>,
    /// Filed before.
    pub filed_before: Option<OffsetDateTime>,
    /// Only the claims whose decision is overdue at `now` (or only the others).
    pub decision_overdue: Option<DecisionOverdue>,
}

/// An escalated claim's decision is overdue once its `decision_due_at`
/// (escalation + the arbiters' decision target) has passed; the gauge
/// `ta.dispute.decisions_overdue` counts the same claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionOverdue {
    /// True: the overdue claims; false: all others.
    pub overdue: bool,
    pub now: OffsetDateTime,
}

/// The listing's statement, newest filed first: only the conditions the
/// filter sets, so each shape is planned on the index that serves it (see
/// `migrations/0005_claim_lists.sql`).
fn listing_query(
    filter: &ClaimFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
    prefix: &str,
) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(format!(
        "{prefix}SELECT {CLAIM_COLUMNS} FROM dispute.claims WHERE true"
    ));
    for (column, value) in [
        ("buyer_principal_id", &filter.buyer_principal_id),
        ("supplier_principal_id", &filter.supplier_principal_id),
        ("contract_id", &filter.contract_id),
        ("supplier_id", &filter.supplier_id),
    ] {
        if let Some(value) = value {
            q.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q.push(" AND status = ANY(").push_bind(statuses).push(")");
    }
    if let Some(reason) = filter.reason {
        q.push(" AND reason = ").push_bind(reason.as_str());
    }
    if let Some(at) = filter.filed_after {
        q.push(" AND filed_at >= ").push_bind(at);
    }
    if let Some(at) = filter.filed_before {
        q.push(" AND filed_at < ").push_bind(at);
    }
    match filter.decision_overdue {
        // Spelled as the partial index `claims_escalated_by_filing` is.
        Some(DecisionOverdue { overdue: true, now }) => {
            q.push(" AND status = 'escalated' AND decision_due_at < ")
                .push_bind(now);
        }
        Some(DecisionOverdue {
            overdue: false,
            now,
        }) => {
            q.push(" AND (status <> 'escalated' OR decision_due_at IS NULL OR decision_due_at >= ")
                .push_bind(now)
                .push(")");
        }
        None => {}
    }
    if let Some((at, id)) = after {
        q.push(" AND (filed_at, claim_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY filed_at DESC, claim_id DESC LIMIT ")
        .push_bind(limit);
    q
}

/// Claims newest first, after the `(filed_at, claim_id)` cursor.
pub async fn list_claims(
    conn: &mut PgConnection,
    filter: &ClaimFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ClaimRecord>, ServiceError> {
    let rows: Vec<ClaimRow> = listing_query(filter, after, limit, "")
        .build_query_as()
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(record_of(conn, row).await?);
    }
    Ok(out)
}

/// Postgres's plan of exactly the statement [`list_claims`] runs, as
/// `EXPLAIN (FORMAT JSON)` gives it: for the tests that check each filter
/// shape is served by an index.
pub async fn explain_list_claims(
    conn: &mut PgConnection,
    filter: &ClaimFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<String, ServiceError> {
    let row = listing_query(filter, after, limit, "EXPLAIN (FORMAT JSON) ")
        .build()
        .fetch_one(&mut *conn)
        .await?;
    // `json` travels as its text.
    Ok(row.try_get_unchecked::<String, _>(0)?)
}

// ---- Figures ---------------------------------------------------------------------

/// Claims in progress by status, and escalated claims past their decision
/// target.
pub async fn claim_figures(pool: &sqlx::PgPool) -> Result<(Vec<(String, i64)>, i64), ServiceError> {
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM dispute.claims \
         WHERE status IN ('opening', 'negotiating', 'escalated') GROUP BY status",
    )
    .fetch_all(pool)
    .await?;
    let overdue: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispute.claims WHERE status = 'escalated' AND decision_due_at < now()",
    )
    .fetch_one(pool)
    .await?;
    Ok((by_status, overdue))
}
