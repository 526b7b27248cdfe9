//! A consumer killed mid-stream resumes from its durable cursor with no gap
//! and no duplicate effect, and reconnects when the producer was down; an
//! event that keeps failing, or that the service escalates, is parked for an
//! operator and the feed goes on; a gap is recorded, not waited for.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_proto::ops::{self as ops, workflow_admin_service_client::WorkflowAdminServiceClient};
use tokio::net::TcpListener;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// The child side of [`a_consumer_killed_mid_stream_resumes_with_no_gap_and_no_duplicate`]:
/// consumes slowly until it is killed.
#[test]
#[ignore = "run as a child process by the consumer tests"]
fn child_consumer_runs_until_killed() {
    if child_role().as_deref() != Some("consumer") {
        return;
    }
    let url = std::env::var(CHILD_DATABASE_URL).expect("database URL");
    let probe_url = std::env::var(CHILD_PROBE_URL).expect("probe URL");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let pool = own_pool(&url).await;
        let (_, config) = config(&url, &[]);
        let (_stop, shutdown) = ta_workflow::shutdown_channel();
        consumer(pool, &probe_url, Duration::from_millis(10), &config)
            .run(shutdown)
            .await;
    });
}

async fn consumed(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM caller.consumed").await
}

#[sqlx::test(migrations = false)]
async fn a_consumer_killed_mid_stream_resumes_with_no_gap_and_no_duplicate(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let probe = ProbeServer::start(pool.clone(), listener, CallLog::default()).await;
    append_events(&pool, "backlog", 200, 10).await;

    let mut child = spawn_child(
        "consumer::child_consumer_runs_until_killed",
        "consumer",
        &[(CHILD_DATABASE_URL, &url), (CHILD_PROBE_URL, &probe.url)],
    );
    eventually("the child consumed some events", WAIT, || async {
        consumed(&pool).await >= 30
    })
    .await;
    child.kill().await.expect("kill the consumer");
    let before = consumed(&pool).await;
    assert!(before < 200, "killed mid-stream, after {before} events");
    let cursor = ta_workflow::consumer::cursor(&pool, caller_schema(), PROBE_FEED)
        .await
        .expect("cursor");
    assert_eq!(
        cursor as i64, before,
        "the cursor moved with the effects, no further"
    );

    let (_, config) = config(&url, &[]);
    let restarted = consumer(pool.clone(), &probe.url, Duration::ZERO, &config);
    let running = Running::spawn(|shutdown| restarted.run(shutdown));
    eventually("the backlog consumed", WAIT, || async {
        consumed(&pool).await == 200
    })
    .await;

    // The producer goes away; events keep being appended; it comes back on
    // the same address and the consumer reconnects by itself.
    probe.stop().await;
    append_events(&pool, "while-down", 30, 3).await;
    let listener = TcpListener::bind(address).await.expect("rebind");
    let probe = ProbeServer::start(pool.clone(), listener, CallLog::default()).await;
    append_events(&pool, "live", 20, 1).await;
    eventually("every event consumed", WAIT, || async {
        consumed(&pool).await == 250
    })
    .await;
    running.stop().await;

    let (rows, distinct, lowest, highest): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT sequence), min(sequence), max(sequence) FROM caller.consumed",
    )
    .fetch_one(&pool)
    .await
    .expect("consumed");
    assert_eq!(
        (rows, distinct, lowest, highest),
        (250, 250, 1, 250),
        "no gap, no duplicate"
    );
    assert_eq!(
        ta_workflow::consumer::cursor(&pool, caller_schema(), PROBE_FEED)
            .await
            .expect("cursor"),
        250
    );
    probe.stop().await;
}

fn finance<T>(message: T) -> tonic::Request<T> {
    ta_testkit::authorized(message, OPERATOR, ta_runtime::auth::Role::Finance)
}

async fn parked_events(
    admin: &mut WorkflowAdminServiceClient<tonic::transport::Channel>,
) -> Vec<ops::ParkedFeedEvent> {
    admin
        .list_parked_feed_events(finance(ops::ListParkedFeedEventsRequest::default()))
        .await
        .expect("list parked events")
        .into_inner()
        .events
}

async fn feed_events_parked(
    admin: &mut WorkflowAdminServiceClient<tonic::transport::Channel>,
) -> u64 {
    admin
        .get_workflow_backlog(finance(ops::GetWorkflowBacklogRequest {}))
        .await
        .expect("backlog")
        .into_inner()
        .feed_events_parked
}

#[sqlx::test(migrations = false)]
async fn an_event_that_keeps_failing_is_parked_and_the_feed_goes_on(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    let mut admin = WorkflowAdminServiceClient::new(probe.channel());
    append_events(&pool, "e", 5, 1).await;
    let handler = Arc::new(RecordEvent::default());
    handler.poison("e-3", true);
    let (_, config) = config(&url, &["--workflow-consumer-max-attempts", "3"]);
    let consumer = consumer_with(pool.clone(), &probe.url, handler.clone(), &config);
    let running = Running::spawn(|shutdown| consumer.run(shutdown));
    eventually("the events behind the bad one applied", WAIT, || async {
        consumed(&pool).await == 4
    })
    .await;
    assert_eq!(
        ta_workflow::consumer::cursor(&pool, caller_schema(), PROBE_FEED)
            .await
            .expect("cursor"),
        5
    );
    let parked = parked_events(&mut admin).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((parked[0].sequence, parked[0].gap), (3, false));
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0].last_error.contains("e-3 cannot be applied"),
        "{parked:?}"
    );
    assert!(parked[0].parked_at.is_some());
    assert_eq!(feed_events_parked(&mut admin).await, 1);

    // An event the handler escalates is parked at once, with its effect.
    append_events(&pool, "escalate", 1, 1).await;
    eventually("the escalated event recorded and parked", WAIT, || async {
        consumed(&pool).await == 5 && feed_events_parked(&mut admin.clone()).await == 2
    })
    .await;
    let escalated = parked_events(&mut admin).await;
    assert_eq!(escalated[1].sequence, 6);
    assert!(escalated[1].last_error.contains("needs an operator"));

    // The cause gone, the operator re-drives the failed event: applied.
    handler.poison("e-3", false);
    let redrive = ops::RedriveFeedEventRequest {
        idempotency_key: "redrive-e-3".into(),
        id: parked[0].id,
        reason: "the callee is back".into(),
    };
    admin
        .redrive_feed_event(finance(redrive))
        .await
        .expect("re-drive");
    eventually("the re-driven event applied", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.consumed WHERE subject_id = 'e-3'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    let left = parked_events(&mut admin).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].sequence, 6);
    let again = admin
        .redrive_feed_event(finance(ops::RedriveFeedEventRequest {
            idempotency_key: "redrive-e-3-again".into(),
            id: parked[0].id,
            reason: "the callee is back".into(),
        }))
        .await
        .expect_err("applied, not parked");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // Finance's one re-drive is one audit entry; the refused one left none.
    let audited: Vec<(String, String, String)> =
        sqlx::query_as("SELECT method, role, resource_id FROM caller.audit_entries ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("audit entries");
    assert_eq!(
        audited,
        [(
            "/tradeassurance.ops.v1.WorkflowAdminService/RedriveFeedEvent".to_owned(),
            "finance".to_owned(),
            parked[0].id.to_string(),
        )]
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_gap_in_the_feed_is_recorded_for_an_operator_and_what_follows_is_applied(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    let mut admin = WorkflowAdminServiceClient::new(probe.channel());
    append_events(&pool, "g", 4, 1).await;
    // Numbered only once every older transaction of the cluster ended: other
    // tests' transactions may hold the horizon back for a moment.
    eventually("the four events numbered", WAIT, || async {
        probe_feed().number_settled(&pool).await.expect("numbered");
        count(
            &pool,
            "SELECT count(*) FROM probe.workflow_feed_events WHERE sequence IS NOT NULL",
        )
        .await
            == 4
    })
    .await;
    // The producer loses an event it had numbered (a restored backup, say).
    sqlx::query("DELETE FROM probe.workflow_feed_events WHERE sequence = 2")
        .execute(&pool)
        .await
        .expect("lose an event");
    let (_, config) = config(&url, &[]);
    let consumer = consumer(pool.clone(), &probe.url, Duration::ZERO, &config);
    let running = Running::spawn(|shutdown| consumer.run(shutdown));
    eventually("the events around the gap applied", WAIT, || async {
        consumed(&pool).await == 3
    })
    .await;
    running.stop().await;
    let parked = parked_events(&mut admin).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].gap);
    assert_eq!((parked[0].sequence, parked[0].last_sequence), (2, 2));
    assert!(parked[0].last_error.contains("never arrived"));
    // Nothing to apply: re-driving acknowledges it.
    admin
        .redrive_feed_event(finance(ops::RedriveFeedEventRequest {
            idempotency_key: "ack-gap".into(),
            id: parked[0].id,
            reason: "the callee is back".into(),
        }))
        .await
        .expect("acknowledged");
    assert!(parked_events(&mut admin).await.is_empty());
    probe.stop().await;
}
