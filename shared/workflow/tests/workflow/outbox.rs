//! The outbox and relay: a writer killed between its commit and the call, a
//! relay killed between the call and recording the answer, a receiver that is
//! down for a while, definitive refusals, failing completions, parking and
//! the operator RPC.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_proto::ops::{self as ops, workflow_admin_service_client::WorkflowAdminServiceClient};
use ta_runtime::auth::Role;
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The child side of [`a_writer_killed_after_its_commit_has_its_call_delivered_once`]:
/// commits the state change with its outbox row, then dies before any relay
/// could call.
#[test]
#[ignore = "run as a child process by the outbox tests"]
fn child_writer_aborts_after_commit() {
    if child_role().as_deref() != Some("writer") {
        return;
    }
    let url = std::env::var(CHILD_DATABASE_URL).expect("database URL");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let pool = own_pool(&url).await;
        let mut tx = pool.begin().await.expect("tx");
        order_effect(&mut tx, "killed-writer", false).await;
        tx.commit().await.expect("commit");
    });
    std::process::abort();
}

#[sqlx::test(migrations = false)]
async fn a_writer_killed_after_its_commit_has_its_call_delivered_once(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let mut child = spawn_child(
        "outbox::child_writer_aborts_after_commit",
        "writer",
        &[(CHILD_DATABASE_URL, &url)],
    );
    let status = child.wait().await.expect("child status");
    assert!(
        !status.success(),
        "the writer must die, not exit: {status:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "killed by SIGABRT: {status:?}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM caller.orders").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'pending'"
        )
        .await,
        1,
        "the intent committed with the state change"
    );

    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    let (_, config) = config(&url, &[]);
    let handler = Arc::new(RecordCompletion::default());
    let relay = relay(pool.clone(), &probe.url, handler, &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually("the order completed", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;

    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM probe.applied_effects WHERE effect_id = 'killed-writer'"
        )
        .await,
        1,
        "applied exactly once"
    );
    assert_eq!(calls.calls(&effect_key("killed-writer")), 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        1
    );
    probe.stop().await;
}

/// The child side of [`a_relay_killed_after_the_call_redelivers_and_the_receiver_replays`]:
/// a relay whose completion kills the process, after the receiver applied the
/// call and before the answer is recorded.
#[test]
#[ignore = "run as a child process by the outbox tests"]
fn child_relay_aborts_before_recording_the_answer() {
    if child_role().as_deref() != Some("relay") {
        return;
    }
    struct AbortOnAnswer;
    impl ta_workflow::outbox::CompletionHandler for AbortOnAnswer {
        async fn complete(
            &self,
            _tx: &mut sqlx::PgConnection,
            _delivery: &ta_workflow::outbox::Delivery,
            _answer: &ta_workflow::outbox::Answer,
        ) -> Result<ta_workflow::Handled, ta_runtime::ServiceError> {
            std::process::abort();
        }
    }
    let url = std::env::var(CHILD_DATABASE_URL).expect("database URL");
    let probe_url = std::env::var(CHILD_PROBE_URL).expect("probe URL");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let pool = own_pool(&url).await;
        let (_, config) = config(&url, &["--workflow-outbox-call-timeout", "1s"]);
        let relay = ta_workflow::outbox::Relay::new(
            pool,
            ta_workflow::outbox::Outbox::new(caller_schema()),
            peers(&probe_url),
            credentials(),
            Arc::new(AbortOnAnswer),
            config.outbox,
        );
        let (_stop, shutdown) = ta_workflow::shutdown_channel();
        relay.run(shutdown).await;
    });
}

#[sqlx::test(migrations = false)]
async fn a_relay_killed_after_the_call_redelivers_and_the_receiver_replays(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    order_effects(&pool, &["lost-answer".to_owned()], false).await;

    let mut child = spawn_child(
        "outbox::child_relay_aborts_before_recording_the_answer",
        "relay",
        &[(CHILD_DATABASE_URL, &url), (CHILD_PROBE_URL, &probe.url)],
    );
    let status = child.wait().await.expect("child status");
    assert!(!status.success(), "the relay must die: {status:?}");
    assert_eq!(
        calls.calls(&effect_key("lost-answer")),
        1,
        "the call went out"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM probe.applied_effects").await,
        1,
        "the receiver applied it"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        0,
        "the answer was lost with the relay"
    );

    // A new relay takes the row once the dead one's lease ran out.
    let (_, config) = config(&url, &["--workflow-outbox-call-timeout", "1s"]);
    let relay = relay(pool.clone(), &probe.url, Arc::default(), &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually("the order completed", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;

    assert_eq!(
        calls.calls(&effect_key("lost-answer")),
        2,
        "delivered again"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM probe.applied_effects").await,
        1,
        "but applied once: the second call replayed the first answer"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.completions WHERE outcome = 'accepted' AND application = 1"
        )
        .await,
        1,
        "the completion saw the first (and only) application, once"
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_receiver_down_for_a_while_gets_its_calls_and_a_refusal_is_not_retried(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let address = reserved_address().await;
    let probe_url = format!("http://{address}");
    order_effects(&pool, &["while-down".to_owned()], false).await;
    order_effects(&pool, &["refused".to_owned()], true).await;

    let (_, config) = config(&url, &[]);
    let handler = Arc::new(RecordCompletion::default());
    let relay = relay(pool.clone(), &probe_url, handler, &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually(
        "a few failed attempts while the receiver is down",
        WAIT,
        || async {
            count(
                &pool,
                "SELECT count(*) FROM caller.workflow_outbox
             WHERE status = 'pending' AND attempts >= 3 AND last_error IS NOT NULL",
            )
            .await
                == 2
        },
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        0
    );

    let calls = CallLog::default();
    let listener = TcpListener::bind(address)
        .await
        .expect("rebind the reserved port");
    let probe = ProbeServer::start(pool.clone(), listener, calls.clone()).await;
    eventually("both calls answered", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'completed'",
        )
        .await
            == 2
    })
    .await;
    // Another round of the relay finds nothing due: a refusal is final.
    eventually("the relay idles", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status IN ('pending', 'answered')",
        )
        .await
            == 0
    })
    .await;
    running.stop().await;

    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM probe.applied_effects WHERE effect_id = 'while-down'"
        )
        .await,
        1
    );
    assert_eq!(calls.calls(&effect_key("while-down")), 1);
    assert_eq!(
        calls.calls(&effect_key("refused")),
        1,
        "the refusal was asked for once, never retried"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.completions
             WHERE effect_id = 'refused' AND outcome = 'refused' AND code = 9"
        )
        .await,
        1,
        "the completion handler got the refusal (FAILED_PRECONDITION) once"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE order_id = 'refused' AND status = 'refused'"
        )
        .await,
        1,
        "and moved the caller's state on it"
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_failing_completion_runs_again_without_calling_again(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    order_effects(&pool, &["flaky-completion".to_owned()], false).await;

    let (_, config) = config(&url, &[]);
    let handler = Arc::new(RecordCompletion::default());
    handler
        .failures
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let relay = relay(pool.clone(), &probe.url, handler, &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually("the order completed", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    assert_eq!(calls.calls(&effect_key("flaky-completion")), 1, "one call");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT attempts::bigint FROM caller.workflow_outbox").await,
        3,
        "one call, then two more runs of the completion"
    );
    probe.stop().await;
}

fn finance<T>(message: T) -> tonic::Request<T> {
    ta_testkit::authorized(message, OPERATOR, Role::Finance)
}

#[sqlx::test(migrations = false)]
async fn rows_that_keep_failing_are_parked_visible_and_re_drivable(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    // Serves the operator RPC; the relay below is pointed elsewhere first.
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    let mut admin = WorkflowAdminServiceClient::new(probe.channel());
    order_effects(&pool, &["parked".to_owned()], false).await;

    let dead = format!("http://{}", reserved_address().await);
    let (_, config) = config(&url, &["--workflow-outbox-max-attempts", "3"]);
    let relay_to_nowhere = relay(pool.clone(), &dead, Arc::default(), &config);
    let running = Running::spawn(|shutdown| relay_to_nowhere.run(shutdown));
    eventually("the row parked", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'parked'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;

    let parked = admin
        .list_parked_outbox_rows(finance(ops::ListParkedOutboxRowsRequest::default()))
        .await
        .expect("list parked")
        .into_inner()
        .rows;
    assert_eq!(parked.len(), 1);
    let row = &parked[0];
    assert_eq!(row.attempts, 3);
    assert_eq!(row.target, PROBE);
    assert_eq!(row.method, APPLY_EFFECT);
    assert_eq!(row.idempotency_key, effect_key("parked"));
    assert!(!row.last_error.is_empty(), "the last error is shown");
    assert!(row.parked_at.is_some());
    // A timer due now with no worker to fire it: overdue.
    let mut tx = pool.begin().await.expect("tx");
    ta_workflow::timers::Timers::new(caller_schema())
        .schedule_after(&mut tx, "deadline", "unattended", Duration::ZERO, b"")
        .await
        .expect("timer");
    tx.commit().await.expect("commit");
    let backlog = admin
        .get_workflow_backlog(finance(ops::GetWorkflowBacklogRequest {}))
        .await
        .expect("backlog")
        .into_inner();
    assert_eq!((backlog.outbox_pending, backlog.outbox_parked), (0, 1));
    assert_eq!(backlog.timers_overdue, 1);
    assert!(backlog.oldest_timer_overdue_age.is_some());

    let denied = admin
        .list_parked_outbox_rows(ta_testkit::authorized(
            ops::ListParkedOutboxRowsRequest::default(),
            "buyer-1",
            Role::Buyer,
        ))
        .await
        .expect_err("staff only");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let redrive = ops::RedriveOutboxRowRequest {
        idempotency_key: "redrive-1".into(),
        id: row.id,
        reason: "the callee is back".into(),
    };
    let redriven = admin
        .redrive_outbox_row(finance(redrive.clone()))
        .await
        .expect("re-drive")
        .into_inner()
        .row
        .expect("row");
    assert_eq!((redriven.id, redriven.attempts), (row.id, 0));
    let replayed = admin
        .redrive_outbox_row(finance(redrive))
        .await
        .expect("a retried re-drive replays")
        .into_inner();
    assert_eq!(replayed.row, Some(redriven));

    let relay = relay(pool.clone(), &probe.url, Arc::default(), &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually("the re-driven row completed", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    assert_eq!(calls.calls(&effect_key("parked")), 1);

    let not_parked = admin
        .redrive_outbox_row(finance(ops::RedriveOutboxRowRequest {
            idempotency_key: "redrive-2".into(),
            id: row.id,
            reason: "the callee is back".into(),
        }))
        .await
        .expect_err("a completed row is not parked");
    assert_eq!(not_parked.code(), Code::FailedPrecondition);
    let unknown = admin
        .redrive_outbox_row(finance(ops::RedriveOutboxRowRequest {
            idempotency_key: "redrive-3".into(),
            id: 999_999,
            reason: "the callee is back".into(),
        }))
        .await
        .expect_err("unknown row");
    assert_eq!(unknown.code(), Code::NotFound);
    // One audit entry: the re-drive that happened, not its replay nor the
    // refused ones.
    let audited: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT method, role, resource_id, reason FROM caller.audit_entries ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit entries");
    assert_eq!(
        audited,
        [(
            "/tradeassurance.ops.v1.WorkflowAdminService/RedriveOutboxRow".to_owned(),
            "finance".to_owned(),
            row.id.to_string(),
            "the callee is back".to_owned(),
        )]
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn writing_the_same_call_twice_is_one_row_and_another_request_under_its_key_is_a_bug(
    pool: PgPool,
) {
    prepare(&pool).await;
    let outbox = ta_workflow::outbox::Outbox::new(caller_schema());
    let mut tx = pool.begin().await.expect("tx");
    let first = outbox
        .enqueue(
            &mut tx,
            PROBE,
            APPLY_EFFECT,
            &effect_request("same", false),
            "c",
        )
        .await
        .expect("first");
    let again = outbox
        .enqueue(
            &mut tx,
            PROBE,
            APPLY_EFFECT,
            &effect_request("same", false),
            "c",
        )
        .await
        .expect("same call again");
    assert_eq!(first, again);
    let other = outbox
        .enqueue(
            &mut tx,
            PROBE,
            APPLY_EFFECT,
            &effect_request("same", true),
            "c",
        )
        .await;
    assert!(other.is_err(), "another request under the same key");
    let mut bad_key = effect_request("x", false);
    bad_key.idempotency_key = "has spaces".into();
    assert!(
        outbox
            .enqueue(&mut tx, PROBE, APPLY_EFFECT, &bad_key, "c")
            .await
            .is_err()
    );
    assert!(
        outbox
            .enqueue(
                &mut tx,
                PROBE,
                "not-a-path",
                &effect_request("y", false),
                "c"
            )
            .await
            .is_err()
    );
}

#[sqlx::test(migrations = false)]
async fn a_relay_presents_the_token_mounted_for_its_audience_and_a_wrong_one_is_retried(
    pool: PgPool,
) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    order_effects(&pool, &["mounted-token".to_owned()], false).await;
    let dir = std::env::temp_dir().join(format!("ta-workflow-mounted-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("token dir");
    // A token minted for another service: the probe must refuse it.
    let wrong_audience = ta_testkit::issuer()
        .mint(CALLER, Role::Service, "escrow", Duration::from_secs(600))
        .expect("token");
    std::fs::write(dir.join(PROBE), &wrong_audience).expect("token file");

    let (_, config) = config(&url, &[]);
    let credentials = Arc::new(ta_workflow::credentials::ServiceCredentials::token_dir(
        CALLER,
        dir.clone(),
    ));
    let relay = ta_workflow::outbox::Relay::new(
        pool.clone(),
        ta_workflow::outbox::Outbox::new(caller_schema()),
        peers(&probe.url),
        credentials,
        Arc::new(RecordCompletion::default()),
        config.outbox.clone(),
    );
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually(
        "the refused token retried, not taken as an answer",
        WAIT,
        || async {
            count(
                &pool,
                "SELECT count(*) FROM caller.workflow_outbox
             WHERE status = 'pending' AND attempts >= 2 AND last_error LIKE 'Unauthenticated%'",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        0
    );

    // The platform rotates the mounted token; the relay reads the new one.
    let right_audience = ta_testkit::issuer()
        .mint(CALLER, Role::Service, PROBE, Duration::from_secs(600))
        .expect("token");
    std::fs::write(dir.join(PROBE), &right_audience).expect("rotated token file");
    eventually("delivered with the rotated token", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM probe.applied_effects").await,
        1
    );
    let _ = std::fs::remove_dir_all(dir);
    probe.stop().await;
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

#[sqlx::test(migrations = false)]
async fn an_escalated_refusal_is_parked_for_an_operator_and_re_driving_calls_again(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;
    let mut admin = WorkflowAdminServiceClient::new(probe.channel());
    calls.refuse("stuck-money", true);
    order_effects(&pool, &["stuck-money".to_owned()], false).await;

    let (_, config) = config(&url, &[]);
    let handler = Arc::new(RecordCompletion {
        escalate_refusals: true,
        ..RecordCompletion::default()
    });
    let relay = relay(pool.clone(), &probe.url, handler, &config);
    let running = Running::spawn(|shutdown| relay.run(shutdown));
    eventually("the refusal escalated", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'parked' AND escalated",
        )
        .await
            == 1
    })
    .await;
    // The handler's own changes committed with the escalation; the refusal
    // was not retried.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'refused'"
        )
        .await,
        1
    );
    assert_eq!(calls.calls(&effect_key("stuck-money")), 1);
    let parked = admin
        .list_parked_outbox_rows(finance(ops::ListParkedOutboxRowsRequest::default()))
        .await
        .expect("list parked")
        .into_inner()
        .rows;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].escalated);
    assert!(
        parked[0]
            .last_error
            .contains("the probe refused effect stuck-money"),
        "{parked:?}"
    );
    let backlog = admin
        .get_workflow_backlog(finance(ops::GetWorkflowBacklogRequest {}))
        .await
        .expect("backlog")
        .into_inner();
    assert_eq!((backlog.outbox_pending, backlog.outbox_parked), (0, 1));

    // The operator removes the cause and re-drives: the call runs again
    // (the probe kept no answer for its refusal) and the handler gets it.
    calls.refuse("stuck-money", false);
    let redriven = admin
        .redrive_outbox_row(finance(ops::RedriveOutboxRowRequest {
            idempotency_key: "redrive-escalated".into(),
            id: parked[0].id,
            reason: "the callee is back".into(),
        }))
        .await
        .expect("re-drive")
        .into_inner()
        .row
        .expect("row");
    assert!(!redriven.escalated);
    eventually("the re-driven call applied", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM caller.orders WHERE status = 'applied'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    assert_eq!(calls.calls(&effect_key("stuck-money")), 2, "called again");
    let backlog = admin
        .get_workflow_backlog(finance(ops::GetWorkflowBacklogRequest {}))
        .await
        .expect("backlog")
        .into_inner();
    assert_eq!(backlog.outbox_parked, 0);
    probe.stop().await;
}
