//! The supplier registry service: `domain` (pure rules), `app` (use cases in
//! one transaction), `storage` (Postgres), `grpc` (transport), and the wiring
//! below.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;
pub mod views;

use ta_proto::supplier::supplier_registry_service_server::SupplierRegistryServiceServer;
use ta_runtime::server::{Api, ServiceSpec};
use ta_workflow::{admin, service_api::WorkflowApi};

pub const REGISTRY_SERVICE: &str = "tradeassurance.supplier.v1.SupplierRegistryService";

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "supplier-registry",
    schema: storage::SCHEMA,
    default_port: 50051,
    grpc_services: &[REGISTRY_SERVICE, admin::SERVICE_NAME],
    migrator: &storage::MIGRATOR,
};

/// The service's routes, authorization policy and preparation. The registry
/// calls no one and keeps no timers: of the workflow machinery it uses the
/// event feed (its tables installed into the schema before SERVING, its
/// streams woken on commit and ended on drain) and, like every workflow
/// service, serves the operators' workflow admin service over its schema.
pub fn api(config: &config::Config, pool: sqlx::PgPool) -> Api {
    let limit = config.common.server.max_message_bytes;
    let workflow = WorkflowApi::new(&pool, storage::schema());
    let service = SupplierRegistryServiceServer::new(grpc::RegistryService::new(
        pool,
        config.penalty_policy(),
        workflow.feed(app::FEED),
        config.feed.clone(),
        config.group_commit,
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    workflow.into_api(tonic::service::Routes::new(service), &SPEC)
}
