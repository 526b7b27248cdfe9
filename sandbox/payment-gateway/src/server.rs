//! The process: the HTTP API on its listener, the migrations (retried until
//! the database answers; `/healthz` says 503 until then), the workers, and
//! an orderly shutdown (stop accepting, let held answers go, drain in-flight
//! requests and deliveries, close the pool).

use std::{
    future::Future,
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    api::{self, Shared},
    app::Gateway,
    config::{Config, Options},
    storage, workers,
};

/// The whole life of the process, for `main`.
pub async fn run(config: Config) -> ExitCode {
    let telemetry = match ta_runtime::telemetry::init("payment-gateway-sandbox", &config.telemetry)
    {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("payment-gateway-sandbox: {message}");
            return ExitCode::from(2);
        }
    };
    let code = match start(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "payment-gateway-sandbox stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn start(config: &Config) -> Result<(), String> {
    let options = config.options()?;
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(config.database_url.expose())
        .map_err(|e| format!("DATABASE_URL: not a usable Postgres URL: {e}"))?;
    let listener = TcpListener::bind(config.listen_addr).await.map_err(|e| {
        format!(
            "GATEWAY_SANDBOX_LISTEN_ADDR: cannot listen on {}: {e}",
            config.listen_addr
        )
    })?;
    tracing::info!(address = %config.listen_addr, webhooks = ?options.webhook.as_ref().map(|w| &w.url), "listening");
    serve(
        options,
        pool,
        listener,
        ta_runtime::server::shutdown_signal(),
    )
    .await
}

/// Serves on `listener` until `shutdown` completes, then drains and closes
/// the pool. Used by [`run`] and by tests (with a listener on port 0).
///
/// # Errors
/// The server failed.
pub async fn serve(
    options: Options,
    pool: PgPool,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (drain, draining) = watch::channel(false);
    let drain = Arc::new(drain);
    let shared = Arc::new(Shared {
        gateway: Gateway::new(
            pool.clone(),
            options.faults.clone(),
            options.seed,
            options.settle_after,
            options.auto_credit_after,
        ),
        api_key: options.api_key.as_ref().map(|k| k.expose().to_owned()),
        ready: Default::default(),
        draining: draining.clone(),
    });
    let background = tokio::spawn(background(shared.clone(), options, draining));
    let stop = drain.clone();
    let readiness = shared.clone();
    let served = axum::serve(listener, api::router(shared))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining");
            // Not ready any more: load balancers stop sending work here.
            readiness.ready.store(false, Ordering::Release);
            let _ = stop.send(true);
        })
        .await
        .map_err(|e| format!("the HTTP server failed: {e}"));
    let _ = drain.send(true);
    if let Err(error) = background.await {
        tracing::warn!(%error, "a background task ended abnormally");
    }
    pool.close().await;
    tracing::info!("stopped");
    served
}

/// Migrates (retrying until the database answers), then runs the workers
/// until the server drains.
async fn background(shared: Arc<Shared>, options: Options, mut draining: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match storage::MIGRATOR.run(&shared.gateway.pool).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "database not ready or migrations failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = draining.wait_for(|d| *d) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    shared.ready.store(true, Ordering::Release);
    tracing::info!("migrations applied: serving");
    let settle = workers::settle(shared.clone(), options.poll_interval, draining.clone());
    match options.webhook {
        Some(target) => {
            let deliver = workers::deliver(shared, target, options.poll_interval, draining);
            tokio::join!(settle, deliver);
        }
        None => settle.await,
    }
}
