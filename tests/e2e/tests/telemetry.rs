//! Traces leave the service over OTLP when the standard `OTEL_*` variables say
//! so, and continue the caller's W3C trace context. The collector is a real
//! OTLP/gRPC endpoint in this test process.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use e2e_tests::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
};
use serde_json::json;
use ta_runtime::auth::Role;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (service.name, trace id, parent span id, span name) of every span received.
fn spans(collector: &Collector) -> Vec<(String, String, String, String)> {
    let received = collector.received.lock().expect("collector lock");
    let mut spans = Vec::new();
    for request in received.iter() {
        for resource_spans in &request.resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push((
                        service_name.clone(),
                        hex(&span.trace_id),
                        hex(&span.parent_span_id),
                        span.name.clone(),
                    ));
                }
            }
        }
    }
    spans
}

#[test]
fn spans_are_exported_over_otlp_and_continue_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let collector = Collector::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind collector");
    let address: SocketAddr = listener.local_addr().expect("collector address");
    let server = TraceServiceServer::new(collector.clone());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let database = fresh_database();
    let endpoint = format!("http://{address}");
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
