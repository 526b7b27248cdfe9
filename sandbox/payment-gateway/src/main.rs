use std::process::ExitCode;

use clap::Parser;
use payment_gateway_sandbox::{config::Config, server};

#[tokio::main]
async fn main() -> ExitCode {
    server::run(Config::parse()).await
}
