//! The escrow service: `domain` (pure rules: the ledger and the escrow
//! account's state machine), `storage` (the Postgres ledger, accounts and
//! the API's records), `app` (use cases, each inside the caller's
//! transaction, the feed's events, deadlines, timer reactions, payouts),
//! `views` (records as the API shows them), `gateway` (the payment gateway,
//! its adapters and its webhooks' signature), `grpc` and `webhook_http` (the
//! transports), and the wiring below.

pub mod app;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod storage;
pub mod views;
pub mod webhook_http;

use std::sync::Arc;

use ta_proto::escrow::escrow_service_server::EscrowServiceServer;
use ta_runtime::{
    auth::MethodPolicy,
    server::{Api, ServiceSpec},
};
use ta_workflow::{
    admin::{self, WorkflowAdmin},
    feed::Feed,
    timers::{TimerWorker, Timers},
};

use crate::{
    app::{
        context::{self, Flows},
        deadlines,
        reactions::EscrowTimers,
        worker::{self, GatewayWorker},
    },
    gateway::PaymentGateway,
};

/// How often the shared accounts' balance deltas are folded into their rows.
const ROLL_UP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the gauges (money held, the workflow backlog) are sampled.
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

pub const ESCROW_SERVICE: &str = "tradeassurance.escrow.v1.EscrowService";

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "escrow",
    schema: storage::SCHEMA,
    default_port: 50053,
    grpc_services: &[ESCROW_SERVICE, admin::SERVICE_NAME],
    migrator: &storage::MIGRATOR,
};

/// The service's routes, policy, preparation (the workflow tables, the
/// first payout run, missing hold deadline timers) and background work (the timer worker) over `pool`,
/// paying through `gateway`.
pub fn api(config: &config::Config, pool: sqlx::PgPool, gateway: Arc<dyn PaymentGateway>) -> Api {
    let schema = context::schema();
    let (stop_streams, streams_end) = ta_workflow::shutdown_channel();
    let flows = Arc::new(Flows::new(
        gateway,
        Feed::new(schema, context::FEED).ending_on(streams_end),
        Timers::new(schema),
        config.settings(),
    ));
    let limit = config.common.server.max_message_bytes;
    let webhooks = config.webhook_listen_addr.map(|addr| {
        (
            addr,
            Arc::new(webhook_http::Webhooks::new(pool.clone(), flows.clone())),
        )
    });
    let escrow = EscrowServiceServer::new(grpc::EscrowApi::new(
        pool.clone(),
        flows.clone(),
        config.workflow.feed.clone(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let admin = WorkflowAdmin::new(pool.clone(), schema).into_server();
    let mut routes = tonic::service::Routes::new(escrow);
    routes = routes.add_service(admin);
    let (gauges_pool, held_pool, roll_up_pool) = (pool.clone(), pool.clone(), pool.clone());
    let gateway_worker = GatewayWorker {
        pool: pool.clone(),
        flows: flows.clone(),
        poll_interval: config.gateway_worker_poll,
    };
    let worker = TimerWorker::new(
        pool,
        Timers::new(schema),
        Arc::new(EscrowTimers {
            flows: flows.clone(),
        }),
        config.workflow.timers.clone(),
    );
    let payout_interval = config.payout_interval;
    Api::new(routes, MethodPolicy::declared_for(SPEC.grpc_services))
        .prepared_by(move |pool| async move {
            ta_workflow::install(&pool, schema)
                .await
                .map_err(|e| e.to_string())?;
            deadlines::ensure_payout_timer(&pool, &Timers::new(schema), payout_interval)
                .await
                .map_err(|e| e.to_string())?;
            deadlines::ensure_hold_deadlines(&pool, &Timers::new(schema))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .with_background(move |draining| worker.run(draining))
        .with_background(move |draining| gateway_worker.run(draining))
        .with_background(move |draining| {
            worker::roll_up_balances(roll_up_pool, ROLL_UP_INTERVAL, draining)
        })
        .with_background(move |draining| async move {
            if let Some((addr, webhooks)) = webhooks {
                webhook_http::serve(addr, webhooks, draining).await;
            }
        })
        .with_background(move |draining| {
            ta_workflow::report_gauges(gauges_pool, schema, GAUGE_INTERVAL, draining)
        })
        .with_background(move |draining| {
            worker::report_money_held(held_pool, GAUGE_INTERVAL, draining)
        })
        .with_background(move |mut draining| async move {
            // Open event streams end when the server drains.
            let _ = draining.wait_for(|d| *d).await;
            let _ = stop_streams.send(true);
        })
}
