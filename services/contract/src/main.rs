//! The contract service. Its API (`proto/tradeassurance/contract/v1`) is not served
//! yet: until every RPC is, the process owns and migrates its schema and answers
//! health and reflection only, so the platform's shape and ports are real.

use std::process::ExitCode;

use contract::storage::{MIGRATOR, SCHEMA};
use ta_runtime::server::{ServiceSpec, run_without_api};

#[tokio::main]
async fn main() -> ExitCode {
    run_without_api(ServiceSpec {
        name: "contract",
        schema: SCHEMA,
        default_port: 50052,
        grpc_services: &[],
        migrator: &MIGRATOR,
    })
    .await
}
