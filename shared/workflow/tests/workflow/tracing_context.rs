//! The trace context travels with the work: a call written in a trace is
//! delivered in it, the receiver's feed event carries it, the consumer applies
//! that event in it, and a timer scheduled in it fires in a trace of its own
//! linked to it.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use sqlx::PgPool;
use ta_workflow::timers::Timers;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The spans this test process finished.
fn exported() -> &'static opentelemetry_sdk::trace::InMemorySpanExporter {
    static EXPORTER: OnceLock<opentelemetry_sdk::trace::InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(opentelemetry_sdk::trace::InMemorySpanExporter::default)
}

fn install_tracing() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exported().clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("workflow-tests")));
    // Another test of this process may have installed it already.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[sqlx::test(migrations = false)]
async fn work_continues_the_trace_that_caused_it(pool: PgPool) {
    install_tracing();
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;

    let request_span = tracing::info_span!("incoming request");
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        let carrier = std::collections::HashMap::from([(
            "traceparent".to_owned(),
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
        )]);
        p.extract(&carrier)
    });
    let _ = request_span.set_parent(parent);
    async {
        let mut tx = pool.begin().await.expect("tx");
        order_effect(&mut tx, "traced", false).await;
        Timers::new(caller_schema())
            .schedule_after(&mut tx, "deadline", "traced", Duration::ZERO, b"")
            .await
            .expect("timer");
        tx.commit().await.expect("commit");
    }
    .instrument(request_span)
    .await;

    let (_, config) = config(&url, &[]);
    let relay = relay(pool.clone(), &probe.url, Default::default(), &config);
    let timers = timer_worker(pool.clone(), &config);
    let consumer = consumer(pool.clone(), &probe.url, Duration::ZERO, &config);
    let workers = [
        Running::spawn(|shutdown| relay.run(shutdown)),
        Running::spawn(|shutdown| timers.run(shutdown)),
        Running::spawn(|shutdown| consumer.run(shutdown)),
    ];
    eventually(
        "call applied, event consumed, timer fired",
        Duration::from_secs(30),
        || async {
            count(&pool, "SELECT count(*) FROM caller.consumed").await == 1
                && count(&pool, "SELECT count(*) FROM caller.fired").await == 1
        },
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }

    let received: String =
        sqlx::query_scalar("SELECT coalesce(traceparent, '') FROM probe.applied_effects")
            .fetch_one(&pool)
            .await
            .expect("applied");
    assert!(
        received.starts_with(&format!("00-{TRACE_ID}-")),
        "the call carried the writer's trace: {received}"
    );
    let consumed: String = sqlx::query_scalar("SELECT trace_id FROM caller.consumed")
        .fetch_one(&pool)
        .await
        .expect("consumed");
    assert_eq!(
        consumed, TRACE_ID,
        "the event was applied in the same trace"
    );
    let fired: String = sqlx::query_scalar("SELECT trace_id FROM caller.fired")
        .fetch_one(&pool)
        .await
        .expect("fired");
    assert_ne!(fired, TRACE_ID, "the timer fired in a trace of its own");
    let spans = exported().get_finished_spans().expect("spans");
    let fire = spans
        .iter()
        .find(|span| span.name == "timer deadline")
        .expect("the timer's span was exported");
    assert_eq!(fire.span_context.trace_id().to_string(), fired);
    assert!(
        fire.links
            .iter()
            .any(|link| link.span_context.trace_id().to_string() == TRACE_ID),
        "the timer's span links to the trace that scheduled it: {:?}",
        fire.links
    );
    probe.stop().await;
}
