use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use escrow::{SPEC, api, config::Config, gateway::memory::InMemoryGateway};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let common = config.common.clone();
    // The sandbox is the only gateway adapter so far (see gateway.rs).
    let gateway = Arc::new(InMemoryGateway::new());
    ta_runtime::server::run(SPEC, common, |pool| api(&config, pool, gateway)).await
}
