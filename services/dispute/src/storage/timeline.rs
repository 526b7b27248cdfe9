//! The claim timeline: its numbered steps, written with each step of the
//! claim and read by GetClaimTimeline, and whether the supplier answered.

use sqlx::{FromRow, PgConnection};
use ta_runtime::{ServiceError, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

use super::currency_of;

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

/// The timeline actions of the supplier's answers to a claim: an offer, an
/// acceptance (of the buyer's counter-offer), a rejection of an offer or of
/// the claim. Evidence alone is not an answer.
pub const SUPPLIER_ANSWERS: [&str; 4] = [
    "offer.made",
    "offer.rejected",
    "claim.rejected_by_supplier",
    "claim.settled",
];

/// Whether the claim's timeline holds an answer of its supplier (one of
/// [`SUPPLIER_ANSWERS`], by the supplier's role).
pub async fn supplier_answered(
    conn: &mut PgConnection,
    claim_id: Uuid,
) -> Result<bool, ServiceError> {
    let answered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dispute.timeline \
         WHERE claim_id = $1 AND actor_role = 'supplier' AND kind = ANY($2))",
    )
    .bind(claim_id)
    .bind(&SUPPLIER_ANSWERS[..])
    .fetch_one(conn)
    .await?;
    Ok(answered)
}
