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

use std::{sync::Arc, time::Duration};

use ta_proto::contract::contract_service_server::ContractServiceServer;
use ta_runtime::{
    auth::MethodPolicy,
    pipeline::Mutations,
    server::{Api, ServiceSpec},
};
use ta_workflow::{
    admin::{self, WorkflowAdmin},
    consumer::Consumer,
    feed::Feed,
    janitor::Janitor,
    outbox::{Outbox, Relay},
    timers::{TimerWorker, Timers},
};

use crate::app::{Flows, reactions};

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
    let (stop_streams, streams_end) = ta_workflow::shutdown_channel();
    let flows = Arc::new(Flows {
        feed: Feed::new(schema, app::FEED).ending_on(streams_end),
        timers: Timers::new(schema),
        outbox: Outbox::new(schema),
        settings: config.settings(),
    });
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
    let admin = WorkflowAdmin::new(pool.clone(), schema).into_server();
    let routes = tonic::service::Routes::new(contract).add_service(admin);

    let relay = Relay::new(
        pool.clone(),
        Outbox::new(schema),
        links.peers.clone(),
        links.credentials.clone(),
        Arc::new(reactions::Completions {
            flows: flows.clone(),
        }),
        config.workflow.outbox.clone(),
    );
    let consumer = Consumer::new(
        pool.clone(),
        schema,
        reactions::escrow_subscription(),
        links.peers,
        links.credentials,
        Arc::new(reactions::EscrowEvents {
            flows: flows.clone(),
        }),
        config.workflow.consumer.clone(),
    );
    let timers = TimerWorker::new(
        pool.clone(),
        Timers::new(schema),
        Arc::new(reactions::Timers { flows }),
        config.workflow.timers.clone(),
    );
    let janitor = Janitor::new(pool.clone(), schema, config.workflow.retention);
    let gauges_pool = pool;
    Api::new(routes, MethodPolicy::declared_for(SPEC.grpc_services))
        .prepared_by(move |pool| async move {
            ta_workflow::install(&pool, schema)
                .await
                .map_err(|e| e.to_string())
        })
        .with_background(move |draining| relay.run(draining))
        .with_background(move |draining| consumer.run(draining))
        .with_background(move |draining| timers.run(draining))
        .with_background(move |draining| janitor.run(draining))
        .with_background(move |draining| {
            ta_workflow::report_gauges(gauges_pool, schema, Duration::from_secs(15), draining)
        })
        .with_background(move |mut draining| async move {
            // Open event streams end when the server drains.
            let _ = draining.wait_for(|d| *d).await;
            let _ = stop_streams.send(true);
        })
}
