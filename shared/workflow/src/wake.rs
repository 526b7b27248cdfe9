//! Waking the workers when what they wait for is committed, instead of
//! leaving them to their next poll.
//!
//! Triggers on the outbox and the feed events (`sql/0003_wakeups.sql`)
//! `pg_notify` the schema's channel, with `outbox` or `feed` as the payload,
//! once per writing statement. Postgres delivers a notification when, and
//! only when, the writing transaction commits, and it rides on the writer's
//! own COMMIT: no round trip is added to the money path.
//!
//! One [`Wakeups`] per process and schema holds one listening connection of
//! its own ([`Wakeups::listen`], a worker) and fans each notification out to
//! every waiter of its kind through a [`Wake`] (a `watch` channel: many
//! notifications arriving while a waiter is busy make one wake-up). Every
//! waiter keeps its poll interval as the safety net, so a lost listener costs
//! latency, not correctness: while it is disconnected the waiters poll, it
//! reconnects with capped exponential backoff, and once listening again it
//! wakes every waiter once, since notifications sent meanwhile are lost.

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::watch;

use crate::{Schema, Shutdown, backoff::backoff, wait_for_shutdown};

/// Delay before the listener's first reconnection; doubles up to the cap.
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// The wake-ups of one schema's workers, and the listener that sends them.
/// Clones share them.
#[derive(Clone, Debug)]
pub struct Wakeups {
    schema: Schema,
    outbox: watch::Sender<()>,
    feed: watch::Sender<()>,
}

/// What one waiter waits on besides its poll interval: a committed row of
/// the table it reads. [`Wake::never`] leaves the waiter to its polling.
#[derive(Clone, Debug, Default)]
pub struct Wake(Option<watch::Receiver<()>>);

impl Wake {
    /// No wake-ups: the waiter polls only.
    pub fn never() -> Self {
        Self(None)
    }

    /// Forgets the wake-ups so far. A waiter calls it before it looks for
    /// work, so a row committed while it looks wakes it again at once.
    pub(crate) fn mark_seen(&mut self) {
        if let Some(receiver) = &mut self.0 {
            receiver.borrow_and_update();
        }
    }

    /// Resolves at the next wake-up (at once if one came since
    /// [`Wake::mark_seen`]); never, once the [`Wakeups`] are gone.
    pub(crate) async fn woken(&mut self) {
        if let Some(receiver) = &mut self.0
            && receiver.changed().await.is_ok()
        {
            return;
        }
        // Nobody can wake us any more: polling alone from now on.
        self.0 = None;
        std::future::pending().await
    }
}

impl Wakeups {
    pub fn new(schema: Schema) -> Self {
        Self {
            schema,
            outbox: watch::Sender::new(()),
            feed: watch::Sender::new(()),
        }
    }

    /// Woken when an outbox row is written, or re-driven, in this schema.
    pub fn outbox(&self) -> Wake {
        Wake(Some(self.outbox.subscribe()))
    }

    /// Woken when a feed event of this schema is committed.
    pub fn feed(&self) -> Wake {
        Wake(Some(self.feed.subscribe()))
    }

    fn wake_all(&self) {
        self.outbox.send_replace(());
        self.feed.send_replace(());
    }

    /// Listens on the schema's channel until `shutdown`, waking the waiters
    /// (a worker, e.g. for [`crate::Workers::with`]). It holds a connection
    /// of its own, opened with `pool`'s options: taken from the pool, it
    /// would hold one of the requests' places for good.
    pub async fn listen(self, pool: PgPool, mut shutdown: Shutdown) {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut failures = 0;
        loop {
            let connected = tokio::select! {
                connected = self.connect(&own) => connected,
                () = wait_for_shutdown(&mut shutdown) => return,
            };
            match connected {
                Ok(listener) => {
                    failures = 0;
                    tracing::info!(schema = %self.schema, "listening for committed workflow rows");
                    // Rows committed before the LISTEN, or while a previous
                    // connection was down, sent nobody a notification.
                    self.wake_all();
                    let lost = tokio::select! {
                        lost = self.fan_out(listener) => lost,
                        () = wait_for_shutdown(&mut shutdown) => return,
                    };
                    tracing::warn!(
                        error = %lost, schema = %self.schema,
                        "workflow listener lost; the workers poll until it is back"
                    );
                }
                Err(error) => tracing::warn!(
                    %error, schema = %self.schema,
                    "workflow listener cannot connect; the workers poll until it can"
                ),
            }
            if pool.is_closed() {
                return;
            }
            failures += 1;
            let pause = backoff(failures, RECONNECT_BASE, RECONNECT_CAP);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wait_for_shutdown(&mut shutdown) => return,
            }
        }
    }

    async fn connect(&self, own: &PgPool) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(own).await?;
        listener.listen(self.schema.name()).await?;
        Ok(listener)
    }

    /// Wakes the waiters of each notification until the connection fails
    /// for good; returns why.
    async fn fan_out(&self, mut listener: PgListener) -> sqlx::Error {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => match notification.payload() {
                    "outbox" => {
                        self.outbox.send_replace(());
                    }
                    "feed" => {
                        self.feed.send_replace(());
                    }
                    _ => self.wake_all(),
                },
                // The connection dropped and the listener opened another one
                // and listens again: what was sent in between is lost.
                Ok(None) => {
                    tracing::info!(schema = %self.schema, "workflow listener reconnected");
                    self.wake_all();
                }
                Err(error) => return error,
            }
        }
    }
}
