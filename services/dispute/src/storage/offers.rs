//! A claim's offers, in the order they were made: loaded with the claim and
//! saved with it.

use sqlx::{FromRow, PgConnection};
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{outcome_name, outcome_of};
use crate::domain::claim::{Claim, Offer, OfferStatus, Outcome, Party};

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

pub(super) async fn offers_of(
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

/// Saves the offers of claim `claim_id`: new ones inserted, known ones
/// updated.
pub(super) async fn save_offers(
    tx: &mut PgConnection,
    claim_id: Uuid,
    claim: &Claim,
) -> Result<(), ServiceError> {
    // Offers change status in place; a superseded one must be saved before
    // the new open one, so the one-open-offer index holds at every statement.
    let mut ordered: Vec<(usize, &Offer)> = claim.offers.iter().enumerate().collect();
    ordered.sort_by_key(|(_, o)| o.status == OfferStatus::Open);
    for (index, offer) in ordered {
        let id = Uuid::parse_str(&offer.offer_id)
            .map_err(|_| ServiceError::internal("an offer id is not a UUID"))?;
        let refund = match offer.outcome {
            Outcome::PartialRefund(amount) => amount.amount_minor,
            _ => claim.held.amount_minor,
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
        .bind(claim_id)
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
