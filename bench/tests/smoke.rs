//! A short run of every scenario against the debug binaries (`make test`
//! builds them): every call succeeds, every acknowledged movement is in
//! escrow's statements exactly once, and the ledger reconciles. It measures
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

const DEBITS_PER_ACCOUNT: usize = 4;

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
        debits_per_account: DEBITS_PER_ACCOUNT,
        expected_rate: 100.0,
    };
    // Every scenario as fast as it goes, and one paced.
    let paced = Load {
        rate: Some(20.0),
        expected_rate: 20.0,
        ..load
    };
    let runs = Scenario::ALL
        .into_iter()
        .map(|s| (s, load))
        .chain([(Scenario::ReserveCover, paced)]);
    for (scenario, load) in runs {
        let name = scenario.name();
        let report = run_scenario(&platform, scenario, load)
            .await
            .expect("scenario runs");
        report.print();
        assert_eq!(report.errors(), 0, "{name}: calls failed");
        assert!(report.counted_ok() > 0, "{name}: no call succeeded");
        if scenario == Scenario::Echo {
            // The baseline's process is measured like a service.
            assert!(
                report.server_cpu.iter().any(|(name, _)| name == "ta-echo"),
                "{:?}",
                report.server_cpu
            );
        }
        if !scenario.moves_money() {
            assert!(report.tally.is_none(), "{name}");
            continue;
        }
        // orders: the last release may still be on its way when the tally
        // is read; the check waits for it, and it is reconciled all the same.
        assert_eq!(
            report.ledger_differences,
            Some(0),
            "{name}: the ledger does not reconcile"
        );
        let tally = report.tally.as_ref().expect("money scenarios are tallied");
        assert_eq!(tally.differences, Vec::<String>::new(), "{name}");
        // The comparison really ran: movements were acknowledged and found.
        assert!(tally.expected.fundings > 0, "{name}: {tally:?}");
        assert_eq!(tally.found, tally.expected, "{name}");
        match scenario {
            Scenario::Orders => {
                // Each completed order's acceptance released what was held, once.
                let orders = report.calls["whole order"].ok();
                assert_eq!(tally.acceptances, (orders, orders), "{name}");
            }
            Scenario::HotDebit => {
                let releases = report.calls["ReleaseToSupplier"].ok();
                assert_eq!(tally.expected.releases, releases, "{name}");
                // Every caller on one account at a time: the releases fill
                // the accounts one after another.
                let filled = (releases as usize).div_ceil(DEBITS_PER_ACCOUNT);
                assert!(
                    tally.expected.accounts_with_releases <= filled + 1,
                    "{name}: {releases} releases spread over {} accounts",
                    tally.expected.accounts_with_releases
                );
                // Each account was funded once, in the setup, not in the timed phase.
                assert!(!report.calls.contains_key("FundEscrow"), "{name}");
                let setup = report.setup.as_ref().expect("hot-debit prepares accounts");
                assert_eq!(
                    setup.calls["FundEscrow"].ok(),
                    tally.expected.fundings,
                    "{name}"
                );
            }
            Scenario::Transfers | Scenario::HotSupplier => {
                // Accounts are opened before the timed phase, not in it.
                assert!(!report.calls.contains_key("OpenEscrowAccount"), "{name}");
                let setup = report.setup.as_ref().expect("transfers prepare accounts");
                assert!(setup.calls["OpenEscrowAccount"].ok() > 0, "{name}");
                assert_eq!(
                    tally.expected.fundings,
                    report.calls["FundEscrow"].ok(),
                    "{name}"
                );
                assert_eq!(
                    tally.expected.releases,
                    report.calls["ReleaseToSupplier"].ok(),
                    "{name}"
                );
            }
            Scenario::ReserveCover | Scenario::Echo => unreachable!("no money moves"),
        }
    }
    drop(platform);
    let _ = std::fs::remove_dir_all(&log_dir);
}
