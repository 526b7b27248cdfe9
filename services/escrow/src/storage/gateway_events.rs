//! The gateway's events as escrow received them: each id once, what became
//! of it, and those left for an operator (unmatched).

use sqlx::{FromRow, PgConnection};
use ta_runtime::ServiceError;
use time::OffsetDateTime;
use uuid::Uuid;

/// Records an event id; `false` when it was seen before.
pub async fn record_event(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    reference: &str,
    client_reference: Option<&str>,
    now: OffsetDateTime,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query(
        "INSERT INTO escrow.gateway_events (event_id, kind, gateway_reference, outcome, received_at, \
         client_reference) VALUES ($1, $2, $3, 'ignored', $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(kind)
    .bind(reference)
    .bind(now)
    .bind(client_reference)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// What became of an event.
pub struct EventResult<'a> {
    pub outcome: &'static str,
    pub unmatched: Option<&'static str>,
    pub amount: Option<(i64, &'a str)>,
    pub funding_attempt_id: Option<Uuid>,
    pub refund_reference: Option<&'a str>,
}

pub async fn finish_event(
    conn: &mut PgConnection,
    event_id: &str,
    result: &EventResult<'_>,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.gateway_events SET outcome = $2, unmatched = $3, amount_minor = $4, \
         currency = $5, funding_attempt_id = $6, refund_reference = $7 WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(result.outcome)
    .bind(result.unmatched)
    .bind(result.amount.map(|(a, _)| a))
    .bind(result.amount.map(|(_, c)| c))
    .bind(result.funding_attempt_id)
    .bind(result.refund_reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The attempt an earlier delivery of the event concerned.
pub async fn event_attempt(
    conn: &mut PgConnection,
    event_id: &str,
) -> Result<Option<Uuid>, ServiceError> {
    Ok(sqlx::query_scalar::<_, Option<Uuid>>(
        "SELECT funding_attempt_id FROM escrow.gateway_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await?
    .flatten())
}

#[derive(Clone, Debug, FromRow)]
pub struct UnmatchedRow {
    pub event_id: String,
    pub unmatched: String,
    pub gateway_reference: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub refund_reference: Option<String>,
    pub received_at: OffsetDateTime,
}

pub async fn list_unmatched(
    conn: &mut PgConnection,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> Result<Vec<UnmatchedRow>, ServiceError> {
    let (at, id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    Ok(sqlx::query_as(
        "SELECT event_id, unmatched, gateway_reference, amount_minor, currency, refund_reference, \
           received_at FROM escrow.gateway_events WHERE unmatched IS NOT NULL \
           AND ($1::timestamptz IS NULL OR (received_at, event_id) > ($1, $2)) \
         ORDER BY received_at, event_id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?)
}
