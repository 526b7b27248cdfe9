//! Outgoing calls to other services: every call carries the caller's W3C trace
//! context and, when given, a bearer token; through [`traced`] each call is
//! also a client span with the `rpc.*` attributes and its final status, and
//! is counted and timed (`rpc.client.call.duration`, `rpc.client.requests`,
//! `rpc.client.errors`, the attributes of the server's metrics).

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use opentelemetry::{global, propagation::Injector};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::{Channel, Endpoint},
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    middleware::{
        ResponseFuture,
        metrics::{Call, RpcInstruments, Side, split_path},
    },
    telemetry::{self, inject_trace_context},
};

/// Adds `traceparent` (and `authorization` when a token is set) to each call.
/// Use with a generated client's `with_interceptor`.
#[derive(Clone, Default)]
pub struct OutgoingCall {
    authorization: Option<MetadataValue<Ascii>>,
}

impl OutgoingCall {
    pub fn with_bearer(token: &str) -> Result<Self, String> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not valid header text".to_string())?;
        Ok(Self {
            authorization: Some(value),
        })
    }
}

impl Interceptor for OutgoingCall {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_trace_context(request.metadata_mut());
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that connects on first use and reconnects by itself.
pub fn lazy_channel(url: &str, request_timeout: Duration) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("`{url}` is not a valid endpoint URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// `inner` (a [`Channel`], say) with a client span, metrics and the span's
/// trace context on every call. Generated clients take it in place of the
/// channel; with [`OutgoingCall`] as interceptor the span's context wins.
pub fn traced<S>(inner: S) -> Traced<S> {
    Traced {
        inner,
        instruments: Arc::new(RpcInstruments::new(&telemetry::meter(), Side::Client)),
    }
}

/// See [`traced`].
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
    instruments: Arc<RpcInstruments>,
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Traced<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        // Our own calls: their paths are few, so they are labelled as they are.
        let (service, method) = split_path(&path).unwrap_or(("", &path));
        let span = tracing::info_span!(
            "grpc.call",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // The next hop's parent is this span.
        let context = span.context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
        });
        let mut call = Call::start(
            self.instruments.clone(),
            service,
            method,
            Instant::now(),
            span.clone(),
        );
        let work = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                match work.await {
                    Ok(response) => Ok(call.observe(response)),
                    Err(error) => {
                        // No answer at all (connection refused, reset): tonic says UNAVAILABLE.
                        call.finish(Code::Unavailable);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
    use tower::ServiceExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[tokio::test]
    async fn a_traced_call_is_a_client_span_whose_context_goes_out() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let server = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let traceparent = request.headers()["traceparent"]
                .to_str()
                .unwrap()
                .to_owned();
            sent_tx.send(traceparent).unwrap();
            async { Ok::<_, Infallible>(tonic::Status::not_found("no").into_http()) }
        });
        let caller = tracing::info_span!("caller");
        let caller_context = caller.context().span().span_context().clone();
        let request = http::Request::builder()
            .uri("http://escrow/tradeassurance.escrow.v1.EscrowService/GetAccount")
            .body(tonic::body::Body::empty())
            .unwrap();
        let response = traced(server)
            .oneshot(request)
            .instrument(caller)
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "5");
        let traceparent = sent_rx.recv().unwrap();
        assert!(
            traceparent.starts_with(&format!("00-{}-", caller_context.trace_id())),
            "{traceparent}"
        );
        assert!(
            !traceparent.contains(&caller_context.span_id().to_string()),
            "the client span, not the caller, is the next hop's parent: {traceparent}"
        );
    }

    #[test]
    fn outgoing_calls_carry_the_bearer_token() {
        let mut call = OutgoingCall::with_bearer("abc.def.ghi").unwrap();
        let request = call.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc.def.ghi"
        );
    }

    #[test]
    fn endpoints_are_validated() {
        assert!(lazy_channel("not a url", Duration::from_secs(1)).is_err());
    }
}
