//! `ta-bench`: see the crate docs and BENCHMARKS.md.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use ta_bench::{
    Load, PgbenchResult, PgbenchSummary, Platform, Scenario, ScenarioReport,
    cluster::{Cluster, Durability},
    pgbench_series, run_scenario,
};

/// Drives the services with concurrent gRPC callers, with pgbench before and
/// after on the same Postgres, and prints each figure as a ratio; with
/// `fsync` and `synchronous_commit` off, on, or both.
#[derive(Parser, Debug)]
#[command(name = "ta-bench")]
struct Args {
    /// Durability of the Postgres the services and pgbench run on: `off`
    /// (fsync, synchronous_commit and full_page_writes off), `on` (all on),
    /// `both` (off, then on), each on a throwaway cluster of its own started
    /// with scripts/dev-postgres.sh; or `server`: the server of
    /// --database-url as it is configured.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    durability: Modes,
    /// With `--durability server`: the Postgres server to use (a fresh
    /// database is created on it for the services, and others for pgbench).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// The script that starts the throwaway clusters.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-postgres.sh"))]
    pg_script: PathBuf,
    /// Where the service binaries are (release build by default).
    #[arg(long, env = "BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Concurrent callers (and pgbench clients) of every scenario but orders.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Callers of the orders scenario, comma-separated: one run each (1: the
    /// latency of a whole order; 16: the throughput).
    #[arg(long, default_value = "1,16")]
    order_clients: String,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Seconds each pgbench run lasts; 0 skips pgbench.
    #[arg(long, default_value_t = 12)]
    pgbench_seconds: u64,
    /// pgbench runs at each scale before the scenarios, and as many after.
    #[arg(long, default_value_t = 3)]
    pgbench_repetitions: usize,
    /// Scenarios, comma-separated: transfers, hot-supplier, hot-debit,
    /// reserve-cover, orders, echo.
    #[arg(
        long,
        default_value = "transfers,hot-supplier,hot-debit,reserve-cover,orders,echo"
    )]
    scenarios: String,
    /// Pool size of each service (DATABASE_MAX_CONNECTIONS).
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Use a running supplier-registry at this address instead of starting one
    /// (with --escrow-addr and --durability server).
    #[arg(long, requires = "escrow_addr")]
    registry_addr: Option<String>,
    /// With --registry-addr and --escrow-addr: a running contract (wired to
    /// them) for the orders scenario.
    #[arg(long)]
    contract_addr: Option<String>,
    /// Use a running escrow at this address (with --registry-addr).
    #[arg(long, requires = "registry_addr")]
    escrow_addr: Option<String>,
    /// Sample what the services' Postgres backends wait on (psql every 100 ms).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sample_waits: bool,
    /// After each scenario's peak run, run it again paced at half the peak rate
    /// (the latency goal is stated there); orders only at their most callers.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    half_rate: bool,
    /// Milestones per escrow account in the transfer scenarios (each funded
    /// and released once; the work of one call grows with them).
    #[arg(long, default_value_t = 2)]
    milestones: usize,
    /// Releases out of each hot-debit account (each names a milestone of its
    /// own, and the work of one call grows with the schedule) before the
    /// callers move on to the next.
    #[arg(long, default_value_t = 32)]
    debits_per_account: usize,
    /// Counted calls per second the setup of a peak run prepares escrow
    /// accounts for; a run that outruns them is repeated with more.
    #[arg(long, default_value_t = 600.0)]
    expected_rate: f64,
    /// Where the started services write their logs.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Modes {
    Off,
    On,
    Both,
    Server,
}

fn default_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trade-assurance/target"))
        })
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("release")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ta-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// What one durability mode measured.
struct Suite {
    label: String,
    reports: Vec<ScenarioReport>,
    half_rate: Vec<ScenarioReport>,
    pgbench: Vec<PgbenchSummary>,
}

impl Suite {
    fn sound(&self) -> bool {
        self.reports
            .iter()
            .chain(&self.half_rate)
            .all(ScenarioReport::sound)
    }

    /// The pgbench reference of a scenario: (median of all runs, its scale).
    fn reference(&self, scenario: Scenario) -> Option<(f64, u32)> {
        let wide = self.pgbench.first();
        let narrow = self.pgbench.iter().find(|p| p.scale == 1);
        let summary = match scenario {
            Scenario::Transfers => wide,
            Scenario::HotSupplier | Scenario::HotDebit | Scenario::ReserveCover => narrow,
            Scenario::Orders | Scenario::Echo => None,
        }?;
        Some((summary.median_all(), summary.scale))
    }
}

async fn run(args: Args) -> ta_bench::Result<bool> {
    let mut scenarios = Vec::new();
    for name in args.scenarios.split(',').filter(|s| !s.is_empty()) {
        scenarios.push(Scenario::parse(name).ok_or_else(|| format!("unknown scenario {name}"))?);
    }
    let order_clients = args
        .order_clients
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|n| n.trim().parse::<usize>().map(|n| n.max(1)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--order-clients: {e}"))?;
    let reusing = args.registry_addr.is_some();
    let modes: Vec<Option<Durability>> = match args.durability {
        Modes::Off => vec![Some(Durability::Off)],
        Modes::On => vec![Some(Durability::On)],
        Modes::Both => vec![Some(Durability::Off), Some(Durability::On)],
        Modes::Server => vec![None],
    };
    if reusing && args.durability != Modes::Server {
        return Err(
            "running services (--registry-addr) keep their own database: \
                    use --durability server with the --database-url they use"
                .into(),
        );
    }
    let mut suites = Vec::new();
    for mode in modes {
        let cluster = match mode {
            Some(durability) => {
                println!(
                    "== starting a throwaway Postgres cluster with fsync, synchronous_commit and full_page_writes {}",
                    durability.name()
                );
                Some(Cluster::start(&args.pg_script, durability)?)
            }
            None => None,
        };
        let admin_url = match (&cluster, &args.database_url) {
            (Some(c), _) => c.url.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => return Err("--durability server needs --database-url".into()),
        };
        let label = mode.map_or_else(
            || String::from("the given server"),
            |d| format!("durability {}", d.name()),
        );
        suites.push(run_suite(&args, &scenarios, &order_clients, &admin_url, label).await?);
        // The cluster goes only after the suite's platform and databases.
        drop(cluster);
    }
    if suites.len() > 1 {
        print_side_by_side(&suites);
    }
    let sound = suites.iter().all(Suite::sound);
    if !sound {
        println!(
            "FAILED: some calls failed, the ledger does not reconcile, or it differs from the tally"
        );
    }
    Ok(sound)
}

async fn run_suite(
    args: &Args,
    scenarios: &[Scenario],
    order_clients: &[usize],
    admin_url: &str,
    label: String,
) -> ta_bench::Result<Suite> {
    let duration = Duration::from_secs(args.seconds);
    let platform = match (&args.registry_addr, &args.escrow_addr) {
        (Some(registry), Some(escrow)) => {
            Platform::reuse(registry.clone(), escrow.clone(), args.contract_addr.clone())
        }
        _ => {
            let bin_dir = args.bin_dir.clone().unwrap_or_else(default_bin_dir);
            let log_dir = args
                .log_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join(ta_bench::unique_name("ta-bench")));
            println!(
                "services from {}, logs in {}",
                bin_dir.display(),
                log_dir.display()
            );
            Platform::start(
                &bin_dir,
                admin_url,
                args.pool_size,
                &log_dir,
                scenarios.contains(&Scenario::Orders),
            )
            .await?
        }
    };
    let synchronous_commit = platform.synchronous_commit(admin_url)?;
    let server_version = ta_bench::psql(admin_url, "SHOW server_version")?;
    let fsync = ta_bench::psql(admin_url, "SHOW fsync")?;
    let full_page_writes = ta_bench::psql(admin_url, "SHOW full_page_writes")?;
    println!(
        "== {label}: Postgres {server_version}, fsync={fsync}, synchronous_commit={synchronous_commit}, \
         full_page_writes={full_page_writes}; {} clients (orders: {order_clients:?}), {} s per scenario, \
         service pool {}, {} milestones per escrow account, {} releases per hot-debit account",
        args.clients, args.seconds, args.pool_size, args.milestones, args.debits_per_account
    );

    let mut scales = vec![u32::try_from(args.clients).unwrap_or(u32::MAX).max(1), 1];
    scales.dedup();
    let pgbench = |phase: &str| -> ta_bench::Result<Vec<PgbenchResult>> {
        if args.pgbench_seconds == 0 {
            return Ok(Vec::new());
        }
        let runs = pgbench_series(
            admin_url,
            &scales,
            args.clients,
            args.pgbench_seconds,
            &synchronous_commit,
            args.pgbench_repetitions,
        )?;
        for r in &runs {
            println!(
                "== pgbench {phase} the scenarios, TPC-B-like, scale {}, {} clients, -j 2, -M prepared, {} s: \
                 {:.1} tps, latency average {:.2} ms",
                r.scale, r.clients, args.pgbench_seconds, r.tps, r.latency_ms
            );
        }
        Ok(runs)
    };
    let before = pgbench("before")?;

    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut half_rate: Vec<ScenarioReport> = Vec::new();
    for &scenario in scenarios {
        let callers: Vec<usize> = if scenario == Scenario::Orders {
            order_clients.to_vec()
        } else {
            vec![args.clients]
        };
        let most = callers.iter().copied().max().unwrap_or(1);
        for clients in callers {
            let peak = Load {
                clients,
                duration,
                rate: None,
                sample_waits: args.sample_waits,
                milestones: args.milestones,
                debits_per_account: args.debits_per_account,
                expected_rate: args.expected_rate,
            };
            let report = run_scenario(&platform, scenario, peak).await?;
            report.print();
            // One client measures latency alone; half of its peak says nothing more.
            if args.half_rate && report.throughput() > 0.0 && (clients == most) {
                let rate = report.throughput() / 2.0;
                let half = Load {
                    rate: Some(rate),
                    sample_waits: false,
                    expected_rate: rate,
                    ..peak
                };
                let paced = run_scenario(&platform, scenario, half).await?;
                paced.print();
                half_rate.push(paced);
            }
            reports.push(report);
        }
    }

    let after = pgbench("after")?;
    let pgbench: Vec<PgbenchSummary> = scales
        .iter()
        .map(|&s| PgbenchSummary::of(s, &before, &after))
        .filter(|s| !s.before.is_empty() || !s.after.is_empty())
        .collect();
    drop(platform);
    let suite = Suite {
        label,
        reports,
        half_rate,
        pgbench,
    };
    print_summary(&suite);
    Ok(suite)
}

fn goal(report: &ScenarioReport) -> &'static str {
    match report.scenario {
        Scenario::Transfers | Scenario::HotSupplier | Scenario::ReserveCover => "goal >= 1.0",
        Scenario::HotDebit => "no goal set",
        Scenario::Orders if report.clients == 1 => "goal: p50 of a whole order < 150 ms",
        Scenario::Orders => "goal >= 100 orders/s",
        Scenario::Echo => "the no-op baseline: gRPC and HTTP/2 alone",
    }
}

fn print_summary(suite: &Suite) {
    println!("== summary, {}", suite.label);
    for p in &suite.pgbench {
        p.print();
    }
    for report in &suite.reports {
        let ratio = suite
            .reference(report.scenario)
            .map_or(String::from("n/a"), |(tps, scale)| {
                format!("{:.2} x pgbench scale {scale}", report.throughput() / tps)
            });
        let whole_order = report.calls.get("whole order").map_or(String::new(), |s| {
            format!(
                ", whole order p50 {:.1} ms",
                s.latency_us.value_at_quantile(0.5) as f64 / 1000.0
            )
        });
        println!(
            "   {:<14} {:>3} clients {:>9.1} /s{whole_order}  {ratio} ({}); {} errors{}{}",
            report.scenario.name(),
            report.clients,
            report.throughput(),
            goal(report),
            report.errors(),
            report
                .ledger_differences
                .map_or(String::new(), |d| format!(", {d} ledger differences")),
            report.tally.as_ref().map_or(String::new(), |t| format!(
                ", {} tally differences",
                t.differences.len()
            )),
        );
    }
    for paced in &suite.half_rate {
        // The latency goal is per call: the counted calls, or for orders
        // every gRPC call of an order (not the whole order, not the waits).
        let counted = paced.scenario.counted();
        let whole = counted.contains(&"whole order");
        let worst_p99 = paced
            .calls
            .iter()
            .filter(|(name, _)| {
                if whole {
                    !name.starts_with("wait: ") && **name != "whole order"
                } else {
                    counted.contains(name)
                }
            })
            .map(|(name, stats)| {
                (
                    name,
                    stats.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                )
            })
            .fold(
                (&"", 0.0),
                |worst, this| if this.1 > worst.1 { this } else { worst },
            );
        println!(
            "   {:<14} at half the peak ({:.1} /s achieved): worst p99 {:.2} ms ({}) (goal < 20 ms); {} errors{}{}",
            paced.scenario.name(),
            paced.throughput(),
            worst_p99.1,
            worst_p99.0,
            paced.errors(),
            paced
                .ledger_differences
                .map_or(String::new(), |d| format!(", {d} ledger differences")),
            paced.tally.as_ref().map_or(String::new(), |t| format!(
                ", {} tally differences",
                t.differences.len()
            )),
        );
    }
    print_cpu_against_echo(&suite.reports);
    if !suite.sound() {
        println!(
            "   FAILED: some calls failed, the ledger does not reconcile, or it differs from the tally"
        );
    }
}

/// The peak figures of every mode side by side.
fn print_side_by_side(suites: &[Suite]) {
    println!(
        "== side by side (peak runs; ratios to the median of the six pgbench runs of the same mode)"
    );
    let Some(first) = suites.first() else {
        return;
    };
    for (i, report) in first.reports.iter().enumerate() {
        let cells: Vec<String> = suites
            .iter()
            .filter_map(|suite| {
                let r = suite.reports.get(i)?;
                let ratio = suite
                    .reference(r.scenario)
                    .map_or(String::new(), |(tps, _)| {
                        format!(" ({:.2} x)", r.throughput() / tps)
                    });
                Some(format!("{}: {:.1} /s{ratio}", suite.label, r.throughput()))
            })
            .collect();
        println!(
            "   {:<14} {:>3} clients  {}",
            report.scenario.name(),
            report.clients,
            cells.join("  |  ")
        );
    }
    for (i, p) in first.pgbench.iter().enumerate() {
        let cells: Vec<String> = suites
            .iter()
            .filter_map(|s| {
                s.pgbench
                    .get(i)
                    .map(|p| format!("{}: {:.1} tps", s.label, p.median_all()))
            })
            .collect();
        println!(
            "   pgbench scale {:<4}      {}",
            p.scale,
            cells.join("  |  ")
        );
    }
}

/// Server CPU per 1000 calls of each scenario at its peak, against the no-op
/// echo's: the platform's processes (every service, since those not called
/// still follow feeds and poll their outbox and timers) and their Postgres
/// backends, not the generator.
fn print_cpu_against_echo(reports: &[ScenarioReport]) {
    const ECHO: &str = "ta-echo";
    const GENERATOR: &str = "ta-bench (the generator)";
    const POSTGRES: &str = "postgres backends";
    let Some(echo) = reports.iter().find(|r| r.scenario == Scenario::Echo) else {
        return;
    };
    let baseline = echo.cpu_per_thousand_calls(|name| name == ECHO);
    println!(
        "   server CPU per 1000 calls at the peak, against the no-op echo's {baseline:.3} CPU s (goal <= 10 x):"
    );
    for report in reports.iter().filter(|r| r.scenario != Scenario::Echo) {
        let services =
            report.cpu_per_thousand_calls(|name| ![ECHO, GENERATOR, POSTGRES].contains(&name));
        let postgres = report.cpu_per_thousand_calls(|name| name == POSTGRES);
        let ratio = if baseline > 0.0 {
            format!("{:.1} x echo", (services + postgres) / baseline)
        } else {
            String::from("n/a")
        };
        println!(
            "   {:<14} {:>3} clients: services {services:.3} + postgres {postgres:.3} = {:.3} CPU s ({ratio}; services alone {})",
            report.scenario.name(),
            report.clients,
            services + postgres,
            if baseline > 0.0 {
                format!("{:.1} x", services / baseline)
            } else {
                String::from("n/a")
            }
        );
    }
}
