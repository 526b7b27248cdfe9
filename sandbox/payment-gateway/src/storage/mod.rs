//! Postgres storage of the sandbox, all in its own schema, `gateway_sandbox`:
//! operations by idempotency key, the webhook outbox with its delivery
//! attempts, and the faults. Work two processes could both pick up (due
//! settlements, due deliveries) is claimed with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, migrate::Migrator};
use time::OffsetDateTime;

use crate::domain::{Kind, Status};

pub const SCHEMA: &str = "gateway_sandbox";

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// An operation as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OperationRow {
    pub id: String,
    pub idempotency_key: String,
    pub kind: String,
    pub request: Value,
    pub response: Value,
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub settled_minor: Option<i64>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub source_id: Option<String>,
    pub counterparty: Option<String>,
}

impl OperationRow {
    pub fn kind(&self) -> Kind {
        // The table's CHECK admits only these.
        Kind::parse(&self.kind).unwrap_or(Kind::Charge)
    }

    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Pending)
    }

    /// The operation as `GET /v1/operations/{key}` shows it.
    pub fn view(&self) -> Value {
        let mut view = json!({
            "object": "operation",
            "kind": self.kind,
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "client_reference": self.client_reference,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "status": self.status,
            "settled_minor": self.settled_minor,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
        });
        if let Some(source) = &self.source_id {
            view["source"] = json!(source);
        }
        if let Some(counterparty) = &self.counterparty {
            view["counterparty"] = json!(counterparty);
        }
        // What the start call answered, so a client that lost it can recover it.
        for field in ["instructions", "loan_reference"] {
            if let Some(value) = self.response.get(field) {
                view[field] = value.clone();
            }
        }
        view
    }
}

/// A new operation, with the answer to replay to its key.
#[derive(Clone, Debug)]
pub struct NewOperation {
    pub id: String,
    pub key: String,
    pub kind: Kind,
    pub request: Value,
    pub response: Value,
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: Status,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub source_id: Option<String>,
    pub counterparty: Option<String>,
    pub settle_after: Option<Duration>,
}

impl NewOperation {
    /// The row it becomes.
    pub fn row(&self) -> OperationRow {
        OperationRow {
            id: self.id.clone(),
            idempotency_key: self.key.clone(),
            kind: self.kind.as_str().to_owned(),
            request: self.request.clone(),
            response: self.response.clone(),
            client_reference: self.client_reference.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            status: self.status.as_str().to_owned(),
            settled_minor: None,
            failure_code: self.failure_code.clone(),
            failure_message: self.failure_message.clone(),
            source_id: self.source_id.clone(),
            counterparty: self.counterparty.clone(),
        }
    }
}

/// Stores `new` unless its key exists already; whether it did.
pub async fn insert_operation(
    conn: &mut PgConnection,
    new: &NewOperation,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO gateway_sandbox.operations
             (id, idempotency_key, kind, request, response, client_reference, amount_minor,
              currency, status, failure_code, failure_message, source_id, counterparty, settle_at,
              settled_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                 now() + make_interval(secs => $14::float8),
                 CASE WHEN $9 = 'pending' THEN NULL ELSE now() END)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&new.id)
    .bind(&new.key)
    .bind(new.kind.as_str())
    .bind(&new.request)
    .bind(&new.response)
    .bind(&new.client_reference)
    .bind(new.amount_minor)
    .bind(&new.currency)
    .bind(new.status.as_str())
    .bind(&new.failure_code)
    .bind(&new.failure_message)
    .bind(&new.source_id)
    .bind(&new.counterparty)
    .bind(new.settle_after.map(|d| d.as_secs_f64()))
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn find_by_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM gateway_sandbox.operations WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Serialises, until the transaction ends, everything done under `key`:
/// acting under it and voiding it.
pub async fn lock_key(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Whether `key` was voided.
pub async fn is_voided(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM gateway_sandbox.voided_keys WHERE idempotency_key = $1)",
    )
    .bind(key)
    .fetch_one(conn)
    .await
}

/// Voids `key` (no-op when it is already).
pub async fn void_key(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO gateway_sandbox.voided_keys (idempotency_key) VALUES ($1) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .execute(conn)
    .await
    .map(drop)
}

/// The operation `id`, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM gateway_sandbox.operations WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// What refunds not failed take back from `source_id`.
pub async fn refunded_against(
    conn: &mut PgConnection,
    source_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount_minor), 0)::bigint FROM gateway_sandbox.operations
         WHERE source_id = $1 AND kind = 'refund' AND status <> 'failed'",
    )
    .bind(source_id)
    .fetch_one(conn)
    .await
}

/// Settles a pending operation (the caller holds its lock).
pub async fn settle(
    conn: &mut PgConnection,
    id: &str,
    status: Status,
    settled_minor: Option<i64>,
    failure: Option<(&str, &str)>,
) -> Result<OperationRow, sqlx::Error> {
    sqlx::query_as(
        "UPDATE gateway_sandbox.operations
         SET status = $2, settled_minor = $3, failure_code = $4, failure_message = $5,
             settled_at = now(), settle_at = NULL
         WHERE id = $1 AND status = 'pending'
         RETURNING *",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(settled_minor)
    .bind(failure.map(|f| f.0))
    .bind(failure.map(|f| f.1))
    .fetch_one(conn)
    .await
}

/// Claims up to `limit` pending operations whose settlement is due (payouts
/// and refunds only when settlement is not held) and settles them as
/// succeeded: incoming money in full. Another process skips what this one
/// holds, so nothing settles twice.
pub async fn settle_due(
    conn: &mut PgConnection,
    hold_outgoing: bool,
    limit: i64,
) -> Result<Vec<OperationRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM gateway_sandbox.operations
             WHERE status = 'pending' AND settle_at <= now()
               AND NOT ($1 AND kind IN ('payout', 'refund'))
             ORDER BY settle_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE gateway_sandbox.operations o
         SET status = 'succeeded', settled_at = now(), settle_at = NULL,
             settled_minor = CASE WHEN o.kind IN ('bank_transfer', 'pay_later')
                                  THEN o.amount_minor END
         FROM due WHERE o.id = due.id
         RETURNING o.*",
    )
    .bind(hold_outgoing)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Every operation, oldest first (for tests and operators).
pub async fn list_operations(pool: &PgPool) -> Result<Vec<OperationRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM gateway_sandbox.operations ORDER BY created_at, id")
        .fetch_all(pool)
        .await
}

// --- webhooks ---------------------------------------------------------------------

/// A new webhook event about `operation`.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub operation: &'a OperationRow,
    pub event_type: &'a str,
    /// The amount the event reports (a bank credit: what arrived).
    pub amount_minor: i64,
    pub failure_code: Option<&'a str>,
    /// From now to the first attempt.
    pub delay: Duration,
    /// Lost: never delivered until re-driven.
    pub lost: bool,
    pub duplicate: bool,
}

/// Stores an event in the outbox; returns its id.
pub async fn insert_event(
    conn: &mut PgConnection,
    event: NewEvent<'_>,
) -> Result<String, sqlx::Error> {
    let id = crate::domain::new_id("evt");
    let payload = json!({
        "id": id,
        "object": "event",
        "type": event.event_type,
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "data": {
            "reference": event.operation.id,
            "client_reference": event.operation.client_reference,
            "amount_minor": event.amount_minor,
            "currency_code": event.operation.currency,
            "failure_code": event.failure_code,
        }
    });
    sqlx::query(
        "INSERT INTO gateway_sandbox.events
             (id, operation_id, type, payload, next_attempt_at, lost, duplicate)
         VALUES ($1, $2, $3, $4,
                 CASE WHEN $5 THEN NULL ELSE now() + make_interval(secs => $6::float8) END,
                 $5, $7)",
    )
    .bind(&id)
    .bind(&event.operation.id)
    .bind(event.event_type)
    .bind(payload.to_string())
    .bind(event.lost)
    .bind(event.delay.as_secs_f64())
    .bind(event.duplicate)
    .execute(conn)
    .await?;
    Ok(id)
}

/// An event claimed for delivery.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueEvent {
    pub id: String,
    pub payload: String,
    /// Attempts before this one.
    pub attempts: i32,
    pub duplicate: bool,
}

/// Claims up to `limit` due events for `lease` (another process skips them
/// meanwhile); the delivery then records its outcome.
pub async fn claim_due_events(
    pool: &PgPool,
    lease: Duration,
    limit: i64,
) -> Result<Vec<DueEvent>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM gateway_sandbox.events
             WHERE next_attempt_at <= now()
             ORDER BY next_attempt_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE gateway_sandbox.events e
         SET next_attempt_at = now() + make_interval(secs => $1::float8)
         FROM due WHERE e.id = due.id
         RETURNING e.id, e.payload, e.attempts, e.duplicate",
    )
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One delivery's result.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub event_id: &'a str,
    pub signature: &'a str,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
}

/// Records an attempt; `retry_in` None marks the event delivered.
pub async fn record_attempt(
    pool: &PgPool,
    attempt: Attempt<'_>,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let number: i32 = sqlx::query_scalar(
        "UPDATE gateway_sandbox.events
         SET attempts = attempts + 1,
             delivered_at = CASE WHEN $2 THEN delivered_at ELSE now() END,
             next_attempt_at = CASE WHEN $2 THEN now() + make_interval(secs => $3::float8) END
         WHERE id = $1
         RETURNING attempts",
    )
    .bind(attempt.event_id)
    .bind(retry_in.is_some())
    .bind(retry_in.unwrap_or_default().as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO gateway_sandbox.delivery_attempts
             (event_id, attempt, signature, status_code, error)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(attempt.event_id)
    .bind(number)
    .bind(attempt.signature)
    .bind(attempt.status_code.map(i32::from))
    .bind(attempt.error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Every event with its attempts, in the order they were created.
pub async fn list_events(pool: &PgPool) -> Result<Vec<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
                 'id', e.id, 'type', e.type, 'operation_id', e.operation_id,
                 'payload', e.payload::jsonb, 'created_at', e.created_at,
                 'next_attempt_at', e.next_attempt_at, 'delivered_at', e.delivered_at,
                 'lost', e.lost, 'duplicate', e.duplicate,
                 'attempts', COALESCE((
                     SELECT jsonb_agg(jsonb_build_object(
                                'attempt', a.attempt, 'at', a.attempted_at,
                                'signature', a.signature, 'status_code', a.status_code,
                                'error', a.error) ORDER BY a.attempt)
                     FROM gateway_sandbox.delivery_attempts a WHERE a.event_id = e.id),
                     '[]'::jsonb))
         FROM gateway_sandbox.events e ORDER BY e.seq",
    )
    .fetch_all(pool)
    .await
}

/// Makes `event_id` due now (a lost one included); whether it exists.
pub async fn redeliver(pool: &PgPool, event_id: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE gateway_sandbox.events
         SET next_attempt_at = now(), lost = false, delivered_at = NULL
         WHERE id = $1",
    )
    .bind(event_id)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

// --- faults -----------------------------------------------------------------------

/// The faults row: the settings as set, and the shared counters.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FaultsRow {
    pub settings: Value,
    pub fail_nth_kind: Option<String>,
    pub fail_nth_remaining: i32,
    pub lose_next: i32,
}

pub async fn load_faults(conn: &mut PgConnection) -> Result<Option<FaultsRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT settings, fail_nth_kind, fail_nth_remaining, lose_next FROM gateway_sandbox.faults",
    )
    .fetch_optional(conn)
    .await
}

pub async fn store_faults(pool: &PgPool, row: &FaultsRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO gateway_sandbox.faults
             (singleton, settings, fail_nth_kind, fail_nth_remaining, lose_next)
         VALUES (true, $1, $2, $3, $4)
         ON CONFLICT (singleton) DO UPDATE
         SET settings = excluded.settings, fail_nth_kind = excluded.fail_nth_kind,
             fail_nth_remaining = excluded.fail_nth_remaining,
             lose_next = excluded.lose_next, updated_at = now()",
    )
    .bind(&row.settings)
    .bind(&row.fail_nth_kind)
    .bind(row.fail_nth_remaining)
    .bind(row.lose_next)
    .execute(pool)
    .await
    .map(drop)
}

/// Counts a call of `kind` against `fail_nth`: whether it is the one to fail.
pub async fn fail_nth_hit(pool: &PgPool, kind: Kind) -> Result<bool, sqlx::Error> {
    let remaining: Option<i32> = sqlx::query_scalar(
        "UPDATE gateway_sandbox.faults
         SET fail_nth_remaining = fail_nth_remaining - 1
         WHERE fail_nth_kind = $1 AND fail_nth_remaining > 0
         RETURNING fail_nth_remaining",
    )
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(remaining == Some(0))
}

/// Takes one from `lose_next`: whether the event being written is lost.
pub async fn take_lose_next(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE gateway_sandbox.faults SET lose_next = lose_next - 1 WHERE lose_next > 0",
    )
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

// --- books ------------------------------------------------------------------------

/// Money through the gateway in one currency.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BooksRow {
    pub currency: String,
    pub charges_minor: i64,
    pub bank_credits_minor: i64,
    pub pay_later_minor: i64,
    pub payouts_paid_minor: i64,
    pub refunds_paid_minor: i64,
    pub out_pending_minor: i64,
    pub payouts_paid: i64,
    pub refunds_paid: i64,
}

pub async fn books(pool: &PgPool) -> Result<Vec<BooksRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency,
             COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'charge' AND status = 'succeeded'), 0)::bigint
                 AS charges_minor,
             COALESCE(SUM(settled_minor) FILTER (WHERE kind = 'bank_transfer' AND status = 'succeeded'), 0)::bigint
                 AS bank_credits_minor,
             COALESCE(SUM(settled_minor) FILTER (WHERE kind = 'pay_later' AND status = 'succeeded'), 0)::bigint
                 AS pay_later_minor,
             COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'payout' AND status = 'succeeded'), 0)::bigint
                 AS payouts_paid_minor,
             COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'refund' AND status = 'succeeded'), 0)::bigint
                 AS refunds_paid_minor,
             COALESCE(SUM(amount_minor) FILTER (WHERE kind IN ('payout', 'refund') AND status = 'pending'), 0)::bigint
                 AS out_pending_minor,
             COUNT(*) FILTER (WHERE kind = 'payout' AND status = 'succeeded') AS payouts_paid,
             COUNT(*) FILTER (WHERE kind = 'refund' AND status = 'succeeded') AS refunds_paid
         FROM gateway_sandbox.operations
         GROUP BY currency ORDER BY currency",
    )
    .fetch_all(pool)
    .await
}
