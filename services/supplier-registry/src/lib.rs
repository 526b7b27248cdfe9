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
use ta_runtime::{
    auth::MethodPolicy,
    server::{Api, ServiceSpec},
};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "supplier-registry",
    schema: storage::SCHEMA,
    default_port: 50051,
    grpc_services: &["tradeassurance.supplier.v1.SupplierRegistryService"],
    migrator: &storage::MIGRATOR,
};

/// The service's routes and authorization policy over `pool`.
pub fn api(config: &config::Config, pool: sqlx::PgPool) -> Api {
    let limit = config.common.server.max_message_bytes;
    let service = SupplierRegistryServiceServer::new(grpc::RegistryService::new(
        pool,
        config.penalty_policy(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    Api::new(
        tonic::service::Routes::new(service),
        MethodPolicy::declared_for(SPEC.grpc_services),
    )
}
