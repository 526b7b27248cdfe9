//! Keeps the workflow tables from growing without bound: completed outbox
//! rows and finished timers are purged once older than `WORKFLOW_RETENTION`.
//! Feed events are never purged here: a consumer may be far behind, and a
//! feed is the producer's history.
//!
//! A purged outbox row no longer deduplicates a second write of the same
//! call; services write each call once, from the state change that causes
//! it, so the retention only has to outlast operators' interest.

use std::time::Duration;

use sqlx::PgPool;

use crate::{Schema, Shutdown, outbox::Outbox, timers::Timers, wait_for_shutdown};

/// How often the janitor purges. Replicas may overlap: the deletes are
/// harmless to repeat.
const EVERY: Duration = Duration::from_secs(3_600);

pub struct Janitor {
    pool: PgPool,
    outbox: Outbox,
    timers: Timers,
    retention: Duration,
}

impl Janitor {
    pub fn new(pool: PgPool, schema: Schema, retention: Duration) -> Self {
        Self {
            pool,
            outbox: Outbox::new(schema),
            timers: Timers::new(schema),
            retention,
        }
    }

    /// Purges once now; returns (outbox rows, timers) purged.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self) -> Result<(u64, u64), ta_runtime::ServiceError> {
        let rows = self
            .outbox
            .purge_completed(&self.pool, self.retention)
            .await?;
        let timers = self
            .timers
            .purge_finished(&self.pool, self.retention)
            .await?;
        Ok((rows, timers))
    }

    /// Purges every hour until `shutdown`.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut every = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = wait_for_shutdown(&mut shutdown) => return,
            }
            match self.purge().await {
                Ok((0, 0)) => {}
                Ok((rows, timers)) => {
                    tracing::info!(rows, timers, "finished outbox rows and timers purged");
                }
                Err(error) => tracing::warn!(%error, "workflow purge skipped"),
            }
        }
    }
}
