//! The whole platform as real processes for the chaos run: two replicas
//! each of supplier-registry, escrow, contract and dispute, and the sandbox
//! payment gateway, on a throwaway Postgres cluster of their own
//! ([`Cluster`]), so the schedule may restart that Postgres without
//! touching anyone else's. Every process can be killed and started again on
//! the same address, or paused.
//!
//! Nobody names a replica: the clients and the checker call a service
//! through its front (a [`Proxy`] that spreads connections over both
//! replicas and is never cut), the services call each other through a
//! link (another proxy over the callee's replicas, which the schedule may
//! cut: [`Link`]), and the gateway's webhooks reach escrow's two HTTP
//! endpoints through a link too.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use ta_testkit::{HealthStatus, TEST_SECRET, wait_for_health};

use super::{
    proxy::{Mode, Proxy},
    schedule::{Link, Target},
};
use crate::{
    Database, Result, channel,
    cluster::{Cluster, Durability},
    free_port,
};

/// The webhook secret the gateway signs with and escrow checks.
const WEBHOOK_SECRET: &str = "chaos-webhook-secret-of-at-least-32-bytes";

/// One service process, restartable in place.
pub struct Proc {
    pub target: Target,
    pub replica: u8,
    binary: PathBuf,
    pub addr: String,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Proc {
    fn new(
        bin_dir: &Path,
        (target, replica): (Target, u8),
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        Ok(Self {
            target,
            replica,
            binary: bin_dir.join(target.binary()),
            log_path: log_dir.join(format!("{}-{replica}.log", target.binary())),
            addr,
            env,
            child: None,
            starts: 0,
        })
    }

    /// Starts the binary on its address (its log appended to).
    pub fn start(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRPC_LISTEN_ADDR", &self.addr)
            .env("GATEWAY_SANDBOX_LISTEN_ADDR", &self.addr)
            .env("AUTH_JWT_HS256_SECRET", TEST_SECRET)
            .env("AUTH_DEV_MODE", "true")
            .env("LOG_FORMAT", "text")
            .env("LOG_LEVEL", "warn")
            .env("OTEL_SDK_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (nothing flushed, nothing said goodbye), reaped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().ok_or("not running")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill {signal} {pid} failed").into());
        }
        Ok(())
    }

    /// Whether the process exited by itself (a crash the schedule did not cause).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} replica {} exited by itself ({status}); see {}",
                self.target.binary(),
                self.replica,
                self.log_path.display()
            )),
            _ => None,
        }
    }

    /// Waits until it serves: gRPC health SERVING, or the gateway's /healthz.
    pub async fn wait_ready(&self, patience: Duration) -> Result<()> {
        if self.target == Target::Gateway {
            return wait_http(&self.addr, patience)
                .await
                .map_err(|e| format!("{e}; see {}", self.log_path.display()).into());
        }
        let channel = channel(&self.addr)?;
        wait_for_health(channel, "", HealthStatus::Serving, patience)
            .await
            .map_err(|last| {
                format!(
                    "{} never became SERVING (last {last:?}); see {}",
                    self.target.binary(),
                    self.log_path.display()
                )
                .into()
            })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A paused process must be let go on before it can die cleanly.
        let _ = self.signal("-CONT");
        self.kill9();
    }
}

/// `GET /healthz` answering 200, over plain HTTP/1.1.
async fn wait_http(addr: &str, patience: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Ok((200, _)) = http(addr, "GET", "/healthz", None).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("the gateway at {addr} never answered /healthz"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.0 call (the bench needs no HTTP client for a control API):
/// the status and the body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let addr = addr.to_owned();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.map_or(0, str::len),
        body.unwrap_or_default()
    );
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head}"))?;
        Ok((status, body.to_owned()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The platform of one chaos run.
pub struct ChaosPlatform {
    /// Every process, by service and replica.
    pub procs: BTreeMap<(Target, u8), Proc>,
    /// Per service: the proxy the clients and the checker call.
    pub fronts: BTreeMap<Target, Proxy>,
    /// The links the schedule may cut.
    pub links: BTreeMap<Link, Arc<Proxy>>,
    // Dropped after the processes (fields drop in order): the database,
    // then the cluster.
    pub database: Database,
    pub cluster: Cluster,
    pub log_dir: PathBuf,
}

impl ChaosPlatform {
    /// A fresh cluster (made by `script`, the project's dev-postgres.sh),
    /// one database on it, the proxies, and every process serving.
    /// `extra_env` is given to every service (the test-only defect switch,
    /// say).
    pub async fn start(
        script: &Path,
        bin_dir: &Path,
        log_dir: &Path,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        fs::create_dir_all(log_dir)?;
        for target in Target::ALL {
            let binary = bin_dir.join(target.binary());
            if !binary.is_file() {
                return Err(format!(
                    "{} is missing: build the binaries first (cargo build --bins)",
                    binary.display()
                )
                .into());
            }
        }
        let cluster = Cluster::start(script, Durability::Off)?;
        let database = Database::create(&cluster.url, "chaos")?;
        let common: Vec<(String, String)> = [
            ("DATABASE_URL", database.url.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "6"),
            ("WORKFLOW_OUTBOX_POLL_INTERVAL", "100ms"),
            ("WORKFLOW_TIMER_POLL_INTERVAL", "100ms"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain(extra_env.iter().cloned())
        .collect();
        let with = |more: &[(&str, String)]| -> Vec<(String, String)> {
            common
                .iter()
                .cloned()
                .chain(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())))
                .collect()
        };
        // Addresses first: the proxies need them before anyone starts.
        let mut procs: BTreeMap<(Target, u8), Proc> = BTreeMap::new();
        for target in Target::ALL {
            for replica in 0..target.replicas() {
                procs.insert(
                    (target, replica),
                    Proc::new(bin_dir, (target, replica), Vec::new(), log_dir)?,
                );
            }
        }
        let addrs = |target: Target| -> Vec<String> {
            (0..target.replicas())
                .map(|r| procs[&(target, r)].addr.clone())
                .collect()
        };
        let mut fronts = BTreeMap::new();
        for target in Target::ALL {
            fronts.insert(target, Proxy::start(addrs(target)).await?);
        }
        let webhook_addrs: Vec<String> = (0..Target::Escrow.replicas())
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_>>()?;
        let mut links = BTreeMap::new();
        for (link, backends) in [
            (Link::ToRegistry, addrs(Target::Registry)),
            (Link::ToEscrow, addrs(Target::Escrow)),
            (Link::ToContract, addrs(Target::Contract)),
            (Link::Webhooks, webhook_addrs.clone()),
        ] {
            links.insert(link, Arc::new(Proxy::start(backends).await?));
        }
        let url = |link: Link| format!("http://{}", links[&link].addr);
        let gateway_addr = procs[&(Target::Gateway, 0)].addr.clone();
        let evidence = log_dir.join("evidence");
        fs::create_dir_all(&evidence)?;
        for ((target, replica), proc) in &mut procs {
            proc.env = match target {
                Target::Registry => with(&[("PENALTY_RESTRICTION_THRESHOLD", "4000000000".into())]),
                Target::Gateway => with(&[
                    (
                        "GATEWAY_SANDBOX_WEBHOOK_URL",
                        format!("{}/v1/gateway-webhooks", url(Link::Webhooks)),
                    ),
                    ("GATEWAY_SANDBOX_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
                    ("GATEWAY_SANDBOX_SETTLE_AFTER", "500ms".into()),
                    ("GATEWAY_SANDBOX_AUTO_CREDIT_AFTER", "1s".into()),
                    ("GATEWAY_SANDBOX_POLL_INTERVAL", "100ms".into()),
                    ("GATEWAY_SANDBOX_WEBHOOK_RETRY_BASE", "200ms".into()),
                    ("GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP", "2s".into()),
                ]),
                Target::Escrow => with(&[
                    ("ESCROW_GATEWAY_URL", format!("http://{gateway_addr}")),
                    (
                        "ESCROW_WEBHOOK_LISTEN_ADDR",
                        webhook_addrs[usize::from(*replica)].clone(),
                    ),
                    ("ESCROW_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
                    ("ESCROW_GATEWAY_CHECK_AFTER", "2s".into()),
                    ("ESCROW_GATEWAY_WORKER_POLL", "1s".into()),
                    ("ESCROW_PAYOUT_INTERVAL", "5s".into()),
                    ("ESCROW_PAYOUT_EXPIRY", "20s".into()),
                ]),
                Target::Contract => with(&[
                    ("SUPPLIER_REGISTRY_URL", url(Link::ToRegistry)),
                    ("ESCROW_URL", url(Link::ToEscrow)),
                ]),
                Target::Dispute => with(&[
                    ("SUPPLIER_REGISTRY_URL", url(Link::ToRegistry)),
                    ("CONTRACT_URL", url(Link::ToContract)),
                    ("ESCROW_URL", url(Link::ToEscrow)),
                    ("EVIDENCE_STORE", evidence.display().to_string()),
                ]),
            };
        }
        // Each creates its schema on first start: one after the other.
        for target in [
            Target::Gateway,
            Target::Registry,
            Target::Escrow,
            Target::Contract,
            Target::Dispute,
        ] {
            for replica in 0..target.replicas() {
                let proc = procs
                    .get_mut(&(target, replica))
                    .expect("every replica is made");
                proc.start()?;
                proc.wait_ready(Duration::from_secs(90)).await?;
            }
        }
        Ok(Self {
            procs,
            fronts,
            links,
            database,
            cluster,
            log_dir: log_dir.to_owned(),
        })
    }

    /// Where the clients and the checker call `target` (either replica).
    pub fn addr(&self, target: Target) -> &str {
        &self.fronts[&target].addr
    }

    pub fn proc_mut(&mut self, target: Target, replica: u8) -> &mut Proc {
        self.procs
            .get_mut(&(target, replica))
            .expect("every replica is started")
    }

    /// Any process that died without the schedule killing it.
    pub fn crashed(&mut self) -> Vec<String> {
        self.procs.values_mut().filter_map(Proc::exited).collect()
    }

    /// Opens every link again.
    pub fn open_links(&self) {
        for link in self.links.values() {
            link.set(Mode::Open);
        }
    }

    /// Replaces the gateway's faults (its control API).
    pub async fn set_gateway_faults(&self, json: &str) -> Result<()> {
        match http(
            self.addr(Target::Gateway),
            "PUT",
            "/sandbox/faults",
            Some(json),
        )
        .await
        {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, body)) => Err(format!("PUT /sandbox/faults: {status} {body}").into()),
            Err(e) => Err(format!("PUT /sandbox/faults: {e}").into()),
        }
    }

    /// The gateway's books (JSON text).
    pub async fn gateway_books(&self) -> Result<String> {
        match http(self.addr(Target::Gateway), "GET", "/sandbox/books", None).await {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(format!("GET /sandbox/books: {status} {body}").into()),
            Err(e) => Err(format!("GET /sandbox/books: {e}").into()),
        }
    }
}
