//! The claim timeline: `dispute.timeline`, kept by [`ta_workflow::timeline`];
//! its numbered steps, written with each step of the claim and read by
//! GetClaimTimeline, and whether the supplier answered.

use sqlx::PgConnection;
use ta_runtime::{ServiceError, auth::Role};
use uuid::Uuid;

ta_workflow::timeline_storage!(super::schema(), "claim_id");

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
    timeline_table()
        .has_step(conn, claim_id, Role::Supplier.as_str(), &SUPPLIER_ANSWERS)
        .await
}
