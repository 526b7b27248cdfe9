use std::process::ExitCode;

use clap::Parser;
use supplier_registry::{SPEC, api, config::Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let common = config.common.clone();
    ta_runtime::server::run(SPEC, common, |pool| api(&config, pool)).await
}
