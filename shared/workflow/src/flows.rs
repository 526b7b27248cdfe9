//! What a workflow service's use cases tell and ask through ([`Flows`]),
//! and one step of an aggregate's story ([`Step`]), told as an entry of its
//! timeline and an event of the service's feed in the transaction of the
//! change ([`Flows::tell_step`]).

use prost::Message;
use sqlx::PgConnection;
use ta_runtime::{ServiceError, auth::Actor, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    feed::Feed,
    outbox::Outbox,
    timeline::{Timeline, TimelineEntry},
    timers::Timers,
};

/// A service's event feed, timers and outbox (each in its schema), and its
/// own settings `S`, e.g. the durations its timers run on. What a service
/// does with them (saving its aggregate, its views, its timers' kinds) it
/// adds in a trait of its own; [`crate::service_api::WorkflowApi::flows`]
/// builds one.
pub struct Flows<S> {
    pub feed: Feed,
    pub timers: Timers,
    pub outbox: Outbox,
    pub settings: S,
}

/// One step of an aggregate's story, its feed event of the kind `E`.
pub struct Step<'a, E> {
    pub event: E,
    /// Machine-readable action, e.g. `contract.signed`.
    pub action: &'a str,
    /// Readable: who did what and why.
    pub detail: String,
    pub money: Option<Money>,
}

impl<'a, E> Step<'a, E> {
    /// A step that moves no money.
    pub fn new(event: E, action: &'a str, detail: String) -> Self {
        Self {
            event,
            action,
            detail,
            money: None,
        }
    }

    /// The step, moving `money`.
    #[must_use]
    pub fn with_money(mut self, money: Money) -> Self {
        self.money = Some(money);
        self
    }
}

impl<E> Step<'_, E> {
    /// The step's timeline entry, by `actor` at `at`.
    pub fn entry(self, at: OffsetDateTime, actor: &Actor) -> TimelineEntry {
        TimelineEntry::step(at, actor, self.action, self.detail, self.money)
    }
}

impl<S> Flows<S> {
    /// Tells a step of the aggregate `subject`, whose row the caller locked,
    /// in `tx`: `entry` in its `timeline`, then `event` in the feed, as the
    /// kind `kind`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn tell_step<M: Message>(
        &self,
        tx: &mut PgConnection,
        timeline: Timeline,
        subject: Uuid,
        entry: &TimelineEntry,
        kind: &str,
        event: &M,
    ) -> Result<(), ServiceError> {
        timeline.append(tx, subject, entry).await?;
        self.feed
            .append(tx, kind, &subject.to_string(), event)
            .await
    }
}
