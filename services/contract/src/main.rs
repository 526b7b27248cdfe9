use std::process::ExitCode;

use clap::Parser;
use contract::{Links, SPEC, api, config::Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let links = match Links::from_config(SPEC.name, &config.workflow, &config.common.auth) {
        Ok(links) => links,
        Err(message) => {
            eprintln!("contract: {message}");
            return ExitCode::from(2);
        }
    };
    let store = match ta_objects::Store::from_config(&config.store) {
        Ok(store) => store,
        Err(message) => {
            eprintln!("contract: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = store.probe().await {
        eprintln!("contract: {message}");
        return ExitCode::from(2);
    }
    let common = config.common.clone();
    ta_runtime::server::run(SPEC, common, |pool| api(&config, pool, links, store)).await
}
