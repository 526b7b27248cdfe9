//! What the API and the timers share: the gateway, the event feed, the
//! timers, the proto views of accounts and attempts, and the flows that
//! span them (payouts, deadlines, the hold deadline, gateway events).
//! Everything here runs in the caller's transaction, so an event or a timer
//! changes together with the state.

use std::{sync::Arc, time::Duration};

use sqlx::PgConnection;
use ta_proto::{common::Money as PbMoney, escrow as pb};
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
    timestamps,
};
use ta_workflow::{
    feed::Feed,
    timers::{DueTimer, TimerHandler, Timers},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    app,
    domain::{AccountKind, EscrowAccount, Status, funding::AttemptStatus},
    gateway::PaymentGateway,
    storage::{
        accounts,
        api::{self, AttemptView, Scheme},
        transfers::{TransferRow, TransferStatus},
    },
    webhook::{SignatureError, WebhookSecret},
};

/// The feed consumers read (`StreamEscrowEvents`).
pub const FEED: &str = "escrow";
/// A scheduled payment's deadline: subject `<account>/<milestone>`.
pub const PAYMENT_DUE: &str = "payment_due";
/// A pending funding attempt's expiry: subject the attempt's id.
pub const ATTEMPT_EXPIRY: &str = "attempt_expiry";
/// An account's hold deadline (`hold_until`): subject the account's id.
pub const HOLD_DEADLINE: &str = "hold_deadline";
/// The periodic payout run: subject [`PAYOUT_SUBJECT`].
pub const PAYOUT_RUN: &str = "payout_run";
pub const PAYOUT_SUBJECT: &str = "all";

#[derive(Clone, Debug)]
pub struct Settings {
    pub webhook_secret: WebhookSecret,
    pub webhook_tolerance: Duration,
    pub bank_transfer_expiry: Duration,
    pub pay_later_expiry: Duration,
    pub payout_interval: Duration,
    /// How long a payout or refund may go without a report before the
    /// gateway is asked about it (it becomes `unknown`, never voided).
    pub payout_expiry: Duration,
    /// How long after a gateway call with no recorded answer the gateway is
    /// asked by key what it did (the call's time-out, and a margin).
    pub gateway_check_after: Duration,
    /// How long an event naming an unknown payment is answered "retry
    /// later" (it may have overtaken its record's commit) before it is
    /// recorded as unmatched.
    pub webhook_retry_window: Duration,
}

pub struct Flows {
    pub gateway: Arc<dyn PaymentGateway>,
    pub feed: Feed,
    pub timers: Timers,
    pub settings: Settings,
    /// Wakes the gateway worker when this process records work for it.
    pub worker_wake: tokio::sync::Notify,
    /// Set by the payout timer; the worker runs the payouts.
    pub payout_requested: std::sync::atomic::AtomicBool,
}

pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(crate::storage::SCHEMA).unwrap_or_else(|_| unreachable!())
}

pub fn money(amount_minor: i64, currency: Currency) -> PbMoney {
    Money::new(amount_minor, currency).to_proto()
}

pub fn after(duration: Duration, now: OffsetDateTime) -> OffsetDateTime {
    now + time::Duration::try_from(duration).unwrap_or(time::Duration::DAY)
}

fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

pub fn status_to_proto(status: Status) -> pb::EscrowAccountStatus {
    match status {
        Status::AwaitingFunding => pb::EscrowAccountStatus::AwaitingFunding,
        Status::PartiallyFunded => pb::EscrowAccountStatus::PartiallyFunded,
        Status::Funded => pb::EscrowAccountStatus::Funded,
        Status::Closed => pb::EscrowAccountStatus::Closed,
    }
}

pub fn kind_to_proto(kind: &str) -> pb::LedgerAccountKind {
    match AccountKind::parse(kind) {
        Some(AccountKind::EscrowHeld) => pb::LedgerAccountKind::EscrowHeld,
        Some(AccountKind::BuyerRefundPayable) => pb::LedgerAccountKind::BuyerRefundPayable,
        Some(AccountKind::SupplierPayable) => pb::LedgerAccountKind::SupplierPayable,
        Some(AccountKind::GatewayClearing) => pb::LedgerAccountKind::GatewayClearing,
        Some(AccountKind::Suspense) => pb::LedgerAccountKind::Suspense,
        Some(AccountKind::Fees) => pb::LedgerAccountKind::Fees,
        Some(AccountKind::FinancingPartner) => pb::LedgerAccountKind::FinancingPartner,
        None => pb::LedgerAccountKind::Unspecified,
    }
}

/// A ledger account as the API names it.
pub fn ledger_account(id: Uuid, kind: &str, owner: &str, currency: &str) -> pb::LedgerAccount {
    let proto_kind = kind_to_proto(kind);
    let mut account = pb::LedgerAccount {
        ledger_account_id: id.to_string(),
        kind: proto_kind as i32,
        currency_code: currency.to_owned(),
        ..Default::default()
    };
    match proto_kind {
        pb::LedgerAccountKind::EscrowHeld | pb::LedgerAccountKind::BuyerRefundPayable => {
            account.escrow_account_id = owner.to_owned();
        }
        pb::LedgerAccountKind::SupplierPayable => account.supplier_id = owner.to_owned(),
        pb::LedgerAccountKind::FinancingPartner => {
            account.financing_partner_id = owner.to_owned();
        }
        _ => {}
    }
    account
}

/// The account as the API shows it, read in `conn`'s transaction.
pub async fn account_proto(
    conn: &mut PgConnection,
    account: &EscrowAccount,
) -> Result<pb::EscrowAccount, ServiceError> {
    let terms = api::terms(conn, account.id).await?;
    let totals = api::totals(conn, account.id).await?;
    let freezes = api::active_freezes(conn, account.id).await?;
    let updated_at = api::updated_at(conn, account.id).await?;
    let funded_at = api::funded_times(conn, account.id).await?;
    let c = account.currency;
    let next_due = account
        .schedule
        .iter()
        .filter(|p| !p.is_funded())
        .map(|p| p.due_at)
        .min()
        .filter(|_| account.status != Status::Closed);
    Ok(pb::EscrowAccount {
        payment_scheme: match terms.scheme {
            Scheme::Direct => pb::EscrowPaymentScheme::Direct,
            Scheme::PayLater => pb::EscrowPaymentScheme::PayLater,
        } as i32,
        financing_partner_id: terms.financing_partner_id,
        escrow_account_id: account.id.to_string(),
        contract_id: account.contract_id.clone(),
        buyer_principal_id: account.buyer_principal_id.clone(),
        supplier_id: account.supplier_id.clone(),
        currency_code: c.to_string(),
        status: status_to_proto(account.status) as i32,
        expected_total: Some(money(account.expected_total()?, c)),
        schedule: account
            .schedule
            .iter()
            .map(|p| pb::ScheduledPayment {
                milestone_id: p.milestone_id.clone(),
                amount: Some(money(p.amount_minor, c)),
                due_at: Some(timestamps::to_proto(p.due_at)),
                funded_at: funded_at
                    .get(&p.milestone_id)
                    .copied()
                    .map(timestamps::to_proto),
            })
            .collect(),
        next_payment_due_at: next_due.map(timestamps::to_proto),
        held: Some(money(totals.held, c)),
        funded_total: Some(money(totals.funded, c)),
        released_total: Some(money(totals.released, c)),
        refunded_total: Some(money(totals.refunded, c)),
        active_freezes: freezes
            .into_iter()
            .map(|(claim_id, reason, at)| pb::Freeze {
                claim_id,
                reason,
                frozen_at: Some(timestamps::to_proto(at)),
            })
            .collect(),
        created_at: Some(timestamps::to_proto(account.created_at)),
        updated_at: Some(timestamps::to_proto(updated_at)),
        closed_at: account.closed_at.map(timestamps::to_proto),
        supplier_owner_principal_id: terms.supplier_owner_principal_id,
        hold_until: Some(timestamps::to_proto(account.hold_until)),
    })
}

pub fn attempt_proto(a: &AttemptView) -> pb::FundingAttempt {
    let currency = Currency::parse(&a.currency);
    pb::FundingAttempt {
        funding_attempt_id: a.id.to_string(),
        escrow_account_id: a.escrow_account_id.to_string(),
        milestone_id: a.milestone_id.clone(),
        method: match a.method.as_str() {
            "card" => pb::FundingMethod::Card,
            "bank_transfer" => pb::FundingMethod::BankTransfer,
            _ => pb::FundingMethod::PayLater,
        } as i32,
        amount: currency.map(|c| money(a.amount_minor, c)),
        status: match AttemptStatus::parse(&a.status) {
            Some(AttemptStatus::Pending) => pb::FundingStatus::Pending,
            Some(AttemptStatus::Succeeded) => pb::FundingStatus::Succeeded,
            Some(AttemptStatus::Failed) => pb::FundingStatus::Failed,
            None => pb::FundingStatus::Unspecified,
        } as i32,
        gateway_reference: a.gateway_reference.clone().unwrap_or_default(),
        failure_code: a.failure_code.clone(),
        failure_message: a.failure_message.clone().unwrap_or_default(),
        bank_transfer_instructions: a.iban.as_ref().map(|iban| pb::BankTransferInstructions {
            beneficiary_name: a.beneficiary_name.clone().unwrap_or_default(),
            iban: iban.clone(),
            bic: a.bic.clone().unwrap_or_default(),
            payment_reference: a.payment_reference.clone().unwrap_or_default(),
        }),
        financing_partner_id: a.financing_partner_id.clone().unwrap_or_default(),
        loan_reference: a.loan_reference.clone().unwrap_or_default(),
        hold_id: a.hold_id.map(|h| h.to_string()).unwrap_or_default(),
        expires_at: Some(timestamps::to_proto(a.expires_at)),
        created_at: Some(timestamps::to_proto(a.created_at)),
        resolved_at: a.resolved_at.map(timestamps::to_proto),
    }
}

pub fn transfer_proto(t: &TransferRow) -> pb::GatewayTransfer {
    pb::GatewayTransfer {
        gateway_transfer_id: t.id.to_string(),
        direction: match t.direction.as_str() {
            "payout" => pb::GatewayTransferDirection::Payout,
            "buyer_refund" => pb::GatewayTransferDirection::BuyerRefund,
            _ => pb::GatewayTransferDirection::SuspenseRefund,
        } as i32,
        status: match TransferStatus::parse(&t.status) {
            Some(TransferStatus::Sending) => pb::GatewayTransferStatus::Sending,
            Some(TransferStatus::Pending) => pb::GatewayTransferStatus::Pending,
            Some(TransferStatus::Unknown) => pb::GatewayTransferStatus::Unknown,
            Some(TransferStatus::Paid) => pb::GatewayTransferStatus::Paid,
            Some(TransferStatus::Failed) => pb::GatewayTransferStatus::Failed,
            None => pb::GatewayTransferStatus::Unspecified,
        } as i32,
        amount: Currency::parse(&t.currency).map(|c| money(t.amount_minor, c)),
        supplier_id: t.supplier_id.clone().unwrap_or_default(),
        escrow_account_id: t
            .escrow_account_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        gateway_reference: t.gateway_reference.clone().unwrap_or_default(),
        hold_id: t.id.to_string(),
        failure_code: t.failure_code.clone(),
        created_at: Some(timestamps::to_proto(t.created_at)),
        resolved_at: t.resolved_at.map(timestamps::to_proto),
        source_reference: t.source_reference.clone().unwrap_or_default(),
        funding_attempt_id: t
            .funding_attempt_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        next_check_at: t
            .check_at
            .filter(|_| TransferStatus::parse(&t.status).is_some_and(TransferStatus::is_open))
            .map(timestamps::to_proto),
    }
}

/// What an event says beside its type and account.
#[derive(Default)]
pub struct EventFacts<'a> {
    pub amount_minor: Option<i64>,
    pub milestone_id: &'a str,
    pub funding_attempt_id: Option<Uuid>,
    pub claim_id: &'a str,
}

impl Flows {
    pub fn new(
        gateway: Arc<dyn PaymentGateway>,
        feed: Feed,
        timers: Timers,
        settings: Settings,
    ) -> Self {
        Self {
            gateway,
            feed,
            timers,
            settings,
            worker_wake: tokio::sync::Notify::new(),
            payout_requested: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Tells the gateway worker there is work (a transfer to send).
    pub fn wake_worker(&self) {
        self.worker_wake.notify_one();
    }

    pub async fn wakened(&self) {
        self.worker_wake.notified().await;
    }

    /// Asks the gateway worker for a payout run.
    pub fn request_payouts(&self) {
        self.payout_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_worker();
    }

    pub fn take_payout_request(&self) -> bool {
        self.payout_requested
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// The account as the API shows it.
    pub async fn view(
        &self,
        conn: &mut PgConnection,
        account_id: Uuid,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        let account = accounts::get_account(conn, account_id).await?;
        account_proto(conn, &account).await
    }

    /// Appends an event about `account` (re-read, as it is after the change)
    /// in the caller's transaction.
    pub async fn emit(
        &self,
        conn: &mut PgConnection,
        kind: pb::EscrowEventType,
        account_id: Uuid,
        facts: EventFacts<'_>,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        let account = accounts::get_account(conn, account_id).await?;
        let view = account_proto(conn, &account).await?;
        let event = pb::EscrowEvent {
            sequence: 0,
            r#type: kind as i32,
            occurred_at: Some(timestamps::to_proto(timestamps::now())),
            escrow_account_id: account.id.to_string(),
            contract_id: account.contract_id.clone(),
            amount: facts.amount_minor.map(|a| money(a, account.currency)),
            milestone_id: facts.milestone_id.to_owned(),
            funding_attempt_id: facts
                .funding_attempt_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            claim_id: facts.claim_id.to_owned(),
            account: Some(view.clone()),
        };
        let name = kind
            .as_str_name()
            .trim_start_matches("ESCROW_EVENT_TYPE_")
            .to_owned();
        self.feed
            .append(conn, &name, &account.id.to_string(), &event)
            .await?;
        Ok(view)
    }

    /// The account as a call answers it: announced in the feed when the call
    /// changed it, read as it is when it did not (a repeated freeze, say).
    pub async fn emit_if_changed(
        &self,
        conn: &mut PgConnection,
        changed: bool,
        kind: pb::EscrowEventType,
        account: &EscrowAccount,
        facts: EventFacts<'_>,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        if changed {
            self.emit(conn, kind, account.id, facts).await
        } else {
            account_proto(conn, account).await
        }
    }

    /// Announces a funding that posted `posted_minor`, and FUNDED when the
    /// account just became fully funded.
    pub async fn emit_funding(
        &self,
        conn: &mut PgConnection,
        before: Status,
        attempt: &AttemptView,
        posted_minor: i64,
    ) -> Result<(), ServiceError> {
        self.emit(
            conn,
            pb::EscrowEventType::PaymentSucceeded,
            attempt.escrow_account_id,
            EventFacts {
                amount_minor: Some(posted_minor),
                milestone_id: &attempt.milestone_id,
                funding_attempt_id: Some(attempt.id),
                ..Default::default()
            },
        )
        .await?;
        let account = accounts::get_account(conn, attempt.escrow_account_id).await?;
        if account.status == Status::Funded && before != Status::Funded {
            self.emit(
                conn,
                pb::EscrowEventType::Funded,
                account.id,
                EventFacts::default(),
            )
            .await?;
        }
        if account.schedule.iter().all(|p| p.is_funded()) || posted_minor > 0 {
            self.sync_deadlines(conn, &account).await?;
        }
        Ok(())
    }

    pub async fn emit_payment_failed(
        &self,
        conn: &mut PgConnection,
        attempt: &AttemptView,
    ) -> Result<(), ServiceError> {
        self.emit(
            conn,
            pb::EscrowEventType::PaymentFailed,
            attempt.escrow_account_id,
            EventFacts {
                milestone_id: &attempt.milestone_id,
                funding_attempt_id: Some(attempt.id),
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }

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
        let held = app::held(conn, &account).await?;
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

    /// Checks a webhook's signature header over `payload` at `now` (Unix
    /// seconds) with the gateway's secret and tolerance.
    ///
    /// # Errors
    /// Unsigned, badly signed or stale: see [`SignatureError`].
    pub fn authenticate_webhook(
        &self,
        signature: &str,
        payload: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let tolerance = i64::try_from(self.settings.webhook_tolerance.as_secs()).unwrap_or(300);
        self.settings
            .webhook_secret
            .verify(signature, payload, now, tolerance)
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
                if let Some(attempt) = accounts::pending_attempt_started_before(
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
                app::funding::fail(tx, &self.flows, attempt_id, "expired", now).await?;
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

/// Schedules the first payout run unless one is scheduled.
pub async fn ensure_payout_timer(
    pool: &sqlx::PgPool,
    timers: &Timers,
    interval: Duration,
) -> Result<(), ServiceError> {
    let mut tx = pool.begin().await?;
    let scheduled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM escrow.workflow_timers \
         WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled')",
    )
    .bind(PAYOUT_RUN)
    .bind(PAYOUT_SUBJECT)
    .fetch_one(&mut *tx)
    .await?;
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
    let missing: Vec<(Uuid, OffsetDateTime)> = sqlx::query_as(
        "SELECT e.id, e.hold_until FROM escrow.escrow_accounts e \
         WHERE e.status <> 'closed' AND e.hold_paused_at IS NULL AND e.hold_until > now() \
           AND NOT EXISTS (SELECT 1 FROM escrow.workflow_timers t \
             WHERE t.kind = $1 AND t.subject_id = e.id::text AND t.status = 'scheduled') \
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(HOLD_DEADLINE)
    .fetch_all(&mut *tx)
    .await?;
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
            api::trial_balance(&mut conn, None).await
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
