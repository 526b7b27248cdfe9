//! Idempotency keys, Stripe style: the first request under a key runs and its
//! response is stored in the same transaction as its effects; a retry with the
//! same key and body replays that response and changes nothing; the same key
//! with another body is refused (INVALID_ARGUMENT, reason IDEMPOTENCY_KEY_REUSED).
//!
//! Keys are scoped to (principal, method path): the method comes from the
//! route (see `pipeline`), never from a hand-typed name. Each service keeps them in its own
//! schema's `idempotency_keys` table, the same everywhere: [`TABLE`], which the
//! runtime creates when missing ([`IdempotencyKeys::install`], run by `server`
//! right after the service's own migrations), so no service writes it itself.
//!
//! Only successes are stored: a failed request rolls back, so it changed
//! nothing and a retry simply runs again.

use prost::Message;
// The only dynamic SQL: the schema name, a service's own constant.
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::errors::{ServiceError, Violations};

/// Checks the key's shape: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn validate_key(key: &str, violations: &mut Violations) {
    if key.is_empty() {
        violations.add("idempotency_key", "is required on every mutating call");
    } else if key.len() > 128
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        violations.add(
            "idempotency_key",
            "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
        );
    }
}

/// The table, `{schema}` standing for the service's schema. `IF NOT EXISTS`:
/// schemas migrated before the runtime created it hold it already, with these
/// very columns, from their services' first migrations (supplier-registry's
/// `0001_suppliers.sql` still creates it, being applied history).
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS {schema}.idempotency_keys (
    principal_id  text NOT NULL,
    method        text NOT NULL,
    key           text NOT NULL,
    request       bytea NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
)";

/// The idempotency table of one service's schema.
#[derive(Clone, Debug)]
pub struct IdempotencyKeys {
    schema: &'static str,
    claim_sql: String,
    lookup_sql: String,
    store_sql: String,
    purge_sql: String,
}

/// Who is asking, under which key, for which method.
pub struct KeyScope<'a> {
    pub principal_id: &'a str,
    pub method: &'a str,
    pub key: &'a str,
}

/// The outcome of claiming a key inside the caller's transaction.
pub enum Claim<R> {
    /// First use: do the work, then [`IdempotencyKeys::store`] the response.
    Fresh,
    /// Already done: return this response and change nothing.
    Replay(R),
}

impl IdempotencyKeys {
    /// `schema` is the service's own schema name (a constant, never user input).
    pub fn new(schema: &'static str) -> Self {
        Self {
            schema,
            // Holds a row lock until our transaction ends, so a concurrent retry
            // under the same key waits for our outcome instead of running twice.
            claim_sql: format!(
                "INSERT INTO {schema}.idempotency_keys (principal_id, method, key, request, response) \
                 VALUES ($1, $2, $3, $4, ''::bytea) ON CONFLICT DO NOTHING"
            ),
            lookup_sql: format!(
                "SELECT request, response FROM {schema}.idempotency_keys \
                 WHERE principal_id = $1 AND method = $2 AND key = $3"
            ),
            purge_sql: format!(
                "DELETE FROM {schema}.idempotency_keys WHERE created_at < now() - $1::interval"
            ),
            store_sql: format!(
                "UPDATE {schema}.idempotency_keys SET response = $4 \
                 WHERE principal_id = $1 AND method = $2 AND key = $3"
            ),
        }
    }

    /// Creates the table ([`TABLE`]) in the schema (which must exist: the
    /// service's migrations create it) unless it is there. Replicas starting
    /// together take turns (two concurrent `CREATE TABLE IF NOT EXISTS` of one
    /// table can fail on Postgres' catalog).
    ///
    /// # Errors
    /// Database errors.
    pub async fn install(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("ta_runtime.idempotency_keys:{}", self.schema))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(TABLE.replace("{schema}", self.schema)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Claims the key for `request` in the caller's transaction.
    pub async fn claim<Q: Message, R: Message + Default>(
        &self,
        tx: &mut PgConnection,
        scope: &KeyScope<'_>,
        request: &Q,
    ) -> Result<Claim<R>, ServiceError> {
        let request_bytes = request.encode_to_vec();
        let inserted = sqlx::query(AssertSqlSafe(self.claim_sql.as_str()))
            .bind(scope.principal_id)
            .bind(scope.method)
            .bind(scope.key)
            .bind(&request_bytes)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Fresh);
        }
        let (stored_request, response): (Vec<u8>, Vec<u8>) =
            sqlx::query_as(AssertSqlSafe(self.lookup_sql.as_str()))
                .bind(scope.principal_id)
                .bind(scope.method)
                .bind(scope.key)
                .fetch_one(&mut *tx)
                .await?;
        if stored_request != request_bytes {
            return Err(ServiceError::IdempotencyKeyReused {
                key: scope.key.to_owned(),
                method: scope
                    .method
                    .rsplit('/')
                    .next()
                    .unwrap_or(scope.method)
                    .to_owned(),
            });
        }
        R::decode(response.as_slice())
            .map(Claim::Replay)
            .map_err(|e| ServiceError::internal(format!("stored response undecodable: {e}")))
    }

    /// Stores the response of a fresh claim, in the same transaction as the work.
    pub async fn store<R: Message>(
        &self,
        tx: &mut PgConnection,
        scope: &KeyScope<'_>,
        response: &R,
    ) -> Result<(), ServiceError> {
        sqlx::query(AssertSqlSafe(self.store_sql.as_str()))
            .bind(scope.principal_id)
            .bind(scope.method)
            .bind(scope.key)
            .bind(response.encode_to_vec())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl IdempotencyKeys {
    /// The stored response of `request` under its key, if a first run
    /// committed one, read outside any transaction (a first run still in
    /// progress is not seen: [`IdempotencyKeys::run`] waits for it).
    ///
    /// # Errors
    /// `IdempotencyKeyReused` when the key holds another request; database
    /// errors.
    pub async fn stored<Q: Message, R: Message + Default>(
        &self,
        pool: &PgPool,
        scope: &KeyScope<'_>,
        request: &Q,
    ) -> Result<Option<R>, ServiceError> {
        let row: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as(AssertSqlSafe(self.lookup_sql.as_str()))
                .bind(scope.principal_id)
                .bind(scope.method)
                .bind(scope.key)
                .fetch_optional(pool)
                .await?;
        let Some((stored_request, response)) = row else {
            return Ok(None);
        };
        if stored_request != request.encode_to_vec() {
            return Err(ServiceError::IdempotencyKeyReused {
                key: scope.key.to_owned(),
                method: scope
                    .method
                    .rsplit('/')
                    .next()
                    .unwrap_or(scope.method)
                    .to_owned(),
            });
        }
        R::decode(response.as_slice())
            .map(Some)
            .map_err(|e| ServiceError::internal(format!("stored response undecodable: {e}")))
    }

    /// Forgets keys older than `retention`; returns how many.
    pub async fn purge(
        &self,
        pool: &PgPool,
        retention: std::time::Duration,
    ) -> Result<u64, ServiceError> {
        let interval = format!("{} milliseconds", retention.as_millis());
        Ok(sqlx::query(AssertSqlSafe(self.purge_sql.as_str()))
            .bind(interval)
            .execute(pool)
            .await?
            .rows_affected())
    }

    /// Runs `work` once per key in one transaction with the key's claim, or
    /// replays the stored response of the first run.
    pub async fn run<Q, R>(
        &self,
        pool: &PgPool,
        scope: &KeyScope<'_>,
        request: &Q,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError>
    where
        Q: Message,
        R: Message + Default,
    {
        let mut tx = crate::db::begin(pool).await?;
        let outcome = async {
            match self.claim(&mut tx, scope, request).await? {
                Claim::Replay(response) => Ok(response),
                Claim::Fresh => {
                    let response = work(&mut tx).await?;
                    self.store(&mut tx, scope, &response).await?;
                    Ok(response)
                }
            }
        }
        .await;
        crate::db::finish(tx, outcome).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_for_shape() {
        for good in [
            "a",
            "order-42",
            "2026-11-24T10:00:00.123_x",
            &"k".repeat(128),
        ] {
            let mut v = Violations::new();
            validate_key(good, &mut v);
            assert!(v.is_empty(), "{good} should be accepted");
        }
        for bad in ["", "with space", "ünïcode", &"k".repeat(129)] {
            let mut v = Violations::new();
            validate_key(bad, &mut v);
            let err = v.finish(()).unwrap_err().to_string();
            assert!(err.contains("idempotency_key"), "{bad} should be refused");
        }
    }
}
