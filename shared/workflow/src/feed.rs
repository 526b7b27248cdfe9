//! Event feeds: domain events appended in the same transaction as the change,
//! and read in an order no reader can overtake.
//!
//! The classic bug: a `bigserial` sequence is taken when a row is inserted,
//! not when its transaction commits. A transaction holding sequence 5 that
//! commits after one holding 6 lets a reader see 6, move its cursor past it,
//! and never see 5. Here, appending stores the event with its transaction id
//! (`pg_current_xact_id()`) and no sequence. The feed's sequence is given
//! later by one numbering writer at a time (an advisory lock per feed): it
//! numbers, in transaction-id order, only events whose transaction id is below
//! `pg_snapshot_xmin(pg_current_snapshot())`, that is, whose transactions have
//! all ended. Every event numbered later belongs to a transaction that was
//! still running or had not started, so it always gets a higher number: a
//! reader that saw sequence n will still see every event above n. Sequences
//! of one feed are dense (1, 2, 3, ...).
//!
//! The cost: while any writing transaction of the cluster stays open, events
//! of transactions that started after it wait to be numbered. Keep
//! transactions short.
//!
//! [`Feed::stream`] serves a server-streaming `Stream...Events(after_sequence)`
//! RPC: the backlog, then live events, and a heartbeat on a stream that has
//! been idle for the heartbeat interval. A stream looks for live events when
//! an append commits ([`Feed::waking_on`]: the schema's listener wakes it),
//! and at the poll interval as the safety net. A committed event is not
//! always numberable at once: an older writing transaction, anywhere in
//! the cluster, may still run. A stream that finds such an event waiting
//! looks again shortly (5 ms, doubling up to the poll interval) rather than
//! at the next poll, since that older transaction's end notifies nobody.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use prost::Message;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use ta_runtime::ServiceError;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{
    Schema, Shutdown,
    config::FeedConfig,
    trace::StoredTrace,
    wait_for_shutdown,
    wake::{Wake, Wakeups},
};

/// How soon a stream looks again at events committed but not yet numberable
/// (an older transaction still runs); doubles up to the poll interval.
const SETTLE_FIRST_LOOK: std::time::Duration = std::time::Duration::from_millis(5);

/// One feed of one service, e.g. escrow's `escrow` feed.
#[derive(Clone, Debug)]
pub struct Feed {
    schema: Schema,
    name: &'static str,
    ending_on: Option<Shutdown>,
    /// What wakes its streams when an event is committed.
    wake: Wake,
    /// The streams of this feed open in this process, shared by its clones.
    open: Arc<Mutex<OpenStreams>>,
}

/// What one numbering did.
struct Numbered {
    numbered: u64,
    /// Events committed but left unnumbered: an older transaction still runs.
    waiting: bool,
}

/// Streams open now: in all, and per caller.
#[derive(Debug, Default)]
struct OpenStreams {
    total: usize,
    by_caller: HashMap<String, usize>,
}

/// One open stream, counted against the feed's limits until it is dropped
/// (with the response stream, when the client goes away or the stream ends).
#[derive(Debug)]
pub struct OpenStream {
    open: Arc<Mutex<OpenStreams>>,
    caller: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_caller.remove(&self.caller);
            }
        }
    }
}

/// An event as it is read back, numbered.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEvent {
    pub sequence: u64,
    /// What happened, e.g. `FUNDED`.
    pub kind: String,
    /// What it happened to, e.g. the escrow account's id.
    pub subject_id: String,
    /// The encoded event, as the service appended it.
    pub payload: Vec<u8>,
    /// The W3C trace context of the appending transaction.
    pub traceparent: Option<String>,
    pub occurred_at: time::OffsetDateTime,
}

/// The stream a server-streaming feed RPC returns; it holds its place among
/// the feed's open streams ([`Feed::open_stream`]) while it lives.
pub struct EventStream<R> {
    events: ReceiverStream<Result<R, Status>>,
    _open: Option<OpenStream>,
}

impl<R> EventStream<R> {
    /// The stream, counted as `open` until it is dropped.
    #[must_use]
    pub fn holding(mut self, open: OpenStream) -> Self {
        self._open = Some(open);
        self
    }
}

impl<R> tokio_stream::Stream for EventStream<R> {
    type Item = Result<R, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Feed {
    pub fn new(schema: Schema, name: &'static str) -> Self {
        Self {
            schema,
            name,
            ending_on: None,
            wake: Wake::never(),
            open: Arc::default(),
        }
    }

    /// A place among this feed's open streams for `caller` (a principal's
    /// `role:subject`): at most `WORKFLOW_FEED_MAX_STREAMS_PER_CALLER` per
    /// caller, `RESOURCE_EXHAUSTED` above it (the caller's own quota), and
    /// `WORKFLOW_FEED_MAX_STREAMS` in the process, `UNAVAILABLE` above it (retry,
    /// maybe on another replica). Streams are long-lived, so the admission
    /// limit, which counts a call only until its answer starts, cannot bound
    /// them.
    ///
    /// # Errors
    /// A limit is reached.
    pub fn open_stream(&self, caller: &str, config: &FeedConfig) -> Result<OpenStream, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.by_caller.get(caller).copied().unwrap_or(0);
        if mine >= config.max_streams_per_caller as usize {
            return Err(Status::resource_exhausted(format!(
                "{caller} already has {mine} {} event streams open, the most one caller may \
                 (WORKFLOW_FEED_MAX_STREAMS_PER_CALLER); close one first",
                self.name
            )));
        }
        if open.total >= config.max_streams as usize {
            tracing::warn!(
                feed = self.name,
                limit = config.max_streams,
                "event stream refused: the process's limit is reached"
            );
            return Err(Status::unavailable(format!(
                "this server has {} {} event streams open, its limit; retry with backoff",
                open.total, self.name
            )));
        }
        open.total += 1;
        *open.by_caller.entry(caller.to_owned()).or_default() += 1;
        Ok(OpenStream {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Ends the streams of this feed when `shutdown` trips. A feed stream
    /// never finishes by itself, so without this a draining server waits its
    /// whole grace period for them; ended early, consumers reconnect to
    /// another replica from their cursors.
    #[must_use]
    pub fn ending_on(mut self, shutdown: Shutdown) -> Self {
        self.ending_on = Some(shutdown);
        self
    }

    /// Its streams look for live events as soon as `wakeups` says an event
    /// of the schema was committed, not only at the poll interval (unless
    /// `WORKFLOW_FEED_WAKE_ON_COMMIT` is false).
    #[must_use]
    pub fn waking_on(mut self, wakeups: &Wakeups) -> Self {
        self.wake = wakeups.feed();
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Appends an event in the caller's transaction; it is numbered once that
    /// transaction (and every one older than it) has ended. The event is
    /// stored as given: a `sequence` field in it is meaningless until the
    /// stream's `to_response` sets it from [`FeedEvent::sequence`].
    pub async fn append<M: Message>(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        subject_id: &str,
        event: &M,
    ) -> Result<(), ServiceError> {
        let trace = StoredTrace::current();
        sqlx::query(AssertSqlSafe(self.schema.sql(
            "INSERT INTO {schema}.workflow_feed_events (feed, kind, subject_id, payload, traceparent)
             VALUES ($1, $2, $3, $4, $5)",
        )))
        .bind(self.name)
        .bind(kind)
        .bind(subject_id)
        .bind(event.encode_to_vec())
        .bind(trace.traceparent)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Numbers the events whose transactions have all ended; returns how many.
    pub async fn number_settled(&self, pool: &PgPool) -> Result<u64, ServiceError> {
        Ok(self.number(pool).await?.numbered)
    }

    /// Numbers the events whose transactions have all ended, and says
    /// whether committed ones are left waiting for older transactions.
    async fn number(&self, pool: &PgPool) -> Result<Numbered, ServiceError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("ta_workflow.feed:{}.{}", self.schema, self.name))
            .execute(&mut *tx)
            .await?;
        // A new statement, so its snapshot sees the previous numberer's
        // commit. An unnumbered row it sees is committed (this transaction
        // appends nothing): one not settled waits for an older transaction.
        let (numbered, waiting): (i64, i64) = sqlx::query_as(AssertSqlSafe(self.schema.sql(
            "WITH unnumbered AS (
                 SELECT id, xid FROM {schema}.workflow_feed_events
                 WHERE feed = $1 AND sequence IS NULL
             ), settled AS (
                 SELECT id, row_number() OVER (ORDER BY xid, id) AS n
                 FROM unnumbered
                 WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
             ), top AS (
                 SELECT coalesce(max(sequence), 0) AS sequence
                 FROM {schema}.workflow_feed_events WHERE feed = $1
             ), numbered AS (
                 UPDATE {schema}.workflow_feed_events e
                 SET sequence = top.sequence + settled.n
                 FROM settled, top WHERE e.id = settled.id
                 RETURNING e.id
             )
             SELECT (SELECT count(*) FROM numbered),
                    (SELECT count(*) FROM unnumbered) - (SELECT count(*) FROM settled)",
        )))
        .bind(self.name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Numbered {
            numbered: u64::try_from(numbered).unwrap_or(0),
            waiting: waiting > 0,
        })
    }

    /// Up to `limit` events after `after_sequence`, in order, numbering the
    /// settled ones first.
    pub async fn read_after(
        &self,
        pool: &PgPool,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<FeedEvent>, ServiceError> {
        Ok(self.number_and_read(pool, after_sequence, limit).await?.0)
    }

    /// As [`Feed::read_after`], and whether committed events are left
    /// unnumbered, waiting for an older transaction.
    async fn number_and_read(
        &self,
        pool: &PgPool,
        after_sequence: u64,
        limit: u32,
    ) -> Result<(Vec<FeedEvent>, bool), ServiceError> {
        let Numbered { waiting, .. } = self.number(pool).await?;
        let after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
        let rows = sqlx::query(AssertSqlSafe(self.schema.sql(
            "SELECT sequence, kind, subject_id, payload, traceparent, occurred_at
             FROM {schema}.workflow_feed_events
             WHERE feed = $1 AND sequence > $2
             ORDER BY sequence LIMIT $3",
        )))
        .bind(self.name)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(FeedEvent {
                    sequence: u64::try_from(row.try_get::<i64, _>("sequence")?).unwrap_or(0),
                    kind: row.try_get("kind")?,
                    subject_id: row.try_get("subject_id")?,
                    payload: row.try_get("payload")?,
                    traceparent: row.try_get("traceparent")?,
                    occurred_at: row.try_get("occurred_at")?,
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok((events, waiting))
    }

    /// [`Feed::stream`] of events appended as `E` (the service's event
    /// message): each is decoded and handed to `respond` with its sequence and
    /// trace context, which builds the RPC's response. A stored event that
    /// does not decode ends the stream with INTERNAL, saying no more.
    pub fn stream_events<E, R>(
        &self,
        pool: PgPool,
        after_sequence: u64,
        config: &FeedConfig,
        respond: fn(E, u64, Option<String>) -> R,
        heartbeat: fn() -> R,
    ) -> EventStream<R>
    where
        E: Message + Default + 'static,
        R: Send + 'static,
    {
        self.stream(
            pool,
            after_sequence,
            config,
            move |event| {
                let decoded = E::decode(event.payload.as_slice())
                    .map_err(|_| Status::internal("a stored event does not decode"))?;
                Ok(respond(decoded, event.sequence, event.traceparent))
            },
            heartbeat,
        )
    }

    /// The response stream of a `Stream...Events(after_sequence)` RPC: every
    /// event after `after_sequence` through `to_response`, then live ones, and
    /// `heartbeat()` after each idle heartbeat interval. It ends when the
    /// client goes away, or with UNAVAILABLE when the database fails (the
    /// consumer reconnects from its cursor).
    pub fn stream<R, F>(
        &self,
        pool: PgPool,
        after_sequence: u64,
        config: &FeedConfig,
        to_response: F,
        heartbeat: fn() -> R,
    ) -> EventStream<R>
    where
        R: Send + 'static,
        F: Fn(FeedEvent) -> Result<R, Status> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(config.batch_size as usize);
        let feed = self.clone();
        let config = config.clone();
        let mut ending = self.ending_on.clone();
        tokio::spawn(async move {
            let server_stopping = async {
                match ending.as_mut() {
                    Some(shutdown) => wait_for_shutdown(shutdown).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = feed.serve(pool, after_sequence, config, sender, to_response, heartbeat) => {}
                () = server_stopping => {}
            }
        });
        EventStream {
            events: ReceiverStream::new(receiver),
            _open: None,
        }
    }

    /// Sends the backlog, then live events and heartbeats, until the client
    /// goes away or the database fails.
    async fn serve<R, F>(
        &self,
        pool: PgPool,
        after_sequence: u64,
        config: FeedConfig,
        sender: mpsc::Sender<Result<R, Status>>,
        to_response: F,
        heartbeat: fn() -> R,
    ) where
        F: Fn(FeedEvent) -> Result<R, Status>,
    {
        let mut cursor = after_sequence;
        let mut last_sent = Instant::now();
        let mut wake = if config.wake_on_commit {
            self.wake.clone()
        } else {
            Wake::never()
        };
        let mut settle = SETTLE_FIRST_LOOK;
        loop {
            wake.mark_seen();
            let (events, waiting) = match self
                .number_and_read(&pool, cursor, config.batch_size)
                .await
            {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, feed = self.name, "event stream ended: database failed");
                    let unavailable = Status::unavailable("event feed temporarily unavailable");
                    let _ = sender.send(Err(unavailable)).await;
                    return;
                }
            };
            let full = events.len() == config.batch_size as usize;
            for event in events {
                cursor = event.sequence;
                if sender.send(to_response(event)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            if full {
                continue;
            }
            let next_look = if waiting {
                let look = settle.min(config.poll_interval);
                settle = settle.saturating_mul(2);
                look
            } else {
                settle = SETTLE_FIRST_LOOK;
                config.poll_interval
            };
            let heartbeat_due = last_sent + config.heartbeat_interval;
            tokio::select! {
                () = tokio::time::sleep_until((Instant::now() + next_look).min(heartbeat_due)) => {}
                () = wake.woken() => {}
                () = sender.closed() => return,
            }
            if Instant::now() >= heartbeat_due {
                if sender.send(Ok(heartbeat())).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
        }
    }
}
