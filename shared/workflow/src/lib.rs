//! Workflow machinery shared by the services, built once:
//!
//! * [`outbox`]: a call to another service is written as an outbox row in the
//!   same transaction as the state change that causes it; a [`outbox::Relay`]
//!   in each process delivers it with its idempotency key and trace context and
//!   hands the answer to the owning service's completion handler.
//! * [`feed`]: domain events appended in the same transaction as the change,
//!   numbered in commit order, streamed to consumers (backlog, then live, with
//!   heartbeats); [`feed_stream::serve`] is every feed's streaming RPC handler;
//!   [`consumer`] applies them with a durable cursor.
//! * [`timers`]: due actions claimed with `FOR UPDATE SKIP LOCKED` and fired
//!   once, in the same transaction as the service's handler.
//! * [`flows`]: what a service's use cases tell and ask through (its feed,
//!   timers and outbox, and its settings), and one step of an aggregate's
//!   story told in its timeline and its feed.
//! * [`timeline`]: an aggregate's readable history (steps numbered without
//!   gaps, in the service's own table) and the page its RPC answers.
//! * [`callees`]: the services as outbox calls name them.
//! * [`credentials`]: the token a service presents as itself to another one.
//! * [`admin`]: the operators' RPC over all of the above.
//! * [`janitor`]: purges finished outbox rows and timers after the retention.
//! * [`wake`]: wakes the relay and the feed streams when a row they wait
//!   for is committed (`LISTEN`/`NOTIFY`), polling kept as the safety net.
//! * [`workers`]: starts a service's workers once its tables are installed,
//!   and stops them together.
//! * [`service_api`]: what every workflow service's `Api` wires the same way
//!   (admin route, tables installed, relay, timers, janitor, gauges, streams
//!   ended on drain).
//!
//! Every table lives in the owning service's schema; [`install`] creates them.

pub mod admin;
mod backoff;
pub mod callees;
pub mod config;
pub mod consumer;
pub mod credentials;
pub mod feed;
pub mod feed_stream;
pub mod flows;
mod install;
pub mod janitor;
pub mod outbox;
pub mod peers;
mod raw;
mod retry;
mod schema;
pub mod service_api;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timeline;
pub mod timers;
mod trace;
pub mod wake;
pub mod workers;

pub use config::WorkflowConfig;
pub use flows::{Flows, Step};
pub use install::{INSTALLED_VERSION, install};
pub use schema::Schema;
pub use wake::Wakeups;
pub use workers::{RunningWorkers, Workers};

/// What a service's reaction (an outbox completion, a feed event's effect)
/// made of what it was handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Done: the row completes, the cursor moves on.
    Done,
    /// Its changes commit, but the item goes to the operators' queue with
    /// this reason (listed, counted in the backlog, re-drivable): a refused
    /// call that moves money, a feed event the service cannot act on alone.
    Escalate(String),
}

impl Handled {
    /// [`Handled::Done`] once `result` (a reaction that never escalates)
    /// succeeded.
    ///
    /// # Errors
    /// `result`'s.
    pub fn done_after(
        result: Result<(), ta_runtime::ServiceError>,
    ) -> Result<Self, ta_runtime::ServiceError> {
        result.map(|()| Self::Done)
    }
}

/// How a service calls the others: where they listen and the token it shows
/// them, both from its configuration.
#[derive(Clone)]
pub struct Calls {
    pub peers: peers::Peers,
    pub credentials: std::sync::Arc<credentials::ServiceCredentials>,
}

impl Calls {
    /// For the service `name`; also checks the workflow settings' relations.
    ///
    /// # Errors
    /// A message naming the variables at fault.
    pub fn from_config(
        name: &str,
        workflow: &WorkflowConfig,
        auth: &ta_runtime::auth::AuthConfig,
    ) -> Result<Self, String> {
        workflow.check()?;
        Ok(Self {
            peers: peers::Peers::from_config(&workflow.peers)?,
            credentials: std::sync::Arc::new(credentials::ServiceCredentials::from_config(
                name,
                &workflow.credentials,
                auth,
            )?),
        })
    }
}

/// What a worker waits on to stop: resolves once when the process shuts down.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// A shutdown signal for workers, and the sender that trips it.
pub fn shutdown_channel() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
    tokio::sync::watch::channel(false)
}

pub(crate) async fn wait_for_shutdown(shutdown: &mut Shutdown) {
    // A dropped sender counts as shutdown: nobody can stop us any more otherwise.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Publishes the figures of this service's workflow tables as OpenTelemetry
/// gauges, sampled every `every` until `shutdown` (a worker for
/// [`Workers::with`]): `ta.workflow.outbox.pending` and `.parked` (calls,
/// escalated refusals among them), `ta.workflow.feed.parked` (consumed feed
/// events and gaps waiting for an operator),
/// `ta.workflow.outbox.oldest_pending_age` (s), `ta.workflow.timers.overdue`
/// (timers) and `ta.workflow.timers.oldest_overdue_age` (s). A failed sample
/// is logged and the previous values stay.
pub async fn report_gauges(
    pool: sqlx::PgPool,
    schema: Schema,
    every: std::time::Duration,
    shutdown: Shutdown,
) {
    use ta_runtime::telemetry::{gauge, sample_every};
    let pending = gauge(
        "ta.workflow.outbox.pending",
        "Outbox calls not yet delivered",
        "{call}",
    );
    let parked = gauge(
        "ta.workflow.outbox.parked",
        "Outbox calls parked after their attempts",
        "{call}",
    );
    let oldest_pending = gauge(
        "ta.workflow.outbox.oldest_pending_age",
        "Age of the oldest undelivered outbox call",
        "s",
    );
    let overdue = gauge(
        "ta.workflow.timers.overdue",
        "Scheduled timers past their due time",
        "{timer}",
    );
    let oldest_overdue = gauge(
        "ta.workflow.timers.oldest_overdue_age",
        "How long ago the oldest overdue timer was due",
        "s",
    );
    let feed_parked = gauge(
        "ta.workflow.feed.parked",
        "Consumed feed events (and gaps) parked for an operator",
        "{event}",
    );
    let (outbox, timers) = (outbox::Outbox::new(schema), timers::Timers::new(schema));
    let parked_events = consumer::ParkedEvents::new(schema);
    let seconds = |age: Option<std::time::Duration>| age.map_or(0.0, |age| age.as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    sample_every(every, shutdown, || async {
        match outbox.backlog(&pool).await {
            Ok(backlog) => {
                pending.set(backlog.pending as f64, &[]);
                parked.set(backlog.parked as f64, &[]);
                oldest_pending.set(seconds(backlog.oldest_pending_age), &[]);
            }
            Err(error) => tracing::debug!(?error, "outbox backlog not sampled"),
        }
        match timers.overdue(&pool).await {
            Ok(late) => {
                overdue.set(late.count as f64, &[]);
                oldest_overdue.set(seconds(late.oldest_age), &[]);
            }
            Err(error) => tracing::debug!(?error, "overdue timers not sampled"),
        }
        match parked_events.count(&pool).await {
            Ok(count) => feed_parked.set(count as f64, &[]),
            Err(error) => tracing::debug!(?error, "parked feed events not sampled"),
        }
    })
    .await;
}
