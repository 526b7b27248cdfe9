//! The dispute service. Its API (`proto/tradeassurance/dispute/v1`) is not served
//! yet: until it is, the process owns and migrates its schema and answers
//! health and reflection only, so the platform's shape and ports are real.

use std::process::ExitCode;

use ta_runtime::server::{ServiceSpec, run_without_api};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[tokio::main]
async fn main() -> ExitCode {
    run_without_api(ServiceSpec {
        name: "dispute",
        schema: "dispute",
        default_port: 50054,
        grpc_services: &[],
        migrator: &MIGRATOR,
    })
    .await
}
