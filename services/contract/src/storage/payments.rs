//! The funding projection: the payment schedule as escrow's feed tells it.

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

/// One payment milestone as the contract knows it from escrow's feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub milestone_id: String,
    pub amount_minor: i64,
    pub due_at: OffsetDateTime,
    pub funded_at: Option<OffsetDateTime>,
    pub overdue: bool,
}

/// Replaces the schedule: at activation, or with escrow's schedule (and what
/// it funded) after an amendment.
pub async fn replace_payments(
    tx: &mut PgConnection,
    contract_id: Uuid,
    payments: &[Payment],
) -> Result<(), ServiceError> {
    sqlx::query("DELETE FROM contract.payments WHERE contract_id = $1")
        .bind(contract_id)
        .execute(&mut *tx)
        .await?;
    for (position, p) in payments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO contract.payments (contract_id, milestone_id, position, amount_minor, \
             due_at, funded_at, overdue) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(contract_id)
        .bind(&p.milestone_id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(p.amount_minor)
        .bind(p.due_at)
        .bind(p.funded_at)
        .bind(p.overdue)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[derive(FromRow)]
struct PaymentRow {
    milestone_id: String,
    amount_minor: i64,
    due_at: OffsetDateTime,
    funded_at: Option<OffsetDateTime>,
    overdue: bool,
}

pub async fn payments(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Vec<Payment>, ServiceError> {
    let rows: Vec<PaymentRow> = sqlx::query_as(
        "SELECT milestone_id, amount_minor, due_at, funded_at, overdue FROM contract.payments \
         WHERE contract_id = $1 ORDER BY position",
    )
    .bind(contract_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Payment {
            milestone_id: r.milestone_id,
            amount_minor: r.amount_minor,
            due_at: r.due_at,
            funded_at: r.funded_at,
            overdue: r.overdue,
        })
        .collect())
}

/// Records a milestone funded (first time only); whether it changed anything.
pub async fn mark_funded(
    tx: &mut PgConnection,
    contract_id: Uuid,
    milestone_id: &str,
    at: OffsetDateTime,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE contract.payments SET funded_at = $3, overdue = false \
         WHERE contract_id = $1 AND milestone_id = $2 AND funded_at IS NULL",
    )
    .bind(contract_id)
    .bind(milestone_id)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn mark_overdue(
    tx: &mut PgConnection,
    contract_id: Uuid,
    milestone_id: &str,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE contract.payments SET overdue = true \
         WHERE contract_id = $1 AND milestone_id = $2 AND funded_at IS NULL AND NOT overdue",
    )
    .bind(contract_id)
    .bind(milestone_id)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
