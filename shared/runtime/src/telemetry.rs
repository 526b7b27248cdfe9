//! Logs, traces and metrics: JSON logs through `tracing`, spans and metrics
//! exported over OTLP when the standard `OTEL_*` variables ask for it, and W3C
//! trace context carried on every server and client call.
//!
//! Spans always get real trace ids (an SDK tracer is installed even when nothing
//! is exported), so logs carry a trace id and context flows downstream whether
//! or not a collector is configured. Every log line inside a span carries that
//! span's `trace_id` and `span_id`.
//!
//! Metrics are recorded into the global meter provider: an SDK provider with
//! a periodic OTLP exporter when export is asked for, else OpenTelemetry's
//! no-op provider (instruments cost next to nothing and nothing connects
//! anywhere). [`gauge`] and [`sample_every`] let a service publish figures of
//! its own (money held, open claims, a backlog).

use std::{collections::HashMap, fmt, future::Future, sync::Arc, time::Duration};

/// The attribute type of [`Gauge::set`], so services need not name the crate.
pub use opentelemetry::KeyValue;

use opentelemetry::{
    global,
    metrics::{Meter, ObservableGauge},
    propagation::{Extractor, Injector},
    trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::TelemetryConfig;

/// The instrumentation scope of the runtime's own instruments and of [`meter`].
pub const METER_NAME: &str = "ta-runtime";

/// Owns the tracer and meter providers; [`Telemetry::shutdown`] flushes
/// pending spans and a last round of metrics.
pub struct Telemetry {
    provider: SdkTracerProvider,
    meters: Option<SdkMeterProvider>,
    exporting: bool,
}

/// What the standard OpenTelemetry variables ask to export over OTLP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Export {
    traces: bool,
    metrics: bool,
}

/// Reads `OTEL_SDK_DISABLED`, `OTEL_{TRACES,METRICS}_EXPORTER` and the OTLP
/// endpoints through `var`. An exporter other than `otlp` or `none` is an
/// error naming its variable: we cannot honour it, and silently exporting
/// nothing would hide that.
fn export_requested(var: impl Fn(&str) -> Option<String>) -> Result<Export, String> {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let exporter = |name: &str| -> Result<bool, String> {
        match var(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "otlp") => Ok(true),
            Some("none") => Ok(false),
            Some(other) => Err(format!(
                "{name}: exporter `{other}` is not supported (otlp or none)"
            )),
        }
    };
    let traces = exporter("OTEL_TRACES_EXPORTER")?;
    let metrics = exporter("OTEL_METRICS_EXPORTER")?;
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(Export::default());
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT");
    Ok(Export {
        traces: traces && (endpoint || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
        metrics: metrics && (endpoint || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
    })
}

/// Installs the global subscriber, propagator and (when exporting) meter
/// provider. Call once, first thing in `main`, inside the Tokio runtime.
pub fn init(service_name: &'static str, config: &TelemetryConfig) -> Result<Telemetry, String> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let export = export_requested(|name| std::env::var(name).ok())?;

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name);
    }
    let resource = resource.build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource.clone());
    if export.traces {
        // The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| {
                format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP span exporter: {e}")
            })?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    global::set_tracer_provider(provider.clone());

    let meters = if export.metrics {
        // OTEL_EXPORTER_OTLP_[METRICS_]* configure the exporter, and
        // OTEL_METRIC_EXPORT_INTERVAL (ms, default 60 s) the periodic reader.
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| {
                format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP metric exporter: {e}")
            })?;
        let meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(exporter)
            .build();
        global::set_meter_provider(meters.clone());
        Some(meters)
    } else {
        None
    };

    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("LOG_LEVEL: invalid filter `{}`: {e}", config.log_level))?;
    let (fmt, dispatch) = log_layers(&config.log_format, std::io::stdout);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .with(dispatch)
        .try_init()
        .map_err(|e| format!("telemetry already initialised: {e}"))?;
    Ok(Telemetry {
        provider,
        meters,
        exporting: export.traces || export.metrics,
    })
}

impl Telemetry {
    /// Flushes and stops export; logs anything that could not be sent.
    pub fn shutdown(self) {
        if let Some(meters) = self.meters
            && let Err(error) = meters.shutdown()
        {
            tracing::warn!(%error, "could not flush metrics");
        }
        if let Err(error) = self.provider.shutdown()
            && self.exporting
        {
            tracing::warn!(%error, "could not flush telemetry");
        }
    }
}

/// The meter for a service's own instruments (the global provider's, so a
/// no-op when metrics are not exported).
pub fn meter() -> Meter {
    global::meter(METER_NAME)
}

/// A gauge a service sets whenever it learns a new value of a figure worth
/// watching (money held in escrow, open claims, overdue timers); the
/// exporter reads the latest value of each attribute set at every export.
/// Keep it alive as long as the figure should be exported.
#[derive(Clone)]
pub struct Gauge {
    latest: Arc<std::sync::Mutex<HashMap<Vec<KeyValue>, f64>>>,
    _instrument: ObservableGauge<f64>,
}

/// Registers the gauge `name` (e.g. `ta.escrow.held`) with `unit` (UCUM,
/// e.g. `s`, `{timer}`) on [`meter`].
pub fn gauge(name: &'static str, description: &'static str, unit: &'static str) -> Gauge {
    gauge_on(&meter(), name, description, unit)
}

/// [`gauge`] on a given meter (tests).
pub fn gauge_on(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
    unit: &'static str,
) -> Gauge {
    let latest: Arc<std::sync::Mutex<HashMap<Vec<KeyValue>, f64>>> = Arc::default();
    let read = latest.clone();
    let instrument = meter
        .f64_observable_gauge(name)
        .with_description(description)
        .with_unit(unit)
        .with_callback(move |observer| {
            let latest = read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (attributes, value) in latest.iter() {
                observer.observe(*value, attributes);
            }
        })
        .build();
    Gauge {
        latest,
        _instrument: instrument,
    }
}

impl Gauge {
    /// The figure's current value for `attributes` (e.g. a currency).
    pub fn set(&self, value: f64, attributes: &[KeyValue]) {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(attributes.to_vec(), value);
    }
}

/// Runs `sample` every `every` until `stop` trips (or its sender is gone):
/// background work (`Api::with_background`) that refreshes [`Gauge`]s from
/// the database. A sample that fails should log and keep the last values.
pub async fn sample_every<F, Fut>(
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut sample: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            // The guard `wait_for` answers is dropped at once: held in the
            // select's output it would make this future `!Send`.
            () = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
            _ = ticks.tick() => sample().await,
        }
    }
}

/// Adds the trace id and span id of the event's span to each log line:
/// top-level `trace_id` and `span_id` keys of the JSON object, or
/// `trace_id=… span_id=…` at the end of a text line. Lines outside any span
/// are left as they are.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
    dispatch: DispatchSlot,
}

/// The subscriber the log formatter belongs to. While an event is being
/// dispatched `tracing` hides the current dispatcher (against recursion), so
/// the formatter keeps its own (weak) handle, taken when it is registered.
#[derive(Clone, Default)]
struct DispatchSlot(Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchSlot {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

impl DispatchSlot {
    /// The trace and span ids of the span `id` (started now if it was not yet).
    fn ids(&self, id: &tracing::span::Id) -> Option<(TraceId, SpanId)> {
        let dispatch = self.0.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| (span_context.trace_id(), span_context.span_id()))
    }
}

/// The fmt layer of `format` (`text` or `json`) with ids on every line, and
/// the layer that gives it its subscriber.
fn log_layers<S, W>(format: &str, writer: W) -> (Box<dyn Layer<S> + Send + Sync>, DispatchSlot)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = DispatchSlot::default();
    let layer = if format == "text" {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().with_target(false),
                json: false,
                dispatch: dispatch.clone(),
            })
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
                json: true,
                dispatch: dispatch.clone(),
            })
            .boxed()
    };
    (layer, dispatch)
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = ctx
            .parent_span()
            .map(|span| span.id())
            .and_then(|id| self.dispatch.ids(&id));
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        let newline = &line[body.len()..];
        match (self.json, body.strip_suffix('}')) {
            (true, Some(object)) => write!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}{newline}"
            ),
            _ => write!(
                writer,
                "{body} trace_id={trace_id} span_id={span_id}{newline}"
            ),
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
    let path = request.uri().path();
    let (service, method) = crate::middleware::metrics::split_path(path).unwrap_or(("", path));
    // The status fields are recorded when the call ends (the metrics layer).
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
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

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn the_otel_variables_choose_what_is_exported() {
        let both = Export {
            traces: true,
            metrics: true,
        };
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let cases: &[(&[(&str, &str)], Export)] = &[
            (&[], Export::default()),
            (&[endpoint], both),
            (
                &[endpoint, ("OTEL_SDK_DISABLED", "true")],
                Export::default(),
            ),
            (&[endpoint, ("OTEL_SDK_DISABLED", "false")], both),
            (
                &[endpoint, ("OTEL_METRICS_EXPORTER", "none")],
                Export {
                    traces: true,
                    metrics: false,
                },
            ),
            (
                &[endpoint, ("OTEL_TRACES_EXPORTER", "none")],
                Export {
                    traces: false,
                    metrics: true,
                },
            ),
            (
                &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317")],
                Export {
                    traces: false,
                    metrics: true,
                },
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")],
                Export {
                    traces: true,
                    metrics: false,
                },
            ),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], Export::default()),
        ];
        for (vars, expected) in cases {
            assert_eq!(export_requested(env(vars)), Ok(*expected), "{vars:?}");
        }
        let error = export_requested(env(&[("OTEL_METRICS_EXPORTER", "prometheus")])).unwrap_err();
        assert!(error.starts_with("OTEL_METRICS_EXPORTER"), "{error}");
    }

    /// A writer that collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_json_log_line_in_a_span_carries_its_trace_and_span_ids() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let (fmt, dispatch) = log_layers("json", move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(fmt)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(dispatch);
        let (outer_ids, inner_ids) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let ids = |span: &tracing::Span| {
                let context = span.context().span().span_context().clone();
                (
                    context.trace_id().to_string(),
                    context.span_id().to_string(),
                )
            };
            let outer = tracing::info_span!("outer");
            let _outer = outer.enter();
            tracing::info!(answer = 42, "in the outer span");
            let inner = tracing::info_span!("inner");
            let _inner = inner.enter();
            tracing::info!("in the inner span");
            (ids(&outer), ids(&inner))
        });
        let written = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = written
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), 3, "{written}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["trace_id"], outer_ids.0.as_str());
        assert_eq!(lines[1]["span_id"], outer_ids.1.as_str());
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert_eq!(lines[2]["trace_id"], outer_ids.0.as_str(), "one trace");
        assert_eq!(lines[2]["span_id"], inner_ids.1.as_str());
        assert_ne!(inner_ids.1, outer_ids.1);
    }

    #[tokio::test]
    async fn gauges_export_the_latest_value_of_each_attribute_set() {
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader,
            data::{AggregatedMetrics, MetricData},
        };

        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let gauge = gauge_on(
            &provider.meter("test"),
            "ta.test.held",
            "money held",
            "{unit}",
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut samples = 0;
        let sampled = gauge.clone();
        let sampling = sample_every(Duration::from_millis(1), stop, || {
            samples += 1;
            sampled.set(f64::from(samples), &[KeyValue::new("currency", "USD")]);
            if samples == 3 {
                let _ = stop_tx.send(true);
            }
            std::future::ready(())
        });
        tokio::time::timeout(Duration::from_secs(10), sampling)
            .await
            .unwrap();
        gauge.set(7.0, &[KeyValue::new("currency", "JPY")]);
        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let last = exported.last().unwrap();
        let metric = last
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == "ta.test.held")
            .unwrap();
        let AggregatedMetrics::F64(MetricData::Gauge(gauge_data)) = metric.data() else {
            panic!("not a gauge: {:?}", metric.data());
        };
        let mut points: Vec<(String, f64)> = gauge_data
            .data_points()
            .map(|point| {
                let currency = point
                    .attributes()
                    .next()
                    .unwrap()
                    .value
                    .as_str()
                    .into_owned();
                (currency, point.value())
            })
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(points, [("JPY".to_owned(), 7.0), ("USD".to_owned(), 3.0)]);
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
