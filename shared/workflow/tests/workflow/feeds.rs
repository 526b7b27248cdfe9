//! Feeds are read in an order no reader can overtake: an event whose
//! transaction commits late is never passed over by a reader that already saw
//! a later-committed one.

use std::time::Duration;

use sqlx::PgPool;
use ta_proto::tradeassurance::testing::v1 as pb;
use tonic::Streaming;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The next event on the stream, skipping heartbeats; `heartbeats` counts them.
async fn next_event(
    stream: &mut Streaming<pb::StreamProbeEventsResponse>,
    heartbeats: &mut u32,
) -> pb::ProbeEvent {
    loop {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .expect("stream healthy")
            .expect("stream open");
        match response.event {
            Some(event) => return event,
            None => *heartbeats += 1,
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_reader_never_skips_an_event_whose_transaction_commits_after_a_later_one(pool: PgPool) {
    prepare(&pool).await;
    let feed = probe_feed();
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    append_events(&pool, "before", 1, 1).await;
    // Other tests' transactions on the cluster may hold numbering back a moment.
    eventually("the first event readable", WAIT, || async {
        feed.read_after(&pool, 0, 100).await.expect("read").len() == 1
    })
    .await;
    let cursor = 1;
    let mut stream = open_stream(&probe, cursor).await;

    // `late` takes its place in the table first and stays open while two
    // later transactions commit: a reader ordering by insertion number would
    // return those two now, move past `late`, and never see it.
    let mut late = pool.begin().await.expect("tx");
    feed.append(
        &mut late,
        "EFFECT_APPLIED",
        "late",
        &pb::ProbeEvent::default(),
    )
    .await
    .expect("append");
    append_events(&pool, "early", 2, 1).await;
    let (late_id, first_early_id): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT id FROM probe.workflow_feed_events WHERE subject_id = 'late'),
                (SELECT id FROM probe.workflow_feed_events WHERE subject_id = 'early-1')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or((0, 0));
    // Read from the pool: `late`'s own row is invisible outside its transaction.
    assert!(late_id == 0 || late_id < first_early_id);

    assert!(
        feed.read_after(&pool, cursor, 100)
            .await
            .expect("read")
            .is_empty(),
        "nothing is readable while an older transaction is open"
    );
    // The stream stays idle, with heartbeats, until `late` commits.
    let mut heartbeats = 0;
    let idle = tokio::time::timeout(Duration::from_secs(2), async {
        while heartbeats < 2 {
            let response = stream.message().await.expect("healthy").expect("open");
            assert!(
                response.event.is_none(),
                "no event may pass `late`: {response:?}"
            );
            heartbeats += 1;
        }
    })
    .await;
    assert!(idle.is_ok(), "heartbeats on an idle stream");

    late.commit().await.expect("commit late");
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next_event(&mut stream, &mut heartbeats).await);
    }
    let seen: Vec<(u64, &str)> = events
        .iter()
        .map(|e| (e.sequence, e.subject_id.as_str()))
        .collect();
    assert_eq!(seen, vec![(2, "late"), (3, "early-1"), (4, "early-2")]);
    let read: Vec<(u64, String)> = feed
        .read_after(&pool, cursor, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|e| (e.sequence, e.subject_id))
        .collect();
    assert_eq!(
        read,
        vec![
            (2, "late".into()),
            (3, "early-1".into()),
            (4, "early-2".into())
        ]
    );
    probe.stop().await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_writers_and_a_live_reader_see_every_event_once_in_order(pool: PgPool) {
    prepare(&pool).await;
    let url = database_url(&pool);
    let probe = ProbeServer::start_anywhere(pool.clone(), CallLog::default()).await;
    append_events(&pool, "backlog", 20, 5).await;
    let mut stream = open_stream(&probe, 0).await;

    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let writer_pool = own_pool(&url).await;
        writers.push(tokio::spawn(async move {
            append_events(
                &writer_pool,
                &format!("w{writer}"),
                PER_WRITER,
                1 + writer % 3,
            )
            .await;
        }));
    }
    let total = 20 + WRITERS * PER_WRITER;
    let mut heartbeats = 0;
    let mut subjects = std::collections::HashSet::new();
    for expected in 1..=total as u64 {
        let event = next_event(&mut stream, &mut heartbeats).await;
        assert_eq!(event.sequence, expected, "dense and in order");
        assert!(
            subjects.insert(event.subject_id.clone()),
            "{} twice",
            event.subject_id
        );
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(subjects.len(), total);
    probe.stop().await;
}
