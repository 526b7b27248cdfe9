//! The contract service. Its API (`proto/tradeassurance/contract/v1`) is not served
//! yet: until it is, the process owns and migrates its schema and answers
//! health and reflection only, so the platform's shape and ports are real.

use std::process::ExitCode;

use clap::Parser;
use ta_runtime::{
    auth::MethodPolicy,
    config::CommonConfig,
    server::{Api, ServiceSpec},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The contract service of the Trade Assurance platform.
#[derive(Parser, Debug)]
#[command(name = "contract", version)]
struct Config {
    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let spec = ServiceSpec {
        name: "contract",
        schema: "contract",
        default_port: 50052,
        grpc_services: &[],
        migrator: &MIGRATOR,
    };
    ta_runtime::server::run(spec, config.common, |_pool| Api {
        routes: tonic::service::Routes::default(),
        policy: MethodPolicy::new(),
    })
    .await
}
