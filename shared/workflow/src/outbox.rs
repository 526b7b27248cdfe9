//! The transactional outbox and its relay.
//!
//! A service that must call another one writes the call (target, method,
//! encoded request with its idempotency key, the current trace context, which
//! completion to run) with [`Outbox::enqueue`] in the same transaction as its
//! own state change: the intent exists exactly when the change does.
//!
//! A [`Relay`] in each process claims due rows with `FOR UPDATE SKIP LOCKED`
//! when a row is committed ([`Relay::waking_on`]) or at its poll interval,
//! leasing them (`next_attempt_at` moves past the call's deadline, a
//! `claim_token` marks the holder) so the claim commits at once and no
//! transaction stays open across a network call. It calls the target with the
//! row's key and trace context, then, in one transaction that first checks the
//! lease is still its own, records the answer and runs the owning service's
//! [`CompletionHandler`]. A relay that dies anywhere leaves a row whose lease
//! runs out; another relay calls again with the same key, and the receiver's
//! idempotency keys replay the first answer: the effect happens once.
//!
//! What the answer means:
//! * OK, or a refusal that is the receiver's verdict on the request
//!   (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS,
//!   OUT_OF_RANGE): handed to the completion handler once, never retried.
//! * Anything else says the platform, not the request, is at fault: the
//!   receiver is down or busy (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
//!   RESOURCE_EXHAUSTED, CANCELLED), or misconfigured or failing (UNAUTHENTICATED,
//!   PERMISSION_DENIED, UNIMPLEMENTED, INTERNAL, UNKNOWN, DATA_LOSS). Turning
//!   those into business refusals would, say, cancel a contract because a token
//!   expired, so they are retried with capped exponential backoff and jitter
//!   and, after the configured attempts, parked with the last error for an
//!   operator to re-drive ([`crate::admin`]).
//!
//! A completion handler that fails is retried the same way with the stored
//! answer, without calling the receiver again.
//!
//! A refusal is final for the relay, not always for the business: a refused
//! release, refund or settlement leaves money where nobody will move it. The
//! handler then answers [`Handled::Escalate`]: its own changes commit (a
//! timeline entry, say), and the row is parked with the refusal as its last
//! error, marked `escalated`, for an operator: listed by
//! `ListParkedOutboxRows`, counted in the backlog and its gauge. Re-driving
//! it calls again with the same key (receivers store successes only, so the
//! call runs anew, e.g. once the operator removed the cause) and hands the
//! new answer to the handler.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use prost::Message;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row, postgres::PgRow};
use ta_proto::IdempotentRequest;
use ta_runtime::{ServiceError, Violations, idempotency::validate_key};
use tonic::{Code, codegen::http::uri::PathAndQuery};
use tracing::Instrument;

use crate::{
    Handled, Schema, Shutdown,
    backoff::backoff,
    config::OutboxConfig,
    credentials::ServiceCredentials,
    peers::Peers,
    raw::RawCodec,
    retry::{Pace, poll_until_shutdown},
    trace::StoredTrace,
    wake::{Wake, Wakeups},
};

/// A relay's claim outlives the call's deadline by this much, so the answer
/// can still be recorded after a call that used all of its time.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// A service the outbox calls: the relay's name for it (its peer) and its
/// gRPC service's full name, so a call is written as a method name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Callee {
    pub name: &'static str,
    /// e.g. `tradeassurance.escrow.v1.EscrowService`.
    pub service: &'static str,
}

/// One call to write to the outbox, as a service's effects build it:
/// `method` (its name alone) of `callee` with `request`, its answer handled
/// by the completion handler's branch `completion`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call<Q> {
    pub callee: &'static Callee,
    pub method: &'static str,
    pub request: Q,
    pub completion: &'static str,
}

/// The outbox table of one service's schema.
#[derive(Clone, Debug)]
pub struct Outbox {
    schema: Schema,
}

/// One call as the relay delivers it and the completion handler sees it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: i64,
    /// The called service, e.g. `escrow`.
    pub target: String,
    /// `/package.Service/Method`.
    pub method: String,
    pub idempotency_key: String,
    /// The completion the service named when it wrote the call.
    pub completion: String,
    /// The encoded request.
    pub request: Vec<u8>,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

impl Delivery {
    /// The request the service wrote.
    ///
    /// # Errors
    /// The bytes are not a `Q` (a completion name mapped to the wrong type).
    pub fn decode_request<Q: Message + Default>(&self) -> Result<Q, ServiceError> {
        Q::decode(self.request.as_slice()).map_err(|e| {
            ServiceError::internal(format!("outbox row {}: request undecodable: {e}", self.id))
        })
    }

    /// The method's name alone, e.g. `FreezeEscrow`.
    pub fn method_name(&self) -> &str {
        self.method.rsplit('/').next().unwrap_or_default()
    }

    /// The answer to a follow-up call nothing waits on (a completion such as
    /// `nothing`): done; a refusal is logged for operators.
    pub fn follow_up_answered(&self, answer: &Answer) -> Handled {
        if let Some(message) = answer.refusal() {
            tracing::warn!(
                method = self.method,
                message,
                "a follow-up call that moves no money was refused"
            );
        }
        Handled::Done
    }
}

/// What the called service answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It did what was asked; the encoded response.
    Accepted(Vec<u8>),
    /// It refused for good: its verdict on the request. A refusal that named
    /// a machine-readable reason (a `google.rpc.PreconditionFailure`
    /// violation type, e.g. `TA_LIMIT_EXCEEDED`) carries it at the start of
    /// the message, `REASON: message`, so it survives being stored.
    Refused { code: Code, message: String },
}

impl Answer {
    /// The response of an accepted call.
    ///
    /// # Errors
    /// The call was refused, or the bytes are not an `R`.
    pub fn decode<R: Message + Default>(&self) -> Result<R, ServiceError> {
        match self {
            Answer::Accepted(bytes) => R::decode(bytes.as_slice())
                .map_err(|e| ServiceError::internal(format!("response undecodable: {e}"))),
            Answer::Refused { code, message } => Err(ServiceError::internal(format!(
                "the call was refused ({code:?}: {message}), there is no response"
            ))),
        }
    }

    /// The refusal's message; none for an accepted call.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Answer::Accepted(_) => None,
            Answer::Refused { message, .. } => Some(message),
        }
    }

    fn code(&self) -> i32 {
        match self {
            Answer::Accepted(_) => Code::Ok as i32,
            Answer::Refused { code, .. } => *code as i32,
        }
    }
}

/// The owning service's reaction to an answer, run in the transaction that
/// records it: it moves the service's own state (e.g. a contract to SIGNED
/// once cover is reserved, or to REFUSED when it was not), and says whether
/// the answer needs an operator ([`Handled::Escalate`]: see the module docs).
pub trait CompletionHandler: Send + Sync + 'static {
    /// # Errors
    /// Anything: the transaction rolls back and the handler is run again
    /// later with the same answer (the call is not repeated).
    fn complete(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        answer: &Answer,
    ) -> impl Future<Output = Result<Handled, ServiceError>> + Send;
}

/// The refusal's message, led by its precondition reason when it names one.
fn refusal_text(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let reason = status
        .get_error_details()
        .precondition_failure()
        .and_then(|failure| failure.violations.first().map(|v| v.r#type.clone()))
        .filter(|reason| !reason.is_empty());
    match reason {
        Some(reason) if !status.message().starts_with(&reason) => {
            format!("{reason}: {}", status.message())
        }
        _ => status.message().to_owned(),
    }
}

/// Whether a status is the receiver's verdict on the request, as opposed to a
/// failure of the platform (see the module docs).
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

impl Outbox {
    pub fn new(schema: Schema) -> Self {
        Self { schema }
    }

    pub fn schema(&self) -> Schema {
        self.schema
    }

    /// Writes the call of `callee`'s `method` (its name alone), as `enqueue`.
    ///
    /// # Errors
    /// As `enqueue`.
    pub async fn call<Q: IdempotentRequest>(
        &self,
        tx: &mut PgConnection,
        callee: &Callee,
        method: &str,
        request: &Q,
        completion: &str,
    ) -> Result<(), ServiceError> {
        let path = format!("/{}/{method}", callee.service);
        self.enqueue(tx, callee.name, &path, request, completion)
            .await
            .map(|_| ())
    }

    /// Writes `call` (if any), as [`Outbox::call`].
    ///
    /// # Errors
    /// As `enqueue`.
    pub async fn write<Q: IdempotentRequest>(
        &self,
        tx: &mut PgConnection,
        call: impl Into<Option<Call<Q>>>,
    ) -> Result<(), ServiceError> {
        match call.into() {
            Some(call) => {
                self.call(tx, call.callee, call.method, &call.request, call.completion)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Writes the call of `method` (`/package.Service/Method`) on the service
    /// `target` with `request`, in the caller's transaction; `completion`
    /// names the handler's branch for the answer. Writing the same call again
    /// (same target, method, key and request) returns the first row's id.
    ///
    /// # Errors
    /// `Internal` for a malformed call (a bug in the service: a bad key or
    /// method path, or the key reused for another request); database errors.
    pub async fn enqueue<Q: IdempotentRequest>(
        &self,
        tx: &mut PgConnection,
        target: &str,
        method: &str,
        request: &Q,
        completion: &str,
    ) -> Result<i64, ServiceError> {
        let key = request.idempotency_key();
        let mut violations = Violations::new();
        validate_key(key, &mut violations);
        if !violations.is_empty() {
            return Err(ServiceError::internal(format!(
                "outbox call {method}: {}",
                violations.into_error()
            )));
        }
        if PathAndQuery::try_from(method).is_err() || method.matches('/').count() != 2 {
            return Err(ServiceError::internal(format!(
                "outbox call `{method}` is not a /package.Service/Method path"
            )));
        }
        let bytes = request.encode_to_vec();
        let trace = StoredTrace::current();
        let inserted: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_outbox
                 (target, method, idempotency_key, request, completion, traceparent, tracestate)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (target, method, idempotency_key) DO NOTHING
             RETURNING id",
        )))
        .bind(target)
        .bind(method)
        .bind(key)
        .bind(&bytes)
        .bind(completion)
        .bind(&trace.traceparent)
        .bind(&trace.tracestate)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = inserted {
            return Ok(id);
        }
        let (id, stored): (i64, Vec<u8>) = sqlx::query_as(AssertSqlSafe(self.schema.sql(
            "SELECT id, request FROM {schema}.workflow_outbox
             WHERE target = $1 AND method = $2 AND idempotency_key = $3",
        )))
        .bind(target)
        .bind(method)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        if stored != bytes {
            return Err(ServiceError::internal(format!(
                "outbox call {method} to {target}: key `{key}` already holds another request"
            )));
        }
        Ok(id)
    }

    /// Parked rows, oldest first, after row id `after_id`.
    pub async fn parked(
        &self,
        pool: &PgPool,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<OutboxRowView>, ServiceError> {
        let rows = sqlx::query(AssertSqlSafe(self.schema.sql(
            "SELECT id, target, method, idempotency_key, attempts, last_error, created_at,
                    parked_at, escalated
             FROM {schema}.workflow_outbox
             WHERE status = 'parked' AND id > $1 ORDER BY id LIMIT $2",
        )))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter().map(OutboxRowView::from_row).collect()
    }

    /// Puts the parked row `id` back in the queue, due now, with a fresh
    /// attempt budget. A row whose completion kept failing keeps its answer
    /// (only its completion runs again); an escalated refusal is called
    /// again (the receiver kept no answer for it), its answer forgotten.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` when the row is not parked.
    pub async fn redrive(
        &self,
        tx: &mut PgConnection,
        id: i64,
    ) -> Result<OutboxRowView, ServiceError> {
        let row = sqlx::query(AssertSqlSafe(self.schema.sql(
            "UPDATE {schema}.workflow_outbox
             SET status = CASE WHEN answer_code IS NULL OR escalated THEN 'pending'
                               ELSE 'answered' END,
                 answer_code = CASE WHEN escalated THEN NULL ELSE answer_code END,
                 answer_message = CASE WHEN escalated THEN NULL ELSE answer_message END,
                 response = CASE WHEN escalated THEN NULL ELSE response END,
                 escalated = false,
                 attempts = 0, next_attempt_at = now(), parked_at = NULL, claim_token = NULL
             WHERE id = $1 AND status = 'parked'
             RETURNING id, target, method, idempotency_key, attempts, last_error, created_at,
                       parked_at, escalated",
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            return OutboxRowView::from_row(&row);
        }
        let status: Option<String> = sqlx::query_scalar(AssertSqlSafe(
            self.schema
                .sql("SELECT status FROM {schema}.workflow_outbox WHERE id = $1"),
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match status {
            None => Err(ServiceError::not_found("outbox row", id)),
            Some(status) => Err(ServiceError::FailedPrecondition(format!(
                "outbox row {id} is {status}, not parked"
            ))),
        }
    }

    /// Rows waiting (count, oldest age) and rows parked; each part reads
    /// only its partial index, however many completed rows the table keeps.
    pub async fn backlog(&self, pool: &PgPool) -> Result<OutboxBacklog, ServiceError> {
        let (pending, oldest_seconds, parked): (i64, Option<f64>, i64) =
            sqlx::query_as(AssertSqlSafe(self.schema.sql(
                "SELECT
                     (SELECT count(*) FROM {schema}.workflow_outbox
                      WHERE status IN ('pending', 'answered')),
                     (SELECT extract(epoch FROM now() - min(created_at))::float8
                      FROM {schema}.workflow_outbox WHERE status IN ('pending', 'answered')),
                     (SELECT count(*) FROM {schema}.workflow_outbox WHERE status = 'parked')",
            )))
            .fetch_one(pool)
            .await?;
        Ok(OutboxBacklog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_pending_age: oldest_seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
            parked: u64::try_from(parked).unwrap_or(0),
        })
    }

    /// Deletes completed rows older than `retention`; returns how many.
    pub async fn purge_completed(
        &self,
        pool: &PgPool,
        retention: Duration,
    ) -> Result<u64, ServiceError> {
        Ok(sqlx::query(AssertSqlSafe(self.schema.sql(
            "DELETE FROM {schema}.workflow_outbox
             WHERE status = 'completed' AND completed_at < now() - make_interval(secs => $1)",
        )))
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected())
    }
}

/// An outbox row as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRowView {
    pub id: i64,
    pub target: String,
    pub method: String,
    pub idempotency_key: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: time::OffsetDateTime,
    pub parked_at: Option<time::OffsetDateTime>,
    /// Parked because the owning service escalated the receiver's refusal,
    /// not because the call kept failing.
    pub escalated: bool,
}

impl OutboxRowView {
    fn from_row(row: &PgRow) -> Result<Self, ServiceError> {
        Ok(Self {
            id: row.try_get("id")?,
            target: row.try_get("target")?,
            method: row.try_get("method")?,
            idempotency_key: row.try_get("idempotency_key")?,
            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            parked_at: row.try_get("parked_at")?,
            escalated: row.try_get("escalated")?,
        })
    }
}

/// How far behind the relay is.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxBacklog {
    pub pending: u64,
    pub oldest_pending_age: Option<Duration>,
    pub parked: u64,
}

/// A claimed row.
struct Claimed {
    delivery: Delivery,
    trace: StoredTrace,
    /// The answer recorded by an earlier attempt whose completion failed.
    stored_answer: Option<Answer>,
}

/// Delivers the outbox of one service; see the module docs.
pub struct Relay<H> {
    pool: PgPool,
    outbox: Outbox,
    peers: Peers,
    credentials: Arc<ServiceCredentials>,
    handler: Arc<H>,
    config: OutboxConfig,
    wake: Wake,
}

impl<H: CompletionHandler> Relay<H> {
    pub fn new(
        pool: PgPool,
        outbox: Outbox,
        peers: Peers,
        credentials: Arc<ServiceCredentials>,
        handler: Arc<H>,
        config: OutboxConfig,
    ) -> Self {
        Self {
            pool,
            outbox,
            peers,
            credentials,
            handler,
            config,
            wake: Wake::never(),
        }
    }

    /// Looks again as soon as `wakeups` says an outbox row was written (or
    /// re-driven) and committed, rather than at the next poll (unless
    /// `WORKFLOW_OUTBOX_WAKE_ON_COMMIT` is false).
    #[must_use]
    pub fn waking_on(mut self, wakeups: &Wakeups) -> Self {
        self.wake = wakeups.outbox();
        self
    }

    /// Delivers until `shutdown`: a batch at a time, waiting, when nothing
    /// was due, until a row is committed (see [`Relay::waking_on`]) or the
    /// poll interval ends, whichever comes first. A batch in flight is
    /// finished first (each call is bounded by its deadline).
    pub async fn run(self, shutdown: Shutdown) {
        let pace = Pace {
            poll_interval: self.config.poll_interval,
            backoff_cap: self.config.backoff_cap,
            batch_size: self.config.batch_size as usize,
        };
        let what = format!("outbox relay of {} cannot claim rows", self.outbox.schema);
        let wake = if self.config.wake_on_commit {
            self.wake.clone()
        } else {
            Wake::never()
        };
        poll_until_shutdown(shutdown, pace, wake, &what, || self.deliver_due()).await;
    }

    /// Claims one batch of due rows and delivers them concurrently; returns
    /// how many were claimed.
    ///
    /// # Errors
    /// The claim itself failed (the database is unreachable).
    pub async fn deliver_due(&self) -> Result<usize, ServiceError> {
        let token = uuid::Uuid::new_v4();
        let claimed = self.claim(token).await?;
        let count = claimed.len();
        join_all(claimed.into_iter().map(|row| self.process(row, token))).await;
        Ok(count)
    }

    async fn claim(&self, token: uuid::Uuid) -> Result<Vec<Claimed>, ServiceError> {
        let lease = (self.config.call_timeout + LEASE_MARGIN).as_secs_f64();
        let rows = sqlx::query(AssertSqlSafe(self.outbox.schema.sql(
            "WITH due AS (
                 SELECT id FROM {schema}.workflow_outbox
                 WHERE status IN ('pending', 'answered') AND next_attempt_at <= now()
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {schema}.workflow_outbox o
             SET claim_token = $2, attempts = o.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $3)
             FROM due WHERE o.id = due.id
             RETURNING o.id, o.target, o.method, o.idempotency_key, o.request, o.completion,
                       o.traceparent, o.tracestate, o.status, o.attempts,
                       o.answer_code, o.answer_message, o.response",
        )))
        .bind(i64::from(self.config.batch_size))
        .bind(token)
        .bind(lease)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    async fn process(&self, row: Claimed, token: uuid::Uuid) {
        let delivery = &row.delivery;
        let span = tracing::info_span!(
            "workflow.outbox.deliver",
            otel.name = %format!("outbox {}", delivery.method),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.method = %delivery.method,
            outbox.id = delivery.id,
            outbox.target = %delivery.target,
            outbox.attempt = delivery.attempts,
        );
        row.trace.parent(&span);
        async {
            let outcome = match &row.stored_answer {
                Some(answer) => Ok(answer.clone()),
                None => self.call(delivery).await,
            };
            let result = match outcome {
                Ok(answer) => self.complete(delivery, token, answer).await,
                Err(error) => self.retry_later(delivery, token, &error, None).await,
            };
            if let Err(error) = result {
                // The lease runs out and another attempt follows; the
                // receiver replays its answer to the repeated call.
                tracing::warn!(%error, "outbox row left to its lease after a database error");
            }
        }
        .instrument(span)
        .await;
    }

    /// One call with the row's key, our token and the stored trace context
    /// (the current span is parented on it). `Err` is a failure to retry.
    async fn call(&self, delivery: &Delivery) -> Result<Answer, String> {
        let channel = self
            .peers
            .channel(&delivery.target)
            .ok_or_else(|| format!("no address configured for service `{}`", delivery.target))?;
        let bearer = self
            .credentials
            .bearer(&delivery.target)
            .map_err(|e| e.to_string())?;
        let path = PathAndQuery::try_from(delivery.method.as_str())
            .map_err(|e| format!("malformed method path: {e}"))?;
        // A client span and client metrics per call, like any other call.
        let mut grpc = tonic::client::Grpc::new(ta_runtime::client::traced(channel));
        grpc.ready()
            .await
            .map_err(|e| format!("UNAVAILABLE: {e}"))?;
        let mut request = tonic::Request::new(delivery.request.clone());
        request.set_timeout(self.config.call_timeout);
        request.metadata_mut().insert("authorization", bearer);
        ta_runtime::telemetry::inject_trace_context(request.metadata_mut());
        // grpc-timeout tells the receiver; this bounds our own wait too.
        let answered = tokio::time::timeout(
            self.config.call_timeout,
            grpc.unary(request, path, RawCodec),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "no answer within the call timeout",
            ))
        });
        match answered {
            Ok(response) => Ok(Answer::Accepted(response.into_inner())),
            Err(status) if is_refusal(status.code()) => {
                tracing::info!(code = ?status.code(), message = status.message(), "call refused");
                Ok(Answer::Refused {
                    code: status.code(),
                    message: refusal_text(&status),
                })
            }
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Records `answer` and runs the completion handler in one transaction,
    /// if the lease is still ours.
    async fn complete(
        &self,
        delivery: &Delivery,
        token: uuid::Uuid,
        answer: Answer,
    ) -> Result<(), ServiceError> {
        let mut tx = self.pool.begin().await?;
        let ours: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.outbox.schema.sql(
            "SELECT id FROM {schema}.workflow_outbox
             WHERE id = $1 AND claim_token = $2 AND status IN ('pending', 'answered')
             FOR UPDATE",
        )))
        .bind(delivery.id)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            tracing::info!("lease on the outbox row lost; its new holder completes it");
            return Ok(());
        }
        let handled = match self.handler.complete(&mut tx, delivery, &answer).await {
            Ok(handled) => handled,
            Err(error) => {
                let _ = tx.rollback().await;
                tracing::warn!(%error, "completion handler failed; it runs again later");
                return self
                    .retry_later(
                        delivery,
                        token,
                        &format!("completion failed: {error}"),
                        Some(&answer),
                    )
                    .await;
            }
        };
        let (message, response) = answer_columns(&answer);
        let escalation = match &handled {
            Handled::Done => None,
            Handled::Escalate(reason) => Some(reason.as_str()),
        };
        // Escalated: parked with its answer kept for the record and the
        // reason as its last error, in the transaction of the handler's changes.
        sqlx::query(AssertSqlSafe(self.outbox.schema.sql(
            "UPDATE {schema}.workflow_outbox
             SET status = CASE WHEN $5::text IS NULL THEN 'completed' ELSE 'parked' END,
                 answer_code = $2, answer_message = $3, response = $4,
                 completed_at = CASE WHEN $5::text IS NULL THEN now() END,
                 parked_at = CASE WHEN $5::text IS NULL THEN NULL ELSE now() END,
                 escalated = $5::text IS NOT NULL,
                 last_error = coalesce($5, last_error),
                 claim_token = NULL
             WHERE id = $1",
        )))
        .bind(delivery.id)
        .bind(answer.code())
        .bind(message)
        .bind(response)
        .bind(escalation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(reason) = escalation {
            tracing::warn!(
                reason,
                "outbox row escalated to the operators' queue: an operator can re-drive it"
            );
        }
        Ok(())
    }

    /// Schedules the next attempt after a backoff, or parks the row once it
    /// used its attempts; keeps `answer` when there is one to complete with.
    async fn retry_later(
        &self,
        delivery: &Delivery,
        token: uuid::Uuid,
        error: &str,
        answer: Option<&Answer>,
    ) -> Result<(), ServiceError> {
        let park = delivery.attempts >= self.config.max_attempts;
        let delay = backoff(
            delivery.attempts,
            self.config.backoff_base,
            self.config.backoff_cap,
        );
        let (code, message, response) = match answer {
            Some(answer) => {
                let (message, response) = answer_columns(answer);
                (Some(answer.code()), message, response)
            }
            None => (None, None, None),
        };
        let parked = sqlx::query_scalar::<_, bool>(AssertSqlSafe(self.outbox.schema.sql(
            "UPDATE {schema}.workflow_outbox
             SET status = CASE WHEN $3 THEN 'parked'
                               WHEN $5::integer IS NOT NULL THEN 'answered'
                               ELSE status END,
                 parked_at = CASE WHEN $3 THEN now() ELSE NULL END,
                 next_attempt_at = now() + make_interval(secs => $4),
                 last_error = $6,
                 answer_code = coalesce($5, answer_code),
                 answer_message = CASE WHEN $5::integer IS NULL THEN answer_message ELSE $7 END,
                 response = CASE WHEN $5::integer IS NULL THEN response ELSE $8 END,
                 claim_token = NULL
             WHERE id = $1 AND claim_token = $2
             RETURNING status = 'parked'",
        )))
        .bind(delivery.id)
        .bind(token)
        .bind(park)
        .bind(delay.as_secs_f64())
        .bind(code)
        .bind(error)
        .bind(message)
        .bind(response)
        .fetch_optional(&self.pool)
        .await?;
        match parked {
            Some(true) => tracing::warn!(
                %error, attempts = delivery.attempts,
                "outbox row parked: an operator can re-drive it"
            ),
            Some(false) => {
                tracing::info!(%error, retry_in = ?delay, "outbox call failed; retrying later")
            }
            None => tracing::info!("lease on the outbox row lost; its new holder retries it"),
        }
        Ok(())
    }
}

fn answer_columns(answer: &Answer) -> (Option<String>, Option<Vec<u8>>) {
    match answer {
        Answer::Accepted(bytes) => (None, Some(bytes.clone())),
        Answer::Refused { message, .. } => (Some(message.clone()), None),
    }
}

fn claimed_from_row(row: &PgRow) -> Result<Claimed, ServiceError> {
    let status: String = row.try_get("status")?;
    let stored_answer = if status == "answered" {
        let code: Option<i32> = row.try_get("answer_code")?;
        match code {
            Some(0) => Some(Answer::Accepted(
                row.try_get::<Option<Vec<u8>>, _>("response")?
                    .unwrap_or_default(),
            )),
            Some(code) => Some(Answer::Refused {
                code: Code::from_i32(code),
                message: row
                    .try_get::<Option<String>, _>("answer_message")?
                    .unwrap_or_default(),
            }),
            None => None,
        }
    } else {
        None
    };
    Ok(Claimed {
        delivery: Delivery {
            id: row.try_get("id")?,
            target: row.try_get("target")?,
            method: row.try_get("method")?,
            idempotency_key: row.try_get("idempotency_key")?,
            completion: row.try_get("completion")?,
            request: row.try_get("request")?,
            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(u32::MAX),
        },
        trace: StoredTrace {
            traceparent: row.try_get("traceparent")?,
            tracestate: row.try_get("tracestate")?,
        },
        stored_answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_verdicts_on_the_request_and_nothing_else() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::AlreadyExists,
            Code::OutOfRange,
        ] {
            assert!(is_refusal(code), "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::ResourceExhausted,
            Code::Cancelled,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
        ] {
            assert!(!is_refusal(code), "{code:?}");
        }
    }
}
