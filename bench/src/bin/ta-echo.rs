//! `ta-echo`: the benchmark's no-op baseline. It serves
//! `tradeassurance.testing.v1.EchoService` on `GRPC_LISTEN_ADDR` with tonic on
//! a multi-threaded tokio runtime and TCP_NODELAY, as the services do, and
//! nothing else: no database, no authentication, no middleware. Its CPU per
//! call is what gRPC and HTTP/2 cost; `make bench` reads the services' against it.

use std::{net::SocketAddr, process::ExitCode};

use ta_proto::tradeassurance::testing::v1::{
    EchoRequest, EchoResponse,
    echo_service_server::{EchoService, EchoServiceServer},
};
use tonic::{Request, Response, Status, transport::Server};

struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let text = std::env::var("GRPC_LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:50059".into());
    let addr: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("ta-echo: GRPC_LISTEN_ADDR `{text}` is not an address: {e}");
            return ExitCode::from(2);
        }
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EchoServiceServer<Echo>>().await;
    // The bench waits for the readiness check ("") as it does for the services.
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let served = Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(EchoServiceServer::new(Echo))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ta-echo: cannot serve on {addr}: {e}");
            ExitCode::from(1)
        }
    }
}
