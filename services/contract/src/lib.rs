//! The contract service: `domain` (pure rules: the state machine, terms,
//! negotiation, quality, fulfilment), `storage` (Postgres, one module per
//! aggregate), `app` (the use cases, one module per stage, and
//! `app::reactions`: outbox answers, escrow's feed, timers), `views` (the
//! contract in proto), `effects` (the calls to supplier-registry and escrow),
//! `grpc` (the transport), and the wiring below.

pub mod app;
pub mod config;
pub mod domain;
pub mod effects;
pub mod grpc;
pub mod storage;
pub mod views;

use std::sync::Arc;

use ta_proto::contract::contract_service_server::ContractServiceServer;
use ta_runtime::{
    pipeline::Mutations,
    server::{Api, ServiceSpec},
};
use ta_workflow::{admin, consumer::Consumer, service_api::WorkflowApi};

use crate::app::reactions;

pub const CONTRACT_SERVICE: &str = "tradeassurance.contract.v1.ContractService";

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "contract",
    schema: storage::SCHEMA,
    default_port: 50052,
    grpc_services: &[CONTRACT_SERVICE, admin::SERVICE_NAME],
    migrator: &storage::MIGRATOR,
};

/// What the process needs from outside besides its pool: who its peers are
/// and how it proves it is the contract service to them.
pub type Links = ta_workflow::Calls;

/// The service's routes, policy, preparation (the workflow tables) and
/// background work (outbox relay, escrow feed consumer, timers, janitor);
/// `store` keeps inspection reports' files.
pub fn api(
    config: &config::Config,
    pool: sqlx::PgPool,
    links: Links,
    store: ta_objects::Store,
) -> Api {
    let schema = storage::schema();
    let workflow = WorkflowApi::new(&pool, schema);
    let flows = Arc::new(workflow.flows(app::FEED, config.settings()));
    let limit = config.common.server.max_message_bytes;
    let contract = ContractServiceServer::new(
        grpc::ContractApi::new(
            Mutations::new(pool.clone(), storage::SCHEMA),
            flows.clone(),
            app::drafting::Registry {
                peers: links.peers.clone(),
                credentials: links.credentials.clone(),
                timeout: config.registry_timeout,
            },
            config.workflow.feed.clone(),
        )
        .with_store(store),
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let consumer = Consumer::new(
        pool,
        schema,
        reactions::escrow_subscription(),
        links.peers.clone(),
        links.credentials.clone(),
        Arc::new(reactions::EscrowEvents {
            flows: flows.clone(),
        }),
        config.workflow.consumer.clone(),
    );
    workflow
        .relay(
            links,
            reactions::Completions {
                flows: flows.clone(),
            },
            config.workflow.outbox.clone(),
        )
        .with_worker(move |draining| consumer.run(draining))
        .timers(reactions::Timers { flows }, config.workflow.timers.clone())
        .janitor(config.workflow.retention)
        .into_api(tonic::service::Routes::new(contract), &SPEC)
}
