//! Timers: fired when due, cancelled or rescheduled in the transaction of the
//! change that makes them obsolete, retried when their handler fails, and
//! visible to operators while overdue.

use std::{sync::atomic::Ordering, time::Duration};

use sqlx::PgPool;
use ta_workflow::timers::Timers;

use crate::common::*;

const HOUR: Duration = Duration::from_secs(3_600);

async fn fired(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT subject_id FROM caller.fired ORDER BY subject_id")
        .fetch_all(pool)
        .await
        .expect("fired")
}

#[sqlx::test(migrations = false)]
async fn due_timers_fire_once_and_cancelled_or_moved_ones_follow_their_change(pool: PgPool) {
    prepare(&pool).await;
    let (_, config) = config(&database_url(&pool), &[]);
    let timers = Timers::new(caller_schema());
    let mut tx = pool.begin().await.expect("tx");
    timers
        .schedule_after(&mut tx, "deadline", "due", Duration::ZERO, b"")
        .await
        .expect("due");
    timers
        .schedule_after(&mut tx, "deadline", "cancelled", Duration::ZERO, b"")
        .await
        .expect("c");
    timers
        .schedule_after(&mut tx, "deadline", "moved-earlier", HOUR, b"")
        .await
        .expect("m");
    timers
        .schedule_after(&mut tx, "deadline", "moved-later", Duration::ZERO, b"")
        .await
        .expect("l");
    timers
        .schedule_after(&mut tx, "deadline", "later", HOUR, b"")
        .await
        .expect("later");
    tx.commit().await.expect("commit");

    // The change that makes a timer obsolete, and the cancellation, commit together...
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("INSERT INTO caller.orders (order_id, status) VALUES ('cancelled', 'paid')")
        .execute(&mut *tx)
        .await
        .expect("state change");
    assert!(
        timers
            .cancel(&mut tx, "deadline", "cancelled")
            .await
            .expect("cancel")
    );
    assert!(
        timers
            .reschedule(&mut tx, "deadline", "moved-earlier", Duration::ZERO)
            .await
            .expect("r")
    );
    assert!(
        timers
            .reschedule(&mut tx, "deadline", "moved-later", HOUR)
            .await
            .expect("r")
    );
    assert!(
        !timers
            .cancel(&mut tx, "deadline", "never-scheduled")
            .await
            .expect("cancel")
    );
    tx.commit().await.expect("commit");
    // ...or not at all.
    let mut tx = pool.begin().await.expect("tx");
    assert!(
        timers
            .cancel(&mut tx, "deadline", "due")
            .await
            .expect("cancel")
    );
    tx.rollback().await.expect("rollback");

    let worker = timer_worker(pool.clone(), &config);
    assert_eq!(worker.fire_due().await.expect("fire"), 2);
    assert_eq!(
        worker.fire_due().await.expect("fire again"),
        0,
        "nothing fires twice"
    );
    assert_eq!(fired(&pool).await, vec!["due", "moved-earlier"]);

    // Scheduling again replaces the scheduled timer of that kind and subject.
    let mut tx = pool.begin().await.expect("tx");
    timers
        .schedule_after(&mut tx, "deadline", "later", Duration::ZERO, b"")
        .await
        .expect("again");
    tx.commit().await.expect("commit");
    assert_eq!(worker.fire_due().await.expect("fire"), 1);
    assert_eq!(fired(&pool).await, vec!["due", "later", "moved-earlier"]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_timers WHERE subject_id = 'later'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn a_failing_timer_handler_is_retried_and_overdue_timers_are_visible(pool: PgPool) {
    prepare(&pool).await;
    let (_, config) = config(&database_url(&pool), &[]);
    let timers = Timers::new(caller_schema());
    let mut tx = pool.begin().await.expect("tx");
    timers
        .schedule_after(&mut tx, "flaky", "retried", Duration::ZERO, b"x")
        .await
        .expect("t");
    timers
        .schedule_after(&mut tx, "deadline", "on-time", HOUR, b"")
        .await
        .expect("t");
    tx.commit().await.expect("commit");

    let overdue = timers.overdue(&pool).await.expect("overdue");
    assert_eq!(overdue.count, 1, "only the one already due");
    assert!(overdue.oldest_age.is_some());

    let handler = std::sync::Arc::new(RecordFiring::default());
    handler.flaky_failures.store(2, Ordering::SeqCst);
    let worker = ta_workflow::timers::TimerWorker::new(
        pool.clone(),
        timers.clone(),
        handler,
        config.timers.clone(),
    );
    let running = Running::spawn(|shutdown| worker.run(shutdown));
    eventually("the flaky timer fired", Duration::from_secs(30), || async {
        fired(&pool).await == vec!["retried"]
    })
    .await;
    running.stop().await;
    assert_eq!(
        count(
            &pool,
            "SELECT attempts::bigint FROM caller.workflow_timers WHERE subject_id = 'retried'"
        )
        .await,
        2,
        "two failed tries recorded before it fired"
    );
    assert_eq!(timers.overdue(&pool).await.expect("overdue").count, 0);
}

#[sqlx::test(migrations = false)]
async fn workers_install_their_tables_first_then_run_until_stopped(pool: PgPool) {
    MIGRATOR.run(&pool).await.expect("test migrations");
    let (_, config) = config(&database_url(&pool), &[]);
    // `caller` has no workflow tables yet: the workers install them.
    let worker = timer_worker(pool.clone(), &config);
    let running = ta_workflow::Workers::new(pool.clone(), caller_schema())
        .with(|shutdown| worker.run(shutdown))
        .start();
    eventually("the tables installed", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = 'caller' AND table_name = 'workflow_timers'",
        )
        .await
            == 1
    })
    .await;
    let mut tx = pool.begin().await.expect("tx");
    Timers::new(caller_schema())
        .schedule_after(&mut tx, "deadline", "after-install", Duration::ZERO, b"")
        .await
        .expect("timer");
    tx.commit().await.expect("commit");
    eventually("the timer fired", Duration::from_secs(30), || async {
        fired(&pool).await == vec!["after-install"]
    })
    .await;
    running.stop().await;
    // A second install (another replica starting) changes nothing.
    ta_workflow::install(&pool, caller_schema())
        .await
        .expect("install again");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.workflow_migrations").await,
        i64::from(ta_workflow::INSTALLED_VERSION)
    );
}

#[sqlx::test(migrations = false)]
async fn the_janitor_purges_finished_rows_past_the_retention_and_nothing_else(pool: PgPool) {
    prepare(&pool).await;
    let (_, config) = config(&database_url(&pool), &[]);
    let timers = Timers::new(caller_schema());
    let mut tx = pool.begin().await.expect("tx");
    for subject in ["old-fired", "new-fired", "scheduled"] {
        let after = if subject == "scheduled" {
            HOUR
        } else {
            Duration::ZERO
        };
        timers
            .schedule_after(&mut tx, "deadline", subject, after, b"")
            .await
            .expect("timer");
    }
    order_effect(&mut tx, "old-completed", false).await;
    order_effect(&mut tx, "pending", false).await;
    tx.commit().await.expect("commit");
    assert_eq!(
        timer_worker(pool.clone(), &config)
            .fire_due()
            .await
            .expect("fire"),
        2
    );
    sqlx::raw_sql(
        "UPDATE caller.workflow_timers SET fired_at = now() - interval '2 hours'
         WHERE subject_id = 'old-fired';
         UPDATE caller.workflow_outbox SET status = 'completed', completed_at = now() - interval '2 hours'
         WHERE idempotency_key = 'effect-old-completed';",
    )
    .execute(&pool)
    .await
    .expect("age the finished rows");

    let janitor = ta_workflow::janitor::Janitor::new(pool.clone(), caller_schema(), HOUR);
    assert_eq!(janitor.purge().await.expect("purge"), (1, 1));
    assert_eq!(janitor.purge().await.expect("purge again"), (0, 0));
    let left: Vec<String> =
        sqlx::query_scalar("SELECT subject_id FROM caller.workflow_timers ORDER BY subject_id")
            .fetch_all(&pool)
            .await
            .expect("timers");
    assert_eq!(left, vec!["new-fired", "scheduled"]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'pending'"
        )
        .await,
        1
    );
}
