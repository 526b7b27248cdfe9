//! Test support shared by every service's tests and the end-to-end tests:
//! a service served in-process on `127.0.0.1:0` and its test command line,
//! tokens for each role, waiting for health or for a condition, the access
//! matrix ([`access`]), a finance operator at the workflow admin API
//! ([`operator`]), snapshots of a schema's tables and the fields a refusal
//! names.

pub mod access;
pub mod operator;

use std::{net::SocketAddr, time::Duration};

use sqlx::PgPool;
use ta_runtime::{
    auth::{PLATFORM_AUDIENCE, Role, TokenIssuer, TokenVerifier, bearer_metadata},
    config::CommonConfig,
    server::{Api, ServiceSpec},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The HS256 secret every test server and token uses. It is published with
/// the source code, so a process accepts it only with `AUTH_DEV_MODE=true`
/// (which [`RunningService`] sets, and the end-to-end tests pass to the
/// binaries).
pub const TEST_SECRET: &str = ta_runtime::auth::TEST_HS256_SECRET;
pub const TEST_ISSUER: &str = "trade-assurance";

/// The URL of the database behind `pool` (a `#[sqlx::test]` database), for
/// a service's `--database-url`.
pub fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// The command line `service`'s tests start it with: the database behind
/// `pool`, the test JWT secret and plain-text logs, then `flags`.
pub fn command_line(service: &str, pool: &PgPool, flags: &[&str]) -> Vec<String> {
    let url = database_url(pool);
    let mut args = [
        service,
        "--database-url",
        &url,
        "--auth-jwt-hs256-secret",
        TEST_SECRET,
        "--log-format",
        "text",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(flags.iter().map(|flag| (*flag).to_owned()));
    args
}

/// How long [`eventually`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// Waits until `condition` holds, for at most [`WAIT`], asking every 25 ms.
///
/// # Panics
/// When it still does not hold after [`WAIT`], naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `amount_minor` US cents as the protos carry money.
pub fn usd(amount_minor: i64) -> Option<ta_proto::common::Money> {
    Some(ta_proto::common::Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

/// The fields named by the `google.rpc.BadRequest` details of `status`,
/// sorted; each violation must say what is wrong with its field.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let bad_request = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    for violation in &bad_request.field_violations {
        assert!(
            !violation.description.is_empty(),
            "violation of {} without a description",
            violation.field
        );
    }
    let mut fields: Vec<String> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    fields.sort();
    fields
}

/// Row counts and digests of tables of a schema: equal snapshots mean
/// nothing was inserted, updated or deleted in between.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(Vec<(&'static str, i64, String)>);

impl Snapshot {
    /// `tables` of `schema`, each row read as `row(table)`: an SQL
    /// expression of the row `t`, e.g. `t::text`.
    pub async fn take(
        pool: &PgPool,
        schema: &str,
        tables: &[&'static str],
        row: impl Fn(&str) -> &'static str,
    ) -> Self {
        let mut counted = Vec::new();
        for &table in tables {
            let row = row(table);
            let sql = format!(
                "SELECT count(*), COALESCE(md5(string_agg({row}, '|' ORDER BY {row})), '') \
                 FROM {schema}.{table} t"
            );
            let (count, digest): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .expect("snapshot");
            counted.push((table, count, digest));
        }
        Self(counted)
    }

    /// The rows `table` had.
    pub fn rows(&self, table: &str) -> i64 {
        self.0
            .iter()
            .find(|(name, _, _)| *name == table)
            .map(|(_, count, _)| *count)
            .expect("known table")
    }
}

/// Signs test tokens.
pub fn issuer() -> TokenIssuer {
    TokenIssuer::hs256(TEST_SECRET, TEST_ISSUER)
}

/// The RS256 test key pairs of `shared/runtime/tests/fixtures` (`"a"`, `"b"`,
/// `"c"`): keys for tests, not credentials.
pub fn rs256_fixture_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures")
        .join(format!("rs256_{name}_private.pem"))
}

/// Signs RS256 test tokens with the fixture key `name`, published as `kid`.
pub fn rs256_issuer(name: &str, kid: &str) -> TokenIssuer {
    TokenIssuer::rs256_from_file(&rs256_fixture_key(name), kid, TEST_ISSUER).expect("fixture key")
}

/// A JWK set (JSON) of the public halves of `keys`, each a people's issuer
/// key (`None`) or bound to the service it names.
pub fn jwk_set(keys: &[(&TokenIssuer, Option<&str>)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(issuer, service)| {
            issuer
                .public_jwk(*service)
                .expect("an RS256 issuer")
                .to_string()
        })
        .collect();
    format!("{{\"keys\":[{}]}}", keys.join(","))
}

/// `Bearer <jwt>` for a person, `subject` acting as `role` (any but
/// `Role::Service`: see [`service_bearer`]), valid for an hour.
pub fn bearer(subject: &str, role: Role) -> MetadataValue<Ascii> {
    assert_ne!(
        role,
        Role::Service,
        "service tokens name their audience: use service_bearer"
    );
    let token = issuer()
        .mint(subject, role, PLATFORM_AUDIENCE, Duration::from_secs(3_600))
        .expect("test token");
    bearer_metadata(&token)
}

/// `Bearer <jwt>` of the service `caller` calling the service `called`.
pub fn service_bearer(caller: &str, called: &str) -> MetadataValue<Ascii> {
    let token = issuer()
        .mint(caller, Role::Service, called, Duration::from_secs(3_600))
        .expect("test token");
    bearer_metadata(&token)
}

/// A request from the service `caller` to the service `called`.
pub fn from_service<T>(message: T, caller: &str, called: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", service_bearer(caller, called));
    request
}

/// `Bearer <jwt>` of a token that expired an hour ago.
pub fn expired_bearer(subject: &str, role: Role) -> MetadataValue<Ascii> {
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        - 3_600;
    let token = issuer()
        .mint_expiring_at(subject, role, PLATFORM_AUDIENCE, an_hour_ago)
        .expect("test token");
    bearer_metadata(&token)
}

/// A request carrying `authorization` for `subject` as `role`.
pub fn authorized<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(subject, role));
    request
}

/// A service running in this process on loopback.
pub struct RunningService {
    pub address: SocketAddr,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl RunningService {
    /// Serves `api` on a free loopback port and waits until health is SERVING.
    /// A test server runs in development mode (`AUTH_DEV_MODE`), so it
    /// accepts [`TEST_SECRET`].
    pub async fn start(
        spec: &'static ServiceSpec,
        mut config: CommonConfig,
        pool: PgPool,
        api: Api,
    ) -> Self {
        config.auth.dev_mode = true;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let verifier =
            TokenVerifier::from_config(&config.auth, spec.name).expect("test auth configuration");
        let task = tokio::spawn(async move {
            ta_runtime::server::serve(spec, &config, verifier, listener, pool, api, async {
                let _ = stop.await;
            })
            .await
        });
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        let service = Self {
            address,
            channel,
            shutdown: Some(shutdown),
            task,
        };
        wait_for_health(
            service.channel.clone(),
            "",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|last| panic!("service never became SERVING; last status {last:?}"));
        service
    }

    /// Stops the server as SIGTERM would and returns how serving ended.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.map_err(|e| e.to_string())?
    }
}

/// The current status of `service` on `channel`, or the error code if the check failed.
pub async fn health_status(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Code> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

/// Polls health until `service` reports `wanted`; returns the last status seen on timeout.
pub async fn wait_for_health(
    channel: Channel,
    service: &str,
    wanted: ServingStatus,
    timeout: Duration,
) -> Result<(), Result<ServingStatus, tonic::Code>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = health_status(channel.clone(), service).await;
        if status == Ok(wanted) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub use tonic_health::pb::health_check_response::ServingStatus as HealthStatus;

/// The command line of `service` giving a secret to every setting of the
/// common configuration and of an evidence store that keeps one (the
/// database password, the JWT secret, the store's AWS keys), and those
/// secrets: a test parses it and checks that the configuration's `Debug`
/// shows none of them.
pub fn command_line_with_secrets(service: &str) -> (Vec<String>, [&'static str; 4]) {
    let database_url = format!("postgres://{service}:db-password-0123@db/ta");
    let args = [
        service,
        "--database-url",
        &database_url,
        "--auth-jwt-hs256-secret",
        "hs256-secret-0123456789",
        "--evidence-store",
        "s3://evidence",
        "--aws-access-key-id",
        "AKIAEXAMPLE",
        "--aws-secret-access-key",
        "secret-access-key-0123456789",
        "--aws-session-token",
        "session-token-0123456789",
    ];
    let secrets = [
        "db-password-0123",
        "hs256-secret-0123456789",
        "secret-access-key-0123456789",
        "session-token-0123456789",
    ];
    (args.map(str::to_owned).to_vec(), secrets)
}

/// Every audit entry of the service on `channel`, oldest first, as a member
/// of staff on support duty reads them.
pub async fn audit_entries(channel: Channel) -> Vec<ta_proto::ops::AuditEntry> {
    use ta_proto::ops::{
        ListAuditEntriesRequest, audit_trail_service_client::AuditTrailServiceClient,
    };

    let mut client = AuditTrailServiceClient::new(channel);
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_entries(authorized(
                ListAuditEntriesRequest {
                    page: Some(ta_proto::common::PageRequest {
                        page_size: 100,
                        page_token,
                    }),
                    ..Default::default()
                },
                "support-1",
                Role::Support,
            ))
            .await
            .expect("the audit trail")
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    entries.reverse();
    entries
}

/// The method names (`VerifySupplier`, ...) of `entries`, in their order.
pub fn audited_methods(entries: &[ta_proto::ops::AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.method.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

/// The RPCs of `service` (its full name) that change something and admit a
/// staff duty: each must leave one audit entry per call.
pub fn staff_mutations(service: &str) -> Vec<&'static str> {
    ta_proto::access::of_service(service)
        .filter(|m| m.mutating)
        .filter(|m| {
            m.roles
                .iter()
                .filter_map(|r| Role::from_proto(*r))
                .any(|r| r.is_staff() && r != Role::Support)
        })
        .filter_map(|m| m.path.rsplit('/').next())
        .collect()
}
