//! Traces and metrics leave the service over OTLP when the standard `OTEL_*`
//! variables say so, and traces continue the caller's W3C trace context; log
//! lines carry the ids of their span. The collector is a real OTLP/gRPC
//! endpoint (trace and metrics services) in this test process. With the
//! variables unset nothing is exported and nothing connects anywhere.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use e2e_tests::*;
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value::Value as AnyValue},
    metrics::v1::{metric::Data, number_data_point::Value as NumberValue},
    trace::v1::Span,
};
use serde_json::json;
use ta_runtime::auth::Role;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received
            .lock()
            .expect("collector lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics
            .lock()
            .expect("collector lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves the collector on a free loopback port of `runtime`; its endpoint URL.
    fn start(&self, runtime: &tokio::runtime::Runtime) -> String {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind collector");
        let address: SocketAddr = listener.local_addr().expect("collector address");
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self.clone()))
                .add_service(MetricsServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    fn exports(&self) -> usize {
        self.received.lock().expect("collector lock").len()
            + self.metrics.lock().expect("collector lock").len()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The value of `key` among `attributes`, as text (integers in decimal).
fn attribute(attributes: &[KeyValue], key: &str) -> String {
    text(
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref()),
    )
}

/// (service.name, trace id, parent span id, span name) of every span received.
fn spans(collector: &Collector) -> Vec<(String, String, String, String)> {
    full_spans(collector)
        .into_iter()
        .map(|(service_name, span)| {
            (
                service_name,
                hex(&span.trace_id),
                hex(&span.parent_span_id),
                span.name,
            )
        })
        .collect()
}

/// Every span received, with the service.name of its resource.
fn full_spans(collector: &Collector) -> Vec<(String, Span)> {
    let received = collector.received.lock().expect("collector lock");
    let mut spans = Vec::new();
    for request in received.iter() {
        for resource_spans in &request.resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .map(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push((service_name.clone(), span.clone()));
                }
            }
        }
    }
    spans
}

/// One series of a metric: (metric name, rpc.method, rpc.grpc.status_code).
type Series = (String, String, String);

/// The latest value of every `rpc.*` series received (counts for counters,
/// observation counts for histograms; cumulative, so the last export holds
/// the totals), checking each series' other attributes and units.
fn rpc_series(collector: &Collector) -> BTreeMap<Series, u64> {
    let received = collector.metrics.lock().expect("collector lock");
    let mut series = BTreeMap::new();
    for request in received.iter() {
        for resource in &request.resource_metrics {
            let service_name = resource
                .resource
                .as_ref()
                .map(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            assert_eq!(service_name, "supplier-registry");
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    if !metric.name.starts_with("rpc.") {
                        continue;
                    }
                    let points: Vec<(&[KeyValue], u64)> = match &metric.data {
                        Some(Data::Sum(sum)) => {
                            assert_eq!(metric.unit, "{request}", "{}", metric.name);
                            sum.data_points
                                .iter()
                                .map(|p| {
                                    let value = match p.value {
                                        Some(NumberValue::AsInt(v)) => {
                                            u64::try_from(v).expect("a count")
                                        }
                                        other => {
                                            panic!("{}: not an integer {other:?}", metric.name)
                                        }
                                    };
                                    (p.attributes.as_slice(), value)
                                })
                                .collect()
                        }
                        Some(Data::Histogram(histogram)) => {
                            assert_eq!(metric.unit, "s", "{}", metric.name);
                            histogram
                                .data_points
                                .iter()
                                .map(|p| (p.attributes.as_slice(), p.count))
                                .collect()
                        }
                        other => panic!("{}: unexpected data {other:?}", metric.name),
                    };
                    for (attributes, value) in points {
                        assert_eq!(attribute(attributes, "rpc.system"), "grpc");
                        let method = attribute(attributes, "rpc.method");
                        if method != "_OTHER" {
                            assert_eq!(attribute(attributes, "rpc.service"), SUPPLIER_SERVICE);
                        }
                        let key = (
                            metric.name.clone(),
                            method,
                            attribute(attributes, "rpc.grpc.status_code"),
                        );
                        series.insert(key, value);
                    }
                }
            }
        }
    }
    series
}

/// The registry exporting to `endpoint` quickly (spans every 100 ms,
/// metrics every 200 ms), logging JSON.
fn exporting_registry(database: &TestDatabase, endpoint: &str) -> Service {
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &database.url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("LOG_FORMAT", "json"),
        ],
    );
    registry.wait_health("", "SERVING");
    registry
}

/// grpcurl arguments of a call with an optional token and traceparent.
fn traced_call(
    registry: &Service,
    method: &str,
    token: Option<&str>,
    trace_id: Option<&str>,
    body: &Value,
) -> std::process::Output {
    let mut args: Vec<String> = vec!["-plaintext".into()];
    if let Some(token) = token {
        args.extend(["-H".into(), format!("authorization: Bearer {token}")]);
    }
    if let Some(trace_id) = trace_id {
        args.extend([
            "-H".into(),
            format!("traceparent: 00-{trace_id}-{CALLER_SPAN_ID}-01"),
        ]);
    }
    args.extend([
        "-d".into(),
        body.to_string(),
        registry.addr(),
        format!("{SUPPLIER_SERVICE}/{method}"),
    ]);
    grpcurl(&args)
}

/// The JSON log lines of `log` whose message is `message`.
fn log_lines(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .collect()
}

#[test]
fn spans_are_exported_over_otlp_and_continue_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let collector = Collector::default();
    let endpoint = collector.start(&runtime);
    let database = fresh_database();
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &database.url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    registry.wait_health("", "SERVING");

    let token = mint("buyer-1", Role::Buyer);
    let body = json!({"supplier_id": "01a20dc2-164c-76bc-8b8b-9350c554b133"}).to_string();
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-H",
        &format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),
        "-d",
        &body,
        &registry.addr(),
        &format!("{SUPPLIER_SERVICE}/GetSupplier"),
    ]);
    assert_eq!(rpc_error(&output).code, "NotFound");

    // Shutting down flushes whatever the batch processor still holds.
    registry.terminate();
    assert!(registry.wait_exit(PATIENCE).success(), "{}", registry.log());

    let exported = spans(&collector);
    // grpcurl sends the header on its reflection calls too; look at the call itself.
    let (service_name, _, parent, _) = exported
        .iter()
        .find(|(_, trace_id, _, name)| trace_id == TRACE_ID && name.ends_with("/GetSupplier"))
        .unwrap_or_else(|| panic!("no GetSupplier span of trace {TRACE_ID} among {exported:?}"));
    assert_eq!(service_name, "supplier-registry");
    assert_eq!(
        parent, CALLER_SPAN_ID,
        "the server span's parent is the caller's span"
    );
    drop(runtime);
}

#[test]
fn per_method_metrics_span_statuses_and_log_ids_of_real_calls() {
    const REGISTER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const DENIED_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let collector = Collector::default();
    let endpoint = collector.start(&runtime);
    let database = fresh_database();
    let mut registry = exporting_registry(&database, &endpoint);

    let supplier = mint("supplier-otel-1", Role::Supplier);
    let buyer = mint("buyer-otel-1", Role::Buyer);
    let registered = traced_call(
        &registry,
        "RegisterSupplier",
        Some(&supplier),
        Some(REGISTER_TRACE),
        &json!({
            "idempotency_key": "register-otel-1",
            "legal_name": "Hanoi Precision Parts JSC",
            "country_code": "VN",
            "business_licence_number": "0101234567",
            "contacts": [{ "name": "Nguyen Van An", "email": "an@example.com" }]
        }),
    );
    assert!(
        registered.status.success(),
        "{}",
        rpc_error(&registered).stderr
    );
    let missing = json!({"supplier_id": "01a20dc2-164c-76bc-8b8b-9350c554b133"});
    for trace_id in [Some(TRACE_ID), None] {
        let output = traced_call(&registry, "GetSupplier", Some(&buyer), trace_id, &missing);
        assert_eq!(rpc_error(&output).code, "NotFound");
    }
    let unauthenticated = traced_call(&registry, "GetSupplier", None, None, &missing);
    assert_eq!(rpc_error(&unauthenticated).code, "Unauthenticated");
    let denied = traced_call(
        &registry,
        "VerifySupplier",
        Some(&buyer),
        Some(DENIED_TRACE),
        &json!({}),
    );
    assert_eq!(rpc_error(&denied).code, "PermissionDenied");
    // Health checks are not API traffic: these must not show up.
    for _ in 0..3 {
        assert_eq!(registry.health("").as_deref(), Ok("SERVING"));
    }

    // Shutting down exports a last round of metrics and flushes the spans.
    registry.terminate();
    assert!(registry.wait_exit(PATIENCE).success(), "{}", registry.log());

    // --- metrics: per method and final status, nothing for health or reflection -------
    let series = rpc_series(&collector);
    let mut expected = BTreeMap::new();
    let calls = [
        ("RegisterSupplier", "0", 1),
        ("GetSupplier", "5", 2),
        ("GetSupplier", "16", 1),
        ("VerifySupplier", "7", 1),
    ];
    for (method, code, count) in calls {
        for metric in ["rpc.server.call.duration", "rpc.server.requests"] {
            expected.insert(
                (metric.to_owned(), method.to_owned(), code.to_owned()),
                count,
            );
        }
        if code != "0" {
            expected.insert(
                (
                    "rpc.server.errors".to_owned(),
                    method.to_owned(),
                    code.to_owned(),
                ),
                count,
            );
        }
    }
    assert_eq!(series, expected, "exported rpc.* series");

    // --- server spans: rpc.* attributes and the final status ---------------------------
    let exported = full_spans(&collector);
    let server_span = |trace_id: &str, method: &str| {
        exported
            .iter()
            .map(|(_, span)| span)
            .find(|span| {
                hex(&span.trace_id) == trace_id
                    && attribute(&span.attributes, "rpc.method") == method
            })
            .unwrap_or_else(|| panic!("no {method} span of trace {trace_id}"))
    };
    for (trace_id, method, code) in [
        (REGISTER_TRACE, "RegisterSupplier", "0"),
        (TRACE_ID, "GetSupplier", "5"),
        (DENIED_TRACE, "VerifySupplier", "7"),
    ] {
        let span = server_span(trace_id, method);
        assert_eq!(span.name, format!("{SUPPLIER_SERVICE}/{method}"));
        assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(hex(&span.parent_span_id), CALLER_SPAN_ID);
        assert_eq!(attribute(&span.attributes, "rpc.system"), "grpc");
        assert_eq!(attribute(&span.attributes, "rpc.service"), SUPPLIER_SERVICE);
        assert_eq!(attribute(&span.attributes, "rpc.grpc.status_code"), code);
        // Neither OK nor the caller's mistakes are the server's errors.
        assert_ne!(
            span.status.as_ref().map_or(0, |s| s.code),
            2,
            "{method} span status"
        );
    }

    // --- logs: a request's lines carry its trace id and span id ------------------------
    let log = registry.log();
    let registered_lines = log_lines(&log, "supplier registered");
    assert_eq!(registered_lines.len(), 1, "{log}");
    let line = &registered_lines[0];
    assert_eq!(line["trace_id"], REGISTER_TRACE, "{line}");
    let span_id = line["span_id"].as_str().expect("span_id");
    let register_span = server_span(REGISTER_TRACE, "RegisterSupplier");
    let mut ancestry = vec![hex(&register_span.span_id)];
    // The handler may log inside a span of its own, within the server span.
    for (_, span) in &exported {
        if hex(&span.trace_id) == REGISTER_TRACE && ancestry.contains(&hex(&span.parent_span_id)) {
            ancestry.push(hex(&span.span_id));
        }
    }
    assert!(
        ancestry.iter().any(|id| id == span_id),
        "{span_id} is not in {ancestry:?}"
    );
    // A refusal by the authorization layer, before any handler, is logged in the call's span.
    let denied_lines = log_lines(&log, "call denied by method policy");
    assert_eq!(denied_lines.len(), 1, "{log}");
    assert_eq!(denied_lines[0]["trace_id"], DENIED_TRACE);
    assert_eq!(
        denied_lines[0]["span_id"],
        hex(&server_span(DENIED_TRACE, "VerifySupplier").span_id)
    );
    drop(runtime);
}

#[test]
fn without_otel_variables_nothing_is_exported_and_nothing_connects() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let collector = Collector::default();
    let endpoint = collector.start(&runtime);
    // OTLP's default endpoint: if it is free here, listen on it, so that an
    // exporter that connected by default would be seen.
    let default_port = std::net::TcpListener::bind("127.0.0.1:4317").ok();
    if let Some(listener) = &default_port {
        listener.set_nonblocking(true).expect("non-blocking");
    }
    let database = fresh_database();
    let buyer = mint("buyer-otel-2", Role::Buyer);
    let missing = json!({"supplier_id": "01a20dc2-164c-76bc-8b8b-9350c554b133"});

    // Unset: only the variables that tune export, none that asks for it.
    let unset: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &database.url),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    ];
    // Disabled: an endpoint, but the SDK switched off.
    let disabled: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &database.url),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    ];
    for env in [unset, disabled] {
        let mut registry = Service::spawn(SUPPLIER_REGISTRY, &env);
        registry.wait_health("", "SERVING");
        let output = traced_call(
            &registry,
            "GetSupplier",
            Some(&buyer),
            Some(TRACE_ID),
            &missing,
        );
        assert_eq!(rpc_error(&output).code, "NotFound");
        registry.terminate();
        assert!(registry.wait_exit(PATIENCE).success(), "{}", registry.log());
        let log = registry.log();
        assert!(
            !log.contains("could not flush") && !log.to_lowercase().contains("opentelemetry"),
            "{log}"
        );
    }
    assert_eq!(collector.exports(), 0, "nothing reached the collector");
    if let Some(listener) = default_port {
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "something connected to the default OTLP port"
        );
    }
    drop(runtime);
}

/// One claim decided by an arbiter: the decision's effects run in all four
/// services (dispute's outbox calls escrow, contract and supplier-registry;
/// contract's own outbox then calls supplier-registry and escrow), and every
/// span of them belongs to the arbiter's trace, each server span a child of
/// a client span of its caller.
#[test]
fn a_decided_claim_is_one_trace_across_the_four_services() {
    use e2e_tests::platform::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let collector = Collector::default();
    let endpoint = collector.start(&runtime);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    // A term's day lasts a second (the payment is due 300 "days" after signing).
    let platform = Platform::start_with(&otel, &[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &otel);
    let owner = "supplier-traced";
    let buyer = mint("buyer-traced", Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = dispute.call_ok(
        &dispute_method("FileClaim"),
        Some(&buyer),
        &json!({ "idempotency_key": "traced-claim", "contract_id": contract_id,
                 "reason": "CLAIM_REASON_DAMAGE", "quality_criterion_ids": ["QC-1"],
                 "amount_claimed": usd(310_000), "description": "every carton crushed" }),
    );
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    let claim = |id: &str| {
        dispute.call_ok(
            &dispute_method("GetClaim"),
            Some(&platform.staff.support),
            &json!({ "claim_id": id }),
        )["claim"]
            .clone()
    };
    wait_until(PATIENCE, "the claim to open", || {
        let c = claim(&claim_id);
        if c["status"] == "CLAIM_STATUS_NEGOTIATING" {
            Ok(())
        } else {
            Err(format!("{}", c["status"]))
        }
    });
    dispute.call_ok(
        &dispute_method("EscalateClaim"),
        Some(&platform.staff.arbiter),
        &json!({ "idempotency_key": "traced-escalate", "claim_id": claim_id, "reason": "clear-cut damage" }),
    );

    // The decision, in a trace of our own.
    let args = vec![
        "-plaintext".to_owned(),
        "-H".into(),
        format!("authorization: Bearer {}", platform.staff.arbiter),
        "-H".into(),
        format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),
        "-d".into(),
        json!({ "idempotency_key": "traced-decide", "claim_id": claim_id,
                "outcome": "CLAIM_OUTCOME_FULL_REFUND", "reason": "photos show every carton crushed" })
        .to_string(),
        dispute.addr(),
        dispute_method("DecideClaim"),
    ];
    let decided = grpcurl(&args);
    assert!(decided.status.success(), "{decided:?}");
    platform.wait_status(&contract_id, "CONTRACT_STATUS_REFUNDED");

    let wanted = [
        ("dispute", "DecideClaim"),
        ("escrow", "SettleClaim"),
        ("contract", "RecordClaimClosed"),
        ("supplier-registry", "RecordPenalty"),
        ("supplier-registry", "ReleaseCover"),
        ("escrow", "CloseEscrowAccount"),
    ];
    let traced = wait_until(PATIENCE, "every hop's spans to arrive", || {
        let traced: Vec<(String, Span)> = full_spans(&collector)
            .into_iter()
            .filter(|(_, span)| hex(&span.trace_id) == TRACE_ID)
            .collect();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(service, method)| {
                !traced.iter().any(|(s, span)| {
                    s == service
                        && span.kind == 2 // SERVER
                        && attribute(&span.attributes, "rpc.method") == *method
                })
            })
            .collect();
        // Spans leave each process in batches: wait for the callers' too.
        let orphans = traced
            .iter()
            .filter(|(_, span)| span.kind == 2 && hex(&span.parent_span_id) != CALLER_SPAN_ID)
            .filter(|(_, span)| {
                !traced
                    .iter()
                    .any(|(_, candidate)| candidate.span_id == span.parent_span_id)
            })
            .count();
        if missing.is_empty() && orphans == 0 {
            Ok(traced)
        } else {
            Err(format!(
                "missing {missing:?}, {orphans} spans without their parent yet"
            ))
        }
    });
    let services: std::collections::BTreeSet<&str> =
        traced.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["contract", "dispute", "escrow", "supplier-registry"]
    );
    // Every server span but the first hop's is the child of a client span
    // of another service in the same trace.
    for (service, span) in traced.iter().filter(|(_, span)| {
        // grpcurl's own reflection calls carry our traceparent too.
        span.kind == 2 && attribute(&span.attributes, "rpc.service").starts_with("tradeassurance.")
    }) {
        let method = attribute(&span.attributes, "rpc.method");
        if service == "dispute" && method == "DecideClaim" {
            assert_eq!(
                hex(&span.parent_span_id),
                CALLER_SPAN_ID,
                "our call is the parent"
            );
            continue;
        }
        let parent = traced
            .iter()
            .find(|(_, candidate)| candidate.span_id == span.parent_span_id)
            .unwrap_or_else(|| panic!("{service} {method}: no parent span in the trace"));
        assert_eq!(
            parent.1.kind, 3,
            "{service} {method}: the parent is a CLIENT span"
        );
        assert_ne!(
            &parent.0, service,
            "{service} {method}: called by another service"
        );
    }
    // The workflow figures worth watching (outbox backlog, overdue timers)
    // arrive from the services with background work.
    wait_until(PATIENCE, "the workflow gauges", || {
        let named: std::collections::BTreeSet<(String, String)> = collector
            .metrics
            .lock()
            .expect("collector lock")
            .iter()
            .flat_map(|r| r.resource_metrics.iter())
            .flat_map(|rm| {
                let service = rm
                    .resource
                    .as_ref()
                    .map(|r| attribute(&r.attributes, "service.name"))
                    .unwrap_or_default();
                rm.scope_metrics
                    .iter()
                    .flat_map(|sm| sm.metrics.iter())
                    .map(move |m| (service.clone(), m.name.clone()))
            })
            .collect();
        let wanted = ["contract", "escrow"]
            .map(|service| (service.to_owned(), "ta.workflow.timers.overdue".to_owned()));
        if wanted.iter().all(|w| named.contains(w)) {
            Ok(())
        } else {
            Err(format!("{named:?}"))
        }
    });
    // And the metrics of every service arrived.
    wait_until(PATIENCE, "metrics from the four services", || {
        let exported: std::collections::BTreeSet<String> = collector
            .metrics
            .lock()
            .expect("collector lock")
            .iter()
            .flat_map(|r| r.resource_metrics.iter())
            .filter_map(|rm| rm.resource.as_ref())
            .map(|r| attribute(&r.attributes, "service.name"))
            .collect();
        if exported.len() == 4 {
            Ok(())
        } else {
            Err(format!("{exported:?}"))
        }
    });
}
