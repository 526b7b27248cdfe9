//! Postgres: one pool per service. Each service owns one schema, migrates only
//! that schema (its `sqlx.toml` names the schema and the migration table), and
//! qualifies every query with it.
//!
//! Database work is bounded by the request's deadline on the server side too:
//! dropping a request at its deadline does not stop a statement that waits on
//! a row lock, so [`begin`] sets the transaction's `statement_timeout` and
//! `lock_timeout` to the time the request has left, and every connection gets
//! the server's own request limit as a backstop for work outside [`begin`].
//!
//! Round trips are the cost that counts on the money path, so a transaction
//! starts with one: `BEGIN` and both `SET LOCAL`s go as one simple query. A
//! pooled connection is not pinged before each use (sqlx pings it when it
//! comes back to the pool, and a broken one is dropped then); only one that
//! sat idle long enough for the server to have gone away is pinged first.

use std::time::Duration;

use sqlx::{
    AssertSqlSafe, Connection, PgPool, Postgres, Transaction,
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
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// A connection idle this long may have outlived its server (a restart, a
/// failover): it is pinged before use. One in steady use is not.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How many broken connections [`begin`] passes over before it reports the
/// database unavailable: after a server restart every pooled connection
/// fails once, and a `BEGIN` that failed changed nothing, so trying the
/// next one is safe.
const BEGIN_ATTEMPTS: u32 = 4;

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
            rollback(tx).await;
            Err(error)
        }
    }
}

/// Rolls `tx` back at once (see [`finish`]). A failure means the connection
/// broke, and the server ends the transaction by itself.
pub async fn rollback(tx: Transaction<'static, Postgres>) {
    if let Err(error) = tx.rollback().await {
        tracing::debug!(%error, "rollback after a failed transaction");
    }
}

/// Opens a transaction whose statements and lock waits end before the
/// current request's deadline (Postgres cancels them itself: the lock and
/// the connection are free again even though we stopped waiting). Outside a
/// request it is a plain transaction.
///
/// # Errors
/// `Unavailable` when no working connection comes, `DeadlineExceeded`.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, ServiceError> {
    let Some(left) = remaining_budget() else {
        return begin_with_retry(pool, None).await;
    };
    // Answer a little before the deadline, so the caller hears why; acquiring
    // a connection may itself take part of the budget, which the timeout
    // around it bounds.
    let margin = (left / 10).min(Duration::from_millis(50));
    let bound = (left - margin).max(Duration::from_millis(1));
    tokio::time::timeout(left, begin_with_retry(pool, Some(bound)))
        .await
        .map_err(|_| ServiceError::DeadlineExceeded)?
}

async fn begin_with_retry(
    pool: &PgPool,
    bound: Option<Duration>,
) -> Result<Transaction<'static, Postgres>, ServiceError> {
    let statement = match bound {
        None => "BEGIN".to_owned(),
        Some(bound) => {
            let ms = bound.as_millis().max(1);
            format!(
                "BEGIN; SET LOCAL statement_timeout = '{ms}ms'; SET LOCAL lock_timeout = '{ms}ms'"
            )
        }
    };
    let mut attempt = 1;
    loop {
        match pool.begin_with(AssertSqlSafe(statement.clone())).await {
            Ok(tx) => return Ok(tx),
            Err(error) if attempt < BEGIN_ATTEMPTS && connection_broke(&error) => {
                tracing::debug!(%error, attempt, "a pooled connection was broken; taking another");
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The connection itself failed (not the statement): the server went away.
fn connection_broke(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
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
