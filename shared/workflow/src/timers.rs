//! Durable timers: due actions in a table of the service's schema.
//!
//! At most one timer is scheduled per (kind, subject): scheduling again
//! replaces it, so "the payment deadline of contract X" has one due time.
//! Scheduling, cancelling and rescheduling take the caller's transaction, so a
//! timer changes together with the state that makes it (ir)relevant.
//!
//! A [`TimerWorker`] claims one due timer at a time with `FOR UPDATE SKIP
//! LOCKED`, marks it fired and runs the service's handler in that same
//! transaction: two replicas never fire one timer, and a crash before the
//! commit leaves it due. A failing handler rolls back, and the timer is tried
//! again after a backoff. Due times use the database's clock, never a
//! replica's, so replicas with skewed clocks agree.

use std::{sync::Arc, time::Duration};

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row, postgres::PgRow};
use ta_runtime::ServiceError;
use tracing::Instrument;

use crate::{
    Schema, Shutdown,
    backoff::backoff,
    config::TimerConfig,
    retry::{Pace, poll_until_shutdown},
    trace::StoredTrace,
    wake::Wake,
};

/// The statement and lock time-out of a timer handler's transaction.
const HANDLER_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The timers table of one service's schema.
#[derive(Clone, Debug)]
pub struct Timers {
    schema: Schema,
}

/// A timer being fired.
#[derive(Clone, Debug, PartialEq)]
pub struct DueTimer {
    pub id: i64,
    /// e.g. `payment_deadline`.
    pub kind: String,
    /// e.g. the contract's id.
    pub subject_id: String,
    pub due_at: time::OffsetDateTime,
    pub payload: Vec<u8>,
    /// Earlier tries whose handler failed.
    pub failed_attempts: u32,
}

/// Timers past their due time, not fired yet.
#[derive(Clone, Debug, PartialEq)]
pub struct OverdueTimers {
    pub count: u64,
    pub oldest_age: Option<Duration>,
}

/// The service's action when a timer is due, run in the transaction that
/// marks it fired.
pub trait TimerHandler: Send + Sync + 'static {
    /// # Errors
    /// Anything: the timer stays scheduled and is tried again later.
    fn fire(
        &self,
        tx: &mut PgConnection,
        timer: &DueTimer,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

impl Timers {
    pub fn new(schema: Schema) -> Self {
        Self { schema }
    }

    /// Schedules (or moves) the timer `kind` of `subject_id` to fire at
    /// `at`, `now` being the caller's clock: at once when `at` has passed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn schedule_at(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        subject_id: &str,
        at: time::OffsetDateTime,
        now: time::OffsetDateTime,
    ) -> Result<i64, ServiceError> {
        let after = Duration::try_from(at - now).unwrap_or_default();
        self.schedule_after(tx, kind, subject_id, after, &[]).await
    }

    /// Schedules `kind` for `subject_id` `after` from now (the database's
    /// now), replacing the scheduled one if there is one; returns its id.
    pub async fn schedule_after(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        subject_id: &str,
        after: Duration,
        payload: &[u8],
    ) -> Result<i64, ServiceError> {
        let trace = StoredTrace::current();
        let id = sqlx::query_scalar(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_timers
                 (kind, subject_id, due_at, fire_after, payload, traceparent, tracestate)
             VALUES ($1, $2, now() + make_interval(secs => $3), now() + make_interval(secs => $3),
                     $4, $5, $6)
             ON CONFLICT (kind, subject_id) WHERE status = 'scheduled'
             DO UPDATE SET due_at = EXCLUDED.due_at, fire_after = EXCLUDED.fire_after,
                           payload = EXCLUDED.payload, traceparent = EXCLUDED.traceparent,
                           tracestate = EXCLUDED.tracestate, attempts = 0, last_error = NULL
             RETURNING id",
        )))
        .bind(kind)
        .bind(subject_id)
        .bind(after.as_secs_f64())
        .bind(payload)
        .bind(trace.traceparent)
        .bind(trace.tracestate)
        .fetch_one(&mut *tx)
        .await?;
        Ok(id)
    }

    /// Moves the scheduled `kind` of `subject_id` to `after` from now;
    /// `false` if none is scheduled.
    pub async fn reschedule(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        subject_id: &str,
        after: Duration,
    ) -> Result<bool, ServiceError> {
        let moved = sqlx::query(AssertSqlSafe(self.schema.sql(
            "UPDATE {schema}.workflow_timers
             SET due_at = now() + make_interval(secs => $3), fire_after = now() + make_interval(secs => $3),
                 attempts = 0, last_error = NULL
             WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled'",
        )))
        .bind(kind)
        .bind(subject_id)
        .bind(after.as_secs_f64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// Cancels the scheduled `kind` of `subject_id`; `false` if none is scheduled.
    pub async fn cancel(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        subject_id: &str,
    ) -> Result<bool, ServiceError> {
        let cancelled = sqlx::query(AssertSqlSafe(self.schema.sql(
            "UPDATE {schema}.workflow_timers SET status = 'cancelled'
             WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled'",
        )))
        .bind(kind)
        .bind(subject_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(cancelled == 1)
    }

    /// Scheduled timers whose due time has passed: how many, and how long
    /// ago the oldest was due.
    pub async fn overdue(&self, pool: &PgPool) -> Result<OverdueTimers, ServiceError> {
        let (count, oldest_seconds): (i64, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(self.schema.sql(
                "SELECT count(*), extract(epoch FROM now() - min(due_at))::float8
                 FROM {schema}.workflow_timers
                 WHERE status = 'scheduled' AND due_at <= now()",
            )))
            .fetch_one(pool)
            .await?;
        Ok(OverdueTimers {
            count: u64::try_from(count).unwrap_or(0),
            oldest_age: oldest_seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }
}

impl Timers {
    /// Deletes fired and cancelled timers older than `retention`; returns how many.
    pub async fn purge_finished(
        &self,
        pool: &PgPool,
        retention: Duration,
    ) -> Result<u64, ServiceError> {
        Ok(sqlx::query(AssertSqlSafe(self.schema.sql(
            "DELETE FROM {schema}.workflow_timers
             WHERE status IN ('fired', 'cancelled')
               AND coalesce(fired_at, created_at) < now() - make_interval(secs => $1)",
        )))
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected())
    }
}

/// Fires the due timers of one service; see the module docs.
pub struct TimerWorker<H> {
    pool: PgPool,
    timers: Timers,
    handler: Arc<H>,
    config: TimerConfig,
}

impl<H: TimerHandler> TimerWorker<H> {
    pub fn new(pool: PgPool, timers: Timers, handler: Arc<H>, config: TimerConfig) -> Self {
        Self {
            pool,
            timers,
            handler,
            config,
        }
    }

    /// Fires due timers until `shutdown`, waiting the poll interval only when
    /// none was due.
    pub async fn run(self, shutdown: Shutdown) {
        let pace = Pace {
            poll_interval: self.config.poll_interval,
            backoff_cap: self.config.retry_cap,
            batch_size: self.config.batch_size as usize,
        };
        poll_until_shutdown(
            shutdown,
            pace,
            Wake::never(),
            "timer worker cannot claim timers",
            || self.fire_due(),
        )
        .await;
    }

    /// Fires up to a batch of due timers, one transaction each; returns how
    /// many were claimed (fired or failed).
    ///
    /// # Errors
    /// The database failed outside a handler.
    pub async fn fire_due(&self) -> Result<usize, ServiceError> {
        let mut claimed = 0;
        while claimed < self.config.batch_size as usize {
            if !self.fire_one().await? {
                break;
            }
            claimed += 1;
        }
        Ok(claimed)
    }

    /// Claims and fires one due timer; `false` when none is due.
    async fn fire_one(&self) -> Result<bool, ServiceError> {
        let schema = self.timers.schema;
        let mut tx = self.pool.begin().await?;
        // A handler waits on no lock, and runs no statement, for longer than
        // this: a stuck row fails this firing (retried with backoff) instead
        // of stalling every timer behind it.
        ta_runtime::db::bound_statements(&mut tx, HANDLER_STATEMENT_TIMEOUT).await?;
        let row = sqlx::query(AssertSqlSafe(schema.sql(
            "SELECT id, kind, subject_id, due_at, payload, attempts, traceparent, tracestate
             FROM {schema}.workflow_timers
             WHERE status = 'scheduled' AND fire_after <= now()
             ORDER BY fire_after, id
             LIMIT 1
             FOR UPDATE SKIP LOCKED",
        )))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let (timer, trace) = timer_from_row(&row)?;
        let span = tracing::info_span!(
            "workflow.timer.fire",
            otel.name = %format!("timer {}", timer.kind),
            timer.id = timer.id,
            timer.kind = %timer.kind,
            timer.subject_id = %timer.subject_id,
        );
        // A trace of its own, linked to the one that set the timer.
        trace.link(&span);
        async {
            // Marked first, so a handler that schedules the same kind for the
            // same subject again creates a new timer instead of editing this one.
            sqlx::query(AssertSqlSafe(schema.sql(
                "UPDATE {schema}.workflow_timers SET status = 'fired', fired_at = now() WHERE id = $1",
            )))
            .bind(timer.id)
            .execute(&mut *tx)
            .await?;
            match self.handler.fire(&mut tx, &timer).await {
                Ok(()) => {
                    tx.commit().await?;
                    Ok(true)
                }
                Err(error) => {
                    let _ = tx.rollback().await;
                    let failed = timer.failed_attempts + 1;
                    let delay = backoff(failed, self.config.retry_base, self.config.retry_cap);
                    tracing::warn!(%error, retry_in = ?delay, "timer handler failed; trying again later");
                    sqlx::query(AssertSqlSafe(schema.sql(
                        "UPDATE {schema}.workflow_timers
                         SET attempts = attempts + 1, last_error = $2,
                             fire_after = now() + make_interval(secs => $3)
                         WHERE id = $1 AND status = 'scheduled'",
                    )))
                    .bind(timer.id)
                    .bind(error.to_string())
                    .bind(delay.as_secs_f64())
                    .execute(&self.pool)
                    .await?;
                    Ok(true)
                }
            }
        }
        .instrument(span)
        .await
    }
}

fn timer_from_row(row: &PgRow) -> Result<(DueTimer, StoredTrace), ServiceError> {
    Ok((
        DueTimer {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            subject_id: row.try_get("subject_id")?,
            due_at: row.try_get("due_at")?,
            payload: row.try_get("payload")?,
            failed_attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        },
        StoredTrace {
            traceparent: row.try_get("traceparent")?,
            tracestate: row.try_get("tracestate")?,
        },
    ))
}
