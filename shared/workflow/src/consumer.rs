//! Consuming another service's event feed with a durable cursor.
//!
//! The cursor (`<schema>.workflow_feed_cursors`, one row per feed) advances in
//! the same transaction as the event's effect, under the cursor row's lock:
//! after a crash the consumer resumes right after the last event whose effect
//! committed, so there is no gap and no effect twice. Two replicas consuming
//! one feed both receive every event, but the second to take the lock finds
//! the cursor already past it and skips it.
//!
//! A handler that fails stops the feed there (events are never skipped): the
//! consumer reconnects with backoff and the event comes again.

use std::{marker::PhantomData, sync::Arc};

use prost::Message;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use ta_runtime::ServiceError;
use tonic::codegen::http::uri::PathAndQuery;
use tracing::Instrument;

use crate::{
    Schema, Shutdown, config::ConsumerConfig, credentials::ServiceCredentials, peers::Peers,
    retry::backoff, trace::StoredTrace, wait_for_shutdown,
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
/// advances the cursor.
pub trait EventHandler<R>: Send + Sync + 'static {
    /// # Errors
    /// Anything: nothing commits and the event is delivered again.
    fn apply(
        &self,
        tx: &mut PgConnection,
        sequence: u64,
        event: &R,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;
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

    /// Connects, applies events, and reconnects with capped exponential
    /// backoff whenever the stream ends, until `shutdown`.
    pub async fn run(self, mut shutdown: Shutdown) {
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
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.config.idle_timeout, stream.message()) => next,
                () = wait_for_shutdown(shutdown) => return Ended::Cleanly { applied },
            };
            let response = match next {
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => return Ended::Cleanly { applied },
                Ok(Err(status)) => {
                    return failed(
                        applied,
                        format!("{:?}: {}", status.code(), status.message()),
                    );
                }
                Err(_) => {
                    return failed(
                        applied,
                        format!("no event or heartbeat for {:?}", self.config.idle_timeout),
                    );
                }
            };
            let Some(item) = (self.subscription.item)(&response) else {
                continue;
            };
            match self.apply(&item, &response).await {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(error) => {
                    return failed(
                        applied,
                        format!("event {} not applied: {error}", item.sequence),
                    );
                }
            }
        }
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

    /// Applies one event and advances the cursor in one transaction; `false`
    /// when the cursor was already past it (a replay, or another replica).
    async fn apply(&self, item: &FeedItem, event: &R) -> Result<bool, ServiceError> {
        let span = tracing::info_span!(
            "workflow.feed.apply",
            otel.name = %format!("apply {} event", self.subscription.cursor),
            otel.kind = "consumer",
            feed = self.subscription.cursor,
            feed.sequence = item.sequence,
        );
        StoredTrace {
            traceparent: item.traceparent.clone().filter(|t| !t.is_empty()),
            tracestate: None,
        }
        .parent(&span);
        async {
            let sequence = i64::try_from(item.sequence).map_err(|_| {
                ServiceError::internal(format!("sequence {} out of range", item.sequence))
            })?;
            let mut tx = self.pool.begin().await?;
            sqlx::query(AssertSqlSafe(self.schema.sql(
                "INSERT INTO {schema}.workflow_feed_cursors (feed, last_sequence) VALUES ($1, 0)
                 ON CONFLICT (feed) DO NOTHING",
            )))
            .bind(self.subscription.cursor)
            .execute(&mut *tx)
            .await?;
            let last: i64 = sqlx::query_scalar(AssertSqlSafe(self.schema.sql(
                "SELECT last_sequence FROM {schema}.workflow_feed_cursors WHERE feed = $1 FOR UPDATE",
            )))
            .bind(self.subscription.cursor)
            .fetch_one(&mut *tx)
            .await?;
            if sequence <= last {
                return Ok(false);
            }
            if sequence != last + 1 {
                // Our feeds are dense; a jump means the producer lost events.
                tracing::warn!(last, sequence, "feed sequence jumped");
            }
            self.handler.apply(&mut tx, item.sequence, event).await?;
            sqlx::query(AssertSqlSafe(self.schema.sql(
                "UPDATE {schema}.workflow_feed_cursors SET last_sequence = $2, updated_at = now()
                 WHERE feed = $1",
            )))
            .bind(self.subscription.cursor)
            .bind(sequence)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .instrument(span)
        .await
    }
}
