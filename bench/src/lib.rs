//! The load generator behind `make bench` (issue 13): many concurrent tonic
//! callers drive escrow's ledger transfers and supplier-registry's cover
//! reservations for a fixed time, each call's latency in an HDR histogram,
//! and `pgbench` (TPC-B-like) runs on the same Postgres in the same run, so
//! every figure is reported as a ratio to what Postgres does on this machine.
//!
//! The services are the real binaries, started here against a fresh database
//! (one schema each), or already running ones given by address.
//!
//! What a scenario needs beforehand (escrow accounts, suppliers) is set up
//! before its timed phase, as `pgbench -i` fills its tables first; after it,
//! the generator's tally of acknowledged movements is compared with escrow's
//! statements ([`tally`]) and the ledger is reconciled.

pub mod chaos;
pub mod cluster;
pub mod tally;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use ta_proto::{
    common::{Money, PageRequest},
    tradeassurance::{
        contract::v1::{
            AcceptGoodsRequest, ConfirmReceiptRequest, Contract, ContractStatus, ContractTerms,
            CreateContractDraftRequest, DeliveryTerms, GetContractRequest, Incoterm,
            InspectionKind, InspectionRequirement, LineItem, PaymentMilestone, PaymentScheme,
            PaymentTerms, PaymentTrigger, Protection, RecordShipmentRequest, SignContractRequest,
            contract_service_client::ContractServiceClient,
        },
        escrow::v1::{
            self as escrow, CardPayment, EscrowPaymentScheme, FundEscrowRequest, FundingStatus,
            GetEscrowStatementRequest, GetEscrowStatementResponse, OpenEscrowAccountRequest,
            Purpose, ReconcileLedgerRequest, ReleaseToSupplierRequest, ScheduledPayment,
            escrow_service_client::EscrowServiceClient,
        },
        supplier::v1::{
            Contact, EnrollTradeAssuranceRequest, RegisterSupplierRequest, ReserveCoverRequest,
            SubmitVerificationRequest, VerifySupplierRequest,
            supplier_registry_service_client::SupplierRegistryServiceClient,
        },
        testing::v1::{EchoRequest, echo_service_client::EchoServiceClient},
    },
};
use ta_runtime::auth::Role;
use ta_testkit::{HealthStatus, TEST_SECRET, bearer, service_bearer, wait_for_health};
use tally::{Release, Tally, TallyCheck};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// The webhook secret escrow gets here (no webhook is sent by the bench).
const WEBHOOK_SECRET: &str = "bench-webhook-secret-of-at-least-32-bytes";
const MILESTONE_MINOR: i64 = 1_000;

type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One scenario of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Fund by card and release by milestone, every account its own supplier.
    Transfers,
    /// The same, every account of one supplier (its payable account is hot).
    HotSupplier,
    /// Many callers debiting one escrow account: releases of 10.00 USD, each
    /// for its own milestone, out of an account funded once.
    HotDebit,
    /// ReserveCover on one supplier, a distinct contract each time.
    ReserveCover,
    /// Whole orders through contract: draft, both signatures, activation
    /// (cover reserved, escrow opened), card funding, shipment, receipt,
    /// acceptance (the release follows through contract's outbox).
    Orders,
    /// The no-op baseline: `ta-echo` answers a 256-byte payload, so the
    /// services' CPU per call reads against gRPC and HTTP/2 alone.
    Echo,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Self::Transfers,
        Self::HotSupplier,
        Self::HotDebit,
        Self::ReserveCover,
        Self::Orders,
        Self::Echo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Transfers => "transfers",
            Self::HotSupplier => "hot-supplier",
            Self::HotDebit => "hot-debit",
            Self::ReserveCover => "reserve-cover",
            Self::Orders => "orders",
            Self::Echo => "echo",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The calls whose count is the scenario's throughput.
    pub fn counted(self) -> &'static [&'static str] {
        match self {
            Self::Transfers | Self::HotSupplier => &["FundEscrow", "ReleaseToSupplier"],
            Self::HotDebit => &["ReleaseToSupplier"],
            Self::ReserveCover => &["ReserveCover"],
            Self::Orders => &["whole order"],
            Self::Echo => &["Echo"],
        }
    }

    /// Whether it moves money through escrow (so its tally is compared and
    /// the ledger reconciled after it).
    pub fn moves_money(self) -> bool {
        matches!(
            self,
            Self::Transfers | Self::HotSupplier | Self::HotDebit | Self::Orders
        )
    }
}

// --- processes ------------------------------------------------------------------------

/// A service binary started by the bench; killed when dropped.
pub struct Service {
    pub name: String,
    pub addr: String,
    child: Child,
    pub log_path: PathBuf,
}

impl Service {
    pub fn spawn(
        bin_dir: &Path,
        name: &str,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log_path = log_dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let binary = bin_dir.join(name);
        let child = Command::new(&binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRPC_LISTEN_ADDR", &addr)
            // The sandbox gateway serves HTTP on its own variable.
            .env("GATEWAY_SANDBOX_LISTEN_ADDR", &addr)
            .env("AUTH_JWT_HS256_SECRET", TEST_SECRET)
            .env("AUTH_DEV_MODE", "true")
            .env("ESCROW_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("LOG_FORMAT", "text")
            .env("LOG_LEVEL", "warn")
            .env("OTEL_SDK_DISABLED", "true")
            // Settings under comparison (e.g. `GROUP_COMMIT_MAX_ITEMS=1` for
            // one transaction per call) reach the services from the bench's
            // own environment.
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("GROUP_COMMIT_")))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            child,
            log_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the sandbox gateway's `GET /healthz` answers 200 (plain
/// HTTP/1.1 over a TCP stream: the bench needs no HTTP client for one probe).
async fn wait_for_http_health(service: &Service, patience: Duration) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let probe = || -> std::io::Result<bool> {
            let mut stream = std::net::TcpStream::connect(&service.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(
                b"GET /healthz HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n",
            )?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer.starts_with(b"HTTP/1.1 200"))
        };
        if matches!(probe(), Ok(true)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} never answered /healthz; see {}",
                service.name,
                service.log_path.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

// --- Postgres (through psql and pgbench, so the bench needs no driver) -----------------

/// `url` with its database replaced by `database`, the query string kept.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut result = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

/// Runs one SQL statement with psql; returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", url, "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql `{sql}`: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database created for one run, dropped (with its connections) on drop.
pub struct Database {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl Database {
    pub fn create(admin_url: &str, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        psql(admin_url, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(Self {
            url: url_with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{prefix}_{secs}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What one pgbench run measured.
#[derive(Clone, Debug)]
pub struct PgbenchResult {
    pub scale: u32,
    pub clients: usize,
    pub tps: f64,
    pub latency_ms: f64,
}

/// `pgbench -i -s scale` into a fresh database (dropped with the result).
pub fn pgbench_init(admin_url: &str, scale: u32) -> Result<Database> {
    let db = Database::create(admin_url, "bench_pgbench")?;
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), &db.url])
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    if !init.status.success() {
        return Err(format!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
    Ok(db)
}

/// The TPC-B-like script on `db` (made by [`pgbench_init`] at `scale`) with
/// `clients` clients for `seconds`, prepared statements, and the given
/// `synchronous_commit`.
pub fn pgbench_run(
    db: &Database,
    scale: u32,
    clients: usize,
    seconds: u64,
    synchronous_commit: &str,
) -> Result<PgbenchResult> {
    let threads = clients.clamp(1, 2);
    let run = Command::new("pgbench")
        .env(
            "PGOPTIONS",
            format!("-c synchronous_commit={synchronous_commit}"),
        )
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &seconds.to_string(),
            "-M",
            "prepared",
            &db.url,
        ])
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(format!(
            "pgbench: {}{}",
            stdout,
            String::from_utf8_lossy(&run.stderr)
        )
        .into());
    }
    let field = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tps = field("tps = ").ok_or_else(|| format!("no tps in pgbench output:\n{stdout}"))?;
    Ok(PgbenchResult {
        scale,
        clients,
        tps,
        latency_ms: field("latency average = ").unwrap_or(f64::NAN),
    })
}

/// `repetitions` runs at each scale, the scales taking turns (so a noisy
/// moment of the machine falls on both), each scale initialised once.
pub fn pgbench_series(
    admin_url: &str,
    scales: &[u32],
    clients: usize,
    seconds: u64,
    synchronous_commit: &str,
    repetitions: usize,
) -> Result<Vec<PgbenchResult>> {
    let dbs = scales
        .iter()
        .map(|&scale| pgbench_init(admin_url, scale).map(|db| (scale, db)))
        .collect::<Result<Vec<_>>>()?;
    let mut results = Vec::new();
    for _ in 0..repetitions {
        for (scale, db) in &dbs {
            results.push(pgbench_run(
                db,
                *scale,
                clients,
                seconds,
                synchronous_commit,
            )?);
        }
    }
    Ok(results)
}

/// The middle value (the mean of the middle two of an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// (min, max); NaN for none.
pub fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::NAN, f64::NAN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// pgbench at one scale, before and after the scenarios.
#[derive(Clone, Debug)]
pub struct PgbenchSummary {
    pub scale: u32,
    pub clients: usize,
    pub before: Vec<f64>,
    pub after: Vec<f64>,
}

impl PgbenchSummary {
    pub fn of(scale: u32, before: &[PgbenchResult], after: &[PgbenchResult]) -> Self {
        let tps = |runs: &[PgbenchResult]| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.scale == scale)
                .map(|r| r.tps)
                .collect()
        };
        Self {
            scale,
            clients: before
                .iter()
                .chain(after)
                .find(|r| r.scale == scale)
                .map_or(0, |r| r.clients),
            before: tps(before),
            after: tps(after),
        }
    }

    /// The reference every ratio is read against: the median of all runs.
    pub fn median_all(&self) -> f64 {
        let all: Vec<f64> = self.before.iter().chain(&self.after).copied().collect();
        median(&all)
    }

    pub fn print(&self) {
        let side = |runs: &[f64]| {
            let (lo, hi) = spread(runs);
            let each: Vec<String> = runs.iter().map(|t| format!("{t:.1}")).collect();
            format!(
                "median {:.1} (min {lo:.1}, max {hi:.1}; {})",
                median(runs),
                each.join(", ")
            )
        };
        println!(
            "   pgbench scale {}, {} clients: before {}; after {}; median of all {:.1} tps",
            self.scale,
            self.clients,
            side(&self.before),
            side(&self.after),
            self.median_all()
        );
    }
}

// --- the platform ----------------------------------------------------------------------

/// Where the services are, and the processes when the bench started them.
pub struct Platform {
    pub registry_addr: String,
    pub escrow_addr: String,
    /// Where contract listens, if started (the orders scenario needs it).
    pub contract_addr: Option<String>,
    /// Where the no-op `ta-echo` listens, if started (the echo scenario).
    pub echo_addr: Option<String>,
    /// Started here (empty when reusing addresses).
    pub services: Vec<Service>,
    /// The sandbox payment gateway escrow pays through (HTTP, no gRPC health).
    pub gateway: Option<Service>,
    pub database: Option<Database>,
    pub log_dir: PathBuf,
}

impl Platform {
    /// supplier-registry and escrow (and contract, wired to both, when
    /// `with_contract`) from `bin_dir` on a fresh database of `admin_url`'s server.
    pub async fn start(
        bin_dir: &Path,
        admin_url: &str,
        pool_size: u32,
        log_dir: &Path,
        with_contract: bool,
    ) -> Result<Self> {
        fs::create_dir_all(log_dir)?;
        let database = Database::create(admin_url, "bench")?;
        let env = [
            ("DATABASE_URL", database.url.clone()),
            ("DATABASE_MAX_CONNECTIONS", pool_size.to_string()),
        ];
        let registry = Service::spawn(bin_dir, "supplier-registry", &env, log_dir)?;
        // Escrow pays through the sandbox gateway process, as under `make run`:
        // every card funding is an HTTP call to it, part of what is measured.
        let gateway = Service::spawn(bin_dir, "payment-gateway-sandbox", &env, log_dir)?;
        wait_for_http_health(&gateway, Duration::from_secs(60)).await?;
        let mut escrow_env = env.to_vec();
        escrow_env.push(("ESCROW_GATEWAY_URL", format!("http://{}", gateway.addr)));
        let escrow = Service::spawn(bin_dir, "escrow", &escrow_env, log_dir)?;
        let echo = Service::spawn(bin_dir, "ta-echo", &[], log_dir)?;
        let echo_addr = Some(echo.addr.clone());
        let mut services = vec![echo];
        let mut contract_addr = None;
        if with_contract {
            let mut contract_env = env.to_vec();
            contract_env.push(("SUPPLIER_REGISTRY_URL", format!("http://{}", registry.addr)));
            contract_env.push(("ESCROW_URL", format!("http://{}", escrow.addr)));
            let contract = Service::spawn(bin_dir, "contract", &contract_env, log_dir)?;
            contract_addr = Some(contract.addr.clone());
            services.push(contract);
        }
        let platform = Self {
            registry_addr: registry.addr.clone(),
            escrow_addr: escrow.addr.clone(),
            contract_addr,
            echo_addr,
            services: {
                services.insert(0, escrow);
                services.insert(0, registry);
                services
            },
            gateway: Some(gateway),
            database: Some(database),
            log_dir: log_dir.to_owned(),
        };
        for service in &platform.services {
            let channel = channel(&service.addr)?;
            wait_for_health(channel, "", HealthStatus::Serving, Duration::from_secs(60))
                .await
                .map_err(|last| {
                    format!(
                        "{} never became SERVING (last {last:?}); see {}",
                        service.name,
                        service.log_path.display()
                    )
                })?;
        }
        Ok(platform)
    }

    /// Services already running at these addresses.
    pub fn reuse(
        registry_addr: String,
        escrow_addr: String,
        contract_addr: Option<String>,
    ) -> Self {
        Self {
            registry_addr,
            escrow_addr,
            contract_addr,
            echo_addr: None,
            services: Vec::new(),
            gateway: None,
            database: None,
            log_dir: PathBuf::new(),
        }
    }

    /// CPU seconds of each started service so far.
    pub fn cpu(&self) -> Vec<(String, f64)> {
        self.services
            .iter()
            .filter_map(|s| cpu_seconds(s.pid()).map(|c| (s.name.clone(), c)))
            .collect()
    }

    /// CPU seconds so far of each Postgres backend connected to the services'
    /// database, by pid (empty when reusing running services).
    pub fn backend_cpu(&self) -> BTreeMap<u32, f64> {
        let Some(db) = &self.database else {
            return BTreeMap::new();
        };
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        );
        psql(&db.url, &sql)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .filter_map(|pid| cpu_seconds(pid).map(|c| (pid, c)))
            .collect()
    }

    /// The `synchronous_commit` the services' database runs with.
    pub fn synchronous_commit(&self, admin_url: &str) -> Result<String> {
        let url = self.database.as_ref().map_or(admin_url, |d| d.url.as_str());
        psql(url, "SHOW synchronous_commit")
    }
}

async fn channel_connected(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

pub fn channel(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect_lazy())
}

fn authorized<T>(message: T, token: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request.set_timeout(Duration::from_secs(30));
    request
}

fn timestamp_in(offset: Duration) -> prost_types::Timestamp {
    let at = SystemTime::now() + offset;
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

// --- measuring -------------------------------------------------------------------------

/// Latencies (microseconds) and failures of one kind of call.
#[derive(Clone)]
pub struct CallStats {
    pub latency_us: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl CallStats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }
}

/// One caller's record.
#[derive(Default)]
struct Recorder {
    calls: BTreeMap<&'static str, CallStats>,
    /// The money movements escrow acknowledged to this caller.
    tally: Tally,
}

impl Recorder {
    /// Records one outcome of `name` that took `took`.
    fn record(&mut self, name: &'static str, took: Duration, outcome: Result<(), String>) {
        let stats = self.calls.entry(name).or_insert_with(CallStats::new);
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(micros.max(1));
            }
            Err(error) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(error);
                }
            }
        }
    }

    /// Times `call`; records it as `name`. Returns its answer if it succeeded.
    async fn time<T, F>(&mut self, name: &'static str, call: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let answer = call.await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let stats = self.calls.entry(name).or_insert_with(CallStats::new);
        match answer {
            Ok(response) => {
                stats.latency_us.saturating_record(micros.max(1));
                Some(response.into_inner())
            }
            Err(status) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
                None
            }
        }
    }
}

/// What one scenario measured.
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub clients: usize,
    /// The paced rate asked for, if any.
    pub rate: Option<f64>,
    pub elapsed: Duration,
    pub calls: BTreeMap<&'static str, CallStats>,
    /// CPU seconds each service used during the timed phase.
    pub server_cpu: Vec<(String, f64)>,
    /// What the services' Postgres backends were doing, sampled every 100 ms
    /// during the timed phase: "wait_event_type:wait_event" (or "CPU") -> samples.
    pub wait_samples: BTreeMap<String, u64>,
    /// The services' statements during the timed phase, from
    /// `pg_stat_statements` (None where the server does not load it).
    pub statements: Option<StatementProfile>,
    /// Differences escrow's ReconcileLedger reported after the scenario
    /// (None: not an escrow scenario).
    pub ledger_differences: Option<usize>,
    pub ledger_checked: Option<(u64, u64, u64)>,
    /// What was prepared before the timed phase, if anything.
    pub setup: Option<Setup>,
    /// The tally of acknowledged movements against escrow's statements
    /// (None: not an escrow scenario).
    pub tally: Option<TallyCheck>,
    /// When a caller found no prepared account left, after the start: the
    /// setup was too small for the rate reached (the run is repeated with
    /// more, see [`run_scenario`]).
    pub ran_dry: Option<Duration>,
}

/// What a scenario prepared before its timed phase (not in its rate, its
/// wall clock or its CPU figures).
pub struct Setup {
    pub what: String,
    pub elapsed: Duration,
    pub calls: BTreeMap<&'static str, CallStats>,
}

impl ScenarioReport {
    /// Successful counted calls per second.
    pub fn throughput(&self) -> f64 {
        let n: u64 = self
            .scenario
            .counted()
            .iter()
            .filter_map(|c| self.calls.get(c))
            .map(CallStats::ok)
            .sum();
        n as f64 / self.elapsed.as_secs_f64()
    }

    pub fn errors(&self) -> u64 {
        self.calls.values().map(|c| c.errors).sum()
    }

    /// Differences of the tally with escrow's statements (0 when not checked).
    pub fn tally_differences(&self) -> usize {
        self.tally.as_ref().map_or(0, |t| t.differences.len())
    }

    /// No failed call, no difference in the ledger or with the tally.
    pub fn sound(&self) -> bool {
        self.errors() == 0
            && self.ledger_differences.unwrap_or(0) == 0
            && self.tally_differences() == 0
    }

    pub fn counted_ok(&self) -> u64 {
        self.scenario
            .counted()
            .iter()
            .filter_map(|c| self.calls.get(c))
            .map(CallStats::ok)
            .sum()
    }

    /// Successful gRPC calls: not the waits and whole orders recorded beside them.
    pub fn grpc_calls_ok(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(name, _)| !name.starts_with("wait: ") && **name != "whole order")
            .map(|(_, stats)| stats.ok())
            .sum()
    }

    /// CPU seconds per 1000 successful gRPC calls of the processes `include`
    /// names (services by name, "postgres backends"), in the timed phase.
    pub fn cpu_per_thousand_calls(&self, include: impl Fn(&str) -> bool) -> f64 {
        let cpu: f64 = self
            .server_cpu
            .iter()
            .filter(|(name, _)| include(name))
            .map(|(_, cpu)| cpu)
            .sum();
        cpu * 1000.0 / self.grpc_calls_ok().max(1) as f64
    }

    pub fn print(&self) {
        if let Some(setup) = &self.setup {
            let calls: Vec<String> = setup
                .calls
                .iter()
                .map(|(name, stats)| {
                    format!(
                        "{} {name} (p50 {:.2} ms{})",
                        stats.ok(),
                        stats.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                        if stats.errors > 0 {
                            format!(", {} errors", stats.errors)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            println!(
                "== {} setup, untimed: {} in {:.1} s{}",
                self.scenario.name(),
                setup.what,
                setup.elapsed.as_secs_f64(),
                if calls.is_empty() {
                    String::new()
                } else {
                    format!(": {}", calls.join(", "))
                }
            );
        }
        let paced = self
            .rate
            .map_or(String::from("unpaced"), |r| format!("paced at {r:.0}/s"));
        println!(
            "== {} ({} clients, {paced}, {:.1} s): {:.1} {}/s, {} errors",
            self.scenario.name(),
            self.clients,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.scenario.counted().join("+"),
            self.errors()
        );
        println!(
            "   {:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "call", "ok", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        for (name, stats) in &self.calls {
            let h = &stats.latency_us;
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "   {:<18} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                name,
                stats.ok(),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0,
                stats.errors
            );
            if let Some(e) = &stats.first_error {
                println!("     first error: {e}");
            }
        }
        let total_ok = self.grpc_calls_ok();
        let orders = self.calls.get("whole order").map_or(0, CallStats::ok);
        for (name, cpu) in &self.server_cpu {
            let per_order = if orders > 0 {
                format!(", {:.3} CPU s per order", cpu / orders as f64)
            } else {
                String::new()
            };
            println!(
                "   {name}: {cpu:.2} CPU s, {:.3} CPU s per 1000 calls{per_order}",
                cpu * 1000.0 / total_ok.max(1) as f64
            );
        }
        let samples: u64 = self.wait_samples.values().sum();
        if samples > 0 {
            let mut waits: Vec<_> = self.wait_samples.iter().collect();
            waits.sort_by(|a, b| b.1.cmp(a.1));
            let shown: Vec<String> = waits
                .iter()
                .take(6)
                .map(|(w, n)| format!("{w} {:.0} %", **n as f64 * 100.0 / samples as f64))
                .collect();
            println!(
                "   active Postgres backends ({samples} samples): {}",
                shown.join(", ")
            );
        }
        if let Some(profile) = &self.statements {
            println!(
                "   statements (pg_stat_statements): {} executed, {:.1} per counted call ({}); by total time:",
                profile.executions,
                profile.executions as f64 / self.counted_ok().max(1) as f64,
                self.scenario.counted().join(" + ")
            );
            for (calls, total_ms, mean_ms, rows, query) in &profile.top {
                println!(
                    "     {calls:>8} x {mean_ms:>7.3} ms = {total_ms:>9.1} ms  {rows:>8} rows  {query}"
                );
            }
        }
        if let (Some(d), Some((accounts, postings, holds))) =
            (self.ledger_differences, self.ledger_checked)
        {
            println!(
                "   ReconcileLedger: {d} differences ({accounts} accounts, {postings} postings, {holds} holds checked)"
            );
        }
        if let Some(tally) = &self.tally {
            tally.print();
        }
        if let Some(at) = self.ran_dry {
            println!(
                "   the prepared accounts ran out {:.1} s into the run",
                at.as_secs_f64()
            );
        }
    }
}

/// The tokens the callers present.
struct Tokens {
    contract_to_escrow: MetadataValue<Ascii>,
    contract_to_registry: MetadataValue<Ascii>,
    /// Staff verifying and enrolling the bench's supplier.
    trust_safety: MetadataValue<Ascii>,
    /// Staff reading statements after the run.
    support: MetadataValue<Ascii>,
    /// Staff reconciling the ledger after the run.
    finance: MetadataValue<Ascii>,
}

impl Tokens {
    fn new() -> Self {
        Self {
            contract_to_escrow: service_bearer("contract", "escrow"),
            contract_to_registry: service_bearer("contract", "supplier-registry"),
            trust_safety: bearer("bench-trust-safety", Role::TrustSafety),
            support: bearer("bench-support", Role::Support),
            finance: bearer("bench-finance", Role::Finance),
        }
    }
}

/// How a scenario is driven.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Concurrent callers, each on its own connection.
    pub clients: usize,
    /// How long the timed phase lasts.
    pub duration: Duration,
    /// Counted calls per second over all callers; None: as fast as they
    /// answer (each caller sends its next call when the last one returned).
    pub rate: Option<f64>,
    /// Sample what the services' Postgres backends wait on.
    pub sample_waits: bool,
    /// Milestones of each escrow account the transfer scenarios open: each is
    /// funded and released once, so one OpenEscrowAccount per this many pairs.
    pub milestones: usize,
    /// Releases out of each hot-debit account before the callers move on to
    /// the next (each names a milestone of its own, and the work of every
    /// call on the account grows with its schedule).
    pub debits_per_account: usize,
    /// The counted calls per second the setup prepares escrow accounts for
    /// (for a paced run, its pace); a run that outruns them is repeated.
    pub expected_rate: f64,
}

/// Spaces a caller's counted calls `interval` apart (no pacing without
/// one), until the deadline.
struct Pacer {
    interval: Option<Duration>,
    next: tokio::time::Instant,
    deadline: Instant,
}

impl Pacer {
    fn new(load: &Load, client: usize, deadline: Instant) -> Self {
        let interval = load
            .rate
            .filter(|r| *r > 0.0)
            .map(|rate| Duration::from_secs_f64(load.clients as f64 / rate));
        // Callers start spread over one interval, not all at once.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(client as f64 / load.clients.max(1) as f64)
        });
        Self {
            interval,
            next: tokio::time::Instant::now() + offset,
            deadline,
        }
    }

    /// Whether the timed phase is over.
    fn done(&self) -> bool {
        Instant::now() >= self.deadline
    }

    async fn wait(&mut self) {
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(self.next).await;
            self.next += interval;
        }
    }
}

/// Runs `scenario` with `load.clients` concurrent callers for `load.duration`,
/// after its setup; then compares the tally with escrow and reconciles the
/// ledger. A run whose callers used up the prepared accounts before the end
/// is reported, then run again with 1.5 times the rate it reached (at
/// least twice the accounts), up to three times.
pub async fn run_scenario(
    platform: &Platform,
    scenario: Scenario,
    mut load: Load,
) -> Result<ScenarioReport> {
    let mut attempt = 1;
    loop {
        let report = run_once(platform, scenario, load).await?;
        let Some(at) = report.ran_dry else {
            return Ok(report);
        };
        if attempt == 3 || !report.sound() {
            return Ok(report);
        }
        println!(
            "== {}: the prepared accounts ({}) ran out {:.1} s into the run at {:.1}/s; \
             discarded (tally {} differences, ledger {} differences), run again with more",
            scenario.name(),
            report
                .setup
                .as_ref()
                .map_or(String::new(), |s| s.what.clone()),
            at.as_secs_f64(),
            report.throughput(),
            report.tally_differences(),
            report.ledger_differences.unwrap_or(0)
        );
        load.expected_rate = (report.throughput() * 1.5).max(load.expected_rate * 2.0);
        attempt += 1;
    }
}

async fn run_once(platform: &Platform, scenario: Scenario, load: Load) -> Result<ScenarioReport> {
    let Load {
        clients,
        duration,
        sample_waits,
        ..
    } = load;
    let tokens = Arc::new(Tokens::new());
    let run = unique_name(scenario.name()).replace('_', "-");
    let mut setup_tally = Tally::default();
    // reserve-cover: one supplier for all; orders: one per caller.
    let mut suppliers: Vec<(String, String)> = Vec::new();
    let setup_started = Instant::now();
    let mut setup = None;
    let mut pool = None;
    match scenario {
        Scenario::ReserveCover => {
            suppliers.push(setup_cover_supplier(&platform.registry_addr, &tokens, &run).await?);
        }
        Scenario::Orders => {
            for client in 0..clients {
                let run = format!("{run}-s{client}");
                suppliers.push(setup_cover_supplier(&platform.registry_addr, &tokens, &run).await?);
            }
            setup = Some(Setup {
                what: format!("{clients} verified suppliers enrolled in Trade Assurance"),
                elapsed: setup_started.elapsed(),
                calls: BTreeMap::new(),
            });
        }
        Scenario::Transfers | Scenario::HotSupplier | Scenario::HotDebit => {
            let shape = PoolShape::of(scenario, &load);
            let (prepared, calls) =
                prepare_accounts(platform, &tokens, &run, shape, &load, &mut setup_tally).await?;
            setup = Some(Setup {
                what: shape.describe(prepared.accounts.len()),
                elapsed: setup_started.elapsed(),
                calls,
            });
            pool = Some(Arc::new(prepared));
        }
        Scenario::Echo => {}
    }
    let profiled = platform
        .database
        .as_ref()
        .is_some_and(|d| reset_statement_statistics(&d.url).is_ok());
    let cpu_before = platform.cpu();
    let backends_before = platform.backend_cpu();
    let bench_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let deadline = started + duration;
    let sampler = sample_waits.then(|| {
        let db = platform
            .database
            .as_ref()
            .map(|d| (d.name.clone(), d.url.clone()));
        std::thread::spawn(move || wait_sampler(db, deadline))
    });
    let mut workers = Vec::new();
    for client in 0..clients {
        let tokens = tokens.clone();
        let run = run.clone();
        let pool = pool.clone();
        let supplier = suppliers.get(client).or_else(|| suppliers.first()).cloned();
        let addr = match scenario {
            Scenario::ReserveCover => platform.registry_addr.clone(),
            Scenario::Orders => platform
                .contract_addr
                .clone()
                .ok_or("the orders scenario needs contract")?,
            Scenario::Echo => platform
                .echo_addr
                .clone()
                .ok_or("the echo scenario needs ta-echo (started only with the services)")?,
            _ => platform.escrow_addr.clone(),
        };
        let escrow_addr = platform.escrow_addr.clone();
        // One connection per caller, as separate clients would have.
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut pacer = Pacer::new(&load, client, deadline);
            match scenario {
                Scenario::Transfers | Scenario::HotSupplier => {
                    let pool = pool.expect("prepared above");
                    transfers_worker(channel, &tokens, &pool, started, &mut pacer, &mut recorder)
                        .await;
                }
                Scenario::HotDebit => {
                    let pool = pool.expect("prepared above");
                    hot_debit_worker(channel, &tokens, &pool, started, &mut pacer, &mut recorder)
                        .await;
                }
                Scenario::Orders => {
                    let (supplier_id, owner) = supplier.expect("set up above");
                    match channel_connected(&escrow_addr).await {
                        Ok(escrow) => {
                            orders_worker(
                                (channel, escrow),
                                &run,
                                (&supplier_id, &owner),
                                client,
                                &mut pacer,
                                &mut recorder,
                            )
                            .await;
                        }
                        Err(e) => {
                            recorder.record("whole order", Duration::ZERO, Err(e.to_string()))
                        }
                    }
                }
                Scenario::Echo => echo_worker(channel, &mut pacer, &mut recorder).await,
                Scenario::ReserveCover => {
                    let (supplier_id, _) = supplier.expect("set up above");
                    cover_worker(
                        channel,
                        &tokens,
                        &run,
                        &supplier_id,
                        client,
                        &mut pacer,
                        &mut recorder,
                    )
                    .await;
                }
            }
            recorder
        }));
    }
    let mut calls: BTreeMap<&'static str, CallStats> = BTreeMap::new();
    let mut tally = setup_tally;
    for worker in workers {
        let recorder = worker.await?;
        for (name, stats) in recorder.calls {
            calls
                .entry(name)
                .and_modify(|all| all.merge(&stats))
                .or_insert(stats);
        }
        tally.merge(recorder.tally);
    }
    let elapsed = started.elapsed();
    let cpu_after = platform.cpu();
    let mut server_cpu: Vec<(String, f64)> = cpu_after
        .into_iter()
        .filter_map(|(name, after)| {
            let before = cpu_before.iter().find(|(n, _)| *n == name)?.1;
            Some((name, after - before))
        })
        .collect();
    let backends_after = platform.backend_cpu();
    if !backends_after.is_empty() {
        let used: f64 = backends_after
            .iter()
            .map(|(pid, after)| after - backends_before.get(pid).copied().unwrap_or(0.0))
            .sum();
        server_cpu.push(("postgres backends".into(), used));
    }
    if let Some(bench_after) = cpu_seconds(std::process::id()) {
        server_cpu.push((
            "ta-bench (the generator)".into(),
            bench_after - bench_before,
        ));
    }
    let wait_samples = match sampler {
        Some(handle) => handle.join().unwrap_or_default(),
        None => BTreeMap::new(),
    };
    // Read before the checks below add statements of their own.
    let statements = match (&platform.database, profiled) {
        (Some(d), true) => read_statement_statistics(&d.url).ok(),
        _ => None,
    };
    let (tally_check, ledger_differences, ledger_checked) = if scenario.moves_money() {
        // The tally first: the releases contract's workflow makes after an
        // acceptance are waited for there, and then reconciled too.
        let check = check_tally(&platform.escrow_addr, &tokens, &tally, clients).await?;
        let (differences, checked) = reconcile(&platform.escrow_addr, &tokens).await?;
        (Some(check), Some(differences), Some(checked))
    } else {
        (None, None, None)
    };
    let ran_dry = pool.and_then(|p| *p.ran_dry.lock().expect("not poisoned"));
    Ok(ScenarioReport {
        scenario,
        clients,
        rate: load.rate,
        elapsed,
        calls,
        server_cpu,
        wait_samples,
        statements,
        ledger_differences,
        ledger_checked,
        setup,
        tally: tally_check,
        ran_dry,
    })
}

/// What the services' database executed during a timed phase.
#[derive(Clone, Debug, Default)]
pub struct StatementProfile {
    /// Every statement executed (`BEGIN` and `COMMIT` included).
    pub executions: u64,
    /// The statements that took the most time: calls, total and mean
    /// milliseconds, rows, the normalised text (shortened).
    pub top: Vec<(u64, f64, f64, u64, String)>,
}

/// Starts the statement statistics afresh; fails where the server does not
/// load `pg_stat_statements` (`--durability server` on the dev cluster).
fn reset_statement_statistics(url: &str) -> Result<()> {
    psql(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")?;
    psql(url, "SELECT pg_stat_statements_reset()")?;
    Ok(())
}

fn read_statement_statistics(url: &str) -> Result<StatementProfile> {
    // One text column with unit separators: statements may hold '|'.
    let of_this_database =
        "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let executions: u64 = psql(
        url,
        &format!(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE {of_this_database}"
        ),
    )?
    .parse()
    .map_err(|e| format!("pg_stat_statements: {e}"))?;
    let rows = psql(
        url,
        &format!(
            "SELECT calls || chr(31) || round(total_exec_time::numeric, 1) || chr(31) \
             || round(mean_exec_time::numeric, 3) || chr(31) || rows || chr(31) \
             || left(regexp_replace(query, '\\s+', ' ', 'g'), 100) \
             FROM pg_stat_statements WHERE {of_this_database} \
             ORDER BY total_exec_time DESC LIMIT 8"
        ),
    )?;
    let top = rows
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('\u{1f}');
            Some((
                cells.next()?.parse().ok()?,
                cells.next()?.parse().ok()?,
                cells.next()?.parse().ok()?,
                cells.next()?.parse().ok()?,
                cells.next()?.to_owned(),
            ))
        })
        .collect();
    Ok(StatementProfile { executions, top })
}

/// Samples every 100 ms until `deadline` what the database's active
/// backends wait on ("CPU" when on no wait event).
fn wait_sampler(db: Option<(String, String)>, deadline: Instant) -> BTreeMap<String, u64> {
    let mut samples = BTreeMap::new();
    let Some((name, url)) = db else {
        return samples;
    };
    let sql = format!(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity \
         WHERE datname = '{name}' AND state = 'active' AND pid <> pg_backend_pid()"
    );
    while Instant::now() < deadline {
        if let Ok(out) = psql(&url, &sql) {
            for line in out.lines().filter(|l| !l.is_empty()) {
                *samples.entry(line.to_owned()).or_insert(0) += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    samples
}

/// What the escrow accounts of a money scenario look like.
#[derive(Clone, Copy, Debug)]
struct PoolShape {
    scenario: Scenario,
    /// Transfers: milestones funded and released one by one. Hot debit:
    /// the milestones the releases name (the account is funded once, by a
    /// milestone of their sum).
    milestones: usize,
    /// Counted calls each account carries.
    calls_per_account: usize,
    /// What callers take from the pool at a time: a whole account
    /// (transfers) or one release (hot debit: every caller on one account).
    units_per_account: usize,
}

impl PoolShape {
    fn of(scenario: Scenario, load: &Load) -> Self {
        if scenario == Scenario::HotDebit {
            let debits = load.debits_per_account.max(1);
            Self {
                scenario,
                milestones: debits,
                calls_per_account: debits,
                units_per_account: debits,
            }
        } else {
            let milestones = load.milestones.max(1);
            Self {
                scenario,
                milestones,
                calls_per_account: 2 * milestones,
                units_per_account: 1,
            }
        }
    }

    /// Enough accounts for `load.expected_rate` over the run, a quarter more
    /// for its noise, and one more per caller (each may hold one part-used).
    fn accounts_for(&self, load: &Load) -> usize {
        let calls = load.expected_rate.max(1.0) * load.duration.as_secs_f64() * 1.25;
        (calls / self.calls_per_account as f64).ceil() as usize + load.clients
    }

    fn describe(&self, accounts: usize) -> String {
        match self.scenario {
            Scenario::HotDebit => format!(
                "{accounts} escrow accounts opened and each funded once with {} x 10.00 USD (released 10.00 at a time, one account after another)",
                self.milestones
            ),
            _ => format!(
                "{accounts} escrow accounts of {} milestones opened",
                self.milestones
            ),
        }
    }
}

/// An escrow account opened before the timed phase.
struct PreparedAccount {
    id: String,
    contract_id: String,
    supplier_id: String,
    /// Index of its buyer's token in [`AccountPool::buyers`].
    buyer: usize,
}

/// Escrow accounts opened before the timed phase (as `pgbench -i` fills its
/// tables first), handed out in order to whichever caller asks next.
struct AccountPool {
    shape: PoolShape,
    accounts: Vec<PreparedAccount>,
    buyers: Vec<MetadataValue<Ascii>>,
    next: AtomicUsize,
    ran_dry: Mutex<Option<Duration>>,
}

impl AccountPool {
    /// The next unit: (account, index of the unit within it); None, noted,
    /// when every unit is taken.
    fn take(&self, started: Instant) -> Option<(&PreparedAccount, usize)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let per = self.shape.units_per_account;
        match self.accounts.get(n / per) {
            Some(account) => Some((account, n % per)),
            None => {
                self.ran_dry
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert(started.elapsed());
                None
            }
        }
    }
}

/// Opens the accounts a money scenario's run will use, `load.clients` at a
/// time (hot debit: and funds each once, as its buyer, tallied).
async fn prepare_accounts(
    platform: &Platform,
    tokens: &Arc<Tokens>,
    run: &str,
    shape: PoolShape,
    load: &Load,
    tally: &mut Tally,
) -> Result<(AccountPool, BTreeMap<&'static str, CallStats>)> {
    let count = shape.accounts_for(load);
    let buyer_ids: Vec<String> = (0..load.clients.max(1))
        .map(|b| format!("{run}-buyer-{b}"))
        .collect();
    let accounts: Vec<PreparedAccount> = (0..count)
        .map(|k| PreparedAccount {
            id: String::new(),
            contract_id: format!("{run}-c{k}"),
            supplier_id: match shape.scenario {
                Scenario::HotSupplier => format!("{run}-hot-supplier"),
                Scenario::HotDebit => format!("{run}-supplier"),
                _ => format!("{run}-supplier-{k}"),
            },
            buyer: k % buyer_ids.len(),
        })
        .collect();
    let accounts = Arc::new(Mutex::new(accounts));
    let openers = load.clients.max(1);
    let mut tasks = Vec::new();
    for opener in 0..openers {
        let channel = channel_connected(&platform.escrow_addr).await?;
        let tokens = tokens.clone();
        let accounts = accounts.clone();
        let buyer_ids = buyer_ids.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut escrow = EscrowServiceClient::new(channel);
            let mut recorder = Recorder::default();
            let mut k = opener;
            loop {
                let Some((contract_id, supplier_id, buyer)) = accounts
                    .lock()
                    .expect("not poisoned")
                    .get(k)
                    .map(|a| (a.contract_id.clone(), a.supplier_id.clone(), a.buyer))
                else {
                    break;
                };
                let buyer_id = &buyer_ids[buyer];
                let id = open_and_fund(
                    &mut escrow,
                    &tokens,
                    &run,
                    shape,
                    (&contract_id, &supplier_id, buyer_id),
                    &mut recorder,
                )
                .await?;
                accounts.lock().expect("not poisoned")[k].id = id;
                k += openers;
            }
            Ok::<_, Error>(recorder)
        }));
    }
    let mut calls: BTreeMap<&'static str, CallStats> = BTreeMap::new();
    for task in tasks {
        let recorder = task.await??;
        for (name, stats) in recorder.calls {
            calls
                .entry(name)
                .and_modify(|all| all.merge(&stats))
                .or_insert(stats);
        }
        tally.merge(recorder.tally);
    }
    let accounts = std::mem::take(&mut *accounts.lock().expect("not poisoned"));
    Ok((
        AccountPool {
            shape,
            accounts,
            buyers: buyer_ids.iter().map(|b| bearer(b, Role::Buyer)).collect(),
            next: AtomicUsize::new(0),
            ran_dry: Mutex::new(None),
        },
        calls,
    ))
}

/// The milestone a hot-debit account is funded by, once.
const HOT_DEBIT_FUNDING: &str = "funding";

/// Opens one account of `shape` (hot debit: and funds it); returns its id.
/// Any failure fails the setup, and so the run.
async fn open_and_fund(
    escrow: &mut EscrowServiceClient<Channel>,
    tokens: &Tokens,
    run: &str,
    shape: PoolShape,
    (contract_id, supplier_id, buyer_id): (&str, &str, &str),
    recorder: &mut Recorder,
) -> Result<String> {
    let due = Some(timestamp_in(Duration::from_secs(7 * 86_400)));
    let payment = |milestone_id: String, minor: i64| ScheduledPayment {
        milestone_id,
        amount: usd(minor),
        due_at: due,
        funded_at: None,
    };
    let hot_debit = shape.scenario == Scenario::HotDebit;
    let funding_minor = MILESTONE_MINOR * shape.milestones as i64;
    let schedule = if hot_debit {
        // The releases name these milestones (a purpose moves money once)
        // and take their 10.00 from the one funding: 0.01 each only keeps
        // the schedule's total near what is funded.
        std::iter::once(payment(HOT_DEBIT_FUNDING.into(), funding_minor))
            .chain((0..shape.milestones).map(|d| payment(format!("d{d}"), 1)))
            .collect()
    } else {
        (0..shape.milestones)
            .map(|m| payment(format!("m{m}"), MILESTONE_MINOR))
            .collect()
    };
    let open = OpenEscrowAccountRequest {
        idempotency_key: format!("open-{contract_id}"),
        contract_id: contract_id.to_owned(),
        buyer_principal_id: buyer_id.to_owned(),
        supplier_id: supplier_id.to_owned(),
        schedule,
        payment_scheme: EscrowPaymentScheme::Direct as i32,
        financing_partner_id: String::new(),
        supplier_owner_principal_id: format!("{run}-supplier-owner"),
        hold_until: Some(timestamp_in(Duration::from_secs(60 * 86_400))),
        // Contract's own call: only staff give a reason.
        reason: String::new(),
    };
    let started = Instant::now();
    let opened = escrow
        .open_escrow_account(authorized(open, &tokens.contract_to_escrow))
        .await;
    let account_id = match opened {
        Ok(answer) => answer
            .into_inner()
            .account
            .map(|a| a.escrow_account_id)
            .ok_or("OpenEscrowAccount answered no account")?,
        Err(status) => {
            return Err(format!(
                "setup: OpenEscrowAccount {contract_id}: {:?}: {}",
                status.code(),
                status.message()
            )
            .into());
        }
    };
    recorder.record("OpenEscrowAccount", started.elapsed(), Ok(()));
    if hot_debit {
        let buyer = bearer(buyer_id, Role::Buyer);
        let fund = fund_request(
            &format!("fund-{contract_id}"),
            &account_id,
            HOT_DEBIT_FUNDING,
            funding_minor,
        );
        let started = Instant::now();
        let answer = escrow
            .fund_escrow(authorized(fund, &buyer))
            .await
            .map_err(|s| {
                format!(
                    "setup: FundEscrow {contract_id}: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        recorder.record("FundEscrow", started.elapsed(), Ok(()));
        tally_funding(recorder, &account_id, supplier_id, &answer)
            .map_err(|e| format!("setup: {e}"))?;
    }
    Ok(account_id)
}

fn fund_request(key: &str, account_id: &str, milestone_id: &str, minor: i64) -> FundEscrowRequest {
    FundEscrowRequest {
        idempotency_key: key.to_owned(),
        escrow_account_id: account_id.to_owned(),
        milestone_id: milestone_id.to_owned(),
        amount: usd(minor),
        method: Some(escrow::fund_escrow_request::Method::Card(CardPayment {
            card_token: "tok_visa".into(),
        })),
    }
}

/// Counts an acknowledged funding in the caller's tally; a card funding
/// answered with anything but SUCCEEDED moved no money and is an error.
fn tally_funding(
    recorder: &mut Recorder,
    account_id: &str,
    supplier_id: &str,
    answer: &escrow::FundEscrowResponse,
) -> Result<(), String> {
    let attempt = answer
        .funding_attempt
        .as_ref()
        .ok_or("FundEscrow answered no funding attempt")?;
    if attempt.status() != FundingStatus::Succeeded {
        return Err(format!(
            "FundEscrow: attempt {} is {:?} ({})",
            attempt.funding_attempt_id,
            attempt.status(),
            attempt.failure_message
        ));
    }
    recorder.tally.funded(
        account_id,
        supplier_id,
        &attempt.funding_attempt_id,
        attempt.amount.as_ref().map_or(0, |m| m.amount_minor),
    );
    Ok(())
}

/// Counts an acknowledged release in the caller's tally.
fn tally_release(
    recorder: &mut Recorder,
    account_id: &str,
    supplier_id: &str,
    milestone_id: &str,
    answer: &escrow::ReleaseToSupplierResponse,
) -> Result<(), String> {
    let posting = answer
        .posting
        .as_ref()
        .ok_or("ReleaseToSupplier answered no posting")?;
    recorder.tally.released(
        account_id,
        supplier_id,
        Release {
            posting_id: posting.posting_id.clone(),
            milestone_id: milestone_id.to_owned(),
            amount_minor: posting.amount.as_ref().map_or(0, |m| m.amount_minor),
        },
    );
    Ok(())
}

fn release_request(key: String, account_id: &str, milestone_id: &str) -> ReleaseToSupplierRequest {
    ReleaseToSupplierRequest {
        idempotency_key: key,
        escrow_account_id: account_id.to_owned(),
        amount: usd(MILESTONE_MINOR),
        reason: "milestone delivered".into(),
        purpose: Some(Purpose {
            purpose: Some(escrow::purpose::Purpose::MilestoneId(
                milestone_id.to_owned(),
            )),
        }),
    }
}

/// Takes prepared accounts one after another and, milestone by milestone,
/// funds it by card (as its buyer) and releases it (as contract).
async fn transfers_worker(
    channel: Channel,
    tokens: &Tokens,
    pool: &AccountPool,
    started: Instant,
    pacer: &mut Pacer,
    recorder: &mut Recorder,
) {
    let mut escrow = EscrowServiceClient::new(channel);
    while !pacer.done() {
        let Some((account, _)) = pool.take(started) else {
            break;
        };
        let buyer = &pool.buyers[account.buyer];
        for m in 0..pool.shape.milestones {
            if pacer.done() {
                break;
            }
            let milestone_id = format!("m{m}");
            let fund = fund_request(
                &format!("fund-{}-{m}", account.contract_id),
                &account.id,
                &milestone_id,
                MILESTONE_MINOR,
            );
            pacer.wait().await;
            let Some(funded) = recorder
                .time("FundEscrow", escrow.fund_escrow(authorized(fund, buyer)))
                .await
            else {
                break;
            };
            if let Err(e) = tally_funding(recorder, &account.id, &account.supplier_id, &funded) {
                recorder.record("FundEscrow (not succeeded)", Duration::ZERO, Err(e));
                break;
            }
            let release = release_request(
                format!("release-{}-{m}", account.contract_id),
                &account.id,
                &milestone_id,
            );
            pacer.wait().await;
            if !release_and_tally(
                &mut escrow,
                tokens,
                recorder,
                account,
                &milestone_id,
                release,
            )
            .await
            {
                break;
            }
        }
    }
}

/// Releases 10.00 USD at a time out of the account every caller is on,
/// each release for the next of its milestones; the next account when
/// they are used up.
async fn hot_debit_worker(
    channel: Channel,
    tokens: &Tokens,
    pool: &AccountPool,
    started: Instant,
    pacer: &mut Pacer,
    recorder: &mut Recorder,
) {
    let mut escrow = EscrowServiceClient::new(channel);
    while !pacer.done() {
        pacer.wait().await;
        let Some((account, debit)) = pool.take(started) else {
            break;
        };
        let milestone_id = format!("d{debit}");
        let release = release_request(
            format!("release-{}-{debit}", account.contract_id),
            &account.id,
            &milestone_id,
        );
        release_and_tally(
            &mut escrow,
            tokens,
            recorder,
            account,
            &milestone_id,
            release,
        )
        .await;
    }
}

/// Releases as `contract`, timed, and tallies the posting it acknowledged;
/// false when the call failed.
async fn release_and_tally(
    escrow: &mut EscrowServiceClient<Channel>,
    tokens: &Tokens,
    recorder: &mut Recorder,
    account: &PreparedAccount,
    milestone_id: &str,
    release: ReleaseToSupplierRequest,
) -> bool {
    let Some(released) = recorder
        .time(
            "ReleaseToSupplier",
            escrow.release_to_supplier(authorized(release, &tokens.contract_to_escrow)),
        )
        .await
    else {
        return false;
    };
    if let Err(e) = tally_release(
        recorder,
        &account.id,
        &account.supplier_id,
        milestone_id,
        &released,
    ) {
        recorder.record("ReleaseToSupplier (no posting)", Duration::ZERO, Err(e));
    }
    true
}

/// Every page of one account's statement, read as support staff.
async fn read_statement(
    escrow: &mut EscrowServiceClient<Channel>,
    support: &MetadataValue<Ascii>,
    account_id: &str,
) -> Result<GetEscrowStatementResponse> {
    let mut all = GetEscrowStatementResponse::default();
    let mut page_token = String::new();
    loop {
        let request = GetEscrowStatementRequest {
            escrow_account_id: account_id.to_owned(),
            page: Some(PageRequest {
                page_size: 100,
                page_token: page_token.clone(),
            }),
        };
        let page = escrow
            .get_escrow_statement(authorized(request, support))
            .await
            .map_err(|s| {
                format!(
                    "GetEscrowStatement {account_id}: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        all.account = page.account;
        all.balances = page.balances;
        all.holds = page.holds;
        all.postings.extend(page.postings);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Reads the statement of every account in `tally` (`readers` at a time)
/// and compares them; an account where an acceptance's release is expected
/// is read again until it shows one, for up to [`STEP_PATIENCE`].
async fn check_tally(
    escrow_addr: &str,
    tokens: &Tokens,
    tally: &Tally,
    readers: usize,
) -> Result<TallyCheck> {
    let ids: Vec<String> = tally.accounts.keys().cloned().collect();
    let readers = readers.clamp(1, 8);
    let mut tasks = Vec::new();
    for reader in 0..readers {
        let mine: Vec<(String, bool)> = ids
            .iter()
            .skip(reader)
            .step_by(readers)
            .map(|id| (id.clone(), tally.accounts[id].acceptance_expected))
            .collect();
        let channel = channel_connected(escrow_addr).await?;
        let support = tokens.support.clone();
        tasks.push(tokio::spawn(async move {
            let mut escrow = EscrowServiceClient::new(channel);
            let deadline = Instant::now() + STEP_PATIENCE;
            let mut statements = Vec::new();
            for (id, acceptance) in mine {
                let mut statement = read_statement(&mut escrow, &support, &id).await?;
                while acceptance
                    && !tally::shows_acceptance(&statement)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(STATUS_POLL * 10).await;
                    statement = read_statement(&mut escrow, &support, &id).await?;
                }
                statements.push((id, statement));
            }
            Ok::<_, Error>(statements)
        }));
    }
    let mut check = TallyCheck {
        expected: tally.totals(),
        ..TallyCheck::default()
    };
    check.found.accounts = ids.len();
    let mut by_supplier = BTreeMap::new();
    for task in tasks {
        for (id, statement) in task.await?? {
            tally::compare_account(
                &id,
                &tally.accounts[&id],
                &statement,
                &mut check,
                &mut by_supplier,
            );
        }
    }
    tally::compare_suppliers(tally, &by_supplier, &mut check.differences);
    Ok(check)
}

/// A verified supplier enrolled with far more cover than the run reserves.
/// Returns (supplier id, owner principal).
async fn setup_cover_supplier(
    registry_addr: &str,
    tokens: &Tokens,
    run: &str,
) -> Result<(String, String)> {
    let mut registry = SupplierRegistryServiceClient::new(channel(registry_addr)?);
    let owner_id = format!("{run}-owner");
    let owner = bearer(&owner_id, Role::Supplier);
    let registered = registry
        .register_supplier(authorized(
            RegisterSupplierRequest {
                idempotency_key: format!("register-{run}"),
                legal_name: "Bench Manufacturing Co.".into(),
                country_code: "CN".into(),
                business_licence_number: licence_number(run),
                contacts: vec![Contact {
                    name: "Li Wei".into(),
                    email: "sales@example.com".into(),
                    phone: String::new(),
                }],
                owner_principal_id: String::new(),
                reason: String::new(),
            },
            &owner,
        ))
        .await?
        .into_inner();
    let supplier_id = registered
        .supplier
        .map(|s| s.supplier_id)
        .ok_or("RegisterSupplier answered no supplier")?;
    registry
        .submit_verification(authorized(
            SubmitVerificationRequest {
                idempotency_key: format!("submit-{run}"),
                supplier_id: supplier_id.clone(),
                reason: String::new(),
            },
            &owner,
        ))
        .await?;
    registry
        .verify_supplier(authorized(
            VerifySupplierRequest {
                idempotency_key: format!("verify-{run}"),
                supplier_id: supplier_id.clone(),
                reason: "bench supplier: licence checked".into(),
            },
            &tokens.trust_safety,
        ))
        .await?;
    registry
        .enroll_trade_assurance(authorized(
            EnrollTradeAssuranceRequest {
                idempotency_key: format!("enrol-{run}"),
                supplier_id: supplier_id.clone(),
                ta_limit: usd(1_000_000_000_000_000),
                reason: "bench supplier: cover for every contract of the run".into(),
            },
            &tokens.trust_safety,
        ))
        .await?;
    Ok((supplier_id, owner_id))
}

/// A business licence number of the shape the registry accepts (18
/// characters starting 9131), distinct per run.
fn licence_number(run: &str) -> String {
    let hash = run
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("9131{:010}", hash % 10_000_000_000)
}

async fn cover_worker(
    channel: Channel,
    tokens: &Tokens,
    run: &str,
    supplier_id: &str,
    client: usize,
    pacer: &mut Pacer,
    recorder: &mut Recorder,
) {
    let mut registry = SupplierRegistryServiceClient::new(channel);
    let mut n = 0u64;
    while !pacer.done() {
        n += 1;
        let contract_id = format!("{run}-c{client}-{n}");
        let reserve = ReserveCoverRequest {
            idempotency_key: format!("reserve-{contract_id}"),
            supplier_id: supplier_id.to_owned(),
            contract_id,
            amount: usd(10_000),
        };
        pacer.wait().await;
        recorder
            .time(
                "ReserveCover",
                registry.reserve_cover(authorized(reserve, &tokens.contract_to_registry)),
            )
            .await;
    }
}

async fn echo_worker(channel: Channel, pacer: &mut Pacer, recorder: &mut Recorder) {
    let mut echo = EchoServiceClient::new(channel);
    let payload = vec![0x5a; 256];
    while !pacer.done() {
        pacer.wait().await;
        recorder
            .time(
                "Echo",
                echo.echo(EchoRequest {
                    payload: payload.clone(),
                }),
            )
            .await;
    }
}

/// Escrow's ReconcileLedger as finance: (differences, (accounts, postings, holds) checked).
async fn reconcile(escrow_addr: &str, tokens: &Tokens) -> Result<(usize, (u64, u64, u64))> {
    let mut escrow = EscrowServiceClient::new(channel(escrow_addr)?);
    let mut request = authorized(ReconcileLedgerRequest {}, &tokens.finance);
    request.set_timeout(Duration::from_secs(300));
    let answer = escrow.reconcile_ledger(request).await?.into_inner();
    for d in answer.differences.iter().take(5) {
        eprintln!("ledger difference: {} {}", d.kind, d.detail);
    }
    Ok((
        answer.differences.len(),
        (
            answer.accounts_checked,
            answer.postings_checked,
            answer.holds_checked,
        ),
    ))
}

/// How often an order's caller polls contract for a status the workflow
/// reaches in the background.
const STATUS_POLL: Duration = Duration::from_millis(20);
/// How long an order may wait for one background step.
const STEP_PATIENCE: Duration = Duration::from_secs(30);
const ORDER_TOTAL_MINOR: i64 = 100_000;

/// Places whole orders one after another, each timed from the draft to the
/// accepted goods, every call timed too.
async fn orders_worker(
    (contract_channel, escrow_channel): (Channel, Channel),
    run: &str,
    (supplier_id, owner): (&str, &str),
    client: usize,
    pacer: &mut Pacer,
    recorder: &mut Recorder,
) {
    let mut contracts = ContractServiceClient::new(contract_channel);
    let mut escrow = EscrowServiceClient::new(escrow_channel);
    let buyer_id = format!("{run}-order-buyer-{client}");
    let buyer = bearer(&buyer_id, Role::Buyer);
    let supplier = bearer(owner, Role::Supplier);
    let mut n = 0u64;
    while !pacer.done() {
        n += 1;
        pacer.wait().await;
        let key = format!("{run}-{client}-{n}");
        let started = Instant::now();
        let outcome = one_order(
            &mut contracts,
            &mut escrow,
            (&buyer, &supplier),
            supplier_id,
            &key,
            recorder,
        )
        .await;
        recorder.record("whole order", started.elapsed(), outcome);
    }
}

async fn one_order(
    contracts: &mut ContractServiceClient<Channel>,
    escrow_client: &mut EscrowServiceClient<Channel>,
    (buyer, supplier): (&MetadataValue<Ascii>, &MetadataValue<Ascii>),
    supplier_id: &str,
    key: &str,
    recorder: &mut Recorder,
) -> Result<(), String> {
    let draft = CreateContractDraftRequest {
        idempotency_key: format!("draft-{key}"),
        supplier_id: supplier_id.to_owned(),
        terms: Some(order_terms()),
        ..Default::default()
    };
    let created = recorder
        .time(
            "CreateContractDraft",
            contracts.create_contract_draft(authorized(draft, buyer)),
        )
        .await
        .ok_or("CreateContractDraft failed")?;
    let contract_id = created
        .contract
        .map(|c| c.contract_id)
        .ok_or("no contract")?;
    for (who, token) in [("supplier", supplier), ("buyer", buyer)] {
        let sign = SignContractRequest {
            idempotency_key: format!("sign-{who}-{key}"),
            contract_id: contract_id.clone(),
            version: 1,
        };
        recorder
            .time(
                "SignContract",
                contracts.sign_contract(authorized(sign, token)),
            )
            .await
            .ok_or("SignContract failed")?;
    }
    let active = wait_status(
        contracts,
        buyer,
        &contract_id,
        ContractStatus::AwaitingPayment,
        recorder,
        "wait: activation",
    )
    .await?;
    let account_id = active.escrow_account_id;
    let fund = fund_request(
        &format!("fund-{key}"),
        &account_id,
        "full",
        ORDER_TOTAL_MINOR,
    );
    let funded = recorder
        .time(
            "FundEscrow",
            escrow_client.fund_escrow(authorized(fund, buyer)),
        )
        .await
        .ok_or("FundEscrow failed")?;
    tally_funding(recorder, &account_id, supplier_id, &funded)?;
    wait_status(
        contracts,
        buyer,
        &contract_id,
        ContractStatus::Funded,
        recorder,
        "wait: funded",
    )
    .await?;
    let ship = RecordShipmentRequest {
        idempotency_key: format!("ship-{key}"),
        contract_id: contract_id.clone(),
        carrier: "DHL".into(),
        tracking_number: "JD014600006281".into(),
        r#final: true,
        ..Default::default()
    };
    recorder
        .time(
            "RecordShipment",
            contracts.record_shipment(authorized(ship, supplier)),
        )
        .await
        .ok_or("RecordShipment failed")?;
    let receipt = ConfirmReceiptRequest {
        idempotency_key: format!("receipt-{key}"),
        contract_id: contract_id.clone(),
        ..Default::default()
    };
    recorder
        .time(
            "ConfirmReceipt",
            contracts.confirm_receipt(authorized(receipt, buyer)),
        )
        .await
        .ok_or("ConfirmReceipt failed")?;
    let accept = AcceptGoodsRequest {
        idempotency_key: format!("accept-{key}"),
        contract_id: contract_id.clone(),
        note: "all good".into(),
        ..Default::default()
    };
    let accepted = recorder
        .time(
            "AcceptGoods",
            contracts.accept_goods(authorized(accept, buyer)),
        )
        .await
        .ok_or("AcceptGoods failed")?;
    match accepted.contract.map(|c| c.status()) {
        Some(ContractStatus::Completed) => {
            recorder
                .tally
                .account(&account_id, supplier_id)
                .acceptance_expected = true;
            Ok(())
        }
        other => Err(format!("accepted contract is {other:?}")),
    }
}

/// Polls GetContract until the contract is `wanted`; records the wait as `what`.
async fn wait_status(
    contracts: &mut ContractServiceClient<Channel>,
    token: &MetadataValue<Ascii>,
    contract_id: &str,
    wanted: ContractStatus,
    recorder: &mut Recorder,
    what: &'static str,
) -> Result<Contract, String> {
    let started = Instant::now();
    loop {
        let request = GetContractRequest {
            contract_id: contract_id.to_owned(),
            version: 0,
        };
        let answer = contracts
            .get_contract(authorized(request, token))
            .await
            .map_err(|s| format!("GetContract: {:?}: {}", s.code(), s.message()))?;
        if let Some(contract) = answer.into_inner().contract
            && contract.status() == wanted
        {
            recorder.record(what, started.elapsed(), Ok(()));
            return Ok(contract);
        }
        if started.elapsed() > STEP_PATIENCE {
            let error = format!("{contract_id} not {wanted:?} after {STEP_PATIENCE:?}");
            recorder.record(what, started.elapsed(), Err(error.clone()));
            return Err(error);
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// 10 items at 100.00 USD, paid in full by card after signing, no inspection.
fn order_terms() -> ContractTerms {
    let days = |n: u64| Some(timestamp_in(Duration::from_secs(n * 86_400)));
    ContractTerms {
        title: "Stoneware mugs".into(),
        line_items: vec![LineItem {
            sku: "MUG-350".into(),
            description: "350 ml stoneware mug".into(),
            quantity: 10,
            unit: "pcs".into(),
            unit_price: usd(ORDER_TOTAL_MINOR / 10),
            line_total: None,
        }],
        shipment_deadline: days(20),
        delivery_deadline: days(45),
        delivery_terms: Some(DeliveryTerms {
            incoterm: Incoterm::Fob as i32,
            named_place: "Shanghai port".into(),
            destination_country_code: "DE".into(),
        }),
        inspection: Some(InspectionRequirement {
            kind: InspectionKind::None as i32,
            ..Default::default()
        }),
        payment_terms: Some(PaymentTerms {
            scheme: PaymentScheme::FullPrepayment as i32,
            milestones: vec![PaymentMilestone {
                milestone_id: "full".into(),
                share_basis_points: 10_000,
                trigger: PaymentTrigger::AfterSigning as i32,
                due_days: 30,
                amount: None,
                lot: 0,
            }],
            pay_later: None,
        }),
        inspection_period_days: 7,
        claim_window_days: 0,
        protection: Protection::TradeAssurance as i32,
        ..Default::default()
    }
}
