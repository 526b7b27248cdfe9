//! Postgres: one pool per service. Each service owns one schema, migrates only
//! that schema (its `sqlx.toml` names the schema and the migration table), and
//! qualifies every query with it.
//!
//! Database work is bounded by the request's deadline on the server side too:
//! dropping a request at its deadline does not stop a statement that waits on
//! a row lock, so [`begin`] sets the transaction's `statement_timeout` and
//! `lock_timeout` to the time the request has left, and every connection gets
//! the server's own request limit as a backstop for work outside [`begin`].

use std::time::Duration;

use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{ServiceError, config::DatabaseConfig, middleware::remaining_budget};

/// A pool that connects on first use, so the server can start (and report
/// NOT_SERVING) before the database answers. Fails fast on a malformed URL.
/// `statement_limit` bounds any one statement (the server's request timeout).
pub fn lazy_pool(config: &DatabaseConfig, statement_limit: Duration) -> Result<PgPool, String> {
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: not a usable Postgres URL: {e}"))?;
    let limit = format!("{}ms", statement_limit.as_millis().max(1));
    let options = options.options([("statement_timeout", limit.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(config.database_acquire_timeout)
        .connect_lazy_with(options))
}

/// Opens a transaction whose statements and lock waits end before the
/// current request's deadline (Postgres cancels them itself: the lock and
/// the connection are free again even though we stopped waiting). Outside a
/// request it is a plain transaction.
/// Ends `tx` by `outcome`: commits what succeeded, rolls back at once what
/// failed. Dropping a failed transaction instead would leave its row locks
/// held until the pooled connection happens to be used again.
///
/// # Errors
/// `outcome`'s error, or the commit's.
pub async fn finish<T>(
    tx: Transaction<'static, Postgres>,
    outcome: Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    match outcome {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                // The connection is broken; the server ends the transaction.
                tracing::debug!(%rollback, "rollback after a failed transaction");
            }
            Err(error)
        }
    }
}

pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, ServiceError> {
    let Some(left) = remaining_budget() else {
        return Ok(pool.begin().await?);
    };
    // Acquiring a connection may itself take part of the budget.
    let mut tx = tokio::time::timeout(left, pool.begin())
        .await
        .map_err(|_| ServiceError::DeadlineExceeded)??;
    let left = remaining_budget().unwrap_or(left);
    // Answer a little before the deadline, so the caller hears why.
    let margin = (left / 10).min(Duration::from_millis(50));
    bound_statements(&mut tx, (left - margin).max(Duration::from_millis(1))).await?;
    Ok(tx)
}

/// Bounds every statement of the caller's transaction, and every wait for a
/// lock in it, to `bound` (`SET LOCAL`: the transaction's end undoes it).
pub async fn bound_statements(
    tx: &mut sqlx::PgConnection,
    bound: Duration,
) -> Result<(), ServiceError> {
    sqlx::query(
        "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)",
    )
    .bind(format!("{}ms", bound.as_millis().max(1)))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
