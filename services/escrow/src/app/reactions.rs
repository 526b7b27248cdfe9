//! What escrow does when something happens on its own clock: a payment's
//! due date passes, an account's hold deadline passes, a pending attempt
//! expires, the payout run falls due. (Escrow consumes no other service's
//! feed and sends no outbox calls; the gateway's webhooks are
//! [`super::gateway_events`].)

use std::{sync::Arc, time::Duration};

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, timestamps};
use ta_workflow::timers::{DueTimer, TimerHandler};
use uuid::Uuid;

use crate::{
    domain::Status,
    storage::{accounts, attempts},
    views::EventFacts,
};

use super::{
    accounts::held,
    context::{Flows, until},
    deadlines::{ATTEMPT_EXPIRY, HOLD_DEADLINE, PAYMENT_DUE, PAYOUT_RUN, PAYOUT_SUBJECT},
    funding,
};

impl Flows {
    /// The hold deadline of `account_id` passed: when the account, open and
    /// not frozen, still holds money, announces HOLD_DEADLINE_PASSED with
    /// what is held and logs a warning. Moves no money; returns what it
    /// announced.
    pub async fn fire_hold_deadline(
        &self,
        conn: &mut PgConnection,
        account_id: Uuid,
    ) -> Result<Option<i64>, ServiceError> {
        let account = accounts::lock_account(conn, account_id).await?;
        if !account.hold_deadline_runs() {
            return Ok(None);
        }
        let held = held(conn, &account).await?;
        if held <= 0 {
            return Ok(None);
        }
        tracing::warn!(
            escrow_account_id = %account.id,
            contract_id = %account.contract_id,
            held_minor = held,
            currency = %account.currency,
            hold_until = %account.hold_until,
            "the hold deadline passed with money still held; the contract has neither released nor refunded it"
        );
        self.emit(
            conn,
            pb::EscrowEventType::HoldDeadlinePassed,
            account.id,
            EventFacts {
                amount_minor: Some(held),
                ..Default::default()
            },
        )
        .await?;
        Ok(Some(held))
    }
}

/// The escrow's timers: payment deadlines, hold deadlines, attempt expiries
/// and payouts.
pub struct EscrowTimers {
    pub flows: Arc<Flows>,
}

impl TimerHandler for EscrowTimers {
    async fn fire(&self, tx: &mut PgConnection, timer: &DueTimer) -> Result<(), ServiceError> {
        let now = timestamps::now();
        match timer.kind.as_str() {
            PAYMENT_DUE => {
                let Some((account, milestone)) = timer.subject_id.split_once('/') else {
                    return Err(ServiceError::internal(
                        "payment_due timer without a milestone",
                    ));
                };
                let account_id = Uuid::parse_str(account).map_err(ServiceError::internal)?;
                let account = accounts::lock_account(tx, account_id).await?;
                let Ok(payment) = account.payment(milestone) else {
                    return Ok(());
                };
                if payment.is_funded() || account.status == Status::Closed {
                    return Ok(());
                }
                // Money on its way (a bank transfer or Pay Later started
                // before the due date) is not overdue until it fails: the
                // deadline moves to the attempt's expiry.
                if let Some(attempt) = attempts::pending_attempt_started_before(
                    tx,
                    account_id,
                    milestone,
                    payment.due_at,
                )
                .await?
                {
                    self.flows
                        .timers
                        .schedule_after(
                            tx,
                            PAYMENT_DUE,
                            &timer.subject_id,
                            until(attempt.expires_at, now) + Duration::from_secs(1),
                            &[],
                        )
                        .await?;
                    return Ok(());
                }
                self.flows
                    .emit(
                        tx,
                        pb::EscrowEventType::PaymentOverdue,
                        account_id,
                        EventFacts {
                            milestone_id: milestone,
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok(())
            }
            HOLD_DEADLINE => {
                let account_id =
                    Uuid::parse_str(&timer.subject_id).map_err(ServiceError::internal)?;
                self.flows.fire_hold_deadline(tx, account_id).await?;
                Ok(())
            }
            ATTEMPT_EXPIRY => {
                let attempt_id =
                    Uuid::parse_str(&timer.subject_id).map_err(ServiceError::internal)?;
                funding::fail(tx, &self.flows, attempt_id, "expired", now).await?;
                Ok(())
            }
            PAYOUT_RUN => {
                // The worker runs the payouts, each in its own transaction
                // and outside this one, which only schedules the next run.
                self.flows.request_payouts();
                self.flows
                    .timers
                    .schedule_after(
                        tx,
                        PAYOUT_RUN,
                        PAYOUT_SUBJECT,
                        self.flows.settings.payout_interval,
                        &[],
                    )
                    .await?;
                Ok(())
            }
            other => Err(ServiceError::internal(format!(
                "unknown escrow timer kind {other}"
            ))),
        }
    }
}
