//! Money escrow sends out through the gateway (`escrow.gateway_transfers`):
//! payouts to suppliers, refunds to buyers, refunds of credits parked in
//! suspense. Each row is written with its hold before the gateway is asked
//! and moves `sending -> pending -> paid | failed`, or through `unknown`
//! when the gateway did not report back in time.

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Payout,
    BuyerRefund,
    SuspenseRefund,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payout => "payout",
            Self::BuyerRefund => "buyer_refund",
            Self::SuspenseRefund => "suspense_refund",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStatus {
    /// Recorded, not accepted by the gateway yet.
    Sending,
    /// Accepted; its report is awaited.
    Pending,
    /// No report by its expiry: the gateway is asked by key.
    Unknown,
    Paid,
    Failed,
}

impl TransferStatus {
    pub const ALL: [Self; 5] = [
        Self::Sending,
        Self::Pending,
        Self::Unknown,
        Self::Paid,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Pending => "pending",
            Self::Unknown => "unknown",
            Self::Paid => "paid",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the gateway's final word is still awaited.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Sending | Self::Pending | Self::Unknown)
    }
}

#[derive(Clone, Debug, FromRow)]
pub struct TransferRow {
    pub id: Uuid,
    pub direction: String,
    pub status: String,
    pub supplier_id: Option<String>,
    pub escrow_account_id: Option<Uuid>,
    pub currency: String,
    pub amount_minor: i64,
    pub gateway_reference: Option<String>,
    pub failure_code: String,
    pub created_at: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
    pub gateway_key: String,
    pub source_reference: Option<String>,
    pub funding_attempt_id: Option<Uuid>,
    pub beneficiary: String,
    pub sends: i32,
    pub check_at: Option<OffsetDateTime>,
}

impl TransferRow {
    pub fn status(&self) -> Result<TransferStatus, ServiceError> {
        TransferStatus::parse(&self.status).ok_or_else(|| {
            ServiceError::internal(format!("gateway transfer {}: bad status", self.id))
        })
    }
}

const COLUMNS: &str = "id, direction, status, supplier_id, escrow_account_id, currency, \
     amount_minor, gateway_reference, failure_code, created_at, resolved_at, gateway_key, \
     source_reference, funding_attempt_id, beneficiary, sends, check_at";

/// A transfer to record before the gateway is asked (its hold has the same id).
pub struct NewTransfer<'a> {
    pub id: Uuid,
    pub direction: Direction,
    pub supplier_id: Option<&'a str>,
    pub escrow_account_id: Option<Uuid>,
    pub currency: &'a str,
    pub amount_minor: i64,
    /// A supplier id for a payout; the charge or transfer refunded otherwise.
    pub beneficiary: &'a str,
    pub source_reference: Option<&'a str>,
    pub funding_attempt_id: Option<Uuid>,
}

impl NewTransfer<'_> {
    /// The key the gateway sees: one per transfer, so a retried send never
    /// pays twice and two transfers never share an answer.
    pub fn gateway_key(&self) -> String {
        format!("{}:{}", self.direction.as_str(), self.id)
    }
}

/// Records a transfer to send; the worker picks it up at `check_at` unless
/// it was answered first (a caller that sends it at once leases it so).
pub async fn insert(
    conn: &mut PgConnection,
    t: &NewTransfer<'_>,
    now: OffsetDateTime,
    check_at: OffsetDateTime,
) -> Result<TransferRow, ServiceError> {
    Ok(
        sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO escrow.gateway_transfers (id, direction, status, supplier_id, \
         escrow_account_id, currency, amount_minor, failure_code, created_at, gateway_key, \
         source_reference, funding_attempt_id, beneficiary, check_at) \
         VALUES ($1, $2, 'sending', $3, $4, $5, $6, '', $7, $8, $9, $10, $11, $12) \
         RETURNING {COLUMNS}"
        )))
        .bind(t.id)
        .bind(t.direction.as_str())
        .bind(t.supplier_id)
        .bind(t.escrow_account_id)
        .bind(t.currency)
        .bind(t.amount_minor)
        .bind(now)
        .bind(t.gateway_key())
        .bind(t.source_reference)
        .bind(t.funding_attempt_id)
        .bind(t.beneficiary)
        .bind(check_at)
        .fetch_one(&mut *conn)
        .await?,
    )
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<TransferRow, ServiceError> {
    sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM escrow.gateway_transfers WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServiceError::not_found("gateway transfer", id))
}

/// The transfer a webhook names, by escrow's own id (`client_reference`) or
/// else by the gateway's, under its row lock.
pub async fn lock_named(
    conn: &mut PgConnection,
    client_reference: Option<Uuid>,
    gateway_reference: &str,
) -> Result<Option<TransferRow>, ServiceError> {
    Ok(
        sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM escrow.gateway_transfers \
         WHERE id = $1 OR ($1 IS NULL AND gateway_reference = $2) FOR UPDATE"
        )))
        .bind(client_reference)
        .bind(gateway_reference)
        .fetch_optional(&mut *conn)
        .await?,
    )
}

/// Locks one transfer row.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<TransferRow, ServiceError> {
    sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM escrow.gateway_transfers WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServiceError::not_found("gateway transfer", id))
}

/// The gateway accepted a transfer (or answered it settled already).
pub async fn accept(
    conn: &mut PgConnection,
    id: Uuid,
    reference: &str,
    check_at: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.gateway_transfers SET gateway_reference = coalesce(gateway_reference, $2), \
         status = CASE WHEN status = 'sending' THEN 'pending' ELSE status END, check_at = $3, \
         last_error = '' WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
    )
    .bind(id)
    .bind(reference)
    .bind(check_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves an open transfer to its final status.
pub async fn resolve(
    conn: &mut PgConnection,
    id: Uuid,
    status: TransferStatus,
    failure_code: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let changed = sqlx::query(
        "UPDATE escrow.gateway_transfers SET status = $2, failure_code = $3, resolved_at = $4, \
         check_at = NULL WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(failure_code)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed != 1 {
        return Err(ServiceError::internal(format!(
            "gateway transfer {id} was resolved under its lock"
        )));
    }
    Ok(())
}

/// A failed transfer the gateway paid after all (its correction posted).
pub async fn paid_after_failure(conn: &mut PgConnection, id: Uuid) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.gateway_transfers SET status = 'paid' WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Notes a send or status check that got no answer; the next one is at
/// `check_at`. A pending transfer past its expiry becomes `unknown`.
pub async fn retry_later(
    conn: &mut PgConnection,
    id: Uuid,
    unknown: bool,
    error: &str,
    check_at: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.gateway_transfers SET check_at = $2, last_error = left($3, 500), \
         status = CASE WHEN $4 AND status = 'pending' THEN 'unknown' ELSE status END \
         WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
    )
    .bind(id)
    .bind(check_at)
    .bind(error)
    .bind(unknown)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Leases up to `limit` open transfers due at `now` (to send, or to ask the
/// gateway about): their next check moves `lease` ahead, committed with the
/// caller's transaction, so one worker handles each at a time.
pub async fn lease_due(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    lease: time::Duration,
    limit: i64,
) -> Result<Vec<TransferRow>, ServiceError> {
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("t.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(
        sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
            "WITH due AS (SELECT id FROM escrow.gateway_transfers \
           WHERE status IN ('sending', 'pending', 'unknown') AND check_at <= $1 \
           ORDER BY check_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE escrow.gateway_transfers t SET check_at = $1 + $2, \
           sends = t.sends + (t.status = 'sending')::int \
         FROM due WHERE t.id = due.id RETURNING {columns}"
        )))
        .bind(now)
        .bind(lease)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?,
    )
}

/// What each funding attempt of an account has had refunded (or is being
/// refunded) to the buyer through the gateway, by attempt.
pub async fn refunded_by_attempt(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<std::collections::HashMap<Uuid, i64>, ServiceError> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT funding_attempt_id, sum(amount_minor)::bigint FROM escrow.gateway_transfers \
         WHERE escrow_account_id = $1 AND direction = 'buyer_refund' AND status <> 'failed' \
           AND funding_attempt_id IS NOT NULL GROUP BY funding_attempt_id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

pub struct TransferFilter {
    pub supplier_id: Option<String>,
    pub direction: Option<&'static str>,
    pub status: Option<&'static str>,
    /// Any of these directions (a kind: payouts, or refunds of either sort).
    pub kinds: Option<&'static [&'static str]>,
    /// Matched exactly against the transfer's id, the gateway's id of it,
    /// the payment a refund goes back against and the attempt it refunds.
    pub reference: Option<String>,
    /// Continue after (created_at, id), newest first.
    pub after: Option<(OffsetDateTime, Uuid)>,
    pub limit: i64,
}

/// A page of transfers, newest first, after the cursor: only the filters
/// given, so each is served by its index (see migration 0008).
pub async fn list_transfers(
    conn: &mut PgConnection,
    f: &TransferFilter,
) -> Result<Vec<TransferRow>, ServiceError> {
    Ok(transfer_page_query("", f)
        .build_query_as()
        .fetch_all(&mut *conn)
        .await?)
}

/// The plan Postgres makes for [`list_transfers`]' statement with these
/// filters (`EXPLAIN (FORMAT JSON)`), for tests that check an index serves
/// each listing.
pub async fn explain_list_transfers(
    conn: &mut PgConnection,
    f: &TransferFilter,
) -> Result<serde_json::Value, ServiceError> {
    let mut query = transfer_page_query("EXPLAIN (FORMAT JSON) ", f);
    let (sqlx::types::Json(plan),): (sqlx::types::Json<serde_json::Value>,) =
        query.build_query_as().fetch_one(&mut *conn).await?;
    Ok(plan)
}

/// [`list_transfers`]' statement; `prefix` goes before it (`EXPLAIN ...`).
fn transfer_page_query(prefix: &str, f: &TransferFilter) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
        "{prefix}SELECT {COLUMNS} FROM escrow.gateway_transfers WHERE true"
    ));
    if let Some(supplier) = &f.supplier_id {
        q.push(" AND supplier_id = ").push_bind(supplier);
    }
    if let Some(direction) = f.direction {
        q.push(" AND direction = ").push_bind(direction);
    }
    if let Some(kinds) = f.kinds {
        q.push(" AND direction = ANY(").push_bind(kinds).push(")");
    }
    if let Some(status) = f.status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(reference) = &f.reference {
        q.push(" AND (gateway_reference = ")
            .push_bind(reference)
            .push(" OR source_reference = ")
            .push_bind(reference);
        // Escrow's own ids are UUIDs: the transfer's, or the attempt refunded.
        if let Ok(id) = Uuid::parse_str(reference) {
            q.push(" OR id = ")
                .push_bind(id)
                .push(" OR funding_attempt_id = ")
                .push_bind(id);
        }
        q.push(")");
    }
    if let Some((at, id)) = f.after {
        q.push(" AND (created_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(f.limit + 1);
    q
}
