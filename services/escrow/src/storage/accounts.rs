//! Escrow accounts, their schedule, freezes and funding attempts. Every
//! change to an account runs under its row lock ([`lock_account`]), taken
//! before any ledger or attempt row, so operations on one contract
//! serialize and lock in one order.

use std::collections::BTreeSet;

use sqlx::{FromRow, PgConnection};
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    EscrowAccount, ScheduledPayment, Status,
    funding::{AttemptStatus, FundingAttempt},
};

#[derive(FromRow)]
struct AccountRow {
    id: Uuid,
    contract_id: String,
    buyer_principal_id: String,
    supplier_id: String,
    currency: String,
    status: String,
    hold_until: OffsetDateTime,
    hold_paused_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    closed_at: Option<OffsetDateTime>,
}

const ACCOUNT_COLUMNS: &str = "id, contract_id, buyer_principal_id, supplier_id, currency, \
     status, hold_until, hold_paused_at, created_at, closed_at";

/// Inserts a new account unless its contract has one; returns whether it did.
pub async fn insert_account(
    conn: &mut PgConnection,
    account: &EscrowAccount,
) -> Result<bool, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO escrow.escrow_accounts (id, contract_id, buyer_principal_id, supplier_id, \
         currency, status, hold_until, hold_paused_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (contract_id) DO NOTHING",
    )
    .bind(account.id)
    .bind(&account.contract_id)
    .bind(&account.buyer_principal_id)
    .bind(&account.supplier_id)
    .bind(account.currency.as_str())
    .bind(account.status.as_str())
    .bind(account.hold_until)
    .bind(account.hold_paused_at)
    .bind(account.created_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(false);
    }
    for (position, payment) in account.schedule.iter().enumerate() {
        sqlx::query(
            "INSERT INTO escrow.scheduled_payments (escrow_account_id, milestone_id, position, \
             amount_minor, funded_minor, due_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account.id)
        .bind(&payment.milestone_id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(payment.amount_minor)
        .bind(payment.funded_minor)
        .bind(payment.due_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

async fn load(
    conn: &mut PgConnection,
    where_clause: &str,
    key: impl for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    lock: bool,
) -> Result<Option<EscrowAccount>, ServiceError> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM escrow.escrow_accounts WHERE {where_clause}{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let Some(row) = sqlx::query_as::<_, AccountRow>(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let corrupt =
        |what: &str| ServiceError::internal(format!("escrow account {}: bad {what}", row.id));
    let schedule: Vec<(String, i64, i64, OffsetDateTime)> = sqlx::query_as(
        "SELECT milestone_id, amount_minor, funded_minor, due_at FROM escrow.scheduled_payments \
         WHERE escrow_account_id = $1 ORDER BY position",
    )
    .bind(row.id)
    .fetch_all(&mut *conn)
    .await?;
    let freezes: Vec<String> = sqlx::query_scalar(
        "SELECT claim_id FROM escrow.freezes WHERE escrow_account_id = $1 AND lifted_at IS NULL",
    )
    .bind(row.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(EscrowAccount {
        currency: Currency::parse(&row.currency).ok_or_else(|| corrupt("currency"))?,
        status: Status::parse(&row.status).ok_or_else(|| corrupt("status"))?,
        schedule: schedule
            .into_iter()
            .map(
                |(milestone_id, amount_minor, funded_minor, due_at)| ScheduledPayment {
                    milestone_id,
                    amount_minor,
                    due_at,
                    funded_minor,
                },
            )
            .collect(),
        freezes: freezes.into_iter().collect::<BTreeSet<_>>(),
        hold_until: row.hold_until,
        hold_paused_at: row.hold_paused_at,
        id: row.id,
        contract_id: row.contract_id,
        buyer_principal_id: row.buyer_principal_id,
        supplier_id: row.supplier_id,
        created_at: row.created_at,
        closed_at: row.closed_at,
    }))
}

/// Reads an account and holds its row lock until the transaction ends.
pub async fn lock_account(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<EscrowAccount, ServiceError> {
    load(conn, "id = $1", id, true)
        .await?
        .ok_or_else(|| ServiceError::not_found("escrow account", id))
}

pub async fn get_account(conn: &mut PgConnection, id: Uuid) -> Result<EscrowAccount, ServiceError> {
    load(conn, "id = $1", id, false)
        .await?
        .ok_or_else(|| ServiceError::not_found("escrow account", id))
}

pub async fn find_by_contract(
    conn: &mut PgConnection,
    contract_id: &str,
) -> Result<Option<EscrowAccount>, ServiceError> {
    load(conn, "contract_id = $1", contract_id.to_owned(), false).await
}

/// Writes back the status, the hold deadline and what each scheduled
/// payment received, of an account read with [`lock_account`].
pub async fn save_account(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.escrow_accounts SET status = $2, closed_at = $3, updated_at = $4, \
         hold_until = $5, hold_paused_at = $6 WHERE id = $1",
    )
    .bind(account.id)
    .bind(account.status.as_str())
    .bind(account.closed_at)
    .bind(now)
    .bind(account.hold_until)
    .bind(account.hold_paused_at)
    .execute(&mut *conn)
    .await?;
    for payment in &account.schedule {
        sqlx::query(
            "UPDATE escrow.scheduled_payments SET funded_minor = $3, \
             funded_at = CASE WHEN $3 >= amount_minor THEN coalesce(funded_at, now()) END \
             WHERE escrow_account_id = $1 AND milestone_id = $2 AND funded_minor <> $3",
        )
        .bind(account.id)
        .bind(&payment.milestone_id)
        .bind(payment.funded_minor)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Writes back the hold deadline alone (an amendment, whose schedule is
/// written by `api::replace_schedule`).
pub async fn save_hold_deadline(
    conn: &mut PgConnection,
    account: &EscrowAccount,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.escrow_accounts SET hold_until = $2, hold_paused_at = $3 WHERE id = $1",
    )
    .bind(account.id)
    .bind(account.hold_until)
    .bind(account.hold_paused_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records an active freeze (again, if it was lifted).
pub async fn insert_freeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.freezes (escrow_account_id, claim_id, reason, frozen_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (escrow_account_id, claim_id) \
         DO UPDATE SET reason = excluded.reason, frozen_at = excluded.frozen_at, lifted_at = NULL \
         WHERE escrow.freezes.lifted_at IS NOT NULL",
    )
    .bind(account_id)
    .bind(claim_id)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn lift_freeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.freezes SET lifted_at = $3 \
         WHERE escrow_account_id = $1 AND claim_id = $2 AND lifted_at IS NULL",
    )
    .bind(account_id)
    .bind(claim_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

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

/// Whether `claim_id` froze the account: `Some(true)` while its freeze is
/// active, `Some(false)` once lifted, `None` if it never did.
pub async fn freeze_of(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
) -> Result<Option<bool>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT lifted_at IS NULL FROM escrow.freezes WHERE escrow_account_id = $1 AND claim_id = $2",
    )
    .bind(account_id)
    .bind(claim_id)
    .fetch_optional(&mut *conn)
    .await?)
}
