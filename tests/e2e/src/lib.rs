//! Helpers for the end-to-end tests: the real service binaries (built by
//! `cargo build --workspace --bins`), each in its own process on a free
//! loopback port against its own Postgres database, driven by the real
//! `grpcurl` binary.
//!
//! Everything here is synchronous: a test runs processes and waits for them.
//! Every wait is bounded (a generous bound that only stops a hung test; no test
//! asserts how fast anything is). Every process started here is killed when its
//! handle is dropped, also when the test fails.

use std::{
    ffi::OsStr,
    fs,
    future::Future,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub mod platform;
pub mod scenario;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub use serde_json::{Value, json};
use ta_runtime::auth::PLATFORM_AUDIENCE;
pub use ta_runtime::auth::Role;
pub use ta_testkit::TEST_SECRET;

/// The webhook signing secret the escrow binary gets in these tests.
pub const TEST_WEBHOOK_SECRET: &str = "e2e-webhook-secret-of-at-least-32-bytes";

/// How grpcurl reaches a service: plaintext (the default) or TLS.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    #[default]
    Plaintext,
    /// TLS, the server's certificate verified with `ca` (for 127.0.0.1);
    /// with `identity` (certificate, key), grpcurl presents a client
    /// certificate (mutual TLS).
    Tls {
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
    },
}

impl Transport {
    /// grpcurl's arguments for this transport.
    pub fn grpcurl_args(&self) -> Vec<String> {
        match self {
            Self::Plaintext => vec!["-plaintext".into()],
            Self::Tls { ca, identity } => {
                let mut args = vec!["-cacert".into(), ca.display().to_string()];
                if let Some((cert, key)) = identity {
                    args.extend([
                        "-cert".into(),
                        cert.display().to_string(),
                        "-key".into(),
                        key.display().to_string(),
                    ]);
                }
                args
            }
        }
    }
}

/// The trust domain of the test certificates' SPIFFE IDs.
pub const TEST_TRUST_DOMAIN: &str = "trade-assurance.test";

/// The SPIFFE ID that names `service` in the test certificates,
/// `spiffe://trade-assurance.test/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TEST_TRUST_DOMAIN}/{service}")
}

/// PEM files (written by the test) for services over mutual TLS: one CA
/// signs each service's own certificate (valid for 127.0.0.1 and localhost,
/// naming the service by its SPIFFE ID, [`spiffe_id`]), which it serves
/// and presents to its peers, and the test client's (naming no workload).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// Each service's certificate and key, by the service's name.
    pub services: Vec<(String, PathBuf, PathBuf)>,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// The certificate and key of `service`.
    ///
    /// # Panics
    /// When there is none for it.
    pub fn identity(&self, service: &str) -> (PathBuf, PathBuf) {
        self.services
            .iter()
            .find(|(name, _, _)| name == service)
            .map(|(_, cert, key)| (cert.clone(), key.clone()))
            .unwrap_or_else(|| panic!("no certificate for {service}"))
    }

    /// The settings of `service` serving mutual TLS only with its own
    /// certificate and calling its (https://) peers with it as client
    /// certificate.
    pub fn service_env(&self, service: &str) -> Vec<(String, String)> {
        let (cert, key) = self.identity(service);
        [
            ("GRPC_TLS_CERT_FILE", &cert),
            ("GRPC_TLS_KEY_FILE", &key),
            ("GRPC_TLS_CLIENT_CA_FILE", &self.ca),
            ("PEER_TLS_CA_FILE", &self.ca),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .collect()
    }

    /// grpcurl as the test client: verifies the CA, presents its certificate.
    pub fn transport(&self) -> Transport {
        Transport::Tls {
            ca: self.ca.clone(),
            identity: Some((self.client_cert.clone(), self.client_key.clone())),
        }
    }

    /// grpcurl presenting `service`'s own certificate.
    pub fn transport_as(&self, service: &str) -> Transport {
        Transport::Tls {
            ca: self.ca.clone(),
            identity: Some(self.identity(service)),
        }
    }
}

/// Binary names, as `cargo build --workspace --bins` writes them.
pub const SUPPLIER_REGISTRY: &str = "supplier-registry";
pub const CONTRACT: &str = "contract";
pub const ESCROW: &str = "escrow";
pub const DISPUTE: &str = "dispute";
pub const MINT_TOKEN: &str = "mint-token";
/// The four service binaries.
pub const SERVICES: [&str; 4] = [SUPPLIER_REGISTRY, CONTRACT, ESCROW, DISPUTE];

/// The supplier registry's fully-qualified gRPC service.
pub const SUPPLIER_SERVICE: &str = "tradeassurance.supplier.v1.SupplierRegistryService";
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Bound on waits for things that normally take well under a few seconds. It
/// only keeps a broken build from hanging the suite; it is not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(100);

// --- locations ----------------------------------------------------------------------

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Directories that may hold the binaries, most specific first: the `debug`
/// directory this test executable was built into (`<target>/debug/deps/<test>`),
/// then `$CARGO_TARGET_DIR/debug`, then `<repo>/target/debug`.
fn binary_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(debug) = exe.parent().and_then(Path::parent)
    {
        dirs.push(debug.to_path_buf());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join("debug"));
    }
    if let Some(target) = option_env!("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join("debug"));
    }
    dirs.push(repo_root().join("target/debug"));
    dirs.dedup();
    dirs
}

/// The path of a workspace binary, e.g. [`SUPPLIER_REGISTRY`]. Panics, saying to
/// build first, when it is missing: `cargo nextest run` builds the tests, not
/// the other packages' binaries.
pub fn binary(name: &str) -> PathBuf {
    let dirs = binary_dirs();
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .unwrap_or_else(|| {
            panic!(
                "binary `{name}` not found in any of {dirs:?}: \
                 run `cargo build --workspace --bins` first"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The real grpcurl: the first on `PATH`, else `<repo>/.venv/bin/grpcurl`
/// (installed by `scripts/install-tools.sh`, which `make test` also puts on PATH).
pub fn grpcurl_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let on_path = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|dir| dir.join("grpcurl"))
            .find(|path| is_executable(path));
        let venv = repo_root().join(".venv/bin/grpcurl");
        on_path
            .or_else(|| is_executable(&venv).then_some(venv.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "grpcurl not found on PATH nor at {}: run `make tools` \
                     (scripts/install-tools.sh installs grpcurl 1.8.6 there)",
                    venv.display()
                )
            })
    })
}

// --- small utilities ---------------------------------------------------------------

/// A name no other test (in this or a concurrent process) uses: lower case
/// letters, digits and underscores.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `probe` until it returns `Ok`, at most `timeout`; then panics with
/// `what` and the last `Err` text.
pub fn wait_until<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_until_every(POLL, timeout, what, probe)
}

/// [`wait_until`], polling every `poll`.
pub fn wait_until_every<T>(
    poll: Duration,
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("gave up after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => thread::sleep(poll),
        }
    }
}

/// An integer field of grpcurl's JSON output: protobuf JSON writes 64-bit
/// integers as strings and 32-bit ones as numbers; absent means zero.
pub fn int(value: &Value) -> i64 {
    match value {
        Value::Null => 0,
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an i64: {n}")),
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {s:?}")),
        other => panic!("not an integer: {other}"),
    }
}

/// A directory under the system temp dir, removed on drop unless the test is
/// failing (then it is kept, and its path printed, for inspection).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(&format!("ta-e2e-{label}")));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// --- Postgres ----------------------------------------------------------------------

/// `DATABASE_URL`: the server the tests create their databases on.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: export DATABASE_URL=\"$(scripts/dev-postgres.sh)\" \
             (make test does)"
        )
    })
}

/// `url` with its database (path) replaced by `database`, query string kept.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
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

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A uniquely named database on `DATABASE_URL`'s server, dropped (with its
/// connections) when this is dropped.
pub struct TestDatabase {
    pub name: String,
    /// The URL of this database, for a service's `DATABASE_URL`.
    pub url: String,
    admin_url: String,
}

/// A new, empty database for one test.
pub fn fresh_database() -> TestDatabase {
    let database = TestDatabase::absent();
    database.create();
    database
}

impl TestDatabase {
    /// A unique database name that is not created (yet): see [`Self::create`].
    pub fn absent() -> Self {
        let admin_url = database_url();
        let name = unique_name("e2e");
        Self {
            url: url_with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    pub fn create(&self) {
        self.admin(&format!("CREATE DATABASE \"{}\"", self.name));
    }

    /// Whether the database exists on the server.
    pub fn exists(&self) -> bool {
        let mut admin = Session::connect(&self.admin_url);
        let found = admin.strings(&format!(
            "SELECT datname::text FROM pg_database WHERE datname = '{}'",
            self.name
        ));
        !found.is_empty()
    }

    /// A connection to this database.
    pub fn session(&self) -> Session {
        Session::connect(&self.url)
    }

    fn admin(&self, sql: &str) {
        Session::connect(&self.admin_url).execute(sql);
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let result = block_on(async {
            let mut conn = PgConnection::connect(&self.admin_url).await?;
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await
        });
        if let Err(error) = result {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// One Postgres connection with its own runtime, for synchronous tests.
pub struct Session {
    // Dropped before the runtime it belongs to.
    conn: PgConnection,
    runtime: tokio::runtime::Runtime,
}

impl Session {
    pub fn connect(url: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let conn = runtime
            .block_on(async { tokio::time::timeout(PATIENCE, PgConnection::connect(url)).await })
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Self { conn, runtime }
    }

    /// Runs `sql` (one or more statements, simple protocol).
    pub fn execute(&mut self, sql: &str) {
        let conn = &mut self.conn;
        self.runtime
            .block_on(async {
                tokio::time::timeout(
                    PATIENCE,
                    sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(conn),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("`{sql}` timed out"))
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    }

    /// The first column (text) of every row `sql` returns.
    pub fn strings(&mut self, sql: &str) -> Vec<String> {
        let conn = &mut self.conn;
        self.runtime
            .block_on(async {
                tokio::time::timeout(
                    PATIENCE,
                    sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned())).fetch_all(conn),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("`{sql}` timed out"))
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
    }

    /// The single bigint `sql` returns.
    pub fn int(&mut self, sql: &str) -> i64 {
        let conn = &mut self.conn;
        self.runtime
            .block_on(async {
                tokio::time::timeout(
                    PATIENCE,
                    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned())).fetch_one(conn),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("`{sql}` timed out"))
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
    }
}

// --- processes -----------------------------------------------------------------------

/// Waits for `child`'s output at most `timeout`; kills it and panics after that.
fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = receiver.recv_timeout(Duration::from_secs(10));
            panic!("{what} still running after {timeout:?}: killed")
        }
    }
}

/// Runs the real grpcurl with `args` and returns what it did (bounded by [`PATIENCE`]).
pub fn grpcurl<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let child = Command::new(grpcurl_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", grpcurl_path().display()));
    wait_output(child, PATIENCE, "grpcurl")
}

/// grpcurl running in the background, e.g. a request left in flight; killed on drop.
pub struct Background {
    child: Option<Child>,
}

/// Starts grpcurl with `args` without waiting for it.
pub fn grpcurl_spawn<S: AsRef<OsStr>>(args: &[S]) -> Background {
    let child = Command::new(grpcurl_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", grpcurl_path().display()));
    Background { child: Some(child) }
}

impl Background {
    /// Whether it has exited already.
    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Waits for it to finish (at most `timeout`) and returns its output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("not waited for yet");
        wait_output(child, timeout, "background grpcurl")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The outcome of a gRPC call that grpcurl reported as an error.
#[derive(Debug)]
pub struct RpcError {
    /// The `Code:` grpcurl printed (e.g. `FailedPrecondition`); empty if it printed none.
    pub code: String,
    /// The `Message:` grpcurl printed.
    pub message: String,
    /// grpcurl's exit code (64 + the gRPC status code for status errors).
    pub exit_code: Option<i32>,
    pub stderr: String,
}

/// Parses grpcurl's error report (`ERROR:\n  Code: X\n  Message: Y`).
pub fn rpc_error(output: &Output) -> RpcError {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_default()
    };
    RpcError {
        code: field("Code:"),
        message: field("Message:"),
        exit_code: output.status.code(),
        stderr,
    }
}

/// The grpcurl arguments of a unary call: plaintext, JSON `body`, an optional
/// bearer token, zero values printed (`-emit-defaults`).
pub fn call_args(addr: &str, method: &str, token: Option<&str>, body: &Value) -> Vec<String> {
    call_args_over(&Transport::Plaintext, addr, method, token, body)
}

/// [`call_args`] over `transport`.
pub fn call_args_over(
    transport: &Transport,
    addr: &str,
    method: &str,
    token: Option<&str>,
    body: &Value,
) -> Vec<String> {
    let mut args = transport.grpcurl_args();
    args.extend(["-emit-defaults", "-connect-timeout", "5", "-max-time", "30"].map(String::from));
    if let Some(token) = token {
        args.push("-H".into());
        args.push(format!("authorization: Bearer {token}"));
    }
    args.push("-d".into());
    args.push(body.to_string());
    args.push(addr.into());
    args.push(method.into());
    args
}

/// Calls `method` (`package.Service/Method`) on `addr` with grpcurl: the
/// response as JSON, or the status grpcurl printed.
pub fn call(
    addr: &str,
    method: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, RpcError> {
    call_over(&Transport::Plaintext, addr, method, token, body)
}

/// [`call`] over `transport`.
pub fn call_over(
    transport: &Transport,
    addr: &str,
    method: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, RpcError> {
    let output = grpcurl(&call_args_over(transport, addr, method, token, body));
    if output.status.success() {
        Ok(parse_json(&output.stdout, method))
    } else {
        Err(rpc_error(&output))
    }
}

/// [`call`] that must succeed.
pub fn call_ok(addr: &str, method: &str, token: Option<&str>, body: &Value) -> Value {
    call(addr, method, token, body)
        .unwrap_or_else(|e| panic!("{method} with {body} failed: {e:#?}"))
}

/// grpcurl's stdout as JSON.
pub fn parse_json(stdout: &[u8], what: &str) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: grpcurl printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// The `grpc.health.v1.Health/Check` status of `service` on `addr`
/// (`SERVING`, `NOT_SERVING`, ...), or grpcurl's complaint.
pub fn health_status(addr: &str, service: &str) -> Result<String, String> {
    health_status_over(&Transport::Plaintext, addr, service)
}

/// [`health_status`] over `transport`.
pub fn health_status_over(
    transport: &Transport,
    addr: &str,
    service: &str,
) -> Result<String, String> {
    let mut args = transport.grpcurl_args();
    args.extend(
        [
            "-connect-timeout",
            "2",
            "-max-time",
            "5",
            "-d",
            &json!({ "service": service }).to_string(),
            addr,
            "grpc.health.v1.Health/Check",
        ]
        .map(String::from),
    );
    let output = grpcurl(&args);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    let response = parse_json(&output.stdout, "Health/Check");
    Ok(response["status"].as_str().unwrap_or("UNKNOWN").to_owned())
}

/// Waits (via grpcurl) until the health of `service` on 127.0.0.1:`port` is `SERVING`.
pub fn wait_serving(port: u16, service: &str) {
    let addr = format!("127.0.0.1:{port}");
    wait_until(
        PATIENCE,
        &format!("{addr} health({service:?}) SERVING"),
        || match health_status(&addr, service)? {
            status if status == "SERVING" => Ok(()),
            other => Err(other),
        },
    );
}

/// A person's token signed with [`TEST_SECRET`] for `subject` acting as
/// `role`, valid an hour, for the platform audience.
pub fn mint(subject: &str, role: Role) -> String {
    ta_testkit::issuer()
        .mint(subject, role, PLATFORM_AUDIENCE, Duration::from_secs(3_600))
        .expect("test token")
}

/// The token of the service `caller` calling the service `called`.
pub fn mint_service(caller: &str, called: &str) -> String {
    ta_testkit::issuer()
        .mint(caller, Role::Service, called, Duration::from_secs(3_600))
        .expect("test token")
}

/// The same, minted by the `mint-token` binary.
pub fn mint_with_cli(subject: &str, role: Role) -> String {
    let child = Command::new(binary(MINT_TOKEN))
        .env_clear()
        .env("AUTH_JWT_HS256_SECRET", TEST_SECRET)
        .env("AUTH_DEV_MODE", "true")
        .args(["--subject", subject, "--role", role.as_str(), "--ttl", "1h"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mint-token");
    let output = wait_output(child, PATIENCE, "mint-token");
    assert!(
        output.status.success(),
        "mint-token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).expect("utf-8 token");
    token.trim().to_owned()
}

/// One service binary running in its own process on 127.0.0.1, logging (stdout
/// and stderr) to a file. Killed (SIGKILL) on drop if still running.
pub struct Service {
    pub name: String,
    pub port: u16,
    /// How this harness's grpcurl calls reach it (plaintext unless set).
    pub transport: Transport,
    child: Child,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Service {
    /// Starts `binary` (e.g. [`SUPPLIER_REGISTRY`]) on a free loopback port with a
    /// clean environment: `GRPC_LISTEN_ADDR`, `AUTH_JWT_HS256_SECRET` (the test
    /// secret) with `AUTH_DEV_MODE=true`, `LOG_FORMAT=text`,
    /// `SHUTDOWN_GRACE_PERIOD=10s`, then `env` (which may override those; it
    /// must give `DATABASE_URL`).
    pub fn spawn(binary_name: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_without(binary_name, &[], env)
    }

    /// [`Service::spawn`] without the defaults named in `unset` (e.g.
    /// `AUTH_JWT_HS256_SECRET`, for a process that verifies RS256 only).
    pub fn spawn_without(binary_name: &str, unset: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let dir = TempDir::new(binary_name);
        let log_path = dir.path().join(format!("{binary_name}.log"));
        let log = fs::File::create(&log_path).expect("create log file");
        let log_err = log.try_clone().expect("clone log file");
        let mut command = Command::new(binary(binary_name));
        command
            .env_clear()
            .env("GRPC_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("AUTH_JWT_HS256_SECRET", TEST_SECRET)
            // The test secret is published: accepted in development mode only.
            .env("AUTH_DEV_MODE", "true")
            .env("ESCROW_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET)
            // Escrow needs a gateway to start; a test that moves money starts
            // the sandbox (`Platform`) and gives its URL. Nothing listens here.
            .env("ESCROW_GATEWAY_URL", "http://127.0.0.1:9")
            .env("LOG_FORMAT", "text")
            .env("LOG_LEVEL", "info")
            .env("SHUTDOWN_GRACE_PERIOD", "10s");
        for name in unset {
            command.env_remove(name);
        }
        let child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary_name}: {e}"));
        Self {
            name: binary_name.to_owned(),
            port,
            transport: Transport::Plaintext,
            child,
            exit: None,
            log_path,
            _dir: dir,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Sends SIGTERM.
    /// Kills the process at once (SIGKILL: no shutdown, nothing flushed) and
    /// waits for it to be gone.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit, at most `timeout` (polling often, so a
    /// test can report roughly how long shutting down took).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} (pid {}) to exit", self.name, self.pid());
        wait_until_every(Duration::from_millis(5), timeout, &what, || {
            self.exit_status().ok_or_else(|| "still running".to_owned())
        })
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str) {
        let what = format!("{} to log {needle:?}", self.name);
        wait_until(PATIENCE, &what, || {
            if self.log().contains(needle) {
                Ok(())
            } else {
                Err(self.log())
            }
        });
    }

    /// The health of `service` on this process, via grpcurl.
    pub fn health(&self, service: &str) -> Result<String, String> {
        health_status_over(&self.transport, &self.addr(), service)
    }

    /// Waits until the health of `service` is `wanted`; panics (with the log)
    /// if the process exits first.
    pub fn wait_health(&mut self, service: &str, wanted: &str) {
        let what = format!("{} health({service:?}) {wanted}", self.name);
        wait_until(PATIENCE, &what, || {
            if let Some(status) = self.exit_status() {
                panic!(
                    "{} exited ({status}) before {wanted}:\n{}",
                    self.name,
                    self.log()
                );
            }
            match self.health(service)? {
                status if status == wanted => Ok(()),
                other => Err(other),
            }
        });
    }

    /// Waits until the whole server (`""`) is SERVING.
    pub fn wait_serving(&mut self) {
        self.wait_health("", "SERVING");
    }

    /// Calls `method` on this service with grpcurl.
    pub fn call(&self, method: &str, token: Option<&str>, body: &Value) -> Result<Value, RpcError> {
        call_over(&self.transport, &self.addr(), method, token, body)
    }

    /// [`Self::call`] that must succeed.
    pub fn call_ok(&self, method: &str, token: Option<&str>, body: &Value) -> Value {
        self.call(method, token, body)
            .unwrap_or_else(|e| panic!("{method} with {body} failed: {e:#?}"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of {} (pid {}, {}) ---",
                self.name,
                self.child.id(),
                self.log_path.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs `binary_name` to completion with exactly `env` (nothing inherited) and
/// `args`, e.g. to check configuration errors.
pub fn run_binary(binary_name: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let child = Command::new(binary(binary_name))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary_name}: {e}"));
    wait_output(child, PATIENCE, binary_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:54329/trade_assurance", "x"),
            "postgres://postgres@127.0.0.1:54329/x"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(
            url_with_database("postgres://h:1?a=b", "x"),
            "postgres://h:1/x?a=b"
        );
    }

    #[test]
    #[should_panic(expected = "run `cargo build --workspace --bins` first")]
    fn a_missing_binary_says_to_build_first() {
        binary("no-such-binary");
    }

    #[test]
    fn reads_protobuf_json_integers() {
        assert_eq!(int(&json!("1000000")), 1_000_000);
        assert_eq!(int(&json!(400)), 400);
        assert_eq!(int(&Value::Null), 0);
    }
}
