use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use escrow::{SPEC, api, config::Config, gateway::http::HttpGateway};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let common = config.common.clone();
    // The binary pays only through a gateway over the network (the sandbox
    // process locally); the in-process one is for in-process tests.
    let Some(url) = config.gateway_url.as_deref() else {
        eprintln!(
            "error: ESCROW_GATEWAY_URL is required: the payment gateway's base URL (make run starts the sandbox at http://127.0.0.1:50060)"
        );
        return ExitCode::from(2);
    };
    let api_key = config
        .gateway_api_key
        .as_ref()
        .map(|k| k.expose().to_owned());
    let gateway = match HttpGateway::new(url, config.gateway_timeout, api_key) {
        Ok(gateway) => Arc::new(gateway),
        Err(error) => {
            eprintln!("error: ESCROW_GATEWAY_URL: {error}");
            return ExitCode::from(2);
        }
    };
    ta_runtime::server::run(SPEC, common, |pool| api(&config, pool, gateway)).await
}
