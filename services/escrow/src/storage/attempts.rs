//! Funding attempts: escrow's record of each payment a buyer started, the
//! gateway's side of it, and the attempt as the API shows it.

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::funding::{AttemptStatus, FundingAttempt};

#[derive(FromRow)]
struct AttemptRow {
    id: Uuid,
    escrow_account_id: Uuid,
    milestone_id: String,
    method: String,
    amount_minor: i64,
    status: String,
    received_minor: Option<i64>,
    financing_partner_id: Option<String>,
    hold_id: Option<Uuid>,
    failure_code: String,
    credit_reference: Option<String>,
    expires_at: OffsetDateTime,
    gateway_key: Option<String>,
    answered_at: Option<OffsetDateTime>,
}

impl TryFrom<AttemptRow> for FundingAttempt {
    type Error = ServiceError;

    fn try_from(row: AttemptRow) -> Result<Self, ServiceError> {
        Ok(Self {
            status: AttemptStatus::parse(&row.status).ok_or_else(|| {
                ServiceError::internal(format!("funding attempt {}: bad status", row.id))
            })?,
            id: row.id,
            escrow_account_id: row.escrow_account_id,
            milestone_id: row.milestone_id,
            method: row.method,
            amount_minor: row.amount_minor,
            received_minor: row.received_minor,
            financing_partner_id: row.financing_partner_id,
            hold_id: row.hold_id,
            failure_code: row.failure_code,
            credit_reference: row.credit_reference,
            expires_at: row.expires_at,
            gateway_key: row.gateway_key,
            answered_at: row.answered_at,
        })
    }
}

const ATTEMPT_COLUMNS: &str = "id, escrow_account_id, milestone_id, method, amount_minor, status, \
    received_minor, financing_partner_id, hold_id, failure_code, credit_reference, expires_at, \
    gateway_key, answered_at";

/// Inserts an attempt; one still awaiting the gateway's answer is asked
/// about at `check_at` unless the answer is recorded first.
pub async fn insert_attempt(
    conn: &mut PgConnection,
    attempt: &FundingAttempt,
    check_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let resolved_at = (attempt.status != AttemptStatus::Pending).then_some(now);
    sqlx::query(
        "INSERT INTO escrow.funding_attempts (id, escrow_account_id, milestone_id, method, \
         amount_minor, status, received_minor, financing_partner_id, hold_id, failure_code, \
         credit_reference, created_at, expires_at, resolved_at, gateway_key, answered_at, \
         check_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(attempt.id)
    .bind(attempt.escrow_account_id)
    .bind(&attempt.milestone_id)
    .bind(&attempt.method)
    .bind(attempt.amount_minor)
    .bind(attempt.status.as_str())
    .bind(attempt.received_minor)
    .bind(&attempt.financing_partner_id)
    .bind(attempt.hold_id)
    .bind(&attempt.failure_code)
    .bind(&attempt.credit_reference)
    .bind(now)
    .bind(attempt.expires_at)
    .bind(resolved_at)
    .bind(&attempt.gateway_key)
    .bind(attempt.answered_at)
    .bind(check_at)
    .execute(&mut *conn)
    .await
    .map_err(|error| match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ServiceError::FailedPrecondition(format!(
                "cannot fund: payment {} has a pending attempt",
                attempt.milestone_id
            ))
        }
        other => other.into(),
    })?;
    Ok(())
}

/// Reads an attempt; with `lock`, holds its row lock (take the account's
/// first).
pub async fn get_attempt(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<FundingAttempt, ServiceError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM escrow.funding_attempts WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServiceError::not_found("funding attempt", id))?
        .try_into()
}

pub async fn has_pending_attempt(
    conn: &mut PgConnection,
    account_id: Uuid,
    milestone_id: &str,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM escrow.funding_attempts \
         WHERE escrow_account_id = $1 AND milestone_id = $2 AND status = 'pending')",
    )
    .bind(account_id)
    .bind(milestone_id)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn pending_attempts(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<FundingAttempt>, ServiceError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM escrow.funding_attempts \
         WHERE escrow_account_id = $1 AND status = 'pending' ORDER BY id FOR UPDATE"
    );
    sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
        .bind(account_id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}

/// Resolves a pending attempt (guarded: a resolved one is never changed).
pub async fn resolve_attempt(
    conn: &mut PgConnection,
    attempt: &FundingAttempt,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let changed = sqlx::query(
        "UPDATE escrow.funding_attempts SET status = $2, received_minor = $3, failure_code = $4, \
         credit_reference = $5, resolved_at = $6 WHERE id = $1 AND status = 'pending'",
    )
    .bind(attempt.id)
    .bind(attempt.status.as_str())
    .bind(attempt.received_minor)
    .bind(&attempt.failure_code)
    .bind(&attempt.credit_reference)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed != 1 {
        return Err(ServiceError::internal(format!(
            "funding attempt {} was resolved under its lock",
            attempt.id
        )));
    }
    Ok(())
}

/// The attempt started under a gateway key, if any.
pub async fn attempt_by_gateway_key(
    conn: &mut PgConnection,
    gateway_key: &str,
) -> Result<Option<FundingAttempt>, ServiceError> {
    let sql =
        format!("SELECT {ATTEMPT_COLUMNS} FROM escrow.funding_attempts WHERE gateway_key = $1");
    sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
        .bind(gateway_key)
        .fetch_optional(&mut *conn)
        .await?
        .map(TryInto::try_into)
        .transpose()
}

/// Records that the gateway's answer to the start call is known.
pub async fn mark_answered(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.funding_attempts SET answered_at = $2, check_at = NULL \
         WHERE id = $1 AND answered_at IS NULL",
    )
    .bind(attempt_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Leases up to `limit` attempts whose start call's answer is unknown and
/// due to be asked about: their next check moves `lease` ahead and commits
/// with the caller's transaction, so no other worker asks at the same time.
pub async fn lease_unanswered(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    lease: time::Duration,
    limit: i64,
) -> Result<Vec<FundingAttempt>, ServiceError> {
    let sql = format!(
        "WITH due AS (SELECT id FROM escrow.funding_attempts \
           WHERE answered_at IS NULL AND check_at <= $1 ORDER BY check_at LIMIT $3 \
           FOR UPDATE SKIP LOCKED) \
         UPDATE escrow.funding_attempts f SET check_at = $1 + $2 FROM due WHERE f.id = due.id \
         RETURNING {}",
        ATTEMPT_COLUMNS
            .split(", ")
            .map(|c| format!("f.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(lease)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}

/// The earliest pending attempt of a milestone started before `before`.
pub async fn pending_attempt_started_before(
    conn: &mut PgConnection,
    account_id: Uuid,
    milestone_id: &str,
    before: OffsetDateTime,
) -> Result<Option<FundingAttempt>, ServiceError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM escrow.funding_attempts \
         WHERE escrow_account_id = $1 AND milestone_id = $2 AND status = 'pending' \
           AND created_at <= $3 ORDER BY created_at LIMIT 1"
    );
    sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
        .bind(account_id)
        .bind(milestone_id)
        .bind(before)
        .fetch_optional(&mut *conn)
        .await?
        .map(TryInto::try_into)
        .transpose()
}

pub async fn attempt_exists(conn: &mut PgConnection, id: Uuid) -> Result<bool, ServiceError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM escrow.funding_attempts WHERE id = $1)")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// What a refund to the buyer can go back against: the account's settled
/// card and bank transfer attempts, oldest first, with what each brought in
/// and the gateway's id of its payment (Pay Later money goes back to the
/// loan inside the ledger instead).
pub async fn refund_sources(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<(Uuid, i64, String)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT f.id, f.received_minor, g.gateway_reference FROM escrow.funding_attempts f \
         JOIN escrow.attempt_gateway g ON g.funding_attempt_id = f.id \
         WHERE f.escrow_account_id = $1 AND f.status = 'succeeded' AND f.method <> 'pay_later' \
           AND f.received_minor IS NOT NULL ORDER BY f.created_at, f.id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// The gateway's side of a funding attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptGateway {
    pub reference: String,
    pub failure_message: String,
    pub beneficiary_name: Option<String>,
    pub iban: Option<String>,
    pub bic: Option<String>,
    pub payment_reference: Option<String>,
    pub loan_reference: Option<String>,
}

/// Records the gateway's side of an attempt; a second answer (the start
/// call's after a webhook's, say) fills what the first left out. The
/// signature has the shape of the contract's `insert_report` (a child row
/// under its parent's id); the SQL is each its own, so there is nothing to
/// share.
pub async fn insert_attempt_gateway(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    g: &AttemptGateway,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.attempt_gateway (funding_attempt_id, gateway_reference, failure_message, \
         beneficiary_name, iban, bic, payment_reference, loan_reference) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (funding_attempt_id) DO UPDATE SET \
           beneficiary_name = coalesce(EXCLUDED.beneficiary_name, attempt_gateway.beneficiary_name), \
           iban = coalesce(EXCLUDED.iban, attempt_gateway.iban), \
           bic = coalesce(EXCLUDED.bic, attempt_gateway.bic), \
           payment_reference = coalesce(EXCLUDED.payment_reference, attempt_gateway.payment_reference), \
           loan_reference = coalesce(EXCLUDED.loan_reference, attempt_gateway.loan_reference)",
    )
    .bind(attempt_id)
    .bind(&g.reference)
    .bind(&g.failure_message)
    .bind(&g.beneficiary_name)
    .bind(&g.iban)
    .bind(&g.bic)
    .bind(&g.payment_reference)
    .bind(&g.loan_reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the gateway's code for a failed attempt.
pub async fn set_failure(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    sqlx::query("UPDATE escrow.funding_attempts SET failure_code = $2 WHERE id = $1")
        .bind(attempt_id)
        .bind(code)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE escrow.attempt_gateway SET failure_message = $2 WHERE funding_attempt_id = $1",
    )
    .bind(attempt_id)
    .bind(message)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn attempt_by_reference(
    conn: &mut PgConnection,
    reference: &str,
) -> Result<Option<Uuid>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT funding_attempt_id FROM escrow.attempt_gateway WHERE gateway_reference = $1",
    )
    .bind(reference)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A funding attempt as the API shows it.
#[derive(Clone, Debug, FromRow)]
pub struct AttemptView {
    pub id: Uuid,
    pub escrow_account_id: Uuid,
    pub milestone_id: String,
    pub method: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub financing_partner_id: Option<String>,
    pub hold_id: Option<Uuid>,
    pub failure_code: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
    pub gateway_reference: Option<String>,
    pub failure_message: Option<String>,
    pub beneficiary_name: Option<String>,
    pub iban: Option<String>,
    pub bic: Option<String>,
    pub payment_reference: Option<String>,
    pub loan_reference: Option<String>,
}

const ATTEMPT_VIEW: &str = "SELECT f.id, f.escrow_account_id, f.milestone_id, f.method, \
     f.amount_minor, a.currency, f.status, f.financing_partner_id, f.hold_id, f.failure_code, \
     f.created_at, f.expires_at, f.resolved_at, g.gateway_reference, g.failure_message, \
     g.beneficiary_name, g.iban, g.bic, g.payment_reference, g.loan_reference \
     FROM escrow.funding_attempts f JOIN escrow.escrow_accounts a ON a.id = f.escrow_account_id \
     LEFT JOIN escrow.attempt_gateway g ON g.funding_attempt_id = f.id";

pub async fn attempt_view(conn: &mut PgConnection, id: Uuid) -> Result<AttemptView, ServiceError> {
    sqlx::query_as::<_, AttemptView>(sqlx::AssertSqlSafe(format!(
        "{ATTEMPT_VIEW} WHERE f.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServiceError::not_found("funding attempt", id))
}

/// An account's attempts, newest first.
pub async fn list_attempts_of(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<AttemptView>, ServiceError> {
    Ok(
        sqlx::query_as::<_, AttemptView>(sqlx::AssertSqlSafe(format!(
            "{ATTEMPT_VIEW} WHERE f.escrow_account_id = $1 ORDER BY f.created_at DESC, f.id DESC"
        )))
        .bind(account_id)
        .fetch_all(&mut *conn)
        .await?,
    )
}

/// Milestones with any funding attempt.
pub async fn milestones_with_attempts(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT milestone_id FROM escrow.funding_attempts WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}
