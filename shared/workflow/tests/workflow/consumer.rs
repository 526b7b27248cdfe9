//! A consumer killed mid-stream resumes from its durable cursor with no gap
//! and no duplicate effect, and reconnects when the producer was down.

use std::time::Duration;

use sqlx::PgPool;
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
