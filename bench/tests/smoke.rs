//! A short run of every scenario against the debug binaries (`make test`
//! builds them): every call succeeds and the ledger reconciles. It measures
//! nothing; `make bench` does.

use std::{path::PathBuf, time::Duration};

use ta_bench::{Load, Platform, Scenario, run_scenario};

/// `<target>/debug`, where this test executable (`<target>/debug/deps/…`) was built.
fn debug_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/debug/deps")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_cleanly_for_a_second() {
    let database_url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: export DATABASE_URL=\"$(scripts/dev-postgres.sh)\" (make test does)",
    );
    let bin_dir = debug_dir();
    for binary in ["supplier-registry", "escrow", "contract", "ta-echo"] {
        assert!(
            bin_dir.join(binary).is_file(),
            "{binary} not in {}: run `cargo build --workspace --bins` first",
            bin_dir.display()
        );
    }
    let log_dir = std::env::temp_dir().join(ta_bench::unique_name("ta-bench-smoke"));
    let platform = Platform::start(&bin_dir, &database_url, 4, &log_dir, true)
        .await
        .expect("services start");
    let load = Load {
        clients: 2,
        duration: Duration::from_secs(1),
        rate: None,
        sample_waits: false,
        milestones: 2,
    };
    // Every scenario as fast as it goes, and one paced.
    let paced = Load {
        rate: Some(20.0),
        ..load
    };
    let runs = Scenario::ALL
        .into_iter()
        .map(|s| (s, load))
        .chain([(Scenario::ReserveCover, paced)]);
    for (scenario, load) in runs {
        let report = run_scenario(&platform, scenario, load)
            .await
            .expect("scenario runs");
        report.print();
        assert_eq!(report.errors(), 0, "{}: calls failed", scenario.name());
        assert!(
            report.counted_ok() > 0,
            "{}: no call succeeded",
            scenario.name()
        );
        if matches!(
            scenario,
            Scenario::Transfers | Scenario::HotSupplier | Scenario::Orders
        ) {
            // orders: the last release may still be on its way; it is
            // reconciled all the same (a hold or a posting, never a difference).
            assert_eq!(
                report.ledger_differences,
                Some(0),
                "{}: the ledger does not reconcile",
                scenario.name()
            );
        }
    }
    // The echo baseline's process is measured like a service.
    let echo = run_scenario(&platform, Scenario::Echo, load)
        .await
        .expect("echo runs");
    assert!(
        echo.server_cpu.iter().any(|(name, _)| name == "ta-echo"),
        "{:?}",
        echo.server_cpu
    );
    drop(platform);
    let _ = std::fs::remove_dir_all(&log_dir);
}
