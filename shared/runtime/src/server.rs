//! Server bootstrap shared by every service.
//!
//! Start-up: telemetry, config, pool, bind, health NOT_SERVING, serve; a
//! background task runs the migrations as soon as the database answers and only
//! then reports SERVING. The `liveness` health service answers SERVING as long
//! as the process serves, whatever the database does, so Kubernetes restarts a
//! hung process but not one waiting for its database.
//!
//! With `GRPC_TLS_CERT_FILE` the listener speaks TLS only (health and
//! reflection too), mutual TLS with `GRPC_TLS_CLIENT_CA_FILE`; the
//! certificates are re-read when they change ([`crate::tls`]). Handshakes
//! run beside the accept loop, each bounded in time, so a slow or silent
//! client holds up nobody. Each accepted connection carries who its client
//! is by its certificate ([`crate::tls::ClientIdentity`]) to every request;
//! under mutual TLS with `GRPC_TLS_BIND_SERVICE_IDENTITY` (the default) the
//! auth layer accepts a token only from a certificate that stands for it. `GRPC_HEALTH_LISTEN_ADDR` adds a plaintext
//! listener with the health service only (and its reflection), for probes
//! that cannot speak TLS.
//!
//! Shutdown on SIGTERM or Ctrl-C: NOT_SERVING, stop accepting, drain in-flight
//! requests (bounded by the grace period), close the pool, flush telemetry, exit 0.

use std::{future::Future, process::ExitCode, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool, migrate::Migrator, postgres::PgConnectOptions};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

use crate::{
    audit::{self, AuditTrail},
    auth::{AuthLayer, MethodPolicy, TokenVerifier},
    config::{CommonConfig, ServerConfig},
    db,
    idempotency::IdempotencyKeys,
    middleware::{AdmissionLayer, DeadlineLayer, RpcMetricsLayer, StatusHygieneLayer},
    migrations, telemetry,
    tls::{ServerTls, ServiceIdentityBinding, Tls, TlsConnection},
};

/// The health service name that reports liveness only.
pub const LIVENESS: &str = "liveness";

/// How often readiness re-checks that the database answers, and how long one
/// check may take: together they bound how late readiness follows the
/// database (about a second either way).
const READINESS_RECHECK: Duration = Duration::from_millis(250);
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// How long a client may take over its TLS handshake, and how many
/// handshakes may be under way at once (more connections wait in the
/// listen backlog).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKES_AT_ONCE: usize = 256;

/// What distinguishes one service's process from another's.
pub struct ServiceSpec {
    /// Binary and telemetry name, e.g. `supplier-registry`.
    pub name: &'static str,
    /// The Postgres schema the service owns (its tables, migrations, idempotency keys).
    pub schema: &'static str,
    /// Local port used when `GRPC_LISTEN_ADDR` is not set.
    pub default_port: u16,
    /// Fully-qualified gRPC services served, listed by reflection and health.
    pub grpc_services: &'static [&'static str],
    /// The service's own migrations (its own schema and migration table).
    pub migrator: &'static Migrator,
}

/// A step a service runs once its migrations applied and before it reports
/// SERVING (e.g. installing the shared workflow tables); retried with backoff
/// like the migrations.
pub type Prepare = Box<dyn Fn(PgPool) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Work a service runs in the background while it serves (outbox relay,
/// timer worker, feed consumers). It starts once the service is prepared and
/// must return soon after its [`Draining`] signal trips; the server waits
/// for it (within the grace period) before closing the pool.
pub type Background = Box<dyn FnOnce(Draining) -> BoxFuture<'static, ()> + Send>;

/// Trips (becomes `true`) when the server starts to drain.
pub type Draining = watch::Receiver<bool>;

/// What a service contributes to its process: routes, the per-method
/// authorization policy, and optionally a preparation step and background work.
pub struct Api {
    pub routes: Routes,
    pub policy: MethodPolicy,
    prepare: Option<Prepare>,
    background: Vec<Background>,
}

impl Api {
    pub fn new(routes: Routes, policy: MethodPolicy) -> Self {
        Self {
            routes,
            policy,
            prepare: None,
            background: Vec::new(),
        }
    }

    /// Runs `step` after the migrations and before SERVING.
    #[must_use]
    pub fn prepared_by<F>(mut self, step: impl Fn(PgPool) -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.prepare = Some(Box::new(move |pool| Box::pin(step(pool))));
        self
    }

    /// Runs `work` in the background once the service is prepared.
    #[must_use]
    pub fn with_background<F>(mut self, work: impl FnOnce(Draining) -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(Box::new(move |draining| Box::pin(work(draining))));
        self
    }
}

/// The whole life of a service process, for `main`: telemetry, pool, bind,
/// serve until SIGTERM or Ctrl-C, orderly shutdown. `build` gets the pool and
/// returns the service's API.
pub async fn run(
    spec: ServiceSpec,
    config: CommonConfig,
    build: impl FnOnce(PgPool) -> Api,
) -> ExitCode {
    let telemetry = match telemetry::init(spec.name, &config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("{}: {message}", spec.name);
            return ExitCode::from(2);
        }
    };
    let code = match start(&spec, &config, build).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(service = spec.name, error = %message, "service stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// [`run`] for a service whose API is not built yet: it parses the common
/// configuration under the service's own name, owns and migrates its schema,
/// and serves health and reflection only (no method is in its policy).
pub async fn run_without_api(spec: ServiceSpec) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};

    #[derive(clap::Parser)]
    struct Config {
        #[command(flatten)]
        common: CommonConfig,
    }

    let command = Config::command()
        .name(spec.name)
        .bin_name(spec.name)
        .about(format!(
            "The {} service of the Trade Assurance platform (health and reflection only, until its API is built)",
            spec.name
        ));
    let config = Config::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    run(spec, config.common, |_pool| {
        Api::new(Routes::default(), MethodPolicy::new())
    })
    .await
}

async fn start(
    spec: &ServiceSpec,
    config: &CommonConfig,
    build: impl FnOnce(PgPool) -> Api,
) -> Result<(), String> {
    // Fail fast on configuration before taking the port.
    let verifier =
        TokenVerifier::from_config(&config.auth, spec.name).map_err(|e| e.to_string())?;
    let tls = Tls::from_config(&config.tls)?;
    match tls.peers {
        Some(peers) => crate::client::install_peer_tls(peers),
        None => {
            if let Some(url) = crate::client::https_peers().first() {
                return Err(format!(
                    "{url} is an https:// peer URL: PEER_TLS_CA_FILE must be set"
                ));
            }
        }
    }
    let pool = db::lazy_pool(&config.database, config.server.request_timeout)?;
    let address = config.server.listen_addr_or(spec.default_port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("GRPC_LISTEN_ADDR: cannot listen on {address}: {e}"))?;
    tracing::info!(
        service = spec.name,
        %address,
        tls = tls.server.is_some(),
        mutual_tls = tls.server.as_ref().is_some_and(ServerTls::mutual),
        bind_service_identity = tls
            .server
            .as_ref()
            .is_some_and(|tls| tls.service_identity_binding().is_some()),
        "listening"
    );
    let health_listener = match config.server.health_listen_addr {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|e| format!("GRPC_HEALTH_LISTEN_ADDR: cannot listen on {address}: {e}"))?;
            tracing::info!(service = spec.name, %address, "health only, plaintext: listening");
            Some(listener)
        }
        None => None,
    };
    let api = build(pool.clone());
    serve_on(
        spec,
        config,
        verifier,
        Listeners {
            grpc: listener,
            tls: tls.server,
            health: health_listener,
        },
        pool,
        api,
        shutdown_signal(),
    )
    .await
}

/// Where a server listens: the gRPC listener, its TLS (none: plaintext),
/// and the optional plaintext health-only listener.
struct Listeners {
    grpc: TcpListener,
    tls: Option<ServerTls>,
    health: Option<TcpListener>,
}

/// Serves on `listener` until `shutdown` completes, then drains and closes the
/// pool. Used by [`run`] and by in-process tests (with a listener on port 0).
/// The TLS settings of `config` apply to `listener`.
pub async fn serve(
    spec: &ServiceSpec,
    config: &CommonConfig,
    verifier: TokenVerifier,
    listener: TcpListener,
    pool: PgPool,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let tls = Tls::from_config(&config.tls)?.server;
    let listeners = Listeners {
        grpc: listener,
        tls,
        health: None,
    };
    serve_on(spec, config, verifier, listeners, pool, api, shutdown).await
}

async fn serve_on(
    spec: &ServiceSpec,
    config: &CommonConfig,
    verifier: TokenVerifier,
    listeners: Listeners,
    pool: PgPool,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness {
        health: health.clone(),
        grpc_services: served_services(spec),
    };
    readiness.set(ServingStatus::NotServing).await;
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;

    let (draining_tx, draining) = watch::channel(false);
    let (prepared_tx, prepared) = tokio::sync::oneshot::channel::<()>();
    let Api {
        routes,
        policy,
        prepare,
        background,
    } = api;
    let tracking = tokio::spawn(track_readiness(
        readiness.clone(),
        pool.clone(),
        pool.connect_options().as_ref().clone(),
        spec.migrator,
        IdempotencyKeys::new(spec.schema),
        prepare,
        prepared_tx,
    ));
    let mut drain_started = draining.clone();
    let background = tokio::spawn(run_background(background, prepared, draining));
    let purge = tokio::spawn(purge_idempotency_keys(
        IdempotencyKeys::new(spec.schema),
        pool.clone(),
        config.database.idempotency_key_retention,
    ));

    let readiness_delay = config.server.shutdown_readiness_delay;
    let on_shutdown = async move {
        shutdown.await;
        readiness.set(ServingStatus::NotServing).await;
        if !readiness_delay.is_zero() {
            tracing::info!(
                ?readiness_delay,
                "shutdown requested: not serving, still accepting"
            );
            tokio::time::sleep(readiness_delay).await;
        }
        tracing::info!("shutdown requested: draining in-flight requests");
        let _ = draining_tx.send(true);
    };

    let reflection_v1 = reflection_builder(spec, "grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(|e| format!("reflection v1: {e}"))?;
    let reflection_v1alpha = reflection_builder(spec, "grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .map_err(|e| format!("reflection v1alpha: {e}"))?;
    let health_only = match listeners.health {
        Some(listener) => {
            // Reflection of the health service alone, for grpcurl (v1alpha before 1.8.8).
            let reflection = |name| {
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .with_service_name("grpc.health.v1.Health")
                    .with_service_name(name)
            };
            let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
                .build_v1()
                .map_err(|e| format!("reflection of the health listener: {e}"))?;
            let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
                .build_v1alpha()
                .map_err(|e| format!("reflection of the health listener: {e}"))?;
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health_service.clone())
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .serve_with_incoming(no_delay(listener)),
            ))
        }
        None => None,
    };
    let policy = policy.with_declared(&[audit::SERVICE_NAME]);
    let binding = listeners
        .tls
        .as_ref()
        .and_then(ServerTls::service_identity_binding)
        .cloned();
    let router = middleware(
        &config.server,
        Arc::new(verifier),
        Arc::new(policy),
        binding,
    )
    .add_routes(routes)
    .add_service(AuditTrail::new(pool.clone(), spec.schema).into_server())
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha);
    let server: BoxFuture<'_, Result<(), tonic::transport::Error>> = match listeners.tls {
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(tls_handshakes(listeners.grpc, tls), on_shutdown),
        ),
        None => {
            Box::pin(router.serve_with_incoming_shutdown(no_delay(listeners.grpc), on_shutdown))
        }
    };

    let grace = config.server.shutdown_grace_period;
    let (result, drained) = tokio::select! {
        result = server => (result.map_err(|e| format!("gRPC server failed: {e}")), true),
        _ = async {
            while !*drain_started.borrow_and_update() {
                if drain_started.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "grace period over: abandoning the requests still running");
            (Ok(()), false)
        }
    };
    tracking.abort();
    purge.abort();
    if let Some(health_only) = health_only {
        health_only.abort();
    }
    // Background work saw the drain signal with the listener; it may finish its
    // current step within the grace period (briefly, if that is already over).
    let bound = if drained {
        grace
    } else {
        Duration::from_millis(500)
    };
    if tokio::time::timeout(bound, background).await.is_err() {
        tracing::warn!("background work did not stop within the grace period");
    }
    if drained {
        pool.close().await;
    } else {
        // Requests still running hold connections; closing the pool would wait
        // for them. They are cancelled when the runtime stops, right after this.
        let _ = tokio::time::timeout(Duration::from_millis(500), pool.close()).await;
    }
    tracing::info!("stopped");
    result
}

/// The whole middleware stack, outermost first.
type Middleware = Stack<
    AuthLayer,
    Stack<
        StatusHygieneLayer,
        Stack<DeadlineLayer, Stack<AdmissionLayer, Stack<RpcMetricsLayer, Identity>>>,
    >,
>;

/// The accepted connections, each with Nagle's algorithm off: a response's
/// last small frame must not wait for the client's delayed acknowledgement
/// (about 40 ms per call otherwise, measured by the benchmark).
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            // Slower, not broken: serve the connection anyway.
            tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
        }
        Ok(stream)
    })
}

/// The connections of `listener` once their TLS handshake succeeded, each
/// with who its client is by its certificate. A failed handshake (a
/// plaintext client, no or a wrong client certificate) closes that
/// connection and is logged; it never stops the server.
fn tls_handshakes(
    listener: tokio::net::TcpListener,
    tls: ServerTls,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConnection>> {
    use futures_util::StreamExt as _;
    let acceptor = tls.acceptor();
    no_delay(listener)
        .map(move |accepted| {
            let acceptor = acceptor.clone();
            async move {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(error) => return Some(Err(error)),
                };
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => Some(Ok(TlsConnection::new(tls))),
                    Ok(Err(error)) => {
                        tracing::info!(?peer, %error, "TLS handshake failed: connection closed");
                        None
                    }
                    Err(_) => {
                        tracing::info!(?peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake too slow: connection closed");
                        None
                    }
                }
            }
        })
        .buffer_unordered(TLS_HANDSHAKES_AT_ONCE)
        .filter_map(std::future::ready)
}

fn middleware(
    config: &ServerConfig,
    verifier: Arc<TokenVerifier>,
    policy: Arc<MethodPolicy>,
    binding: Option<ServiceIdentityBinding>,
) -> tonic::transport::Server<Middleware> {
    tonic::transport::Server::builder()
        // Detect dead peers so drained connections do not linger.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Continue the caller's W3C trace: the span's parent is set before it is entered.
        .trace_fn(telemetry::server_span)
        // Per-method count, errors and duration by final status (shed calls too), and the status on the span.
        .layer(RpcMetricsLayer::new(
            &telemetry::meter(),
            policy.methods().map(str::to_owned),
        ))
        // At most GRPC_CONCURRENCY_LIMIT requests at once in the process; above it UNAVAILABLE.
        .layer(AdmissionLayer::new(config.concurrency_limit))
        // The caller's grpc-timeout, capped by ours; past it DEADLINE_EXCEEDED, and Postgres is told.
        .layer(DeadlineLayer::new(config.request_timeout))
        // Undecodable requests INVALID_ARGUMENT, oversized ones RESOURCE_EXHAUSTED (tonic says otherwise).
        .layer(StatusHygieneLayer)
        // Authentication (JWT, bound to the client certificate under mutual TLS) and
        // per-method authorization; health and reflection are public.
        .layer(AuthLayer::new(verifier, policy).binding_service_identity(binding))
}

/// Reflection v1 and v1alpha (grpcurl before 1.8.8 speaks only v1alpha) list
/// only the services this process really serves; every message of the platform
/// can still be described.
fn reflection_builder(
    spec: &ServiceSpec,
    reflection_service: &str,
) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ta_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest and friends, so grpcurl can print error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name(reflection_service);
    for name in served_services(spec) {
        builder = builder.with_service_name(name);
    }
    builder
}

/// The gRPC services a process serves: its service's own, and the audit
/// trail every process serves.
fn served_services(spec: &ServiceSpec) -> Vec<&'static str> {
    let mut names = spec.grpc_services.to_vec();
    names.push(audit::SERVICE_NAME);
    names
}

/// The readiness statuses: the server as a whole (`""`) and each served service.
#[derive(Clone)]
struct Readiness {
    health: HealthReporter,
    grpc_services: Vec<&'static str>,
}

impl Readiness {
    async fn set(&self, status: ServingStatus) {
        for name in std::iter::once("").chain(self.grpc_services.iter().copied()) {
            self.health.set_service_status(name, status).await;
        }
    }
}

/// NOT_SERVING until the database answers, this service's migrations ran and
/// its idempotency table is there; afterwards follows the database's
/// availability within about a second.
///
/// The checks use a connection of their own, outside the pool: a pool that is
/// busy under load must not make the service look down, and a dead database
/// must be noticed without waiting out the pool's acquire timeout.
async fn track_readiness(
    readiness: Readiness,
    pool: PgPool,
    options: PgConnectOptions,
    migrator: &'static Migrator,
    idempotency_keys: IdempotencyKeys,
    prepare: Option<Prepare>,
    prepared: tokio::sync::oneshot::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let step = match migrations::apply(migrator, &pool, &idempotency_keys).await {
            Ok(()) => match &prepare {
                Some(prepare) => prepare(pool.clone()).await,
                None => Ok(()),
            },
            Err(error) => Err(error),
        };
        match step {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "database not ready, or migrations or preparation failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = prepared.send(());
    tracing::info!("migrations applied: serving");
    readiness.set(ServingStatus::Serving).await;
    let mut serving = true;
    let mut probe: Option<PgConnection> = None;
    loop {
        tokio::time::sleep(READINESS_RECHECK).await;
        let answers = tokio::time::timeout(
            READINESS_PROBE_TIMEOUT,
            database_answers(&mut probe, &options),
        )
        .await
        .unwrap_or(false);
        if !answers {
            // A connection that failed or hung is not trusted again.
            probe = None;
        }
        if answers != serving {
            serving = answers;
            if serving {
                tracing::info!("database answers again: serving");
                readiness.set(ServingStatus::Serving).await;
            } else {
                tracing::warn!("database does not answer: not serving");
                readiness.set(ServingStatus::NotServing).await;
            }
        }
    }
}

/// One round trip on the probe connection, connecting it first if needed.
async fn database_answers(probe: &mut Option<PgConnection>, options: &PgConnectOptions) -> bool {
    if probe.is_none() {
        match PgConnection::connect_with(options).await {
            Ok(connection) => *probe = Some(connection),
            Err(_) => return false,
        }
    }
    match probe {
        Some(connection) => connection.ping().await.is_ok(),
        None => false,
    }
}

/// Starts the service's background work once it is prepared, and waits for
/// all of it to end (it ends when draining starts).
async fn run_background(
    work: Vec<Background>,
    prepared: tokio::sync::oneshot::Receiver<()>,
    mut draining: Draining,
) {
    if work.is_empty() {
        return;
    }
    tokio::select! {
        ready = prepared => if ready.is_err() { return },
        _ = draining.wait_for(|drain| *drain) => return,
    }
    let tasks: Vec<_> = work
        .into_iter()
        .map(|work| tokio::spawn(work(draining.clone())))
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "background work stopped abnormally");
        }
    }
}

/// Forgets expired idempotency keys once an hour. Replicas may overlap: the
/// delete is harmless to repeat.
async fn purge_idempotency_keys(keys: IdempotencyKeys, pool: PgPool, retention: Duration) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(3_600));
    loop {
        every_hour.tick().await;
        match keys.purge(&pool, retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            // Before migrations ran the table may not exist yet; try next hour.
            Err(error) => tracing::debug!(?error, "idempotency key purge skipped"),
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C (a terminal).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
