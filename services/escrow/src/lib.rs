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
use ta_runtime::server::{Api, ServiceSpec};
use ta_workflow::{
    admin,
    service_api::{GAUGE_INTERVAL, WorkflowApi},
    timers::Timers,
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
    let workflow = WorkflowApi::new(&pool, schema);
    let flows = Arc::new(Flows::new(
        gateway,
        workflow.feed(context::FEED),
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
        config.group_commit,
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let gateway_worker = GatewayWorker {
        pool: pool.clone(),
        flows: flows.clone(),
        poll_interval: config.gateway_worker_poll,
    };
    let payout_interval = config.payout_interval;
    let held_pool = pool.clone();
    workflow
        .timers(EscrowTimers { flows }, config.workflow.timers.clone())
        .then_prepare(move |pool| async move {
            deadlines::ensure_payout_timer(&pool, &Timers::new(schema), payout_interval)
                .await
                .map_err(|e| e.to_string())?;
            deadlines::ensure_hold_deadlines(&pool, &Timers::new(schema))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .into_api(tonic::service::Routes::new(escrow), &SPEC)
        .with_background(move |draining| gateway_worker.run(draining))
        .with_background(move |draining| worker::roll_up_balances(pool, ROLL_UP_INTERVAL, draining))
        .with_background(move |draining| async move {
            if let Some((addr, webhooks)) = webhooks {
                webhook_http::serve(addr, webhooks, draining).await;
            }
        })
        .with_background(move |draining| {
            worker::report_money_held(held_pool, GAUGE_INTERVAL, draining)
        })
}
