//! Escrow's deadlines as durable timers: each scheduled payment's due date
//! (`payment_due`), each account's hold deadline (`hold_deadline`), each
//! pending attempt's expiry (`attempt_expiry`) and the periodic payout run
//! (`payout_run`). Kept in step with the account in the transaction that
//! changes it; what happens when one fires is `reactions`'s.

use std::time::Duration;

use sqlx::PgConnection;
use ta_runtime::{ServiceError, timestamps};
use ta_workflow::timers::Timers;
use uuid::Uuid;

use crate::{
    domain::{EscrowAccount, Status},
    storage::{accounts, timers},
};

use super::context::{Flows, until};

/// A scheduled payment's deadline: subject `<account>/<milestone>`.
pub const PAYMENT_DUE: &str = "payment_due";

/// A pending funding attempt's expiry: subject the attempt's id.
pub const ATTEMPT_EXPIRY: &str = "attempt_expiry";

/// An account's hold deadline (`hold_until`): subject the account's id.
pub const HOLD_DEADLINE: &str = "hold_deadline";

/// The periodic payout run: subject [`PAYOUT_SUBJECT`].
pub const PAYOUT_RUN: &str = "payout_run";

pub const PAYOUT_SUBJECT: &str = "all";

impl Flows {
    /// One deadline timer per unfunded payment of an open account; funded
    /// ones (and all of a closed account) cancelled.
    pub async fn sync_deadlines(
        &self,
        conn: &mut PgConnection,
        account: &EscrowAccount,
    ) -> Result<(), ServiceError> {
        let now = timestamps::now();
        for payment in &account.schedule {
            let subject = format!("{}/{}", account.id, payment.milestone_id);
            if payment.is_funded() || account.status == Status::Closed {
                self.timers.cancel(conn, PAYMENT_DUE, &subject).await?;
            } else {
                self.timers
                    .schedule_after(conn, PAYMENT_DUE, &subject, until(payment.due_at, now), &[])
                    .await?;
            }
        }
        Ok(())
    }

    /// The hold deadline timer of `account` as its state asks: scheduled at
    /// `hold_until` while the deadline runs (open, not frozen), cancelled
    /// otherwise (frozen: paused; closed: nothing is held any more).
    pub async fn sync_hold_deadline(
        &self,
        conn: &mut PgConnection,
        account: &EscrowAccount,
    ) -> Result<(), ServiceError> {
        let subject = account.id.to_string();
        if account.hold_deadline_runs() {
            let after = until(account.hold_until, timestamps::now());
            self.timers
                .schedule_after(conn, HOLD_DEADLINE, &subject, after, &[])
                .await?;
        } else {
            self.timers.cancel(conn, HOLD_DEADLINE, &subject).await?;
        }
        Ok(())
    }

    pub async fn cancel_deadline(
        &self,
        conn: &mut PgConnection,
        account_id: Uuid,
        milestone_id: &str,
    ) -> Result<(), ServiceError> {
        self.timers
            .cancel(conn, PAYMENT_DUE, &format!("{account_id}/{milestone_id}"))
            .await
            .map(drop)
    }
}

/// Schedules the first payout run unless one is scheduled.
pub async fn ensure_payout_timer(
    pool: &sqlx::PgPool,
    timers: &Timers,
    interval: Duration,
) -> Result<(), ServiceError> {
    let mut tx = pool.begin().await?;
    let scheduled = timers::is_scheduled(&mut tx, PAYOUT_RUN, PAYOUT_SUBJECT).await?;
    if !scheduled {
        timers
            .schedule_after(&mut tx, PAYOUT_RUN, PAYOUT_SUBJECT, interval, &[])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Schedules the hold deadline timer of every open, unfrozen account whose
/// deadline is still ahead and has none (accounts opened before hold
/// deadlines existed, or a timer lost by hand); returns how many.
pub async fn ensure_hold_deadlines(
    pool: &sqlx::PgPool,
    timers: &Timers,
) -> Result<usize, ServiceError> {
    let mut tx = pool.begin().await?;
    let missing = accounts::lock_missing_hold_deadlines(&mut tx, HOLD_DEADLINE).await?;
    let now = timestamps::now();
    for (id, hold_until) in &missing {
        timers
            .schedule_after(
                &mut tx,
                HOLD_DEADLINE,
                &id.to_string(),
                until(*hold_until, now),
                &[],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(missing.len())
}
