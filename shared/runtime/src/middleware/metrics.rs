//! Per-method RPC metrics, and the final gRPC status on the call's span.
//!
//! Every call of the API gets, when it ends:
//!
//! * `rpc.server.call.duration` (histogram, seconds): the semantic
//!   conventions' call duration, from the request's arrival to the end of the
//!   response (its trailers);
//! * `rpc.server.requests` (counter) and `rpc.server.errors` (counter, calls
//!   that did not end OK);
//!
//! all with `rpc.system` = `grpc`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code` (the integer code). The same code, and the span
//! status (ERROR for the codes that are the server's fault), are recorded on
//! the call's span.
//!
//! The status is the final one: the `grpc-status` header of a trailers-only
//! answer (every status a layer or a failing handler produces), else the
//! `grpc-status` of the body's trailers, so the layer wraps the body. A body
//! dropped before its trailers (the caller went away) counts as CANCELLED.
//!
//! tonic enters a request's span only while it polls the response future, so
//! this layer (the outermost) calls the layers inside from that future: what
//! they log (a refused token, a shed request) carries the request's ids.
//!
//! Health checks and reflection are not API traffic: they are neither counted
//! nor timed (probes would drown the figures). A path that is not one of the
//! served methods is labelled `_OTHER`, so unknown paths cannot blow up the
//! number of series.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Frame, SizeHint};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter},
};
use tonic::{Code, codegen::Bytes};

use super::{Middleware, ResponseFuture, layer_of_middleware};

/// Histogram boundaries (seconds) the semantic conventions recommend for RPC durations.
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `rpc.service` and `rpc.method` of a path that is not a served method.
pub const OTHER: &str = "_OTHER";

/// Which end of a call is measured: names the instruments and decides which
/// codes make the span an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// The three instruments of one side.
#[derive(Clone, Debug)]
pub struct RpcInstruments {
    side: Side,
    duration: Histogram<f64>,
    requests: Counter<u64>,
    errors: Counter<u64>,
}

impl RpcInstruments {
    /// `rpc.{server,client}.call.duration`, `.requests` and `.errors` on `meter`.
    pub fn new(meter: &Meter, side: Side) -> Self {
        let prefix = match side {
            Side::Server => "rpc.server",
            Side::Client => "rpc.client",
        };
        Self {
            side,
            duration: meter
                .f64_histogram(format!("{prefix}.call.duration"))
                .with_unit("s")
                .with_description("Duration of gRPC calls, until the response's trailers")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            requests: meter
                .u64_counter(format!("{prefix}.requests"))
                .with_unit("{request}")
                .with_description("gRPC calls completed, by method and status code")
                .build(),
            errors: meter
                .u64_counter(format!("{prefix}.errors"))
                .with_unit("{request}")
                .with_description("gRPC calls that did not end OK, by method and status code")
                .build(),
        }
    }
}

/// `("pkg.Service", "Method")` of a gRPC path `/pkg.Service/Method`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Probes and tooling, not API traffic.
fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Whether `code` marks the span as failed: on the server only the codes
/// that are its own fault (the semantic conventions' list), on the client
/// every code but OK.
fn is_span_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

/// The `grpc-status` of a header or trailer map; a map without one (or
/// with garbage in it) says UNKNOWN, as gRPC clients read it.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from),
    )
}

/// One call being measured; records once, at the latest when dropped.
pub struct Call {
    instruments: Arc<RpcInstruments>,
    service: Arc<str>,
    method: Arc<str>,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Call {
    pub fn start(
        instruments: Arc<RpcInstruments>,
        service: &str,
        method: &str,
        started: Instant,
        span: tracing::Span,
    ) -> Self {
        Self {
            instruments,
            service: service.into(),
            method: method.into(),
            started,
            span,
            done: false,
        }
    }

    /// Records the call's end with `code` (only the first time).
    pub fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let attributes = [
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", self.service.to_string()),
            KeyValue::new("rpc.method", self.method.to_string()),
            KeyValue::new("rpc.grpc.status_code", i64::from(code as i32)),
        ];
        let instruments = &self.instruments;
        instruments.duration.record(elapsed, &attributes);
        instruments.requests.add(1, &attributes);
        if code != Code::Ok {
            instruments.errors.add(1, &attributes);
        }
        self.span
            .record("rpc.grpc.status_code", i64::from(code as i32));
        if is_span_error(instruments.side, code) {
            self.span.record("otel.status_code", "ERROR");
            self.span
                .record("otel.status_description", format!("{code:?}"));
        }
    }

    /// Finishes now for a trailers-only answer, else hands the call to the
    /// body, which finishes it on its trailers.
    pub fn observe(
        mut self,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = grpc_status(response.headers()) {
            self.finish(code);
            return response;
        }
        response.map(|inner| tonic::body::Body::new(MeteredBody { inner, call: self }))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped unfinished: the response was abandoned before its status.
        self.finish(Code::Cancelled);
    }
}

/// A response body that finishes its [`Call`] with the trailers' status.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            // The end without trailers: a gRPC client reads no status as UNKNOWN.
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The server side: see the module documentation.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    instruments: Arc<RpcInstruments>,
    served: Arc<HashSet<String>>,
}

impl RpcMetricsLayer {
    /// Instruments on `meter`; `served` are the paths (`/pkg.Service/Method`)
    /// labelled by name, any other path is `_OTHER`.
    pub fn new(meter: &Meter, served: impl IntoIterator<Item = String>) -> Self {
        Self {
            instruments: Arc::new(RpcInstruments::new(meter, Side::Server)),
            served: Arc::new(served.into_iter().collect()),
        }
    }
}

layer_of_middleware!(RpcMetricsLayer);

impl<S, B> Middleware<S, B> for RpcMetricsLayer
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    fn call(&self, inner: &mut S, request: http::Request<B>) -> ResponseFuture<S::Error> {
        let started = Instant::now();
        let path = request.uri().path();
        let labels = (!is_infrastructure(path)).then(|| match split_path(path) {
            Some((service, method)) if self.served.contains(path) => {
                (service.to_owned(), method.to_owned())
            }
            _ => (OTHER.to_owned(), OTHER.to_owned()),
        });
        let instruments = self.instruments.clone();
        // tonic enters the request's span (`trace_fn`) only while polling
        // this future, not while the service is called. The layers inside
        // are called from the future, so their log lines (a refused token,
        // a shed request) belong to the request's span too; the service
        // that was polled ready goes into the future, a clone stays.
        let clone = inner.clone();
        let mut inner = std::mem::replace(inner, clone);
        Box::pin(async move {
            let Some((service, method)) = labels else {
                return inner.call(request).await;
            };
            let mut call = Call::start(
                instruments,
                &service,
                &method,
                started,
                tracing::Span::current(),
            );
            match inner.call(request).await {
                Ok(response) => Ok(call.observe(response)),
                Err(error) => {
                    // tonic answers an error of the stack with UNKNOWN.
                    call.finish(Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Body as _;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    };
    use tower::{Layer, ServiceExt};

    use super::*;

    const GET: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier";

    struct Metrics {
        provider: SdkMeterProvider,
        exporter: InMemoryMetricExporter,
    }

    impl Metrics {
        fn new() -> Self {
            let exporter = InMemoryMetricExporter::default();
            let provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(exporter.clone()).build())
                .build();
            Self { provider, exporter }
        }

        fn layer(&self) -> RpcMetricsLayer {
            RpcMetricsLayer::new(&self.provider.meter("test"), [GET.to_owned()])
        }

        /// (metric, rpc.service, rpc.method, status code) -> count, after a flush.
        fn counts(&self) -> Vec<(String, String, String, i64, u64)> {
            self.provider.force_flush().unwrap();
            let mut counts = Vec::new();
            let exported = self.exporter.get_finished_metrics().unwrap();
            let Some(last) = exported.last() else {
                return counts;
            };
            for scope in last.scope_metrics() {
                for metric in scope.metrics() {
                    let attribute = |attributes: Vec<&KeyValue>, key: &str| {
                        attributes
                            .iter()
                            .find(|kv| kv.key.as_str() == key)
                            .map(|kv| kv.value.clone())
                    };
                    let mut push = |attributes: Vec<&KeyValue>, value: u64| {
                        let text = |key| {
                            attribute(attributes.clone(), key)
                                .map(|v| v.as_str().into_owned())
                                .unwrap_or_default()
                        };
                        let code = match attribute(attributes.clone(), "rpc.grpc.status_code") {
                            Some(opentelemetry::Value::I64(code)) => code,
                            _ => -1,
                        };
                        assert_eq!(text("rpc.system"), "grpc");
                        counts.push((
                            metric.name().to_owned(),
                            text("rpc.service"),
                            text("rpc.method"),
                            code,
                            value,
                        ));
                    };
                    match metric.data() {
                        AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                            for point in sum.data_points() {
                                push(point.attributes().collect(), point.value());
                            }
                        }
                        AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                            for point in histogram.data_points() {
                                push(point.attributes().collect(), point.count());
                            }
                        }
                        other => panic!("unexpected {} data {other:?}", metric.name()),
                    }
                }
            }
            counts.sort();
            counts
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    /// A body of one message and then `code` in the trailers.
    fn streamed(code: Code) -> http::Response<tonic::body::Body> {
        let frames = futures_util::stream::iter([
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers({
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
                trailers
            })),
        ]);
        http::Response::new(tonic::body::Body::new(http_body_util_stream(frames)))
    }

    /// A body from a stream of frames (what `http-body-util`'s `StreamBody` does).
    fn http_body_util_stream<St>(
        stream: St,
    ) -> impl http_body::Body<Data = Bytes, Error = tonic::Status>
    where
        St: futures_util::Stream<Item = Result<Frame<Bytes>, tonic::Status>>
            + Unpin
            + Send
            + 'static,
    {
        struct Streamed<St>(St);
        impl<St> http_body::Body for Streamed<St>
        where
            St: futures_util::Stream<Item = Result<Frame<Bytes>, tonic::Status>> + Unpin,
        {
            type Data = Bytes;
            type Error = tonic::Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
                Pin::new(&mut self.0).poll_next(cx)
            }
        }
        Streamed(stream)
    }

    async fn drain(response: http::Response<tonic::body::Body>) {
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
    }

    #[tokio::test]
    async fn counts_calls_by_method_and_final_status() {
        let metrics = Metrics::new();
        let service = tower::service_fn(|request: http::Request<()>| async move {
            Ok::<_, Infallible>(match request.uri().path() {
                GET => streamed(Code::Ok),
                "/tradeassurance.supplier.v1.SupplierRegistryService/Missing" => {
                    tonic::Status::not_found("no").into_http()
                }
                _ => streamed(Code::Internal),
            })
        });
        let service = metrics.layer().layer(service);
        for path in [
            GET,
            GET,
            "/tradeassurance.supplier.v1.SupplierRegistryService/Missing",
            "/x.v1.Y/Z",
        ] {
            let response = service.clone().oneshot(request(path)).await.unwrap();
            drain(response).await;
        }
        let health = service
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        drain(health).await;

        let service_name = "tradeassurance.supplier.v1.SupplierRegistryService";
        let mut expected = Vec::new();
        for metric in ["rpc.server.call.duration", "rpc.server.requests"] {
            expected.push((metric.to_owned(), OTHER.to_owned(), OTHER.to_owned(), 5, 1));
            expected.push((metric.to_owned(), OTHER.to_owned(), OTHER.to_owned(), 13, 1));
            expected.push((
                metric.to_owned(),
                service_name.to_owned(),
                "GetSupplier".to_owned(),
                0,
                2,
            ));
        }
        expected.push((
            "rpc.server.errors".to_owned(),
            OTHER.to_owned(),
            OTHER.to_owned(),
            5,
            1,
        ));
        expected.push((
            "rpc.server.errors".to_owned(),
            OTHER.to_owned(),
            OTHER.to_owned(),
            13,
            1,
        ));
        expected.sort();
        assert_eq!(metrics.counts(), expected);
    }

    #[tokio::test]
    async fn a_response_abandoned_before_its_trailers_is_cancelled() {
        let metrics = Metrics::new();
        let service = tower::service_fn(|_request: http::Request<()>| async {
            Ok::<_, Infallible>(streamed(Code::Ok))
        });
        let response = metrics
            .layer()
            .layer(service)
            .oneshot(request(GET))
            .await
            .unwrap();
        drop(response);
        let requests: Vec<_> = metrics
            .counts()
            .into_iter()
            .filter(|(name, ..)| name == "rpc.server.requests")
            .collect();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].3, Code::Cancelled as i64);
    }

    #[tokio::test]
    async fn the_layers_inside_are_called_in_the_requests_span() {
        use tracing::Instrument as _;
        use tracing_subscriber::layer::SubscriberExt as _;

        let metrics = Metrics::new();
        let service = tower::service_fn(|_request: http::Request<()>| {
            let span = tracing::Span::current()
                .metadata()
                .map(|m| m.name())
                .unwrap_or("none");
            async move {
                assert_eq!(span, "grpc.request");
                Ok::<_, Infallible>(tonic::Status::not_found("no").into_http())
            }
        });
        let _default = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO),
        );
        let call = metrics.layer().layer(service).oneshot(request(GET));
        // As tonic does: the span is entered while the future is polled.
        let response = call
            .instrument(tracing::info_span!("grpc.request"))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "5");
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path(GET),
            Some((
                "tradeassurance.supplier.v1.SupplierRegistryService",
                "GetSupplier"
            ))
        );
        assert_eq!(split_path("/nomethod"), None);
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path(""), None);
    }
}
