//! Logs and traces: JSON logs through `tracing`, spans exported over OTLP when
//! the standard `OTEL_*` variables ask for it, and W3C trace context carried on
//! every server and client call.
//!
//! Spans always get real trace ids (an SDK tracer is installed even when nothing
//! is exported), so logs carry a trace id and context flows downstream whether
//! or not a collector is configured.

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::TelemetryConfig;

/// Owns the tracer provider; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// Whether the standard OpenTelemetry variables ask for OTLP trace export.
fn otlp_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber and propagator. Call once, first thing in `main`.
pub fn init(service_name: &'static str, config: &TelemetryConfig) -> Result<Telemetry, String> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name);
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = otlp_requested();
    if exporting {
        // The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| {
                format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {e}")
            })?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("LOG_LEVEL: invalid filter `{}`: {e}", config.log_level))?;
    let fmt = if config.log_format == "text" {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    };
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("telemetry already initialised: {e}"))?;
    Ok(Telemetry {
        provider,
        exporting,
    })
}

impl Telemetry {
    /// Flushes and stops span export; logs anything that could not be sent.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown()
            && self.exporting
        {
            tracing::warn!(%error, "could not flush telemetry");
        }
    }
}

/// The trace id of the current span, or 32 zeros outside any trace.
pub fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The server span of one gRPC call, parented on the caller's `traceparent`
/// before it is entered (used as tonic's `trace_fn`).
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %request.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    // Only fails when no OpenTelemetry layer is installed (unit tests); then
    // there is no trace to join anyway.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    span
}

/// Writes the current span's context as W3C `traceparent` into outgoing metadata.
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut MetadataInjector(metadata))
    });
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn the_server_span_continues_the_callers_trace() {
        with_tracing(|| {
            let request = http::Request::builder()
                .uri("/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier")
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = server_span(&request);
            let _entered = span.enter();
            assert_eq!(current_trace_id(), TRACE_ID);
        });
    }

    #[test]
    fn outgoing_calls_carry_the_current_trace() {
        with_tracing(|| {
            let request = http::Request::builder()
                .uri("/x.v1.Y/Z")
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = server_span(&request);
            let _entered = span.enter();
            let mut metadata = tonic::metadata::MetadataMap::new();
            inject_trace_context(&mut metadata);
            let traceparent = metadata.get("traceparent").unwrap().to_str().unwrap();
            assert!(
                traceparent.starts_with(&format!("00-{TRACE_ID}-")),
                "{traceparent}"
            );
            assert!(
                !traceparent.contains("00f067aa0ba902b7"),
                "a new span id for the hop"
            );
        });
    }

    #[test]
    fn a_call_without_context_starts_a_new_trace() {
        with_tracing(|| {
            let request = http::Request::builder().uri("/x.v1.Y/Z").body(()).unwrap();
            let span = server_span(&request);
            let _entered = span.enter();
            let trace_id = current_trace_id();
            assert_eq!(trace_id.len(), 32);
            assert_ne!(trace_id, "0".repeat(32));
        });
    }
}
