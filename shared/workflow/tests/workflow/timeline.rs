//! A timeline over a service's own table: entries numbered without gaps,
//! and whether an actor of one role took a step of some kinds.

use sqlx::PgPool;
use ta_runtime::{
    auth::Actor,
    money::{Currency, Money},
    timestamps,
};
use ta_workflow::timeline::{Timeline, TimelineEntry};
use uuid::Uuid;

use crate::common::*;

#[sqlx::test(migrations = false)]
async fn a_timeline_numbers_its_steps_and_finds_a_role_s_step_of_some_kinds(pool: PgPool) {
    prepare(&pool).await;
    sqlx::raw_sql(
        "CREATE TABLE caller.timeline (
            order_id uuid NOT NULL, entry integer NOT NULL CHECK (entry >= 1),
            occurred_at timestamptz NOT NULL, actor_principal_id text NOT NULL,
            actor_role text NOT NULL, kind text NOT NULL, description text NOT NULL,
            currency char(3), amount_minor bigint, PRIMARY KEY (order_id, entry))",
    )
    .execute(&pool)
    .await
    .expect("timeline table");
    let timeline = Timeline::new(caller_schema(), "order_id").expect("timeline");
    let (order, other) = (Uuid::new_v4(), Uuid::new_v4());
    let usd = Currency::parse("USD").expect("usd");
    let mut tx = pool.begin().await.expect("tx");
    let steps = [
        (
            Actor::service("caller"),
            "order.placed",
            Some(Money::new(500, usd)),
        ),
        (
            Actor::stored("supplier-1".into(), "supplier"),
            "order.noted",
            None,
        ),
    ];
    for (n, (actor, kind, money)) in steps.iter().enumerate() {
        let entry = TimelineEntry::step(timestamps::now(), actor, kind, "d".into(), *money);
        let number = timeline
            .append(&mut tx, order, &entry)
            .await
            .expect("append");
        assert_eq!(number as usize, n + 1);
    }
    let entries = timeline
        .entries(&mut tx, order, 0, 10)
        .await
        .expect("entries");
    assert_eq!(entries.iter().map(|e| e.entry).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(entries[0].money, Some(Money::new(500, usd)));

    let has = async |tx: &mut sqlx::PgConnection, subject, role, kinds: &[&str]| {
        timeline
            .has_step(tx, subject, role, kinds)
            .await
            .expect("has_step")
    };
    assert!(
        has(
            &mut tx,
            order,
            "supplier",
            &["order.noted", "order.refused"]
        )
        .await
    );
    assert!(!has(&mut tx, order, "supplier", &["order.placed"]).await);
    assert!(!has(&mut tx, order, "buyer", &["order.noted"]).await);
    assert!(!has(&mut tx, other, "supplier", &["order.noted"]).await);
    assert!(!has(&mut tx, order, "supplier", &[]).await);
}
