//! Postgres storage of claims, offers, evidence records and the timeline.
//! Every table is qualified with the service's own schema, `dispute`. A
//! mutation locks the claim row first (`lock_claim`), so concurrent changes
//! to one claim serialize and the timeline numbers its entries without gaps.

use sqlx::{FromRow, PgConnection, migrate::Migrator};
use ta_runtime::{
    OrConflict, ServiceError,
    money::{Currency, Money},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    claim::{Claim, Offer, OfferStatus, Outcome, Party, Reason, Remedy, Resolution},
    status::Status,
};

pub const SCHEMA: &str = "dispute";

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Who did something, as stored: a principal and its role's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredActor {
    pub principal_id: String,
    pub role: String,
}

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

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::FullRefund => "full_refund",
        Outcome::PartialRefund(_) => "partial_refund",
        Outcome::ReleaseToSupplier => "release_to_supplier",
    }
}

fn outcome_of(name: &str, refund: Money) -> Result<Outcome, ServiceError> {
    match name {
        "full_refund" => Ok(Outcome::FullRefund),
        "partial_refund" => Ok(Outcome::PartialRefund(refund)),
        "release_to_supplier" => Ok(Outcome::ReleaseToSupplier),
        other => Err(ServiceError::internal(format!("unknown outcome {other}"))),
    }
}

fn offer_status_name(status: OfferStatus) -> &'static str {
    match status {
        OfferStatus::Open => "open",
        OfferStatus::Accepted => "accepted",
        OfferStatus::Rejected => "rejected",
        OfferStatus::Superseded => "superseded",
        OfferStatus::Lapsed => "lapsed",
    }
}

fn offer_status_of(name: &str) -> Result<OfferStatus, ServiceError> {
    Ok(match name {
        "open" => OfferStatus::Open,
        "accepted" => OfferStatus::Accepted,
        "rejected" => OfferStatus::Rejected,
        "superseded" => OfferStatus::Superseded,
        "lapsed" => OfferStatus::Lapsed,
        other => {
            return Err(ServiceError::internal(format!(
                "unknown offer status {other}"
            )));
        }
    })
}

fn currency_of(code: &str) -> Result<Currency, ServiceError> {
    Currency::parse(code.trim())
        .ok_or_else(|| ServiceError::internal(format!("stored currency {code} unknown")))
}

fn actor_of(principal_id: String, role: String) -> Option<StoredActor> {
    (!principal_id.is_empty()).then_some(StoredActor { principal_id, role })
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

#[derive(FromRow)]
struct OfferRow {
    offer_id: Uuid,
    made_by: String,
    kind: String,
    refund_minor: i64,
    message: String,
    status: String,
    made_at: OffsetDateTime,
    responded_at: Option<OffsetDateTime>,
    rejection_reason: String,
    counter_evidence_ids: Vec<String>,
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

async fn offers_of(
    conn: &mut PgConnection,
    claim_id: Uuid,
    currency: Currency,
) -> Result<Vec<Offer>, ServiceError> {
    let rows: Vec<OfferRow> = sqlx::query_as(
        "SELECT offer_id, made_by, kind, refund_minor, message, status, made_at, responded_at, \
         rejection_reason, counter_evidence_ids FROM dispute.offers WHERE claim_id = $1 \
         ORDER BY position",
    )
    .bind(claim_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let refund = Money::new(r.refund_minor, currency);
            Ok(Offer {
                offer_id: r.offer_id.to_string(),
                made_by: if r.made_by == "buyer" {
                    Party::Buyer
                } else {
                    Party::Supplier
                },
                outcome: outcome_of(&r.kind, refund)?,
                status: offer_status_of(&r.status)?,
                made_at: r.made_at,
                responded_at: r.responded_at,
                rejection_reason: r.rejection_reason,
                message: r.message,
                counter_evidence_ids: r.counter_evidence_ids,
            })
        })
        .collect()
}

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
    let offers = offers_of(conn, r.claim_id, currency).await?;
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
    // Offers change status in place; a superseded one must be saved before
    // the new open one, so the one-open-offer index holds at every statement.
    let mut ordered: Vec<(usize, &Offer)> = c.claim.offers.iter().enumerate().collect();
    ordered.sort_by_key(|(_, o)| o.status == OfferStatus::Open);
    for (index, offer) in ordered {
        let id = Uuid::parse_str(&offer.offer_id)
            .map_err(|_| ServiceError::internal("an offer id is not a UUID"))?;
        let refund = match offer.outcome {
            Outcome::PartialRefund(amount) => amount.amount_minor,
            _ => c.claim.held.amount_minor,
        };
        sqlx::query(
            "INSERT INTO dispute.offers (offer_id, claim_id, position, kind, refund_minor, \
             message, status, made_at, responded_at, rejection_reason, counter_evidence_ids, \
             made_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (offer_id) DO UPDATE SET status = EXCLUDED.status, \
             responded_at = EXCLUDED.responded_at, rejection_reason = EXCLUDED.rejection_reason, \
             counter_evidence_ids = EXCLUDED.counter_evidence_ids",
        )
        .bind(id)
        .bind(c.claim_id)
        .bind(i32::try_from(index + 1).unwrap_or(i32::MAX))
        .bind(outcome_name(offer.outcome))
        .bind(refund)
        .bind(&offer.message)
        .bind(offer_status_name(offer.status))
        .bind(offer.made_at)
        .bind(offer.responded_at)
        .bind(&offer.rejection_reason)
        .bind(&offer.counter_evidence_ids)
        .bind(offer.made_by.as_str())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

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
    let row = row.ok_or_else(|| ServiceError::not_found("claim", claim_id))?;
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
    let row = row.ok_or_else(|| ServiceError::not_found("claim", claim_id))?;
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
    pub filed_after: Option<OffsetDateTime>,
}

/// Claims newest first, after the `(filed_at, claim_id)` cursor.
pub async fn list_claims(
    conn: &mut PgConnection,
    filter: &ClaimFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ClaimRecord>, ServiceError> {
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CLAIM_COLUMNS} FROM dispute.claims WHERE \
         ($1::text IS NULL OR buyer_principal_id = $1) AND \
         ($2::text IS NULL OR supplier_principal_id = $2) AND \
         ($3::text IS NULL OR contract_id = $3) AND \
         ($4::text IS NULL OR supplier_id = $4) AND \
         (cardinality($5::text[]) = 0 OR status = ANY($5)) AND \
         ($6::text IS NULL OR reason = $6) AND \
         ($7::timestamptz IS NULL OR filed_at >= $7) AND \
         ($8::timestamptz IS NULL OR (filed_at, claim_id) < ($8, $9)) \
         ORDER BY filed_at DESC, claim_id DESC LIMIT $10"
    )))
    .bind(filter.buyer_principal_id.as_deref())
    .bind(filter.supplier_principal_id.as_deref())
    .bind(filter.contract_id.as_deref())
    .bind(filter.supplier_id.as_deref())
    .bind(&statuses)
    .bind(filter.reason.map(Reason::as_str))
    .bind(filter.filed_after)
    .bind(after.map(|(at, _)| at))
    .bind(after.map_or(Uuid::nil(), |(_, id)| id))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(record_of(conn, row).await?);
    }
    Ok(out)
}

// ---- Evidence ----------------------------------------------------------------

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
    row.ok_or_else(|| ServiceError::not_found("evidence", evidence_id))
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

pub async fn evidence_count(conn: &mut PgConnection, claim_id: Uuid) -> Result<u32, ServiceError> {
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

// ---- Timeline ------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub entry: u32,
    pub occurred_at: OffsetDateTime,
    pub actor_principal_id: String,
    pub actor_role: String,
    pub kind: String,
    pub description: String,
    pub money: Option<Money>,
}

pub async fn append_timeline(
    tx: &mut PgConnection,
    claim_id: Uuid,
    entry: &TimelineEntry,
) -> Result<u32, ServiceError> {
    let number: i32 = sqlx::query_scalar(
        "INSERT INTO dispute.timeline (claim_id, entry, occurred_at, actor_principal_id, \
         actor_role, kind, description, currency, amount_minor) \
         SELECT $1, coalesce(max(entry), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
         FROM dispute.timeline WHERE claim_id = $1 RETURNING entry",
    )
    .bind(claim_id)
    .bind(entry.occurred_at)
    .bind(&entry.actor_principal_id)
    .bind(&entry.actor_role)
    .bind(&entry.kind)
    .bind(&entry.description)
    .bind(entry.money.map(|m| m.currency.as_str()))
    .bind(entry.money.map(|m| m.amount_minor))
    .fetch_one(tx)
    .await?;
    u32::try_from(number).map_err(|_| ServiceError::internal("a timeline entry number below 1"))
}

#[derive(FromRow)]
struct TimelineRow {
    entry: i32,
    occurred_at: OffsetDateTime,
    actor_principal_id: String,
    actor_role: String,
    kind: String,
    description: String,
    currency: Option<String>,
    amount_minor: Option<i64>,
}

/// Entries after `after`, oldest first, at most `limit`.
pub async fn timeline(
    conn: &mut PgConnection,
    claim_id: Uuid,
    after: u32,
    limit: i64,
) -> Result<Vec<TimelineEntry>, ServiceError> {
    let rows: Vec<TimelineRow> = sqlx::query_as(
        "SELECT entry, occurred_at, actor_principal_id, actor_role, kind, description, currency, \
         amount_minor FROM dispute.timeline WHERE claim_id = $1 AND entry > $2 \
         ORDER BY entry LIMIT $3",
    )
    .bind(claim_id)
    .bind(i32::try_from(after).unwrap_or(i32::MAX))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let money = match (r.currency, r.amount_minor) {
                (Some(c), Some(a)) => Some(Money::new(a, currency_of(&c)?)),
                _ => None,
            };
            Ok(TimelineEntry {
                entry: u32::try_from(r.entry).unwrap_or(0),
                occurred_at: r.occurred_at,
                actor_principal_id: r.actor_principal_id,
                actor_role: r.actor_role,
                kind: r.kind,
                description: r.description,
                money,
            })
        })
        .collect()
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

/// Whether the claim's timeline holds an answer of its supplier (one of
/// [`crate::flows::SUPPLIER_ANSWERS`], by the supplier's role).
pub async fn supplier_answered(
    conn: &mut PgConnection,
    claim_id: Uuid,
) -> Result<bool, ServiceError> {
    let answered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dispute.timeline \
         WHERE claim_id = $1 AND actor_role = 'supplier' AND kind = ANY($2))",
    )
    .bind(claim_id)
    .bind(&crate::flows::SUPPLIER_ANSWERS[..])
    .fetch_one(conn)
    .await?;
    Ok(answered)
}
