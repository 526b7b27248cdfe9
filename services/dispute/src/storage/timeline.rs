//! The claim timeline: `dispute.timeline`, kept by [`ta_workflow::timeline`];
//! its numbered steps, written with each step of the claim and read by
//! GetClaimTimeline, and whether the supplier answered.

use sqlx::PgConnection;
use ta_runtime::{ServiceError, auth::Role};
use ta_workflow::timeline::{Page, Timeline, TimelineEntry};
use uuid::Uuid;

fn table() -> Timeline {
    // A plain column name.
    Timeline::new(super::schema(), "claim_id").unwrap_or_else(|_| unreachable!())
}

/// Appends to a locked claim's timeline; returns the entry's number.
pub async fn append_timeline(
    tx: &mut PgConnection,
    claim_id: Uuid,
    entry: &TimelineEntry,
) -> Result<u32, ServiceError> {
    table().append(tx, claim_id, entry).await
}

/// Entries after `after`, oldest first, at most `limit`.
pub async fn list_timeline(
    conn: &mut PgConnection,
    claim_id: Uuid,
    after: u32,
    limit: i64,
) -> Result<Vec<TimelineEntry>, ServiceError> {
    table().entries(conn, claim_id, after, limit).await
}

/// The page of the timeline GetClaimTimeline answers, and the next page's
/// token.
pub async fn page_timeline(
    conn: &mut PgConnection,
    claim_id: Uuid,
    page: Page,
) -> Result<(Vec<ta_proto::common::TimelineEntry>, String), ServiceError> {
    table().page(conn, claim_id, page).await
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
    table()
        .has_step(conn, claim_id, Role::Supplier.as_str(), &SUPPLIER_ANSWERS)
        .await
}
