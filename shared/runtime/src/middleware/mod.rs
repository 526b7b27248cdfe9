//! The server's own tower layers, each answering with a gRPC status itself
//! (or, for [`metrics`], observing the status the others answered).
//! A leaf module: it imports nothing from `server` or `auth` (both import it),
//! so the runtime's modules form no import loop. `server::middleware` stacks
//! them, one commented line per layer.

mod admission;
pub mod deadline;
pub mod metrics;
mod status_hygiene;

use std::{future::Future, pin::Pin};

pub use admission::AdmissionLayer;
pub use deadline::{DeadlineLayer, remaining_budget};
pub use metrics::RpcMetricsLayer;
pub use status_hygiene::StatusHygieneLayer;

/// The future of the server's own middleware.
pub type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

/// A finished response carrying only `status` (a "trailers-only" gRPC answer).
pub(crate) fn answer<E: Send + 'static>(status: tonic::Status) -> ResponseFuture<E> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}
