//! The audit trail of staff actions: every change a staff member makes (in
//! the trust and safety, arbiter or finance duty) is one row of the service's
//! own `audit_entries`, written by the mutation pipeline in the transaction of
//! the change, after its work and before its idempotency key, so the entry
//! exists exactly when the change does: a refused or failed call rolls back
//! and leaves none, a replayed retry writes none.
//!
//! Entries are append-only: a trigger refuses every `UPDATE`, `DELETE` and
//! `TRUNCATE` of the table, whoever asks. The runtime creates the table in
//! every service's schema after the service's migrations ([`install`]), as it
//! does the idempotency keys, and serves `tradeassurance.ops.v1.AuditTrailService`
//! over it in every process ([`AuditTrail::into_server`]).

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row, postgres::PgRow};
use ta_proto::{IdempotentRequest, ops as pb};
use time::OffsetDateTime;

use crate::{
    ServiceError, Violations,
    auth::{self, Actor, Principal},
    paging, telemetry, text, timestamps,
};

/// The gRPC service every process serves.
pub const SERVICE_NAME: &str = "tradeassurance.ops.v1.AuditTrailService";

/// Longest reason a staff member may give, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// The table and its guard, `{schema}` standing for the service's schema.
const TABLE: &str = "
CREATE TABLE IF NOT EXISTS {schema}.audit_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    principal_id   text NOT NULL,
    role           text NOT NULL,
    method         text NOT NULL,
    resource_type  text NOT NULL,
    resource_id    text NOT NULL,
    reason         text NOT NULL,
    trace_id       text NOT NULL,
    request_type   text NOT NULL,
    request        bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_entries_by_resource ON {schema}.audit_entries (resource_id, id);
CREATE INDEX IF NOT EXISTS audit_entries_by_principal ON {schema}.audit_entries (principal_id, id);
CREATE OR REPLACE FUNCTION {schema}.audit_entries_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER audit_entries_no_change
    BEFORE UPDATE OR DELETE ON {schema}.audit_entries
    FOR EACH ROW EXECUTE FUNCTION {schema}.audit_entries_are_append_only();
CREATE OR REPLACE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON {schema}.audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.audit_entries_are_append_only();
";

/// Creates the table and its triggers in `schema` unless they are there;
/// replicas starting together take turns.
///
/// # Errors
/// Database errors.
pub async fn install(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("ta_runtime.audit_entries:{schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(TABLE.replace("{schema}", schema)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A staff caller must say why: `reason` is required of them, at most
/// [`MAX_REASON_CHARS`]. Others' reasons are the method's business.
pub fn check_reason(principal: &Principal, reason: &str, violations: &mut Violations) {
    if principal.role.is_staff() && !violations.mentions("reason") {
        text::require_text("reason", reason, MAX_REASON_CHARS, violations);
    }
}

/// What one staff action leaves in the trail, taken from its request before
/// the work runs.
#[derive(Clone, Debug)]
pub struct Entry {
    actor: Actor,
    method: String,
    resource_type: &'static str,
    resource_id: String,
    reason: String,
    trace_id: String,
    request_type: &'static str,
    request: Vec<u8>,
}

impl Entry {
    /// The entry of `request` when `principal` is staff; `None` otherwise
    /// (people and services act on their own behalf, recorded by the
    /// resources' own timelines).
    pub fn of<Q: IdempotentRequest>(
        principal: &Principal,
        method: &str,
        request: &Q,
    ) -> Option<Self> {
        if !principal.role.is_staff() {
            return None;
        }
        let (resource_type, resource_id) = match request.resource() {
            (_, id) if id.is_empty() => ("", id),
            named => named,
        };
        Some(Self {
            actor: Actor::of(principal),
            method: method.to_owned(),
            resource_type,
            resource_id,
            reason: request.reason().trim().to_owned(),
            trace_id: telemetry::current_trace_id(),
            request_type: Q::TYPE_URL,
            request: request.encode_to_vec(),
        })
    }
}

/// One service's audit trail.
#[derive(Clone, Debug)]
pub struct AuditTrail {
    pool: PgPool,
    insert_sql: String,
    list_sql: String,
}

impl AuditTrail {
    /// The trail in `schema` (a constant, never user input).
    pub fn new(pool: PgPool, schema: &'static str) -> Self {
        Self {
            pool,
            insert_sql: format!(
                "INSERT INTO {schema}.audit_entries (principal_id, role, method, resource_type, \
                 resource_id, reason, trace_id, request_type, request) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            list_sql: format!(
                "SELECT id, recorded_at, principal_id, role, method, resource_type, resource_id, \
                 reason, trace_id, request_type, request FROM {schema}.audit_entries \
                 WHERE ($1 = '' OR principal_id = $1) AND ($2 = '' OR resource_id = $2) \
                   AND ($3 = '' OR method = $3 OR method LIKE '%/' || $3) \
                   AND ($4::timestamptz IS NULL OR recorded_at >= $4) \
                   AND ($5::timestamptz IS NULL OR recorded_at < $5) \
                   AND ($6::bigint IS NULL OR id < $6) \
                 ORDER BY id DESC LIMIT $7"
            ),
        }
    }

    /// Appends `entry` in the change's transaction.
    ///
    /// # Errors
    /// Database errors (the change then rolls back with it).
    pub async fn record(&self, tx: &mut PgConnection, entry: &Entry) -> Result<(), ServiceError> {
        sqlx::query(AssertSqlSafe(self.insert_sql.as_str()))
            .bind(&entry.actor.principal_id)
            .bind(entry.actor.role.as_str())
            .bind(&entry.method)
            .bind(entry.resource_type)
            .bind(&entry.resource_id)
            .bind(&entry.reason)
            .bind(&entry.trace_id)
            .bind(entry.request_type)
            .bind(&entry.request)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    pub fn into_server(self) -> pb::audit_trail_service_server::AuditTrailServiceServer<Self> {
        pb::audit_trail_service_server::AuditTrailServiceServer::new(self)
    }
}

/// What a listing asks for, checked.
struct Filter {
    principal_id: String,
    resource_id: String,
    method: String,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    before_id: Option<i64>,
    limit: i64,
}

const LISTING: &str = "audit";

fn parse_filter(request: &pb::ListAuditEntriesRequest) -> Result<Filter, ServiceError> {
    let mut violations = Violations::new();
    let short = |field: &str, value: &str, violations: &mut Violations| {
        text::optional_text(field, value, 256, violations)
    };
    let principal_id = short("principal_id", &request.principal_id, &mut violations);
    let resource_id = short("resource_id", &request.resource_id, &mut violations);
    let method = short("method", &request.method, &mut violations);
    let since = timestamps::parse_optional("since", request.since.as_ref(), &mut violations);
    let until = timestamps::parse_optional("until", request.until.as_ref(), &mut violations);
    let limit = paging::page_size(request.page.as_ref(), &mut violations);
    let before_id = paging::cursor(request.page.as_ref(), LISTING, &mut violations, |fields| {
        fields.first().and_then(|id| id.parse::<i64>().ok())
    });
    violations.finish(Filter {
        principal_id,
        resource_id,
        method,
        since,
        until,
        before_id,
        limit,
    })
}

fn entry_of(row: &PgRow) -> Result<pb::AuditEntry, sqlx::Error> {
    let recorded_at: OffsetDateTime = row.try_get("recorded_at")?;
    let role: String = row.try_get("role")?;
    Ok(pb::AuditEntry {
        id: row.try_get("id")?,
        recorded_at: Some(timestamps::to_proto(recorded_at)),
        actor: Some(Actor::stored(row.try_get("principal_id")?, &role).to_proto()),
        method: row.try_get("method")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        reason: row.try_get("reason")?,
        trace_id: row.try_get("trace_id")?,
        request: Some(prost_types::Any {
            type_url: row.try_get("request_type")?,
            value: row.try_get("request")?,
        }),
    })
}

#[tonic::async_trait]
impl pb::audit_trail_service_server::AuditTrailService for AuditTrail {
    async fn list_audit_entries(
        &self,
        request: tonic::Request<pb::ListAuditEntriesRequest>,
    ) -> Result<tonic::Response<pb::ListAuditEntriesResponse>, tonic::Status> {
        auth::caller(&request)?;
        let filter = parse_filter(request.get_ref())?;
        let rows = sqlx::query(AssertSqlSafe(self.list_sql.as_str()))
            .bind(&filter.principal_id)
            .bind(&filter.resource_id)
            .bind(&filter.method)
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.before_id)
            .bind(filter.limit + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        let entries = rows
            .iter()
            .map(entry_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        let (entries, next_page_token) = paging::split_page(entries, filter.limit, |last| {
            paging::token(LISTING, &[&last.id.to_string()])
        });
        Ok(tonic::Response::new(pb::ListAuditEntriesResponse {
            entries,
            next_page_token,
        }))
    }
}
