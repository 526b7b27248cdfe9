//! Consuming another service's event feed with a durable cursor.
//!
//! The cursor (`<schema>.workflow_feed_cursors`, one row per feed) advances in
//! the same transaction as the event's effect, under the cursor row's lock:
//! after a crash the consumer resumes right after the last event whose effect
//! committed, so there is no gap and no effect twice. Two replicas consuming
//! one feed both receive every event, but the second to take the lock finds
//! the cursor already past it and skips it.
//!
//! One bad event does not stop the feed. A handler that fails for a reason
//! of the platform (the database unavailable, a lost race, a deadline) leaves
//! the event where it is: the consumer reconnects with backoff and it comes
//! again. Any other failure is the event's own: each is counted
//! (`<schema>.workflow_feed_parked`, status `failing`), and once an event
//! failed `WORKFLOW_CONSUMER_MAX_ATTEMPTS` times it is *parked* with its
//! last error, in the transaction that moves the cursor past it, and the
//! events behind it are applied. A handler may also park an event at once
//! ([`Handled::Escalate`]: the service cannot act on it alone); its own
//! changes commit with it. Parked events are listed and re-driven through
//! the workflow admin RPCs: a re-driven event is applied again by the
//! consumer (from the event as received, out of the feed's order, so
//! reactions check the state they act on), and parked again if it still
//! fails.
//!
//! Events are applied in batches: what the stream has already delivered
//! (up to `WORKFLOW_CONSUMER_BATCH_SIZE`) is applied in one transaction that
//! locks the cursor once and moves it once, so an event the handler ignores
//! costs no transaction of its own. If any event of a batch fails, nothing of
//! the batch commits and its events are applied again one at a time, each in
//! a transaction of its own, so a failing event is counted (and parked) as
//! it would be alone and the others are not lost.
//!
//! A gap (an event whose sequence is not the cursor's next) is not a state
//! that waiting resolves: the producer numbers events densely, once their
//! transaction and every older one ended (see [`crate::feed`]), and never
//! renumbers or deletes them, so a missing sequence was lost on the
//! producer's side (a restored backup, a deleted row). The consumer records
//! the missing range as a parked gap for an operator (there is nothing to
//! re-drive: re-driving acknowledges it) and applies what follows, rather
//! than stopping every later event behind events that will never come.

use std::{marker::PhantomData, sync::Arc, time::Duration};

use futures_util::FutureExt;
use prost::Message;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row, postgres::PgRow};
use ta_runtime::ServiceError;
use tonic::codegen::http::uri::PathAndQuery;
use tracing::Instrument;

use crate::{
    Handled, Schema, Shutdown, backoff::backoff, config::ConsumerConfig,
    credentials::ServiceCredentials, peers::Peers, trace::StoredTrace, wait_for_shutdown,
};

/// What a feed response carries, for the consumer: `None` for a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedItem {
    pub sequence: u64,
    /// The producer's trace context for the event, when the feed carries it.
    pub traceparent: Option<String>,
}

/// Which feed to consume and how to talk to it.
pub struct Subscription<Q, R> {
    /// The cursor's name in this service's schema, e.g. `escrow`.
    pub cursor: &'static str,
    /// The producing service (peer name and token audience), e.g. `escrow`.
    pub producer: &'static str,
    /// `/tradeassurance.escrow.v1.EscrowService/StreamEscrowEvents`.
    pub method: &'static str,
    /// The request opening the stream after a sequence.
    pub request: fn(u64) -> Q,
    /// The event's sequence (and trace), or `None` for a heartbeat.
    pub item: fn(&R) -> Option<FeedItem>,
}

/// The consuming service's effect of one event, in the transaction that
/// advances the cursor (or applies a re-driven event).
pub trait EventHandler<R>: Send + Sync + 'static {
    /// `Escalate` parks the event for an operator, with the handler's
    /// changes (see the module docs).
    ///
    /// # Errors
    /// Anything: nothing commits. A platform failure (`Unavailable`,
    /// `Aborted`, `DeadlineExceeded`) delivers the event again; any other
    /// counts against the event, which is parked after its attempts.
    fn apply(
        &self,
        tx: &mut PgConnection,
        sequence: u64,
        event: &R,
    ) -> impl Future<Output = Result<Handled, ServiceError>> + Send;
}

/// Where this service stands in a feed.
pub async fn cursor(pool: &PgPool, schema: Schema, feed: &str) -> Result<u64, ServiceError> {
    let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(
        schema.sql("SELECT last_sequence FROM {schema}.workflow_feed_cursors WHERE feed = $1"),
    ))
    .bind(feed)
    .fetch_optional(pool)
    .await?;
    Ok(last.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// Whether a handler's failure says the platform, not the event, is at fault.
fn transient(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Unavailable(_) | ServiceError::Aborted(_) | ServiceError::DeadlineExceeded
    )
}

/// Why one connection to the feed ended.
enum Ended {
    /// The producer closed the stream, or we are shutting down.
    Cleanly {
        applied: u64,
    },
    Failed {
        applied: u64,
        error: String,
    },
}

/// Consumes one feed until shut down.
pub struct Consumer<Q, R, H> {
    pool: PgPool,
    schema: Schema,
    subscription: Subscription<Q, R>,
    peers: Peers,
    credentials: Arc<ServiceCredentials>,
    handler: Arc<H>,
    config: ConsumerConfig,
    _types: PhantomData<fn(Q) -> R>,
}

impl<Q, R, H> Consumer<Q, R, H>
where
    Q: Message + Default + Send + Sync + 'static,
    R: Message + Default + Send + Sync + 'static,
    H: EventHandler<R>,
{
    pub fn new(
        pool: PgPool,
        schema: Schema,
        subscription: Subscription<Q, R>,
        peers: Peers,
        credentials: Arc<ServiceCredentials>,
        handler: Arc<H>,
        config: ConsumerConfig,
    ) -> Self {
        Self {
            pool,
            schema,
            subscription,
            peers,
            credentials,
            handler,
            config,
            _types: PhantomData,
        }
    }

    /// Follows the feed (connects, applies events, reconnects with capped
    /// exponential backoff whenever the stream ends) and applies the events
    /// operators re-drive, until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        tokio::join!(self.follow(shutdown.clone()), self.redrive_loop(shutdown));
    }

    async fn follow(&self, mut shutdown: Shutdown) {
        let mut failures = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let ended = self.consume(&mut shutdown).await;
            let applied = match &ended {
                Ended::Cleanly { applied } | Ended::Failed { applied, .. } => *applied,
            };
            if applied > 0 {
                failures = 0;
            }
            if let Ended::Failed { error, .. } = &ended {
                failures += 1;
                tracing::warn!(%error, feed = self.subscription.cursor, "feed connection failed");
            }
            let pause = backoff(
                failures.max(1),
                self.config.reconnect_base,
                self.config.reconnect_cap,
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wait_for_shutdown(&mut shutdown) => return,
            }
        }
    }

    async fn consume(&self, shutdown: &mut Shutdown) -> Ended {
        let mut applied = 0;
        let failed = |applied, error: String| Ended::Failed { applied, error };
        let after = match cursor(&self.pool, self.schema, self.subscription.cursor).await {
            Ok(after) => after,
            Err(error) => return failed(0, format!("cannot read the cursor: {error}")),
        };
        let mut stream = match self.open(after).await {
            Ok(stream) => stream,
            Err(error) => return failed(0, error),
        };
        tracing::info!(feed = self.subscription.cursor, after, "feed connected");
        let most = self.config.batch_size.max(1) as usize;
        let mut batch = Vec::with_capacity(most);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.config.idle_timeout, stream.message()) => next,
                () = wait_for_shutdown(shutdown) => return Ended::Cleanly { applied },
            };
            // How the stream ended, once it did: `Some(None)` closed by the
            // producer, `Some(Some(error))` failed.
            let mut ended: Option<Option<String>> = match next {
                Ok(Ok(Some(response))) => {
                    self.add(&mut batch, response);
                    None
                }
                Ok(Ok(None)) => Some(None),
                Ok(Err(status)) => Some(Some(format!("{:?}: {}", status.code(), status.message()))),
                Err(_) => Some(Some(format!(
                    "no event or heartbeat for {:?}",
                    self.config.idle_timeout
                ))),
            };
            // What has already arrived joins the batch; nothing is waited for.
            while ended.is_none() && batch.len() < most {
                match stream.message().now_or_never() {
                    None => break,
                    Some(Ok(Some(response))) => self.add(&mut batch, response),
                    Some(Ok(None)) => ended = Some(None),
                    Some(Err(status)) => {
                        ended = Some(Some(format!("{:?}: {}", status.code(), status.message())));
                    }
                }
            }
            // Events received before the stream ended are applied first.
            let (moved, stopped) = self.apply_all(std::mem::take(&mut batch)).await;
            applied += moved;
            if let Some(error) = stopped {
                return failed(applied, error);
            }
            match ended {
                None => {}
                Some(None) => return Ended::Cleanly { applied },
                Some(Some(error)) => return failed(applied, error),
            }
        }
    }

    /// Adds an event to `batch`; a heartbeat adds nothing.
    fn add(&self, batch: &mut Vec<(FeedItem, R)>, response: R) {
        if let Some(item) = (self.subscription.item)(&response) {
            batch.push((item, response));
        }
    }

    /// Applies `batch` in one transaction or, if that fails, one event at a
    /// time; returns how many events moved the cursor and, when the consumer
    /// must reconnect and receive the rest again, why.
    async fn apply_all(&self, batch: Vec<(FeedItem, R)>) -> (u64, Option<String>) {
        if batch.is_empty() {
            return (0, None);
        }
        if batch.len() > 1 {
            match self.apply(&batch).await {
                Ok(moved) => return (moved, None),
                Err(error) => tracing::info!(
                    %error, events = batch.len(), feed = self.subscription.cursor,
                    "a batch of feed events failed; applying them one at a time"
                ),
            }
        }
        let mut moved = 0;
        for event in batch.chunks(1) {
            let (item, response) = &event[0];
            match self.apply(event).await {
                Ok(n) => moved += n,
                Err(error) if transient(&error) => {
                    return (
                        moved,
                        Some(format!("event {} not applied: {error}", item.sequence)),
                    );
                }
                Err(error) => match self.count_failure(item, response, &error).await {
                    // Parked: the cursor moved past it; on with the next.
                    Ok(true) => moved += 1,
                    Ok(false) => {
                        return (
                            moved,
                            Some(format!("event {} not applied: {error}", item.sequence)),
                        );
                    }
                    Err(counting) => {
                        return (
                            moved,
                            Some(format!(
                                "event {} not applied: {error}; its failure not counted: {counting}",
                                item.sequence
                            )),
                        );
                    }
                },
            }
        }
        (moved, None)
    }

    async fn open(&self, after: u64) -> Result<tonic::Streaming<R>, String> {
        let producer = self.subscription.producer;
        let channel = self
            .peers
            .channel(producer)
            .ok_or_else(|| format!("no address configured for service `{producer}`"))?;
        let bearer = self
            .credentials
            .bearer(producer)
            .map_err(|e| e.to_string())?;
        let path = PathAndQuery::try_from(self.subscription.method)
            .map_err(|e| format!("malformed method path: {e}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| format!("UNAVAILABLE: {e}"))?;
        let mut request = tonic::Request::new((self.subscription.request)(after));
        request.metadata_mut().insert("authorization", bearer);
        ta_runtime::telemetry::inject_trace_context(request.metadata_mut());
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        grpc.server_streaming(request, path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }

    fn span(&self, item: &FeedItem, what: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "workflow.feed.apply",
            otel.name = %format!("{what} {} event", self.subscription.cursor),
            otel.kind = "consumer",
            feed = self.subscription.cursor,
            feed.sequence = item.sequence,
        );
        StoredTrace {
            traceparent: item.traceparent.clone().filter(|t| !t.is_empty()),
            tracestate: None,
        }
        .parent(&span);
        span
    }

    /// Locks the cursor (creating it at 0) and returns where it stands.
    async fn lock_cursor(&self, tx: &mut PgConnection) -> Result<i64, ServiceError> {
        let feed = self.subscription.cursor;
        let select = self.schema.sql(
            "SELECT last_sequence FROM {schema}.workflow_feed_cursors WHERE feed = $1 FOR UPDATE",
        );
        let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(select.clone()))
            .bind(feed)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(last) = last {
            return Ok(last);
        }
        sqlx::query(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_feed_cursors (feed, last_sequence) VALUES ($1, 0)
             ON CONFLICT (feed) DO NOTHING",
        )))
        .bind(feed)
        .execute(&mut *tx)
        .await?;
        Ok(sqlx::query_scalar(AssertSqlSafe(select))
            .bind(feed)
            .fetch_one(&mut *tx)
            .await?)
    }

    /// Records the sequences between the cursor `last` and `sequence` as a
    /// gap for an operator, if there are any.
    async fn record_gap(
        &self,
        tx: &mut PgConnection,
        last: i64,
        sequence: i64,
    ) -> Result<(), ServiceError> {
        if sequence == last + 1 {
            return Ok(());
        }
        let feed = self.subscription.cursor;
        let (first, missing) = (last + 1, sequence - 1);
        tracing::error!(
            feed,
            first,
            missing,
            "feed sequence jumped: the producer lost events; recorded for an operator"
        );
        sqlx::query(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_feed_parked
                 (feed, sequence, kind, payload, status, last_sequence, last_error, parked_at)
             VALUES ($1, $2, 'gap', ''::bytea, 'parked', $3, $4, now())
             ON CONFLICT (feed, sequence) DO NOTHING",
        )))
        .bind(feed)
        .bind(first)
        .bind(missing)
        .bind(format!(
            "sequences {first}..={missing} never arrived: the producer's feed is dense and \
             never renumbers, so they were lost on its side; the events after them were applied"
        ))
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Moves the locked cursor to `sequence`, and marks the events of
    /// `done` that failed before and now went through as applied: one
    /// statement.
    async fn move_cursor(
        &self,
        tx: &mut PgConnection,
        sequence: i64,
        done: &[i64],
    ) -> Result<(), ServiceError> {
        sqlx::query(AssertSqlSafe(self.schema.sql(
            "WITH moved AS (
                 UPDATE {schema}.workflow_feed_cursors SET last_sequence = $2, updated_at = now()
                 WHERE feed = $1
             )
             UPDATE {schema}.workflow_feed_parked SET status = 'applied', applied_at = now()
             WHERE feed = $1 AND status = 'failing' AND sequence = ANY($3)",
        )))
        .bind(self.subscription.cursor)
        .bind(sequence)
        .bind(done)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Locks the cursor and moves it to `sequence`, recording a gap before
    /// it; `false` when the cursor was already at or past it.
    async fn advance_to(&self, tx: &mut PgConnection, sequence: i64) -> Result<bool, ServiceError> {
        let last = self.lock_cursor(tx).await?;
        if sequence <= last {
            return Ok(false);
        }
        self.record_gap(tx, last, sequence).await?;
        self.move_cursor(tx, sequence, &[]).await?;
        Ok(true)
    }

    /// Applies `events` (in feed order) and moves the cursor past them in one
    /// transaction; returns how many moved it (those at or below the cursor
    /// are replays, or another replica's, and are skipped). Any failure
    /// commits nothing.
    async fn apply(&self, events: &[(FeedItem, R)]) -> Result<u64, ServiceError> {
        let mut tx = self.pool.begin().await?;
        let mut last = self.lock_cursor(&mut tx).await?;
        let mut done = Vec::with_capacity(events.len());
        let mut escalated = Vec::new();
        for (item, event) in events {
            let sequence = i64::try_from(item.sequence).map_err(|_| {
                ServiceError::internal(format!("sequence {} out of range", item.sequence))
            })?;
            if sequence <= last {
                continue;
            }
            self.record_gap(&mut tx, last, sequence).await?;
            let handled = self
                .handler
                .apply(&mut tx, item.sequence, event)
                .instrument(self.span(item, "apply"))
                .await?;
            match handled {
                Handled::Done => done.push(sequence),
                Handled::Escalate(reason) => {
                    sqlx::query(AssertSqlSafe(self.schema.sql(
                        "INSERT INTO {schema}.workflow_feed_parked
                             (feed, sequence, payload, traceparent, status, last_error, parked_at)
                         VALUES ($1, $2, $3, $4, 'parked', $5, now())
                         ON CONFLICT (feed, sequence) DO UPDATE
                         SET status = 'parked', last_error = $5, parked_at = now()",
                    )))
                    .bind(self.subscription.cursor)
                    .bind(sequence)
                    .bind(event.encode_to_vec())
                    .bind(&item.traceparent)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await?;
                    escalated.push((item.sequence, reason));
                }
            }
            last = sequence;
        }
        let moved = done.len() + escalated.len();
        if moved == 0 {
            return Ok(0);
        }
        self.move_cursor(&mut tx, last, &done).await?;
        tx.commit().await?;
        for (sequence, reason) in escalated {
            tracing::warn!(
                sequence,
                reason,
                "feed event escalated to the operators' queue: an operator can re-drive it"
            );
        }
        Ok(u64::try_from(moved).unwrap_or(u64::MAX))
    }

    /// Counts a failed application of `event`; once it used its attempts,
    /// parks it and moves the cursor past it (`true`: go on with the next).
    async fn count_failure(
        &self,
        item: &FeedItem,
        event: &R,
        error: &ServiceError,
    ) -> Result<bool, ServiceError> {
        let sequence = i64::try_from(item.sequence)
            .map_err(|_| ServiceError::internal("sequence out of range"))?;
        let mut tx = self.pool.begin().await?;
        let attempts: i32 = sqlx::query_scalar(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_feed_parked
                 (feed, sequence, payload, traceparent, status, attempts, last_error)
             VALUES ($1, $2, $3, $4, 'failing', 1, $5)
             ON CONFLICT (feed, sequence) DO UPDATE
             SET attempts = workflow_feed_parked.attempts + 1, last_error = $5,
                 payload = $3, status = 'failing'
             RETURNING attempts",
        )))
        .bind(self.subscription.cursor)
        .bind(sequence)
        .bind(event.encode_to_vec())
        .bind(&item.traceparent)
        .bind(error.to_string())
        .fetch_one(&mut *tx)
        .await?;
        if u32::try_from(attempts).unwrap_or(0) < self.config.max_attempts {
            tx.commit().await?;
            tracing::warn!(%error, attempts, sequence, "feed event failed; it comes again");
            return Ok(false);
        }
        if self.advance_to(&mut tx, sequence).await? {
            sqlx::query(AssertSqlSafe(self.schema.sql(
                "UPDATE {schema}.workflow_feed_parked SET status = 'parked', parked_at = now()
                 WHERE feed = $1 AND sequence = $2",
            )))
            .bind(self.subscription.cursor)
            .bind(sequence)
            .execute(&mut *tx)
            .await?;
            tracing::error!(
                %error, attempts, sequence, feed = self.subscription.cursor,
                "feed event parked after its attempts; the feed goes on: an operator can re-drive it"
            );
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies re-driven events until `shutdown`.
    async fn redrive_loop(&self, mut shutdown: Shutdown) {
        loop {
            let pause = match self.apply_redriven().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => self.config.redrive_poll_interval,
                Err(error) => {
                    tracing::warn!(%error, "re-driven feed events not applied");
                    self.config.redrive_poll_interval
                }
            };
            if *shutdown.borrow() {
                return;
            }
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = wait_for_shutdown(&mut shutdown) => return,
                }
            }
        }
    }

    /// Applies one re-driven event that is due; `false` when none was.
    async fn apply_redriven(&self) -> Result<bool, ServiceError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(AssertSqlSafe(self.schema.sql(
            "SELECT id, sequence, payload, traceparent, attempts
             FROM {schema}.workflow_feed_parked
             WHERE feed = $1 AND status = 'redriven' AND next_attempt_at <= now()
             ORDER BY next_attempt_at, id LIMIT 1
             FOR UPDATE SKIP LOCKED",
        )))
        .bind(self.subscription.cursor)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let id: i64 = row.try_get("id")?;
        let attempts: i32 = row.try_get("attempts")?;
        let item = FeedItem {
            sequence: u64::try_from(row.try_get::<i64, _>("sequence")?).unwrap_or(0),
            traceparent: row.try_get("traceparent")?,
        };
        let payload: Vec<u8> = row.try_get("payload")?;
        let outcome = async {
            let event = R::decode(payload.as_slice()).map_err(|e| {
                ServiceError::internal(format!("parked event {id} does not decode: {e}"))
            })?;
            self.handler.apply(&mut tx, item.sequence, &event).await
        }
        .instrument(self.span(&item, "re-drive"))
        .await;
        match outcome {
            Ok(handled) => {
                let (status, error) = match &handled {
                    Handled::Done => ("applied", None),
                    Handled::Escalate(reason) => ("parked", Some(reason.clone())),
                };
                sqlx::query(AssertSqlSafe(self.schema.sql(
                    "UPDATE {schema}.workflow_feed_parked
                     SET status = $2, last_error = coalesce($3, last_error),
                         parked_at = CASE WHEN $2 = 'parked' THEN now() ELSE parked_at END,
                         applied_at = CASE WHEN $2 = 'applied' THEN now() END
                     WHERE id = $1",
                )))
                .bind(id)
                .bind(status)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(
                    sequence = item.sequence,
                    status,
                    "re-driven feed event handled"
                );
            }
            Err(error) => {
                let _ = tx.rollback().await;
                let counted = !transient(&error);
                let attempts = attempts + i32::from(counted);
                let park =
                    counted && u32::try_from(attempts).unwrap_or(0) >= self.config.max_attempts;
                let delay = backoff(
                    u32::try_from(attempts).unwrap_or(1).max(1),
                    self.config.reconnect_base,
                    self.config.reconnect_cap,
                );
                sqlx::query(AssertSqlSafe(self.schema.sql(
                    "UPDATE {schema}.workflow_feed_parked
                     SET attempts = $2, last_error = $3,
                         status = CASE WHEN $4 THEN 'parked' ELSE status END,
                         parked_at = CASE WHEN $4 THEN now() ELSE parked_at END,
                         next_attempt_at = now() + make_interval(secs => $5)
                     WHERE id = $1 AND status = 'redriven'",
                )))
                .bind(id)
                .bind(attempts)
                .bind(error.to_string())
                .bind(park)
                .bind(delay.as_secs_f64())
                .execute(&self.pool)
                .await?;
                tracing::warn!(%error, sequence = item.sequence, parked = park, "re-driven feed event failed");
            }
        }
        Ok(true)
    }
}

/// A parked feed event as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEventView {
    pub id: i64,
    pub feed: String,
    pub sequence: u64,
    pub gap: bool,
    pub last_sequence: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub first_failed_at: time::OffsetDateTime,
    pub parked_at: Option<time::OffsetDateTime>,
}

impl ParkedEventView {
    fn from_row(row: &PgRow) -> Result<Self, ServiceError> {
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Self {
            id: row.try_get("id")?,
            feed: row.try_get("feed")?,
            sequence: unsigned(row.try_get("sequence")?),
            gap: row.try_get::<String, _>("kind")? == "gap",
            last_sequence: row
                .try_get::<Option<i64>, _>("last_sequence")?
                .map(unsigned),
            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            last_error: row.try_get("last_error")?,
            first_failed_at: row.try_get("first_failed_at")?,
            parked_at: row.try_get("parked_at")?,
        })
    }
}

const PARKED_COLUMNS: &str =
    "id, feed, sequence, kind, last_sequence, attempts, last_error, first_failed_at, parked_at";

/// The parked feed events of one service's schema, for operators.
#[derive(Clone, Copy, Debug)]
pub struct ParkedEvents {
    schema: Schema,
}

impl ParkedEvents {
    pub fn new(schema: Schema) -> Self {
        Self { schema }
    }

    /// Parked events and gaps, oldest first, after id `after_id`.
    pub async fn list(
        &self,
        pool: &PgPool,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<ParkedEventView>, ServiceError> {
        let rows = sqlx::query(AssertSqlSafe(self.schema.sql(&format!(
            "SELECT {PARKED_COLUMNS} FROM {{schema}}.workflow_feed_parked
             WHERE status = 'parked' AND id > $1 ORDER BY id LIMIT $2"
        ))))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter().map(ParkedEventView::from_row).collect()
    }

    /// Hands the parked event `id` back to its consumer, due now, with a
    /// fresh attempt budget; a gap is acknowledged (there is nothing to apply).
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` when it is not parked.
    pub async fn redrive(
        &self,
        tx: &mut PgConnection,
        id: i64,
    ) -> Result<ParkedEventView, ServiceError> {
        let row = sqlx::query(AssertSqlSafe(self.schema.sql(&format!(
            "UPDATE {{schema}}.workflow_feed_parked
             SET status = CASE WHEN kind = 'gap' THEN 'applied' ELSE 'redriven' END,
                 applied_at = CASE WHEN kind = 'gap' THEN now() END,
                 attempts = 0, next_attempt_at = now()
             WHERE id = $1 AND status = 'parked'
             RETURNING {PARKED_COLUMNS}"
        ))))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            return ParkedEventView::from_row(&row);
        }
        let status: Option<String> = sqlx::query_scalar(AssertSqlSafe(
            self.schema
                .sql("SELECT status FROM {schema}.workflow_feed_parked WHERE id = $1"),
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match status {
            None => Err(ServiceError::not_found("parked feed event", id)),
            Some(status) => Err(ServiceError::FailedPrecondition(format!(
                "feed event {id} is {status}, not parked"
            ))),
        }
    }

    /// How many events (and gaps) are parked.
    pub async fn count(&self, pool: &PgPool) -> Result<u64, ServiceError> {
        let parked: i64 = sqlx::query_scalar(AssertSqlSafe(
            self.schema
                .sql("SELECT count(*) FROM {schema}.workflow_feed_parked WHERE status = 'parked'"),
        ))
        .fetch_one(pool)
        .await?;
        Ok(u64::try_from(parked).unwrap_or(0))
    }
}
