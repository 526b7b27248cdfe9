//! What escrow's use cases reach beyond the caller's transaction: the
//! payment gateway, the event feed, the timers and the settings, and the
//! gateway worker's wake-up. One per process, shared by the transports, the
//! timer handler and the worker.

use std::{sync::Arc, time::Duration};

use ta_workflow::{feed::Feed, timers::Timers};
use time::OffsetDateTime;

use crate::gateway::{PaymentGateway, signature::WebhookSecret};

/// The feed consumers read (`StreamEscrowEvents`).
pub const FEED: &str = "escrow";

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

pub fn after(duration: Duration, now: OffsetDateTime) -> OffsetDateTime {
    now + time::Duration::try_from(duration).unwrap_or(time::Duration::DAY)
}

pub(crate) fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
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
}
