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
//! The key's row is written once, at the end of the work's transaction, with
//! the request's SHA-256 and the answer: one statement per call rather than
//! a claim before the work and an update after it. Duplicates are still
//! answered once: two runs under one key that overlap both work, but the
//! second's insert of the key waits for the first's transaction and then
//! finds the key taken, so it rolls back and replays the first's answer;
//! and a retry whose work fails because the first run already changed the
//! state (an account already funded) looks for a stored answer before it
//! reports the failure. Where a use case locks its aggregate first (an
//! escrow account, a supplier's row), that lock already queues duplicates.
//!
//! Only successes are stored: a failed request rolls back, so it changed
//! nothing and a retry simply runs again.

use prost::Message;
use sha2::{Digest, Sha256};
// The only dynamic SQL: the schema name, a service's own constant.
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::{
    errors::{ServiceError, Violations},
    group_commit::Part,
};

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
/// `0001_suppliers.sql` still creates it, being applied history). `request`
/// holds the request's SHA-256 (rows written before that held the whole
/// encoded request; both are recognised until they are purged).
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
    insert_sql: String,
    lookup_sql: String,
    purge_sql: String,
}

/// Who is asking, under which key, for which method.
pub struct KeyScope<'a> {
    pub principal_id: &'a str,
    pub method: &'a str,
    pub key: &'a str,
}

/// What a request is known by in the table: its SHA-256, and its encoding
/// for rows written before the table held hashes.
struct Fingerprint {
    encoded: Vec<u8>,
    hash: [u8; 32],
}

impl Fingerprint {
    fn of(request: &impl Message) -> Self {
        let encoded = request.encode_to_vec();
        let hash = Sha256::digest(&encoded).into();
        Self { encoded, hash }
    }

    fn matches(&self, stored: &[u8]) -> bool {
        stored == self.hash.as_slice() || stored == self.encoded.as_slice()
    }
}

impl IdempotencyKeys {
    /// `schema` is the service's own schema name (a constant, never user input).
    pub fn new(schema: &'static str) -> Self {
        Self {
            schema,
            insert_sql: format!(
                "INSERT INTO {schema}.idempotency_keys (principal_id, method, key, request, response) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            ),
            lookup_sql: format!(
                "SELECT request, response FROM {schema}.idempotency_keys \
                 WHERE principal_id = $1 AND method = $2 AND key = $3"
            ),
            purge_sql: format!(
                "DELETE FROM {schema}.idempotency_keys WHERE created_at < now() - $1::interval"
            ),
        }
    }

    /// The service's schema.
    pub fn schema(&self) -> &'static str {
        self.schema
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

    /// The stored response of `request` under its key, if a run committed
    /// one (a run still in progress is not seen).
    ///
    /// # Errors
    /// `IdempotencyKeyReused` when the key holds another request; database
    /// errors.
    pub async fn stored<Q: Message, R: Message + Default>(
        &self,
        conn: impl sqlx::PgExecutor<'_>,
        scope: &KeyScope<'_>,
        request: &Q,
    ) -> Result<Option<R>, ServiceError> {
        self.stored_for(conn, scope, &Fingerprint::of(request))
            .await
    }

    async fn stored_for<R: Message + Default>(
        &self,
        conn: impl sqlx::PgExecutor<'_>,
        scope: &KeyScope<'_>,
        fingerprint: &Fingerprint,
    ) -> Result<Option<R>, ServiceError> {
        let row: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as(AssertSqlSafe(self.lookup_sql.as_str()))
                .bind(scope.principal_id)
                .bind(scope.method)
                .bind(scope.key)
                .fetch_optional(conn)
                .await?;
        let Some((stored_request, response)) = row else {
            return Ok(None);
        };
        if !fingerprint.matches(&stored_request) {
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

    /// Records `response` under the key in the work's transaction; `false`
    /// when another run holds the key (it waited for that run to end).
    async fn record<R: Message>(
        &self,
        tx: &mut PgConnection,
        scope: &KeyScope<'_>,
        fingerprint: &Fingerprint,
        response: &R,
    ) -> Result<bool, ServiceError> {
        let inserted = sqlx::query(AssertSqlSafe(self.insert_sql.as_str()))
            .bind(scope.principal_id)
            .bind(scope.method)
            .bind(scope.key)
            .bind(fingerprint.hash.as_slice())
            .bind(response.encode_to_vec())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        Ok(inserted == 1)
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

    /// Runs `work` in one transaction that ends by recording its answer
    /// under the key, or answers what an earlier run under the key answered
    /// (see the module's notes on duplicates).
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
        let fingerprint = Fingerprint::of(request);
        let mut tx = crate::db::begin(pool).await?;
        let outcome = self
            .work_and_record(&mut tx, scope, &fingerprint, work)
            .await;
        if let Ok(Some(_)) = &outcome {
            tx.commit().await?;
        } else {
            crate::db::rollback(tx).await;
        }
        self.settle(pool, scope, &fingerprint, outcome).await
    }

    /// The answer of a run whose work and key were committed or undone:
    /// its own when it recorded the key; when a twin recorded it first, the
    /// twin's; when the work failed, the first answer of a run that
    /// committed under the key (a retry meets the state that run left, an
    /// account already funded), else the failure.
    async fn settle<R: Message + Default>(
        &self,
        conn: impl sqlx::PgExecutor<'_>,
        scope: &KeyScope<'_>,
        fingerprint: &Fingerprint,
        outcome: Result<Option<R>, ServiceError>,
    ) -> Result<R, ServiceError> {
        match outcome {
            Ok(Some(response)) => Ok(response),
            Ok(None) => match self.stored_for(conn, scope, fingerprint).await? {
                Some(response) => Ok(response),
                None => Err(ServiceError::Aborted(
                    "the key's other run is no longer recorded".into(),
                )),
            },
            Err(error) => match self.stored_for(conn, scope, fingerprint).await {
                Ok(Some(response)) => Ok(response),
                Err(reused @ ServiceError::IdempotencyKeyReused { .. }) => Err(reused),
                Ok(None) | Err(_) => Err(error),
            },
        }
    }
}

impl IdempotencyKeys {
    /// [`IdempotencyKeys::run`] for one item of a shared transaction (group
    /// commit): the work and its key inside the item's [`Part`], undone
    /// when the key is not recorded so the item changes nothing else in the
    /// transaction. The answer holds only once the transaction commits.
    pub async fn run_in_shared<Q, R>(
        &self,
        conn: &mut PgConnection,
        part: Part<'_>,
        scope: &KeyScope<'_>,
        request: &Q,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError>
    where
        Q: Message,
        R: Message + Default,
    {
        let fingerprint = Fingerprint::of(request);
        part.open(conn).await?;
        let outcome = self.work_and_record(conn, scope, &fingerprint, work).await;
        if matches!(outcome, Ok(Some(_))) {
            part.keep(conn).await?;
        } else {
            part.discard(conn).await?;
        }
        self.settle(&mut *conn, scope, &fingerprint, outcome).await
    }

    /// The work, then its answer under the key: `Some` when recorded,
    /// `None` when another run holds the key.
    async fn work_and_record<R: Message>(
        &self,
        conn: &mut PgConnection,
        scope: &KeyScope<'_>,
        fingerprint: &Fingerprint,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    ) -> Result<Option<R>, ServiceError> {
        let response = work(conn).await?;
        Ok(self
            .record(conn, scope, fingerprint, &response)
            .await?
            .then_some(response))
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
