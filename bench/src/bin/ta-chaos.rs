//! `make chaos`: a seeded chaos run of the whole platform (see
//! `ta_bench::chaos` and RELIABILITY.md). Exits 1 on any violation, after
//! printing the seed and the shortest history that shows each.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use ta_bench::chaos::{self, ChaosConfig, schedule::Density};

#[derive(Parser, Debug)]
#[command(about = "A seeded chaos run: the real binaries under a fault schedule, then a checker")]
struct Args {
    /// The seed of the fault schedule (and of the clients' choices);
    /// default: drawn from the clock and printed.
    #[arg(long)]
    seed: Option<u64>,
    /// How long the schedule runs, e.g. 30m, 90s.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent clients (even ones place orders, odd ones work escrow directly).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Where the service binaries are; default: beside this one.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// How long the clients keep retrying after the faults stop, and the
    /// platform may take to quiesce.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    patience: Duration,
    /// A fault every second or so (the short run's density) instead of
    /// every few seconds.
    #[arg(long)]
    dense: bool,
    /// Only print the schedule of the seed.
    #[arg(long)]
    print_schedule: bool,
    /// TEST ONLY (debug builds): switch on the deliberate defect that skips
    /// the idempotency lookup of this full method path, e.g.
    /// /tradeassurance.escrow.v1.EscrowService/ReleaseToSupplier.
    #[arg(long)]
    defect: Option<String>,
    /// Buyers waiting on a PENDING bank transfer or Pay Later do not try
    /// again under a new key meanwhile.
    #[arg(long)]
    patient_buyers: bool,
    /// A setting for every service process, KEY=VALUE (repeatable), e.g.
    /// GROUP_COMMIT_MAX_ITEMS=1.
    #[arg(long = "service-env", value_parser = parse_env)]
    service_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s}: not KEY=VALUE"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = number.parse().map_err(|e| format!("{s}: {e}"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("{s}: unit {other:?} is not s, m or h")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let density = if args.dense {
        Density::dense()
    } else {
        Density::default()
    };
    if args.print_schedule {
        let schedule = chaos::schedule::Schedule::generate(seed, args.duration, density);
        println!(
            "seed {seed}: {} faults, and {} cuts of the links beside them",
            schedule.faults.len(),
            schedule.cuts.len()
        );
        for fault in &schedule.faults {
            println!("  {fault}");
        }
        println!("cuts:");
        for cut in &schedule.cuts {
            println!("  {cut}");
        }
        return ExitCode::SUCCESS;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let bin_dir = args
        .bin_dir
        .unwrap_or_else(|| exe.parent().map(PathBuf::from).unwrap_or_default());
    // The repository this binary was built from (bench/..).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config = ChaosConfig {
        seed,
        duration: args.duration,
        clients: args.clients,
        bin_dir,
        postgres_script: root.join("scripts/dev-postgres.sh"),
        log_dir: std::env::temp_dir().join(ta_bench::unique_name("ta-chaos")),
        density,
        defect: args.defect,
        patience: args.patience,
        impatient: !args.patient_buyers,
        service_env: args.service_env,
    };
    println!(
        "chaos: seed {seed}, {:?} of faults, {} clients, binaries in {}, logs in {}",
        config.duration,
        config.clients,
        config.bin_dir.display(),
        config.log_dir.display()
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaos::run(config)) {
        Ok(report) => {
            report.print();
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: seed {seed}: the run could not complete: {e}");
            ExitCode::FAILURE
        }
    }
}
