use std::process::ExitCode;

use clap::Parser;
use dispute::{Links, SPEC, api, config::Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let links = match Links::from_config(&config) {
        Ok(links) => links,
        Err(message) => {
            eprintln!("dispute: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = links.store.probe().await {
        eprintln!("dispute: {message}");
        return ExitCode::from(2);
    }
    let common = config.common.clone();
    ta_runtime::server::run(SPEC, common, |pool| api(&config, pool, links)).await
}
