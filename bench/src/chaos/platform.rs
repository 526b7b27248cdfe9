//! The whole platform as real processes for the chaos run: supplier-registry,
//! escrow, contract, dispute and the sandbox payment gateway, on a
//! throwaway Postgres cluster of their own ([`Cluster`]), so the schedule
//! may restart that Postgres without touching anyone else's. Every process
//! can be killed and started again on the same address (its peers' URLs
//! and the gateway's webhook URL stay right), or paused.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ta_testkit::{HealthStatus, TEST_SECRET, wait_for_health};

use super::schedule::Target;
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
        target: Target,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        Ok(Self {
            target,
            binary: bin_dir.join(target.binary()),
            log_path: log_dir.join(format!("{}.log", target.binary())),
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
                "{} exited by itself ({status}); see {}",
                self.target.binary(),
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
    pub procs: BTreeMap<Target, Proc>,
    // Dropped after the processes (fields drop in order): the database,
    // then the cluster.
    pub database: Database,
    pub cluster: Cluster,
    pub log_dir: PathBuf,
}

impl ChaosPlatform {
    /// A fresh cluster (made by `script`, the project's dev-postgres.sh),
    /// one database on it, and the five processes serving. `extra_env` is
    /// given to every service (the test-only defect switch, say).
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
            ("DATABASE_MAX_CONNECTIONS", "8"),
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
        let webhooks = format!("127.0.0.1:{}", free_port()?);
        let mut registry = Proc::new(bin_dir, Target::Registry, with(&[]), log_dir)?;
        let mut gateway = Proc::new(
            bin_dir,
            Target::Gateway,
            with(&[
                (
                    "GATEWAY_SANDBOX_WEBHOOK_URL",
                    format!("http://{webhooks}/v1/gateway-webhooks"),
                ),
                ("GATEWAY_SANDBOX_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
                ("GATEWAY_SANDBOX_SETTLE_AFTER", "500ms".into()),
                ("GATEWAY_SANDBOX_POLL_INTERVAL", "100ms".into()),
                ("GATEWAY_SANDBOX_WEBHOOK_RETRY_BASE", "200ms".into()),
                ("GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP", "2s".into()),
            ]),
            log_dir,
        )?;
        let mut escrow = Proc::new(bin_dir, Target::Escrow, Vec::new(), log_dir)?;
        escrow.env = with(&[
            ("ESCROW_GATEWAY_URL", format!("http://{}", gateway.addr)),
            ("ESCROW_WEBHOOK_LISTEN_ADDR", webhooks),
            ("ESCROW_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("ESCROW_GATEWAY_CHECK_AFTER", "2s".into()),
        ]);
        let mut contract = Proc::new(bin_dir, Target::Contract, Vec::new(), log_dir)?;
        contract.env = with(&[
            ("SUPPLIER_REGISTRY_URL", format!("http://{}", registry.addr)),
            ("ESCROW_URL", format!("http://{}", escrow.addr)),
        ]);
        let evidence = log_dir.join("evidence");
        fs::create_dir_all(&evidence)?;
        let mut dispute = Proc::new(bin_dir, Target::Dispute, Vec::new(), log_dir)?;
        dispute.env = with(&[
            ("SUPPLIER_REGISTRY_URL", format!("http://{}", registry.addr)),
            ("CONTRACT_URL", format!("http://{}", contract.addr)),
            ("ESCROW_URL", format!("http://{}", escrow.addr)),
            ("EVIDENCE_STORE", evidence.display().to_string()),
        ]);
        // Each creates its schema on first start: one after the other.
        for proc in [
            &mut registry,
            &mut gateway,
            &mut escrow,
            &mut contract,
            &mut dispute,
        ] {
            proc.start()?;
            proc.wait_ready(Duration::from_secs(90)).await?;
        }
        let procs = [registry, gateway, escrow, contract, dispute]
            .into_iter()
            .map(|p| (p.target, p))
            .collect();
        Ok(Self {
            procs,
            database,
            cluster,
            log_dir: log_dir.to_owned(),
        })
    }

    pub fn addr(&self, target: Target) -> &str {
        &self.procs[&target].addr
    }

    pub fn proc_mut(&mut self, target: Target) -> &mut Proc {
        self.procs
            .get_mut(&target)
            .expect("every target is started")
    }

    /// Any process that died without the schedule killing it.
    pub fn crashed(&mut self) -> Vec<String> {
        self.procs.values_mut().filter_map(Proc::exited).collect()
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
