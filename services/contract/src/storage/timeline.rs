//! The contract's timeline: `contract.timeline`, kept by
//! [`ta_workflow::timeline`].

use sqlx::PgConnection;
use ta_runtime::ServiceError;
use ta_workflow::timeline::{Page, Timeline, TimelineEntry};
use uuid::Uuid;

fn table() -> Timeline {
    // A plain column name.
    Timeline::new(super::schema(), "contract_id").unwrap_or_else(|_| unreachable!())
}

/// Appends to a locked contract's timeline; returns the entry's number.
pub async fn append_timeline(
    tx: &mut PgConnection,
    contract_id: Uuid,
    entry: &TimelineEntry,
) -> Result<u32, ServiceError> {
    table().append(tx, contract_id, entry).await
}

/// Entries after `after`, oldest first, at most `limit`.
pub async fn timeline(
    conn: &mut PgConnection,
    contract_id: Uuid,
    after: u32,
    limit: i64,
) -> Result<Vec<TimelineEntry>, ServiceError> {
    table().entries(conn, contract_id, after, limit).await
}

/// The page of the timeline GetContractTimeline answers, and the next
/// page's token.
pub async fn page_timeline(
    conn: &mut PgConnection,
    contract_id: Uuid,
    page: Page,
) -> Result<(Vec<ta_proto::common::TimelineEntry>, String), ServiceError> {
    table().page(conn, contract_id, page).await
}
