//! The server's own tower layers, each answering with a gRPC status itself
//! (or, for [`metrics`], observing the status the others answered).
//! A leaf module: it imports nothing from `server` or `auth` (both import it),
//! so the runtime's modules form no import loop. `server::middleware` stacks
//! them, one commented line per layer.

mod admission;
pub mod deadline;
pub mod metrics;
mod status_hygiene;

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

pub use admission::AdmissionLayer;
pub use deadline::{DeadlineLayer, remaining_budget};
pub use metrics::RpcMetricsLayer;
pub use status_hygiene::StatusHygieneLayer;

/// The future of the server's own middleware.
pub type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

/// What one of the server's layers does with a request: the only part that
/// differs from one layer to the next. The layer's own value (its limits, its
/// shared counters, its verifier) is what [`Layered`] keeps beside the inner
/// service, so the tower plumbing around it is written once, here.
pub trait Middleware<S, B>: Clone
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    /// Serves `request`, calling `inner` (polled ready) or answering itself.
    fn call(&self, inner: &mut S, request: http::Request<B>) -> ResponseFuture<S::Error>;
}

/// A [`Middleware`] around the service it wraps: ready when the inner
/// service is, and every request goes through the middleware.
#[derive(Clone, Debug)]
pub struct Layered<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S> Layered<M, S> {
    pub fn new(middleware: M, inner: S) -> Self {
        Self { middleware, inner }
    }
}

impl<M, S, B> tower::Service<http::Request<B>> for Layered<M, S>
where
    M: Middleware<S, B>,
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.middleware.call(&mut self.inner, request)
    }
}

/// `impl tower::Layer` for a [`Middleware`]: it wraps a service in
/// [`Layered`] with a copy of itself. (The orphan rule forbids one blanket
/// impl of tower's trait for every middleware, hence the macro.)
macro_rules! layer_of_middleware {
    ($middleware:ty) => {
        impl<S> tower::Layer<S> for $middleware {
            type Service = $crate::middleware::Layered<Self, S>;

            fn layer(&self, inner: S) -> Self::Service {
                $crate::middleware::Layered::new(self.clone(), inner)
            }
        }
    };
}
pub(crate) use layer_of_middleware;

/// A finished response carrying only `status` (a "trailers-only" gRPC answer).
pub(crate) fn answer<E: Send + 'static>(status: tonic::Status) -> ResponseFuture<E> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}
