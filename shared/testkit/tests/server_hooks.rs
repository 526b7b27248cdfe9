//! The server bootstrap's hooks for services with background work: a
//! preparation step between migrations and SERVING (retried until it
//! succeeds), and background work that starts once the service is prepared
//! and ends, awaited, when the server drains.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use clap::Parser;
use sqlx::{PgPool, migrate::Migrator};
use ta_runtime::{
    auth::MethodPolicy,
    config::CommonConfig,
    server::{Api, ServiceSpec},
};
use ta_testkit::{RunningService, TEST_SECRET};

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

static SPEC: ServiceSpec = ServiceSpec {
    name: "hooks-probe",
    schema: "public",
    default_port: 0,
    grpc_services: &[],
    migrator: &NO_MIGRATIONS,
};

#[derive(Parser)]
struct Config {
    #[command(flatten)]
    common: CommonConfig,
}

fn config(pool: &PgPool) -> CommonConfig {
    let url = ta_testkit::database_url(pool);
    Config::try_parse_from([
        "hooks-probe",
        "--database-url",
        &url,
        "--auth-jwt-hs256-secret",
        TEST_SECRET,
    ])
    .expect("config")
    .common
}

#[derive(Default)]
struct Seen {
    prepare_attempts: AtomicUsize,
    prepared: AtomicBool,
    started_after_prepared: AtomicBool,
    saw_drain: AtomicBool,
}

#[sqlx::test(migrations = false)]
async fn preparation_gates_serving_and_background_work_ends_with_the_drain(pool: PgPool) {
    let seen = Arc::new(Seen::default());
    let api = Api::new(tonic::service::Routes::default(), MethodPolicy::new())
        .prepared_by({
            let seen = seen.clone();
            move |pool: PgPool| {
                let seen = seen.clone();
                async move {
                    // The first two attempts fail, as when the database is not up yet.
                    if seen.prepare_attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err("not yet".to_owned());
                    }
                    sqlx::query("CREATE TABLE IF NOT EXISTS prepared_marker (id int)")
                        .execute(&pool)
                        .await
                        .map_err(|e| e.to_string())?;
                    seen.prepared.store(true, Ordering::SeqCst);
                    Ok(())
                }
            }
        })
        .with_background({
            let seen = seen.clone();
            move |mut draining| async move {
                seen.started_after_prepared
                    .store(seen.prepared.load(Ordering::SeqCst), Ordering::SeqCst);
                let _ = draining.wait_for(|drain| *drain).await;
                seen.saw_drain.store(true, Ordering::SeqCst);
            }
        });
    let server = RunningService::start(&SPEC, config(&pool), pool.clone(), api).await;
    // SERVING only once the preparation succeeded (on its third attempt).
    assert!(seen.prepared.load(Ordering::SeqCst));
    assert_eq!(seen.prepare_attempts.load(Ordering::SeqCst), 3);
    let (marker,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'prepared_marker'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(marker, 1);
    server.stop().await.expect("orderly stop");
    assert!(seen.started_after_prepared.load(Ordering::SeqCst));
    assert!(
        seen.saw_drain.load(Ordering::SeqCst),
        "the server stopped before its background work ended"
    );
}
