//! The load generator behind `make bench` (issue 13): many concurrent tonic
//! callers drive escrow's ledger transfers and supplier-registry's cover
//! reservations for a fixed time, each call's latency in an HDR histogram,
//! and `pgbench` (TPC-B-like) runs on the same Postgres in the same run, so
//! every figure is reported as a ratio to what Postgres does on this machine.
//!
//! The services are the real binaries, started here against a fresh database
//! (one schema each), or already running ones given by address.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use ta_proto::{
    common::Money,
    tradeassurance::{
        contract::v1::{
            AcceptGoodsRequest, ConfirmReceiptRequest, Contract, ContractStatus, ContractTerms,
            CreateContractDraftRequest, DeliveryTerms, GetContractRequest, Incoterm,
            InspectionKind, InspectionRequirement, LineItem, PaymentMilestone, PaymentScheme,
            PaymentTerms, PaymentTrigger, Protection, RecordShipmentRequest, SignContractRequest,
            contract_service_client::ContractServiceClient,
        },
        escrow::v1::{
            self as escrow, CardPayment, EscrowPaymentScheme, FundEscrowRequest,
            OpenEscrowAccountRequest, Purpose, ReconcileLedgerRequest, ReleaseToSupplierRequest,
            ScheduledPayment, escrow_service_client::EscrowServiceClient,
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
    pub const ALL: [Scenario; 5] = [
        Self::Transfers,
        Self::HotSupplier,
        Self::ReserveCover,
        Self::Orders,
        Self::Echo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Transfers => "transfers",
            Self::HotSupplier => "hot-supplier",
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
            Self::ReserveCover => &["ReserveCover"],
            Self::Orders => &["whole order"],
            Self::Echo => &["Echo"],
        }
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

/// `pgbench -i -s scale` into a fresh database, then the TPC-B-like script
/// with `clients` clients for `seconds`, prepared statements, and the given
/// `synchronous_commit`.
pub fn pgbench(
    admin_url: &str,
    scale: u32,
    clients: usize,
    seconds: u64,
    synchronous_commit: &str,
) -> Result<PgbenchResult> {
    let db = Database::create(admin_url, "bench_pgbench")?;
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), &db.url])
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    if !init.status.success() {
        return Err(format!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
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
    /// Differences escrow's ReconcileLedger reported after the scenario
    /// (None: not an escrow scenario).
    pub ledger_differences: Option<usize>,
    pub ledger_checked: Option<(u64, u64, u64)>,
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
        if let (Some(d), Some((accounts, postings, holds))) =
            (self.ledger_differences, self.ledger_checked)
        {
            println!(
                "   ReconcileLedger: {d} differences ({accounts} accounts, {postings} postings, {holds} holds checked)"
            );
        }
    }
}

/// The tokens the callers present.
struct Tokens {
    contract_to_escrow: MetadataValue<Ascii>,
    contract_to_registry: MetadataValue<Ascii>,
    operator: MetadataValue<Ascii>,
}

impl Tokens {
    fn new() -> Self {
        Self {
            contract_to_escrow: service_bearer("contract", "escrow"),
            contract_to_registry: service_bearer("contract", "supplier-registry"),
            operator: bearer("bench-operator", Role::Operator),
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

/// Runs `scenario` with `load.clients` concurrent callers for `load.duration`.
pub async fn run_scenario(
    platform: &Platform,
    scenario: Scenario,
    load: Load,
) -> Result<ScenarioReport> {
    let Load {
        clients,
        duration,
        sample_waits,
        ..
    } = load;
    let tokens = std::sync::Arc::new(Tokens::new());
    let run = unique_name(scenario.name()).replace('_', "-");
    // reserve-cover: one supplier for all; orders: one per caller.
    let mut suppliers: Vec<(String, String)> = Vec::new();
    match scenario {
        Scenario::ReserveCover => {
            suppliers.push(setup_cover_supplier(&platform.registry_addr, &tokens, &run).await?);
        }
        Scenario::Orders => {
            for client in 0..clients {
                let run = format!("{run}-s{client}");
                suppliers.push(setup_cover_supplier(&platform.registry_addr, &tokens, &run).await?);
            }
        }
        _ => {}
    }
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
                    transfers_worker(
                        channel,
                        &tokens,
                        &run,
                        client,
                        AccountShape {
                            hot: scenario == Scenario::HotSupplier,
                            milestones: load.milestones.max(1),
                        },
                        &mut pacer,
                        &mut recorder,
                    )
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
    for worker in workers {
        let recorder = worker.await?;
        for (name, stats) in recorder.calls {
            calls
                .entry(name)
                .and_modify(|all| all.merge(&stats))
                .or_insert(stats);
        }
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
    let (ledger_differences, ledger_checked) = match scenario {
        Scenario::Transfers | Scenario::HotSupplier | Scenario::Orders => {
            let (differences, checked) = reconcile(&platform.escrow_addr, &tokens).await?;
            (Some(differences), Some(checked))
        }
        Scenario::ReserveCover | Scenario::Echo => (None, None),
    };
    Ok(ScenarioReport {
        scenario,
        clients,
        rate: load.rate,
        elapsed,
        calls,
        server_cpu,
        wait_samples,
        ledger_differences,
        ledger_checked,
    })
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

/// The escrow accounts a transfer scenario opens.
#[derive(Clone, Copy)]
struct AccountShape {
    /// All of one supplier (else each its own).
    hot: bool,
    /// Scheduled payments per account.
    milestones: usize,
}

/// Opens accounts of `shape.milestones` milestones and, milestone by
/// milestone, funds it by card (as the buyer) and releases it (as contract).
async fn transfers_worker(
    channel: Channel,
    tokens: &Tokens,
    run: &str,
    client: usize,
    shape: AccountShape,
    pacer: &mut Pacer,
    recorder: &mut Recorder,
) {
    let AccountShape { hot, milestones } = shape;
    let mut escrow = EscrowServiceClient::new(channel);
    let buyer_id = format!("{run}-buyer-{client}");
    let buyer = bearer(&buyer_id, Role::Buyer);
    let mut account_no = 0usize;
    while !pacer.done() {
        account_no += 1;
        let contract_id = format!("{run}-c{client}-a{account_no}");
        let supplier_id = if hot {
            format!("{run}-hot-supplier")
        } else {
            format!("{run}-supplier-{client}-{account_no}")
        };
        let schedule = (0..milestones)
            .map(|m| ScheduledPayment {
                milestone_id: format!("m{m}"),
                amount: usd(MILESTONE_MINOR),
                due_at: Some(timestamp_in(Duration::from_secs(7 * 86_400))),
                funded_at: None,
            })
            .collect();
        let open = OpenEscrowAccountRequest {
            idempotency_key: format!("open-{contract_id}"),
            contract_id: contract_id.clone(),
            buyer_principal_id: buyer_id.clone(),
            supplier_id,
            schedule,
            payment_scheme: EscrowPaymentScheme::Direct as i32,
            financing_partner_id: String::new(),
            supplier_owner_principal_id: format!("{run}-supplier-owner"),
            hold_until: Some(timestamp_in(Duration::from_secs(60 * 86_400))),
        };
        let Some(opened) = recorder
            .time(
                "OpenEscrowAccount",
                escrow.open_escrow_account(authorized(open, &tokens.contract_to_escrow)),
            )
            .await
        else {
            continue;
        };
        let Some(account_id) = opened.account.map(|a| a.escrow_account_id) else {
            continue;
        };
        for m in 0..milestones {
            if pacer.done() {
                break;
            }
            let milestone_id = format!("m{m}");
            let fund = FundEscrowRequest {
                idempotency_key: format!("fund-{contract_id}-{m}"),
                escrow_account_id: account_id.clone(),
                milestone_id: milestone_id.clone(),
                amount: usd(MILESTONE_MINOR),
                method: Some(escrow::fund_escrow_request::Method::Card(CardPayment {
                    card_token: "tok_visa".into(),
                })),
            };
            pacer.wait().await;
            if recorder
                .time("FundEscrow", escrow.fund_escrow(authorized(fund, &buyer)))
                .await
                .is_none()
            {
                continue;
            }
            let release = ReleaseToSupplierRequest {
                idempotency_key: format!("release-{contract_id}-{m}"),
                escrow_account_id: account_id.clone(),
                amount: usd(MILESTONE_MINOR),
                reason: "milestone delivered".into(),
                purpose: Some(Purpose {
                    purpose: Some(escrow::purpose::Purpose::MilestoneId(milestone_id)),
                }),
            };
            pacer.wait().await;
            recorder
                .time(
                    "ReleaseToSupplier",
                    escrow.release_to_supplier(authorized(release, &tokens.contract_to_escrow)),
                )
                .await;
        }
    }
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
            },
            &owner,
        ))
        .await?;
    registry
        .verify_supplier(authorized(
            VerifySupplierRequest {
                idempotency_key: format!("verify-{run}"),
                supplier_id: supplier_id.clone(),
            },
            &tokens.operator,
        ))
        .await?;
    registry
        .enroll_trade_assurance(authorized(
            EnrollTradeAssuranceRequest {
                idempotency_key: format!("enrol-{run}"),
                supplier_id: supplier_id.clone(),
                ta_limit: usd(1_000_000_000_000_000),
            },
            &tokens.operator,
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

/// Escrow's ReconcileLedger as an operator: (differences, (accounts, postings, holds) checked).
async fn reconcile(escrow_addr: &str, tokens: &Tokens) -> Result<(usize, (u64, u64, u64))> {
    let mut escrow = EscrowServiceClient::new(channel(escrow_addr)?);
    let mut request = authorized(ReconcileLedgerRequest {}, &tokens.operator);
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
    let fund = FundEscrowRequest {
        idempotency_key: format!("fund-{key}"),
        escrow_account_id: active.escrow_account_id,
        milestone_id: "full".into(),
        amount: usd(ORDER_TOTAL_MINOR),
        method: Some(escrow::fund_escrow_request::Method::Card(CardPayment {
            card_token: "tok_visa".into(),
        })),
    };
    recorder
        .time(
            "FundEscrow",
            escrow_client.fund_escrow(authorized(fund, buyer)),
        )
        .await
        .ok_or("FundEscrow failed")?;
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
    };
    let accepted = recorder
        .time(
            "AcceptGoods",
            contracts.accept_goods(authorized(accept, buyer)),
        )
        .await
        .ok_or("AcceptGoods failed")?;
    match accepted.contract.map(|c| c.status()) {
        Some(ContractStatus::Completed) => Ok(()),
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
            }],
            pay_later: None,
        }),
        inspection_period_days: 7,
        claim_window_days: 0,
        protection: Protection::TradeAssurance as i32,
        ..Default::default()
    }
}
