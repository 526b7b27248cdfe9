//! Waking instead of polling: with every poll interval a minute away (and
//! heartbeats five), a committed feed event reaches an open stream, a written
//! outbox row and a re-driven one are delivered, and the listener comes back
//! after its connection is killed. Each test ends because of a wake-up; its
//! time-out is only the bound at which it fails. Consumers apply what they
//! received in batches: one transaction for many events, and a failing event
//! parks alone.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_proto::{
    ops::{self as ops, workflow_admin_service_client::WorkflowAdminServiceClient},
    tradeassurance::testing::v1::{self as pb},
};
use ta_runtime::auth::Role;
use ta_workflow::{Schema, Wakeups};
use tokio::net::TcpListener;
use tonic::Streaming;

use crate::common::*;

/// Far below the polls: a test that passes was woken.
const WAIT: Duration = Duration::from_secs(30);

/// Polls (and heartbeats) too far away to deliver anything within [`WAIT`].
const POLLING_MINUTES_AWAY: &[&str] = &[
    "--workflow-feed-poll-interval",
    "60s",
    "--workflow-feed-heartbeat-interval",
    "300s",
    "--workflow-outbox-poll-interval",
    "60s",
];

async fn slow_probe(pool: &PgPool, calls: CallLog) -> ProbeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    ProbeServer::start_with(pool.clone(), listener, calls, POLLING_MINUTES_AWAY).await
}

async fn listening(pool: &PgPool, schema: Schema) -> i32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(backend) = listening_backend(pool, schema).await {
            return backend;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the {schema} listener"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event's subject; no heartbeat comes within [`WAIT`].
async fn next_subject(stream: &mut Streaming<pb::StreamProbeEventsResponse>) -> String {
    let response = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("woken by the commit, long before the next poll")
        .expect("stream healthy")
        .expect("stream open");
    response.event.expect("an event").subject_id
}

#[sqlx::test(migrations = false)]
async fn a_committed_event_wakes_an_open_stream(pool: PgPool) {
    prepare(&pool).await;
    let probe = slow_probe(&pool, CallLog::default()).await;
    listening(&pool, probe_schema()).await;
    append_events(&pool, "first", 1, 1).await;
    let mut stream = open_stream(&probe, 0).await;
    // Delivered: the stream has read, and now waits a minute for its next poll.
    assert_eq!(next_subject(&mut stream).await, "first-1");

    append_events(&pool, "woken", 2, 2).await;
    assert_eq!(next_subject(&mut stream).await, "woken-1");
    assert_eq!(next_subject(&mut stream).await, "woken-2");
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_written_call_and_a_re_driven_one_wake_the_relay(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    let (_, config) = config(&url, POLLING_MINUTES_AWAY);
    let wakeups = Wakeups::new(caller_schema());
    let listener = {
        let (wakeups, pool) = (wakeups.clone(), pool.clone());
        Running::spawn(|shutdown| wakeups.listen(pool, shutdown))
    };
    listening(&pool, caller_schema()).await;
    let handler = Arc::new(RecordCompletion {
        escalate_refusals: true,
        ..RecordCompletion::default()
    });
    let relay = relay(pool.clone(), &probe.url, handler, &config).waking_on(&wakeups);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    let orders_in = |status: &'static str| {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                &format!("SELECT count(*) FROM caller.orders WHERE status = '{status}'"),
            )
            .await
        }
    };

    order_effects(&pool, &["w-1".to_owned()], false).await;
    eventually("the first call delivered", WAIT, || async {
        orders_in("applied").await == 1
    })
    .await;
    // The relay has claimed and now waits a minute for its next poll.
    order_effects(&pool, &["w-2".to_owned()], false).await;
    eventually("the call written later delivered", WAIT, || async {
        orders_in("applied").await == 2
    })
    .await;

    // A refusal the handler escalates is parked; re-driving it wakes the relay.
    calls.refuse("w-3", true);
    order_effects(&pool, &["w-3".to_owned()], false).await;
    eventually("the refusal escalated", WAIT, || async {
        orders_in("refused").await == 1
    })
    .await;
    calls.refuse("w-3", false);
    let mut admin = WorkflowAdminServiceClient::new(probe.channel());
    let parked = admin
        .list_parked_outbox_rows(ta_testkit::authorized(
            ops::ListParkedOutboxRowsRequest::default(),
            OPERATOR,
            Role::Finance,
        ))
        .await
        .expect("list parked")
        .into_inner()
        .rows;
    assert_eq!(parked.len(), 1, "{parked:?}");
    admin
        .redrive_outbox_row(ta_testkit::authorized(
            ops::RedriveOutboxRowRequest {
                idempotency_key: "redrive-w-3".into(),
                id: parked[0].id,
                reason: "the callee is back".into(),
            },
            OPERATOR,
            Role::Finance,
        ))
        .await
        .expect("re-drive");
    eventually("the re-driven call delivered", WAIT, || async {
        orders_in("applied").await == 3
    })
    .await;
    running.stop().await;
    listener.stop().await;
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_listener_comes_back_after_its_connection_is_killed(pool: PgPool) {
    prepare(&pool).await;
    let probe = slow_probe(&pool, CallLog::default()).await;
    let first = listening(&pool, probe_schema()).await;
    append_events(&pool, "before", 1, 1).await;
    let mut stream = open_stream(&probe, 0).await;
    assert_eq!(next_subject(&mut stream).await, "before-1");

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&pool)
        .await
        .expect("terminate the listener's backend");
    assert!(killed);
    eventually("another backend listening", WAIT, || async {
        listening_backend(&pool, probe_schema())
            .await
            .is_some_and(|backend| backend != first)
    })
    .await;
    append_events(&pool, "after", 1, 1).await;
    assert_eq!(next_subject(&mut stream).await, "after-1");
    probe.stop().await;
}

async fn consumed_subjects(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT subject_id FROM caller.consumed ORDER BY sequence")
        .fetch_all(pool)
        .await
        .expect("consumed")
}

#[sqlx::test(migrations = false)]
async fn events_received_together_are_applied_in_one_transaction(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    const EVENTS: i64 = 40;
    append_events(&pool, "b", 40, 40).await;
    let (_, config) = config(&url, &[]);
    // Slow to apply, so what the stream delivers meanwhile waits in its buffer.
    let consumer = consumer(pool.clone(), &probe.url, Duration::from_millis(20), &config);
    let running = Running::spawn(|shutdown| consumer.run(shutdown));
    eventually("every event applied", WAIT, || async {
        count(&pool, "SELECT count(*) FROM caller.consumed").await == EVENTS
    })
    .await;
    running.stop().await;
    let transactions = count(&pool, "SELECT count(DISTINCT xid) FROM caller.consumed").await;
    assert!(
        transactions < EVENTS,
        "{EVENTS} events in {transactions} transactions"
    );
    assert_eq!(
        ta_workflow::consumer::cursor(&pool, caller_schema(), PROBE_FEED)
            .await
            .expect("cursor"),
        40
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_failing_event_of_a_batch_is_parked_alone_and_the_others_applied(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    append_events(&pool, "m", 12, 12).await;
    let handler = Arc::new(RecordEvent {
        delay: Duration::from_millis(20),
        ..RecordEvent::default()
    });
    handler.poison("m-5", true);
    let (_, config) = config(&url, &["--workflow-consumer-max-attempts", "2"]);
    let consumer = consumer_with(pool.clone(), &probe.url, handler, &config);
    let running = Running::spawn(|shutdown| consumer.run(shutdown));
    eventually("the cursor past every event", WAIT, || async {
        ta_workflow::consumer::cursor(&pool, caller_schema(), PROBE_FEED)
            .await
            .expect("cursor")
            == 12
    })
    .await;
    running.stop().await;
    let expected: Vec<String> = (1..=12)
        .filter(|n| *n != 5)
        .map(|n| format!("m-{n}"))
        .collect();
    assert_eq!(
        consumed_subjects(&pool).await,
        expected,
        "each once, in order"
    );
    let parked: Vec<(i64, String, i32)> = sqlx::query_as(
        "SELECT sequence, status, attempts FROM caller.workflow_feed_parked ORDER BY sequence",
    )
    .fetch_all(&pool)
    .await
    .expect("parked");
    assert_eq!(parked, vec![(5, "parked".to_owned(), 2)]);
    probe.stop().await;
}
