//! The part of a workflow service's `Api` every such service wires the same
//! way: the operators' [`WorkflowAdmin`] route, the workflow tables installed
//! before SERVING, the workers over its own tables (outbox relay, timer
//! worker, janitor), the workflow gauges, the schema's one listener waking
//! the relay and the feed streams ([`Wakeups`]), and its open event streams
//! ended when the server drains. What is the service's own (its gRPC service, a feed
//! consumer, its own gauges and workers) it adds itself.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_runtime::{
    auth::MethodPolicy,
    server::{Api, Prepare, ServiceSpec},
};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::{
    Calls, Schema, Shutdown,
    admin::WorkflowAdmin,
    config::{OutboxConfig, TimerConfig},
    feed::Feed,
    flows::Flows,
    install,
    janitor::Janitor,
    outbox::{CompletionHandler, Outbox, Relay},
    report_gauges,
    timers::{TimerHandler, TimerWorker, Timers},
    wake::Wakeups,
};

/// How often the workflow gauges ([`report_gauges`]) are sampled.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

type Worker = Box<dyn FnOnce(Shutdown) -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// A workflow service's `Api` while it is put together; see the module docs.
pub struct WorkflowApi {
    pool: PgPool,
    schema: Schema,
    stop_streams: watch::Sender<bool>,
    streams_end: Shutdown,
    wakeups: Wakeups,
    workers: Vec<Worker>,
    then_prepare: Option<Prepare>,
}

impl WorkflowApi {
    pub fn new(pool: &PgPool, schema: Schema) -> Self {
        let (stop_streams, streams_end) = crate::shutdown_channel();
        Self {
            pool: pool.clone(),
            schema,
            stop_streams,
            streams_end,
            wakeups: Wakeups::new(schema),
            workers: Vec::new(),
            then_prepare: None,
        }
    }

    /// The service's feed `name`: its streams end when the server drains,
    /// and look for live events as soon as one is committed.
    pub fn feed(&self, name: &'static str) -> Feed {
        Feed::new(self.schema, name)
            .ending_on(self.streams_end())
            .waking_on(&self.wakeups)
    }

    /// What the service's use cases tell and ask through: its feed `feed`
    /// (see [`WorkflowApi::feed`]), its timers and its outbox, with its
    /// `settings`.
    pub fn flows<S>(&self, feed: &'static str, settings: S) -> Flows<S> {
        Flows {
            feed: self.feed(feed),
            timers: Timers::new(self.schema),
            outbox: Outbox::new(self.schema),
            settings,
        }
    }

    /// The schema's wake-ups, for a worker of the service's own that waits
    /// for outbox rows or feed events.
    pub fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// What the service's open event streams end on, for
    /// [`crate::feed::Feed::ending_on`]: it trips when the server drains.
    pub fn streams_end(&self) -> Shutdown {
        self.streams_end.clone()
    }

    /// Delivers the service's outbox to `calls`' peers, `handler` taking
    /// the answers, woken when a row is committed.
    #[must_use]
    pub fn relay<H: CompletionHandler>(
        self,
        calls: Calls,
        handler: H,
        config: OutboxConfig,
    ) -> Self {
        let relay = Relay::new(
            self.pool.clone(),
            Outbox::new(self.schema),
            calls.peers,
            calls.credentials,
            Arc::new(handler),
            config,
        )
        .waking_on(&self.wakeups);
        self.with_worker(move |draining| relay.run(draining))
    }

    /// Fires the service's timers with `handler`.
    #[must_use]
    pub fn timers<H: TimerHandler>(self, handler: H, config: TimerConfig) -> Self {
        let worker = TimerWorker::new(
            self.pool.clone(),
            Timers::new(self.schema),
            Arc::new(handler),
            config,
        );
        self.with_worker(move |draining| worker.run(draining))
    }

    /// Purges finished outbox rows and timers older than `retention`.
    #[must_use]
    pub fn janitor(self, retention: Duration) -> Self {
        let janitor = Janitor::new(self.pool.clone(), self.schema, retention);
        self.with_worker(move |draining| janitor.run(draining))
    }

    /// Runs `work` in the background once the service is prepared, e.g. a
    /// feed consumer.
    #[must_use]
    pub fn with_worker<F>(mut self, work: impl FnOnce(Shutdown) -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.workers
            .push(Box::new(move |draining| Box::pin(work(draining))));
        self
    }

    /// Runs `step` once the workflow tables are installed, before SERVING.
    #[must_use]
    pub fn then_prepare<F>(mut self, step: impl Fn(PgPool) -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.then_prepare = Some(Box::new(move |pool| Box::pin(step(pool))));
        self
    }

    /// The `Api` of `spec` serving `routes` and [`WorkflowAdmin`], every
    /// method declared in `spec` in its policy; the service adds its own
    /// background work to it.
    pub fn into_api(self, routes: Routes, spec: &ServiceSpec) -> Api {
        let Self {
            pool,
            schema,
            stop_streams,
            streams_end: _,
            wakeups,
            workers,
            then_prepare,
        } = self;
        let routes = routes.add_service(WorkflowAdmin::new(pool.clone(), schema).into_server());
        let then_prepare = then_prepare.map(Arc::new);
        let mut api = Api::new(routes, MethodPolicy::declared_for(spec.grpc_services)).prepared_by(
            move |pool| {
                let then_prepare = then_prepare.clone();
                async move {
                    install(&pool, schema).await.map_err(|e| e.to_string())?;
                    match then_prepare {
                        Some(step) => step(pool).await,
                        None => Ok(()),
                    }
                }
            },
        );
        for worker in workers {
            api = api.with_background(worker);
        }
        let listening = pool.clone();
        api.with_background(move |draining| wakeups.listen(listening, draining))
            .with_background(move |draining| report_gauges(pool, schema, GAUGE_INTERVAL, draining))
            .with_background(move |mut draining| async move {
                // Open event streams end when the server drains.
                let _ = draining.wait_for(|d| *d).await;
                let _ = stop_streams.send(true);
            })
    }
}
