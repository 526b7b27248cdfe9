//! Fulfilment's records: inspection reports and shipments.

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{db_version, version_number};

/// One stored inspection report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRecord {
    pub report_id: Uuid,
    pub contract_version: u32,
    /// The encoded `InspectionReport`.
    pub report: Vec<u8>,
    pub passed: bool,
    pub submitted_at: OffsetDateTime,
}

/// Stores a report of `contract_id`. Its signature has the shape of escrow's
/// `insert_terms` and `insert_attempt_gateway` (a child row under its
/// parent's id); the tables, columns and conflicts are each its own, so
/// there is nothing to share.
pub async fn insert_report(
    tx: &mut PgConnection,
    contract_id: Uuid,
    report: &ReportRecord,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO contract.inspection_reports (report_id, contract_id, contract_version, \
         report, passed, submitted_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(report.report_id)
    .bind(contract_id)
    .bind(db_version(report.contract_version))
    .bind(&report.report)
    .bind(report.passed)
    .bind(report.submitted_at)
    .execute(tx)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct ReportRow {
    report_id: Uuid,
    contract_version: i32,
    report: Vec<u8>,
    passed: bool,
    submitted_at: OffsetDateTime,
}

/// Reports oldest first, after the report `after` (`None` from the start).
pub async fn list_reports(
    conn: &mut PgConnection,
    contract_id: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ReportRecord>, ServiceError> {
    let (after_at, after_id) = after.unwrap_or((OffsetDateTime::UNIX_EPOCH, Uuid::nil()));
    let rows: Vec<ReportRow> = sqlx::query_as(
        "SELECT report_id, contract_version, report, passed, submitted_at \
         FROM contract.inspection_reports WHERE contract_id = $1 \
         AND (submitted_at, report_id) > ($2, $3) ORDER BY submitted_at, report_id LIMIT $4",
    )
    .bind(contract_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ReportRecord {
                report_id: r.report_id,
                contract_version: version_number(r.contract_version)?,
                report: r.report,
                passed: r.passed,
                submitted_at: r.submitted_at,
            })
        })
        .collect()
}

pub async fn latest_report(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Option<ReportRecord>, ServiceError> {
    let row: Option<ReportRow> = sqlx::query_as(
        "SELECT report_id, contract_version, report, passed, submitted_at \
         FROM contract.inspection_reports WHERE contract_id = $1 \
         ORDER BY submitted_at DESC, report_id DESC LIMIT 1",
    )
    .bind(contract_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(ReportRecord {
            report_id: r.report_id,
            contract_version: version_number(r.contract_version)?,
            report: r.report,
            passed: r.passed,
            submitted_at: r.submitted_at,
        })
    })
    .transpose()
}

/// A shipment as the supplier records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewShipment {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: OffsetDateTime,
    pub late: bool,
    pub r#final: bool,
}

/// One stored shipment: a lot, numbered in the order shipments were
/// recorded, with its own receipt, acceptance and release (lots before the
/// final one, under terms that tie milestones to lots).
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct ShipmentRecord {
    pub lot: i32,
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: OffsetDateTime,
    pub late: bool,
    pub r#final: bool,
    pub received_at: Option<OffsetDateTime>,
    pub acceptance_due_at: Option<OffsetDateTime>,
    pub accepted_at: Option<OffsetDateTime>,
    /// `explicit`, `automatic` or `claim_outcome`.
    pub acceptance: Option<String>,
    pub released_milestones: Vec<String>,
    pub released_minor: i64,
    pub release_pending: Vec<String>,
}

impl ShipmentRecord {
    /// Its lot number.
    pub fn lot(&self) -> u32 {
        u32::try_from(self.lot).unwrap_or(0)
    }
}

/// Records a shipment as the next lot; returns its number.
pub async fn insert_shipment(
    tx: &mut PgConnection,
    contract_id: Uuid,
    shipment: &NewShipment,
) -> Result<u32, ServiceError> {
    let lot: i32 = sqlx::query_scalar(
        "INSERT INTO contract.shipments (contract_id, seq, carrier, tracking_number, shipped_at, \
         late, final) SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6 \
         FROM contract.shipments WHERE contract_id = $1 RETURNING seq",
    )
    .bind(contract_id)
    .bind(&shipment.carrier)
    .bind(&shipment.tracking_number)
    .bind(shipment.shipped_at)
    .bind(shipment.late)
    .bind(shipment.r#final)
    .fetch_one(tx)
    .await?;
    u32::try_from(lot).map_err(|_| super::corrupt("lot"))
}

/// Every shipment (lot), oldest first.
pub async fn shipments(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Vec<ShipmentRecord>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT seq AS lot, carrier, tracking_number, shipped_at, late, final AS \"final\", \
         received_at, acceptance_due_at, accepted_at, acceptance, released_milestones, \
         released_minor, release_pending \
         FROM contract.shipments WHERE contract_id = $1 ORDER BY seq",
    )
    .bind(contract_id)
    .fetch_all(conn)
    .await?)
}

/// A lot's receipt and the deadline at which it counts as accepted.
pub async fn record_lot_receipt(
    tx: &mut PgConnection,
    contract_id: Uuid,
    lot: u32,
    received_at: OffsetDateTime,
    acceptance_due_at: Option<OffsetDateTime>,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE contract.shipments SET received_at = $3, acceptance_due_at = $4 \
         WHERE contract_id = $1 AND seq = $2",
    )
    .bind(contract_id)
    .bind(db_version(lot))
    .bind(received_at)
    .bind(acceptance_due_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// A lot accepted (`kind`), with what its acceptance released: the
/// milestones are pending until escrow answers each.
pub async fn record_lot_acceptance(
    tx: &mut PgConnection,
    contract_id: Uuid,
    lot: u32,
    kind: &str,
    released: &[String],
    released_minor: i64,
    at: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE contract.shipments SET accepted_at = $3, acceptance = $4, \
         received_at = coalesce(received_at, $3), released_milestones = $5, \
         released_minor = $6, release_pending = $5 \
         WHERE contract_id = $1 AND seq = $2 AND accepted_at IS NULL",
    )
    .bind(contract_id)
    .bind(db_version(lot))
    .bind(at)
    .bind(kind)
    .bind(released)
    .bind(released_minor)
    .execute(tx)
    .await?;
    Ok(())
}

/// The lots not accepted on their own (with `received_only`, those of them
/// received) are accepted with the whole order or a claim's decision
/// (`kind`), releasing nothing of their own: the final release takes what
/// is held.
pub async fn accept_remaining_lots(
    tx: &mut PgConnection,
    contract_id: Uuid,
    kind: &str,
    received_only: bool,
    at: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE contract.shipments SET accepted_at = $2, acceptance = $3, \
         received_at = coalesce(received_at, $2) \
         WHERE contract_id = $1 AND accepted_at IS NULL \
         AND (NOT $4 OR received_at IS NOT NULL)",
    )
    .bind(contract_id)
    .bind(at)
    .bind(kind)
    .bind(received_only)
    .execute(tx)
    .await?;
    Ok(())
}

/// Moves the acceptance deadlines of the lots not accepted yet forward by
/// `by` (the time a claim paused them).
pub async fn shift_lot_deadlines(
    tx: &mut PgConnection,
    contract_id: Uuid,
    by: time::Duration,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE contract.shipments \
         SET acceptance_due_at = acceptance_due_at + make_interval(secs => $2) \
         WHERE contract_id = $1 AND accepted_at IS NULL AND acceptance_due_at IS NOT NULL",
    )
    .bind(contract_id)
    .bind(by.as_seconds_f64())
    .execute(tx)
    .await?;
    Ok(())
}

/// Escrow answered the release of `milestone_id` (accepted or refused): it
/// is no longer pending. Returns the lot it was released with, if any.
pub async fn release_answered(
    tx: &mut PgConnection,
    contract_id: Uuid,
    milestone_id: &str,
) -> Result<Option<u32>, ServiceError> {
    let lot: Option<i32> = sqlx::query_scalar(
        "UPDATE contract.shipments SET release_pending = array_remove(release_pending, $2) \
         WHERE contract_id = $1 AND $2 = ANY(released_milestones) RETURNING seq",
    )
    .bind(contract_id)
    .bind(milestone_id)
    .fetch_optional(tx)
    .await?;
    lot.map(|l| u32::try_from(l).map_err(|_| super::corrupt("lot")))
        .transpose()
}
