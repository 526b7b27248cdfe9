//! The test services and harness: `probe` (a leaf applying keyed effects
//! through the real idempotency pipeline and publishing a feed), `caller`
//! (calling it through the outbox, consuming its feed, keeping timers), both
//! in one test database, served over real gRPC on loopback with the real auth
//! layer.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use sqlx::{PgConnection, PgPool, migrate::Migrator, postgres::PgPoolOptions};
use ta_proto::tradeassurance::testing::v1::{
    self as pb, workflow_probe_service_server::WorkflowProbeServiceServer,
};
use ta_runtime::{
    ServiceError,
    auth::{MethodPolicy, TokenVerifier},
    config::CommonConfig,
    pipeline::Mutations,
    server::{Api, ServiceSpec},
    telemetry::current_trace_id,
};
use ta_workflow::{
    Handled, Schema, Wakeups, WorkflowConfig, admin,
    consumer::{Consumer, EventHandler, FeedItem, Subscription},
    credentials::ServiceCredentials,
    feed::Feed,
    outbox::{Answer, CompletionHandler, Delivery, Outbox, Relay},
    peers::Peers,
    timers::{DueTimer, TimerHandler, TimerWorker, Timers},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, Response, Status};

pub static MIGRATOR: Migrator = sqlx::migrate!("tests/migrations");

pub const PROBE: &str = "workflow-probe";
pub const CALLER: &str = "workflow-probe-caller";
pub const PROBE_SERVICE: &str = "tradeassurance.testing.v1.WorkflowProbeService";
pub const APPLY_EFFECT: &str = "/tradeassurance.testing.v1.WorkflowProbeService/ApplyEffect";
pub const STREAM_EVENTS: &str = "/tradeassurance.testing.v1.WorkflowProbeService/StreamProbeEvents";
pub const PROBE_FEED: &str = "probe";
pub const OPERATOR: &str = "ops-1";

pub fn probe_schema() -> Schema {
    Schema::new("probe").expect("schema")
}

pub fn caller_schema() -> Schema {
    Schema::new("caller").expect("schema")
}

pub static SPEC: ServiceSpec = ServiceSpec {
    name: PROBE,
    schema: "probe",
    default_port: 0,
    grpc_services: &[PROBE_SERVICE, admin::SERVICE_NAME],
    migrator: &MIGRATOR,
};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    workflow: WorkflowConfig,
}

/// Fast settings, so retries and polls take milliseconds.
const FAST: &[&str] = &[
    "--workflow-outbox-poll-interval",
    "20ms",
    "--workflow-outbox-batch-size",
    "50",
    "--workflow-outbox-backoff-base",
    "20ms",
    "--workflow-outbox-backoff-cap",
    "200ms",
    "--workflow-outbox-call-timeout",
    "2s",
    "--workflow-feed-poll-interval",
    "20ms",
    "--workflow-feed-heartbeat-interval",
    "300ms",
    "--workflow-consumer-reconnect-base",
    "20ms",
    "--workflow-consumer-reconnect-cap",
    "200ms",
    "--workflow-consumer-idle-timeout",
    "3s",
    "--workflow-consumer-redrive-poll-interval",
    "20ms",
    "--workflow-timer-poll-interval",
    "20ms",
    "--workflow-timer-retry-base",
    "20ms",
    "--workflow-timer-retry-cap",
    "200ms",
];

pub use ta_testkit::database_url;

/// The common and workflow configuration of the test services, with `extra` flags.
pub fn config(database_url: &str, extra: &[&str]) -> (CommonConfig, WorkflowConfig) {
    let mut args = vec![
        "workflow-probe",
        "--database-url",
        database_url,
        "--auth-jwt-hs256-secret",
        ta_testkit::TEST_SECRET,
        "--auth-dev-mode",
        "true",
        "--log-format",
        "text",
    ];
    // A flag given in `extra` replaces its fast default.
    for pair in FAST.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).expect("test configuration");
    cli.workflow
        .check()
        .expect("consistent workflow configuration");
    (cli.common, cli.workflow)
}

/// Migrates the test schemas and installs the workflow tables in both, and
/// the audit trail in the caller's.
pub async fn prepare(pool: &PgPool) {
    MIGRATOR.run(pool).await.expect("test migrations");
    ta_workflow::install(pool, probe_schema())
        .await
        .expect("workflow tables in probe");
    ta_workflow::install(pool, caller_schema())
        .await
        .expect("workflow tables in caller");
    // The admin service runs over the caller's schema: its re-drives are
    // audited there (the probe's own schema gets it from the server).
    ta_runtime::audit::install(pool, "caller")
        .await
        .expect("audit trail in caller");
}

/// A pool of its own, as another process would have.
pub async fn own_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(6)
        .connect(url)
        .await
        .expect("pool")
}

/// Polls `condition` until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backend listening for `schema`'s committed workflow rows, once it
/// listens.
pub async fn listening_backend(pool: &PgPool, schema: Schema) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN \"' || $1 || '\"%'
         ORDER BY backend_start DESC LIMIT 1",
    )
    .bind(schema.name())
    .fetch_optional(pool)
    .await
    .expect("pg_stat_activity")
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .expect("count query")
}

// ---------------------------------------------------------------- the probe

/// Calls the probe received (replays included), by idempotency key, and the
/// effects it refuses for now.
#[derive(Clone, Default)]
pub struct CallLog(
    Arc<Mutex<HashMap<String, u32>>>,
    Arc<Mutex<std::collections::HashSet<String>>>,
);

impl CallLog {
    /// Makes the probe refuse (or stop refusing) `effect_id`.
    pub fn refuse(&self, effect_id: &str, refuse: bool) {
        let mut refused = self.1.lock().unwrap_or_else(|p| p.into_inner());
        if refuse {
            refused.insert(effect_id.to_owned());
        } else {
            refused.remove(effect_id);
        }
    }

    fn refuses(&self, effect_id: &str) -> bool {
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(effect_id)
    }

    fn record(&self, key: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default() += 1;
    }

    pub fn calls(&self, key: &str) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

struct ProbeService {
    pool: PgPool,
    mutations: Mutations,
    feed: Feed,
    feed_config: ta_workflow::config::FeedConfig,
    calls: CallLog,
}

#[tonic::async_trait]
impl pb::workflow_probe_service_server::WorkflowProbeService for ProbeService {
    async fn apply_effect(
        &self,
        request: Request<pb::ApplyEffectRequest>,
    ) -> Result<Response<pb::ApplyEffectResponse>, Status> {
        self.calls.record(&request.get_ref().idempotency_key);
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let prepared = self.mutations.prepare(request, |request, _, violations| {
            violations.require(!request.effect_id.is_empty(), "effect_id", "is required");
            Ok(request.clone())
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let request = prepared_request(&prepared);
                    if request.refuse || self.calls.refuses(&request.effect_id) {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "effect {} refused, as asked",
                            request.effect_id
                        )));
                    }
                    sqlx::query(
                        "INSERT INTO probe.applied_effects (effect_id, idempotency_key, traceparent)
                         VALUES ($1, $2, $3)",
                    )
                    .bind(&request.effect_id)
                    .bind(&request.idempotency_key)
                    .bind(&traceparent)
                    .execute(&mut *tx)
                    .await?;
                    let application: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM probe.applied_effects WHERE effect_id = $1",
                    )
                    .bind(&request.effect_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let event = pb::ProbeEvent {
                        subject_id: request.effect_id.clone(),
                        ..Default::default()
                    };
                    self.feed
                        .append(tx, "EFFECT_APPLIED", &request.effect_id, &event)
                        .await?;
                    Ok(pb::ApplyEffectResponse {
                        effect_id: request.effect_id.clone(),
                        application: u64::try_from(application).unwrap_or(0),
                    })
                }
            })
            .await
    }

    type StreamProbeEventsStream = ta_workflow::feed::EventStream<pb::StreamProbeEventsResponse>;

    async fn stream_probe_events(
        &self,
        request: Request<pb::StreamProbeEventsRequest>,
    ) -> Result<Response<Self::StreamProbeEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        Ok(Response::new(self.feed.stream(
            self.pool.clone(),
            after,
            &self.feed_config,
            |event| {
                Ok(pb::StreamProbeEventsResponse {
                    event: Some(pb::ProbeEvent {
                        sequence: event.sequence,
                        subject_id: event.subject_id,
                        traceparent: event.traceparent.unwrap_or_default(),
                    }),
                })
            },
            pb::StreamProbeEventsResponse::default,
        )))
    }
}

/// The request of a prepared mutation (the pipeline keeps it private).
fn prepared_request(
    prepared: &ta_runtime::pipeline::Prepared<pb::ApplyEffectRequest, pb::ApplyEffectRequest>,
) -> &pb::ApplyEffectRequest {
    &prepared.command
}

/// The probe's feed.
pub fn probe_feed() -> Feed {
    Feed::new(probe_schema(), PROBE_FEED)
}

/// The probe served on loopback: its API and the workflow admin of `caller`.
pub struct ProbeServer {
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl ProbeServer {
    /// Serves on `listener` and waits until SERVING. It has a pool of its
    /// own, as another process would (the server closes it when it stops).
    pub async fn start(pool: PgPool, listener: TcpListener, calls: CallLog) -> Self {
        Self::start_with(pool, listener, calls, &[]).await
    }

    /// As [`ProbeServer::start`], configured with the flags `extra`. Its
    /// feed's streams are woken by the probe schema's listener.
    pub async fn start_with(
        pool: PgPool,
        listener: TcpListener,
        calls: CallLog,
        extra: &[&str],
    ) -> Self {
        let url = database_url(&pool);
        let pool = own_pool(&url).await;
        let (common, workflow) = config(&url, extra);
        let address = listener.local_addr().expect("address");
        let (feed_stop, feed_shutdown) = ta_workflow::shutdown_channel();
        let wakeups = Wakeups::new(probe_schema());
        tokio::spawn(wakeups.clone().listen(pool.clone(), feed_shutdown.clone()));
        let probe = ProbeService {
            pool: pool.clone(),
            mutations: Mutations::new(pool.clone(), "probe"),
            feed: probe_feed().ending_on(feed_shutdown).waking_on(&wakeups),
            feed_config: workflow.feed.clone(),
            calls,
        };
        let routes = tonic::service::Routes::new(WorkflowProbeServiceServer::new(probe))
            .add_service(admin::WorkflowAdmin::new(pool.clone(), caller_schema()).into_server());
        let api = Api::new(routes, MethodPolicy::declared_for(SPEC.grpc_services));
        let verifier = TokenVerifier::from_config(&common.auth, SPEC.name).expect("verifier");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ta_runtime::server::serve(&SPEC, &common, verifier, listener, pool, api, async move {
                let _ = stop.await;
                let _ = feed_stop.send(true);
            })
            .await
        });
        let url = format!("http://{address}");
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .expect("endpoint")
            .connect_lazy();
        ta_testkit::wait_for_health(
            channel,
            "",
            ta_testkit::HealthStatus::Serving,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|last| panic!("probe never SERVING: {last:?}"));
        Self {
            url,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Serves on a free loopback port.
    pub async fn start_anywhere(pool: PgPool, calls: CallLog) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start(pool, listener, calls).await
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url.clone())
            .expect("endpoint")
            .connect_lazy()
    }
}

/// A loopback address nobody listens on yet (bound, then released).
pub async fn reserved_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

// ---------------------------------------------------------------- the caller

pub fn credentials() -> Arc<ServiceCredentials> {
    Arc::new(ServiceCredentials::signing(
        CALLER,
        ta_testkit::issuer(),
        Duration::from_secs(600),
    ))
}

pub fn peers(probe_url: &str) -> Peers {
    Peers::new().with(PROBE, probe_url).expect("probe URL")
}

pub fn effect_key(effect_id: &str) -> String {
    format!("effect-{effect_id}")
}

pub fn effect_request(effect_id: &str, refuse: bool) -> pb::ApplyEffectRequest {
    pb::ApplyEffectRequest {
        idempotency_key: effect_key(effect_id),
        effect_id: effect_id.to_owned(),
        refuse,
    }
}

/// The caller's state change and its call to the probe, in one transaction.
pub async fn order_effect(tx: &mut PgConnection, effect_id: &str, refuse: bool) -> i64 {
    sqlx::query("INSERT INTO caller.orders (order_id, status) VALUES ($1, 'requested')")
        .bind(effect_id)
        .execute(&mut *tx)
        .await
        .expect("order");
    Outbox::new(caller_schema())
        .enqueue(
            tx,
            PROBE,
            APPLY_EFFECT,
            &effect_request(effect_id, refuse),
            "apply-effect",
        )
        .await
        .expect("outbox row")
}

pub async fn order_effects(pool: &PgPool, effect_ids: &[String], refuse: bool) {
    let mut tx = pool.begin().await.expect("tx");
    for id in effect_ids {
        order_effect(&mut tx, id, refuse).await;
    }
    tx.commit().await.expect("commit");
}

/// Records each answer, and moves the order on it; fails its first
/// `failures` runs to show a failed completion is retried; escalates
/// refusals to the operators' queue when `escalate_refusals`.
#[derive(Default)]
pub struct RecordCompletion {
    pub failures: AtomicU32,
    pub escalate_refusals: bool,
}

impl CompletionHandler for RecordCompletion {
    async fn complete(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        answer: &Answer,
    ) -> Result<Handled, ServiceError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ServiceError::Unavailable(
                "completion failing on purpose".into(),
            ));
        }
        let request: pb::ApplyEffectRequest = delivery.decode_request()?;
        let (outcome, application, code, status) = match answer {
            Answer::Accepted(_) => {
                let response: pb::ApplyEffectResponse = answer.decode()?;
                let application = i64::try_from(response.application).unwrap_or(-1);
                ("accepted", Some(application), 0, "applied")
            }
            Answer::Refused { code, .. } => ("refused", None, *code as i32, "refused"),
        };
        sqlx::query(
            "INSERT INTO caller.completions (outbox_id, effect_id, outcome, application, code)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(delivery.id)
        .bind(&request.effect_id)
        .bind(outcome)
        .bind(application)
        .bind(code)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE caller.orders SET status = $2 WHERE order_id = $1")
            .bind(&request.effect_id)
            .bind(status)
            .execute(&mut *tx)
            .await?;
        match answer {
            Answer::Refused { message, .. } if self.escalate_refusals => Ok(Handled::Escalate(
                format!("the probe refused effect {}: {message}", request.effect_id),
            )),
            _ => Ok(Handled::Done),
        }
    }
}

/// A worker running in the background, stopped on drop or with `stop`.
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn spawn<F>(run: impl FnOnce(ta_workflow::Shutdown) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, shutdown) = ta_workflow::shutdown_channel();
        Self {
            stop,
            task: tokio::spawn(run(shutdown)),
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn relay(
    pool: PgPool,
    probe_url: &str,
    handler: Arc<RecordCompletion>,
    config: &WorkflowConfig,
) -> Relay<RecordCompletion> {
    Relay::new(
        pool,
        Outbox::new(caller_schema()),
        peers(probe_url),
        credentials(),
        handler,
        config.outbox.clone(),
    )
}

/// Records each timer fired with the trace it ran in; fails the first run of
/// timers of kind `flaky`.
#[derive(Default)]
pub struct RecordFiring {
    pub flaky_failures: AtomicU32,
}

impl TimerHandler for RecordFiring {
    async fn fire(&self, tx: &mut PgConnection, timer: &DueTimer) -> Result<(), ServiceError> {
        if timer.kind == "flaky"
            && self
                .flaky_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(ServiceError::Unavailable("timer failing on purpose".into()));
        }
        sqlx::query(
            "INSERT INTO caller.fired (timer_id, kind, subject_id, trace_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(timer.id)
        .bind(&timer.kind)
        .bind(&timer.subject_id)
        .bind(current_trace_id())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub fn timer_worker(pool: PgPool, config: &WorkflowConfig) -> TimerWorker<RecordFiring> {
    TimerWorker::new(
        pool,
        Timers::new(caller_schema()),
        Arc::new(RecordFiring::default()),
        config.timers.clone(),
    )
}

/// Records each event consumed; optionally slow, so a test can kill it
/// mid-stream. An event whose subject is in `poisoned` fails (until taken
/// out); one whose subject starts with `escalate-` is recorded and escalated.
#[derive(Default)]
pub struct RecordEvent {
    pub delay: Duration,
    pub poisoned: Mutex<std::collections::HashSet<String>>,
}

impl RecordEvent {
    pub fn poison(&self, subject: &str, poisoned: bool) {
        let mut set = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        if poisoned {
            set.insert(subject.to_owned());
        } else {
            set.remove(subject);
        }
    }
}

impl EventHandler<pb::StreamProbeEventsResponse> for RecordEvent {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        sequence: u64,
        response: &pb::StreamProbeEventsResponse,
    ) -> Result<Handled, ServiceError> {
        let subject = response
            .event
            .as_ref()
            .map(|e| e.subject_id.clone())
            .unwrap_or_default();
        if self
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&subject)
        {
            return Err(ServiceError::internal(format!(
                "{subject} cannot be applied, as asked"
            )));
        }
        sqlx::query(
            "INSERT INTO caller.consumed (sequence, subject_id, trace_id) VALUES ($1, $2, $3)",
        )
        .bind(i64::try_from(sequence).unwrap_or(-1))
        .bind(&subject)
        .bind(current_trace_id())
        .execute(&mut *tx)
        .await?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if subject.starts_with("escalate-") {
            return Ok(Handled::Escalate(format!(
                "{subject} needs an operator, as asked"
            )));
        }
        Ok(Handled::Done)
    }
}

pub fn probe_subscription()
-> Subscription<pb::StreamProbeEventsRequest, pb::StreamProbeEventsResponse> {
    Subscription {
        cursor: PROBE_FEED,
        producer: PROBE,
        method: STREAM_EVENTS,
        request: |after_sequence| pb::StreamProbeEventsRequest { after_sequence },
        item: |response| {
            response.event.as_ref().map(|event| FeedItem {
                sequence: event.sequence,
                traceparent: Some(event.traceparent.clone()),
            })
        },
    }
}

pub fn consumer(
    pool: PgPool,
    probe_url: &str,
    delay: Duration,
    config: &WorkflowConfig,
) -> Consumer<pb::StreamProbeEventsRequest, pb::StreamProbeEventsResponse, RecordEvent> {
    let handler = RecordEvent {
        delay,
        ..RecordEvent::default()
    };
    consumer_with(pool, probe_url, Arc::new(handler), config)
}

pub fn consumer_with(
    pool: PgPool,
    probe_url: &str,
    handler: Arc<RecordEvent>,
    config: &WorkflowConfig,
) -> Consumer<pb::StreamProbeEventsRequest, pb::StreamProbeEventsResponse, RecordEvent> {
    Consumer::new(
        pool,
        caller_schema(),
        probe_subscription(),
        peers(probe_url),
        credentials(),
        handler,
        config.consumer.clone(),
    )
}

/// Appends `n` events to the probe's feed, `per_tx` to a transaction.
pub async fn append_events(pool: &PgPool, prefix: &str, n: usize, per_tx: usize) {
    let feed = probe_feed();
    let mut appended = 0;
    while appended < n {
        let mut tx = pool.begin().await.expect("tx");
        for _ in 0..per_tx.min(n - appended) {
            appended += 1;
            let subject = format!("{prefix}-{appended}");
            feed.append(
                &mut tx,
                "EFFECT_APPLIED",
                &subject,
                &pb::ProbeEvent {
                    subject_id: subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("append");
        }
        tx.commit().await.expect("commit");
    }
}

// ----------------------------------------------------- child processes

/// The environment variable naming the role a re-executed test binary plays.
pub const CHILD_ROLE: &str = "TA_WORKFLOW_TEST_CHILD";
pub const CHILD_DATABASE_URL: &str = "TA_WORKFLOW_TEST_DATABASE_URL";
pub const CHILD_PROBE_URL: &str = "TA_WORKFLOW_TEST_PROBE_URL";

/// Re-executes this test binary to run the ignored test `test` as `role`.
pub fn spawn_child(test: &str, role: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("child process")
}

/// The role this process plays, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// A stream of the probe's feed after sequence `after`, as its caller.
pub async fn open_stream(
    probe: &ProbeServer,
    after: u64,
) -> tonic::Streaming<pb::StreamProbeEventsResponse> {
    let mut client =
        pb::workflow_probe_service_client::WorkflowProbeServiceClient::new(probe.channel());
    client
        .stream_probe_events(ta_testkit::from_service(
            pb::StreamProbeEventsRequest {
                after_sequence: after,
            },
            CALLER,
            PROBE,
        ))
        .await
        .expect("stream opened")
        .into_inner()
}
