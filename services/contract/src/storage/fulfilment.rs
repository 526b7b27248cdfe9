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

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct ShipmentRecord {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: OffsetDateTime,
    pub late: bool,
    pub r#final: bool,
}

pub async fn insert_shipment(
    tx: &mut PgConnection,
    contract_id: Uuid,
    shipment: &ShipmentRecord,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO contract.shipments (contract_id, seq, carrier, tracking_number, shipped_at, \
         late, final) SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6 \
         FROM contract.shipments WHERE contract_id = $1",
    )
    .bind(contract_id)
    .bind(&shipment.carrier)
    .bind(&shipment.tracking_number)
    .bind(shipment.shipped_at)
    .bind(shipment.late)
    .bind(shipment.r#final)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn shipments(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Vec<ShipmentRecord>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT carrier, tracking_number, shipped_at, late, final AS \"final\" \
         FROM contract.shipments WHERE contract_id = $1 ORDER BY seq",
    )
    .bind(contract_id)
    .fetch_all(conn)
    .await?)
}
