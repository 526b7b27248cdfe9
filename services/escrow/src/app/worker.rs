//! The gateway worker: one loop per process that finishes what the gateway
//! left open, outside any request: attempts whose start call has no
//! recorded answer, transfers to send or to ask about, and payout runs the
//! payout timer asked for. Woken at once when something is recorded in this
//! process, it also polls, so work recorded by another replica (or left by
//! one that died) is picked up.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_workflow::Shutdown;

use crate::app::context::Flows;

use super::{funding, transfers};

pub struct GatewayWorker {
    pub pool: PgPool,
    pub flows: Arc<Flows>,
    /// The safety net when nothing wakes the worker.
    pub poll_interval: Duration,
}

impl GatewayWorker {
    pub async fn run(self, mut shutdown: Shutdown) {
        loop {
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "the gateway worker's pass failed; it tries again");
            }
            tokio::select! {
                () = self.flows.wakened() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One pass: a requested payout run, then the unanswered attempts, then
    /// the transfers due.
    pub async fn pass(&self) -> Result<(), ta_runtime::ServiceError> {
        if self.flows.take_payout_request() {
            transfers::run_payouts(&self.flows, &self.pool, None, None).await?;
            transfers::run_buyer_refunds(&self.flows, &self.pool).await?;
        }
        funding::resolve_unanswered(&self.flows, &self.pool).await?;
        transfers::handle_due(&self.flows, &self.pool).await?;
        Ok(())
    }
}

/// How many shared accounts one roll-up pass folds at most.
const ROLL_UP_BATCH: i64 = 500;

/// Folds the shared accounts' committed balance deltas into their rows every
/// `every` until `shutdown`, so reading a supplier's or the platform's
/// balance stays one row plus a short tail of deltas.
pub async fn roll_up_balances(pool: PgPool, every: Duration, mut shutdown: Shutdown) {
    loop {
        let folded = async {
            let mut conn = pool.acquire().await?;
            crate::storage::ledger::roll_up(&mut conn, ROLL_UP_BATCH)
                .await
                .map_err(ta_runtime::ServiceError::from)
        };
        match folded.await {
            Ok(n) if n > 0 => tracing::debug!(accounts = n, "balance deltas rolled up"),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "rolling up balance deltas failed; tried again later")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Publishes `ta.escrow.money_held` (minor units, per currency): what sits in
/// escrow accounts, posted and pending, sampled every `every` until
/// `shutdown`. A failed sample is logged and the last values stay.
pub async fn report_money_held(
    pool: sqlx::PgPool,
    every: std::time::Duration,
    shutdown: ta_workflow::Shutdown,
) {
    use ta_runtime::telemetry::{KeyValue, gauge, sample_every};
    let held = gauge(
        "ta.escrow.money_held",
        "Money held in escrow accounts, in minor units of its currency",
        "{minor_unit}",
    );
    sample_every(every, shutdown, || async {
        let sampled = async {
            let mut conn = pool.acquire().await?;
            crate::storage::statement::read_trial_balance(&mut conn, None).await
        };
        match sampled.await {
            Ok(rows) => {
                for (kind, currency, posted, pending) in rows {
                    if kind == "escrow_held" {
                        #[allow(clippy::cast_precision_loss)]
                        held.set(
                            (posted + pending) as f64,
                            &[KeyValue::new("currency", currency)],
                        );
                    }
                }
            }
            Err(error) => tracing::debug!(?error, "money held not sampled"),
        }
    })
    .await;
}
