//! Outgoing calls to other services: every call carries the caller's W3C trace
//! context and, when given, a bearer token; through [`traced`] each call is
//! also a client span with the `rpc.*` attributes and its final status, and
//! is counted and timed (`rpc.client.call.duration`, `rpc.client.requests`,
//! `rpc.client.errors`, the attributes of the server's metrics).
//!
//! Channels connect through [`PeerConnector`]: an `http://` URL in
//! plaintext, an `https://` one over TLS with the process's peer TLS
//! settings (`PEER_TLS_*`, installed by the server at start-up, see
//! [`install_peer_tls`]).

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

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
    tls::PeerTls,
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

/// A channel that connects on first use and reconnects by itself (over
/// TLS for an `https://` URL, see [`PeerConnector`]).
pub fn lazy_channel(url: &str, request_timeout: Duration) -> Result<Channel, String> {
    let connector = PeerConnector::for_url(url)?;
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("`{url}` is not a valid endpoint URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .connect_with_connector_lazy(connector))
}

static PEER_TLS: OnceLock<PeerTls> = OnceLock::new();
static HTTPS_PEERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes `tls` the TLS of every `https://` peer channel of the process,
/// made before or after. The first one installed stays.
pub fn install_peer_tls(tls: PeerTls) {
    if PEER_TLS.set(tls).is_err() {
        tracing::debug!("peer TLS installed already: the first one stays");
    }
}

/// The `https://` peer URLs channels were made for so far: the server
/// refuses to start with any of them and no PEER_TLS_CA_FILE.
pub fn https_peers() -> Vec<String> {
    HTTPS_PEERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Opens a channel's connections: TCP without Nagle's delay, then TLS for an
/// `https://` URL (verified for the URL's host name or IP address, with the
/// client certificate of the peer TLS settings).
#[derive(Clone, Debug)]
pub struct PeerConnector {
    tls: bool,
}

impl PeerConnector {
    /// The connector for `url`'s scheme (`http` or `https`).
    ///
    /// # Errors
    /// Another scheme.
    pub fn for_url(url: &str) -> Result<Self, String> {
        let tls = match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("http") => false,
            Some("https") => {
                HTTPS_PEERS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(url.to_owned());
                true
            }
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        Ok(Self { tls })
    }
}

/// A connection to a peer, in plaintext or TLS.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<Box<dyn PeerIo>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("`{uri}` has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            if !tls {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn PeerIo>));
            }
            let peer_tls = PEER_TLS
                .get()
                .ok_or_else(|| format!("`{uri}` is https://, but PEER_TLS_CA_FILE is not set"))?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = peer_tls.connector().connect(name, tcp).await?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn PeerIo>))
        })
    }
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
        assert!(lazy_channel("ftp://escrow:1", Duration::from_secs(1)).is_err());
    }
}
