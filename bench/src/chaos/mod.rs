//! `make chaos` (issue 24): a seeded chaos run of the whole platform.
//!
//! The real binaries (supplier-registry, escrow, contract, dispute, the
//! sandbox payment gateway) run on a throwaway Postgres cluster; clients
//! drive orders and escrow's money paths through them ([`workload`]) while
//! a fault schedule derived from the seed ([`schedule`]) kills and restarts
//! processes, pauses them, restarts Postgres, makes the gateway slow,
//! failing or silent and its webhooks duplicated, reordered, late or lost,
//! and loses answers on their way back to the clients. Every request and
//! answer is recorded ([`history`]); afterwards, faults off and the
//! platform quiet, the [`checker`] proves the end state against what the
//! clients were told. A violation is printed with the seed and the
//! operations of the entity it is about.

pub mod checker;
pub mod history;
pub mod orders;
pub mod platform;
pub mod proxy;
pub mod schedule;
pub mod workload;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use checker::{CheckReport, Violation};
use history::History;
use platform::ChaosPlatform;
use schedule::{Density, Fault, FaultKind, Schedule};
use workload::{Client, LostAnswers, Parties, Told};

use crate::{Result, Tokens, channel, setup_cover_supplier, unique_name};

/// What a run is given.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub seed: u64,
    /// How long the schedule runs (then faults stop and the platform quiesces).
    pub duration: Duration,
    /// Concurrent clients: even ones place orders, odd ones work escrow directly.
    pub clients: usize,
    /// `<target>/debug` or `<target>/release`: where the binaries are.
    pub bin_dir: PathBuf,
    /// The project's `scripts/dev-postgres.sh`.
    pub postgres_script: PathBuf,
    /// Where the processes' logs go.
    pub log_dir: PathBuf,
    pub density: Density,
    /// A full method path for the test-only defect switch
    /// (`TA_TEST_DEFECT_SKIP_IDEMPOTENCY`, debug builds only).
    pub defect: Option<String>,
    /// How long the clients keep retrying after the schedule ends, and how
    /// long the platform may take to quiesce.
    pub patience: Duration,
    /// More settings for every service process (`KEY`, `VALUE`), e.g. a
    /// group commit setting to compare a finding on and off.
    pub service_env: Vec<(String, String)>,
    /// Buyers waiting on a PENDING funding try again under a new key now
    /// and then (see RELIABILITY.md's findings: escrow may start a second
    /// attempt for a payment funded a moment before).
    pub impatient: bool,
}

/// What a run did and found.
#[derive(Debug)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration: Duration,
    pub wall: Duration,
    pub clients: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    pub told: Told,
    pub history_events: usize,
    pub check: CheckReport,
    /// Each violation with the history that shows it.
    pub shown: Vec<(Violation, Vec<history::Event>)>,
    pub log_dir: PathBuf,
}

impl ChaosReport {
    pub fn ok(&self) -> bool {
        self.check.violations.is_empty()
    }

    pub fn print(&self) {
        println!(
            "== chaos: seed {} ({:.0} s of faults, {:.0} s in all, {} clients)",
            self.seed,
            self.duration.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.clients
        );
        let total: usize = self.faults.values().sum();
        println!("   faults injected: {total}");
        for (kind, n) in &self.faults {
            println!("     {n:>5}  {kind}");
        }
        println!(
            "   operations: {} ({} tries retried under the same key, {} answers lost on purpose); \
             {} history events",
            self.told.operations, self.told.retries, self.told.answers_lost, self.history_events
        );
        for (call, n) in &self.told.calls {
            println!("     {n:>6}  {call}");
        }
        println!("   checked:");
        for line in &self.check.checked {
            println!("     {line}");
        }
        println!("   violations: {}", self.check.violations.len());
        for (v, events) in self.shown.iter() {
            println!(
                "   VIOLATION [{}] {}{}",
                v.check,
                v.what,
                if v.entity.is_empty() {
                    String::new()
                } else {
                    format!(" (about {})", v.entity)
                }
            );
            if !events.is_empty() {
                println!(
                    "     the shortest history that shows it ({} events):",
                    events.len()
                );
                for e in events {
                    println!("       {e}");
                }
            }
        }
        if !self.ok() {
            println!(
                "   FAILED: seed {}; replay the same schedule with --seed {} (logs in {})",
                self.seed,
                self.seed,
                self.log_dir.display()
            );
        }
    }
}

/// Runs the schedule of `config.seed` against a fresh platform, then checks.
pub async fn run(config: ChaosConfig) -> Result<ChaosReport> {
    let started = Instant::now();
    let schedule = Schedule::generate(config.seed, config.duration, config.density);
    let extra_env: Vec<(String, String)> = config
        .defect
        .iter()
        .map(|m| ("TA_TEST_DEFECT_SKIP_IDEMPOTENCY".to_owned(), m.clone()))
        .chain(config.service_env.iter().cloned())
        .collect();
    let mut platform = ChaosPlatform::start(
        &config.postgres_script,
        &config.bin_dir,
        &config.log_dir,
        &extra_env,
    )
    .await?;
    let tokens = Arc::new(Tokens::new());
    let run_name = unique_name("chaos").replace('_', "-");
    let (supplier_id, supplier_owner) = setup_cover_supplier(
        platform.addr(schedule::Target::Registry),
        &tokens,
        &run_name,
    )
    .await?;
    let parties = Parties {
        run: run_name,
        supplier_id: supplier_id.clone(),
        supplier_owner,
        contract_to_escrow: tokens.contract_to_escrow.clone(),
        support: tokens.support.clone(),
        finance: tokens.finance.clone(),
        arbiter: ta_testkit::bearer("chaos-arbiter", ta_runtime::auth::Role::Arbiter),
        impatient: config.impatient,
    };

    let history = History::new(Instant::now());
    let lost = LostAnswers::default();
    let phase_start = Instant::now();
    let stop_at = phase_start + config.duration;
    let give_up_at = stop_at + config.patience;
    let mut tasks = Vec::new();
    for id in 0..config.clients.max(2) {
        let client = Client::new(
            id,
            config.seed,
            history.clone(),
            lost.clone(),
            (stop_at, give_up_at),
            (
                channel(platform.addr(schedule::Target::Contract))?,
                channel(platform.addr(schedule::Target::Escrow))?,
                channel(platform.addr(schedule::Target::Dispute))?,
            ),
            parties.clone(),
        );
        tasks.push(tokio::spawn(client.run()));
    }

    // The second lane: the links' cuts, beside the other faults.
    let cuts = {
        let links = platform.links.clone();
        let cuts = schedule.cuts.clone();
        tokio::spawn(async move {
            let mut injected: BTreeMap<String, usize> = BTreeMap::new();
            for fault in cuts {
                tokio::time::sleep_until((phase_start + fault.at).into()).await;
                if let FaultKind::CutCalls { link, mode } = fault.kind {
                    links[&link].set(mode);
                    tokio::time::sleep(fault.hold).await;
                    links[&link].set(proxy::Mode::Open);
                }
                *injected.entry(fault.kind.name()).or_default() += 1;
            }
            injected
        })
    };
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut crashes = Vec::new();
    for fault in &schedule.faults {
        tokio::time::sleep_until((phase_start + fault.at).into()).await;
        crashes.extend(restart_crashed(&mut platform).await?);
        inject(&mut platform, &lost, fault).await?;
        *injected.entry(fault.kind.name()).or_default() += 1;
    }
    tokio::time::sleep_until(stop_at.into()).await;
    for (kind, n) in cuts.await? {
        *injected.entry(kind).or_default() += n;
    }
    crashes.extend(restart_crashed(&mut platform).await?);
    platform.set_gateway_faults("{}").await?;
    platform.open_links();
    lost.set(0.0);

    let mut told = Told::default();
    for task in tasks {
        told.merge(task.await?);
    }
    let mut check = CheckReport::default();
    for crash in crashes {
        check.violations.push(Violation {
            check: "processes",
            what: crash,
            entity: String::new(),
        });
    }
    checker::quiesce(&platform, &tokens.support, config.patience, &mut check).await?;
    checker::check(
        &platform,
        &told,
        &supplier_id,
        (&tokens.support, &tokens.finance),
        &mut check,
    )
    .await?;
    if !check.violations.is_empty() {
        dump_evidence(&platform, &check);
    }
    let shown = check
        .violations
        .iter()
        .take(10)
        .map(|v| {
            let events = if v.entity.is_empty() {
                Vec::new()
            } else {
                history.about(&v.entity)
            };
            (v.clone(), events)
        })
        .collect();
    Ok(ChaosReport {
        seed: config.seed,
        duration: config.duration,
        wall: started.elapsed(),
        clients: config.clients.max(2),
        faults: injected,
        history_events: history.len(),
        told,
        check,
        shown,
        log_dir: config.log_dir.clone(),
    })
}

/// Before the run's database goes: the funding attempts, gateway events
/// and the gateway's operations of every account a violation names, into
/// `<log dir>/evidence.txt`, so a finding can be read row by row.
fn dump_evidence(platform: &ChaosPlatform, check: &CheckReport) {
    let ids: Vec<String> = check
        .violations
        .iter()
        .flat_map(|v| {
            v.what
                .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
                .chain(std::iter::once(v.entity.as_str()))
                .filter(|w| w.len() == 36 && w.matches('-').count() == 4)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|id| format!("'{id}'"))
        .collect();
    if ids.is_empty() {
        return;
    }
    let ids = ids.join(",");
    let attempts = format!(
        "SELECT id FROM escrow.funding_attempts WHERE escrow_account_id::text IN ({ids}) \
         OR id::text IN ({ids})"
    );
    let operations = format!(
        "SELECT o.id FROM gateway_sandbox.operations o WHERE o.idempotency_key IN \
         (SELECT gateway_key FROM escrow.funding_attempts WHERE id IN ({attempts}))"
    );
    let mut text = String::new();
    for (what, sql) in [
        (
            "funding attempts",
            format!(
                "SELECT row_to_json(a) FROM escrow.funding_attempts a WHERE id IN ({attempts}) \
                 ORDER BY created_at"
            ),
        ),
        (
            "gateway events",
            format!(
                "SELECT row_to_json(e) FROM escrow.gateway_events e \
                 WHERE funding_attempt_id IN ({attempts}) OR gateway_reference IN ({operations}) \
                 ORDER BY received_at"
            ),
        ),
        (
            "gateway operations",
            format!(
                "SELECT row_to_json(o) FROM gateway_sandbox.operations o \
                 WHERE o.id IN ({operations}) OR o.source_id IN ({operations}) ORDER BY o.id"
            ),
        ),
    ] {
        let rows = crate::psql(&platform.database.url, &sql).unwrap_or_else(|e| e.to_string());
        text.push_str(&format!("== {what}\n{rows}\n"));
    }
    let path = platform.log_dir.join("evidence.txt");
    if std::fs::write(&path, text).is_ok() {
        println!("   rows of the accounts named: {}", path.display());
    }
}

/// A process that died without the schedule killing it is a finding; it is
/// started again so the run goes on.
async fn restart_crashed(platform: &mut ChaosPlatform) -> Result<Vec<String>> {
    let crashed = platform.crashed();
    for proc in platform.procs.values_mut() {
        if proc.pid().is_some() && proc.exited().is_some() {
            proc.kill9();
        }
        if proc.pid().is_none() {
            proc.start()?;
            proc.wait_ready(Duration::from_secs(90)).await?;
        }
    }
    Ok(crashed)
}

async fn inject(platform: &mut ChaosPlatform, lost: &LostAnswers, fault: &Fault) -> Result<()> {
    match &fault.kind {
        FaultKind::Kill(target, replica) => {
            platform.proc_mut(*target, *replica).kill9();
            tokio::time::sleep(fault.hold).await;
            let proc = platform.proc_mut(*target, *replica);
            proc.start()?;
            proc.wait_ready(Duration::from_secs(90)).await?;
        }
        FaultKind::Pause(target, replica) => {
            platform.proc_mut(*target, *replica).signal("-STOP")?;
            tokio::time::sleep(fault.hold).await;
            platform.proc_mut(*target, *replica).signal("-CONT")?;
        }
        // The second lane's; never in `faults`.
        FaultKind::CutCalls { .. } => {}
        FaultKind::PostgresRestart => {
            tokio::task::block_in_place(|| platform.cluster.restart())?;
        }
        FaultKind::GatewayLatency { latency_ms } => {
            let json = format!(
                r#"{{"latency_ms":{latency_ms},"latency_jitter_ms":500,"seed":{}}}"#,
                fault.gateway_seed
            );
            gateway_window(platform, &json, fault.hold).await?;
        }
        FaultKind::GatewayFailures { failure_rate } => {
            let json = format!(
                r#"{{"failure_rate":{failure_rate},"seed":{}}}"#,
                fault.gateway_seed
            );
            gateway_window(platform, &json, fault.hold).await?;
        }
        FaultKind::GatewayTimeouts { timeout_rate } => {
            let json = format!(
                r#"{{"timeout_rate":{timeout_rate},"hang_ms":15000,"seed":{}}}"#,
                fault.gateway_seed
            );
            gateway_window(platform, &json, fault.hold).await?;
        }
        FaultKind::WebhookChaos {
            duplicate_rate,
            reorder_window_ms,
            lose_next,
        } => {
            let json = format!(
                r#"{{"duplicate_rate":{duplicate_rate},"reorder_window_ms":{reorder_window_ms},"webhook_delay_ms":300,"lose_next":{lose_next},"seed":{}}}"#,
                fault.gateway_seed
            );
            gateway_window(platform, &json, fault.hold).await?;
        }
        FaultKind::LostAnswers { share } => {
            lost.set(*share);
            tokio::time::sleep(fault.hold).await;
            lost.set(0.0);
        }
    }
    Ok(())
}

/// The gateway's faults set for `hold`, then cleared. The gateway itself
/// may be down a moment after a kill: the PUT is retried.
async fn gateway_window(platform: &ChaosPlatform, json: &str, hold: Duration) -> Result<()> {
    put_faults(platform, json).await?;
    tokio::time::sleep(hold).await;
    put_faults(platform, "{}").await
}

async fn put_faults(platform: &ChaosPlatform, json: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        match platform.set_gateway_faults(json).await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= 50 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
