//! Trace context stored with a row (outbox call, timer, event) and restored
//! when a worker acts on it, so the work continues the trace that caused it.

use std::collections::HashMap;

use opentelemetry::{global, propagation::Extractor, trace::TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context of the span current when a row was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredTrace {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl StoredTrace {
    /// The current span's context; empty outside a trace.
    pub fn current() -> Self {
        let context = tracing::Span::current().context();
        let mut carrier = HashMap::new();
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
        Self {
            traceparent: carrier.remove("traceparent"),
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        }
    }

    /// Makes the stored context `span`'s parent, before it is entered.
    pub fn parent(&self, span: &tracing::Span) {
        if self.traceparent.is_none() {
            return;
        }
        let parent = global::get_text_map_propagator(|p| p.extract(self));
        // Fails only without an OpenTelemetry layer; then there is no trace to join.
        let _ = span.set_parent(parent);
    }
}

impl StoredTrace {
    /// Links `span` to the stored context without joining its trace: for work
    /// that runs long after what caused it (a timer firing days later), a
    /// trace of its own that points back is easier to read than one trace
    /// spanning days.
    pub fn link(&self, span: &tracing::Span) {
        if self.traceparent.is_none() {
            return;
        }
        let context = global::get_text_map_propagator(|p| p.extract(self));
        let cause = context.span().span_context().clone();
        if cause.is_valid() {
            span.add_link(cause);
        }
    }
}

impl Extractor for StoredTrace {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}
