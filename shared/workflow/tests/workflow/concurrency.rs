//! Two relays and two timer workers, each with its own pool as two replicas
//! would have, against one database: every row is delivered once and every
//! timer fired once.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use ta_workflow::timers::Timers;

use crate::common::*;

const ROWS: usize = 1_000;
const TIMERS: usize = 1_000;

#[sqlx::test(migrations = false)]
async fn two_relays_and_two_timer_workers_deliver_and_fire_each_once(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let calls = CallLog::default();
    let probe = ProbeServer::start_anywhere(pool.clone(), calls.clone()).await;

    let effects: Vec<String> = (0..ROWS).map(|i| format!("bulk-{i}")).collect();
    order_effects(&pool, &effects, false).await;
    let timers = Timers::new(caller_schema());
    let mut tx = pool.begin().await.expect("tx");
    for i in 0..TIMERS {
        timers
            .schedule_after(
                &mut tx,
                "deadline",
                &format!("subject-{i}"),
                Duration::ZERO,
                b"",
            )
            .await
            .expect("timer");
    }
    tx.commit().await.expect("commit");

    let (_, config) = config(&url, &[]);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let replica_pool = own_pool(&url).await;
        let relay = relay(
            replica_pool.clone(),
            &probe.url,
            Arc::new(RecordCompletion::default()),
            &config,
        );
        workers.push(Running::spawn(|shutdown| relay.run(shutdown)));
        let timer_worker = timer_worker(replica_pool, &config);
        workers.push(Running::spawn(|shutdown| timer_worker.run(shutdown)));
    }
    eventually(
        "every row completed and every timer fired",
        Duration::from_secs(90),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM caller.workflow_outbox WHERE status = 'completed'",
            )
            .await
                == ROWS as i64
                && count(
                    &pool,
                    "SELECT count(*) FROM caller.workflow_timers WHERE status = 'fired'",
                )
                .await
                    == TIMERS as i64
        },
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }

    assert_eq!(
        calls.total(),
        ROWS as u32,
        "each row called once, no redelivery"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM probe.applied_effects").await,
        ROWS as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT effect_id) FROM probe.applied_effects"
        )
        .await,
        ROWS as i64,
        "each effect applied once"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.completions").await,
        ROWS as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT outbox_id) FROM caller.completions"
        )
        .await,
        ROWS as i64,
        "each completion ran once"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM caller.fired").await,
        TIMERS as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT subject_id) FROM caller.fired").await,
        TIMERS as i64,
        "each timer fired once"
    );
    probe.stop().await;
}
