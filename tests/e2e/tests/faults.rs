//! Faults as callers meet them, against the real binaries: Postgres stopped
//! and started under load, and request bytes that are not a valid message.

use std::{
    collections::{BTreeMap, HashSet},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use e2e_tests::*;
use prost::{Message, bytes::BufMut};
use ta_proto::{
    common::Money,
    supplier::{self as pb, supplier_registry_service_client::SupplierRegistryServiceClient},
};
use ta_testkit::{HealthStatus, health_status};
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

const TRUST_SAFETY: &str = "ts-1";
const SUPPLIER: &str = "supplier-fault";
const CLIENTS: usize = 8;
const AMOUNT_MINOR: i64 = 100;

/// A Postgres cluster of this test's own, made by the same script as the dev
/// one (so it can be stopped without disturbing other tests). Destroyed on drop.
struct PrivateCluster {
    data_dir: TempDir,
    url: String,
}

impl PrivateCluster {
    fn start() -> Self {
        let data_dir = TempDir::new("pg-restart");
        // The script picks a free port and records it with the cluster, so a
        // restart comes back on the same one (a port chosen here could be
        // taken by another test before the script binds it).
        let mut cluster = Self {
            url: String::new(),
            data_dir,
        };
        let output = cluster.script("start");
        cluster.url = String::from_utf8(output.stdout)
            .expect("utf-8 url")
            .trim()
            .to_owned();
        cluster
    }

    fn data_path(&self) -> String {
        // The script creates the data directory (owned by its server user) in
        // a parent of its own.
        self.data_dir
            .path()
            .join("cluster/data")
            .display()
            .to_string()
    }

    fn script(&self, action: &str) -> std::process::Output {
        let output = Command::new(repo_root().join("scripts/dev-postgres.sh"))
            .arg(action)
            .env_remove("DATABASE_URL")
            .env("TA_PG_DATA_DIR", self.data_path())
            .env_remove("TA_PG_PORT")
            .output()
            .expect("run dev-postgres.sh");
        assert!(
            output.status.success(),
            "dev-postgres.sh {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/dev-postgres.sh"))
            .arg("destroy")
            .env("TA_PG_DATA_DIR", self.data_path())
            .output();
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

fn as_person<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    ta_testkit::authorized(message, subject, role)
}

fn from_contract<T>(message: T) -> tonic::Request<T> {
    ta_testkit::from_service(message, "contract", SUPPLIER_REGISTRY)
}

async fn badged_supplier(client: &mut SupplierRegistryServiceClient<Channel>) -> String {
    let supplier = client
        .register_supplier(as_person(
            pb::RegisterSupplierRequest {
                idempotency_key: "reg-1".into(),
                legal_name: "Fault Tolerant Industries Ltd.".into(),
                country_code: "CN".into(),
                business_licence_number: "LIC-FAULT-1".into(),
                contacts: vec![pb::Contact {
                    name: "Zhang Min".into(),
                    email: "zhang.min@fault.example".into(),
                    phone: String::new(),
                }],
                owner_principal_id: String::new(),
                reason: String::new(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("register")
        .into_inner()
        .supplier
        .expect("supplier")
        .supplier_id;
    client
        .submit_verification(as_person(
            pb::SubmitVerificationRequest {
                idempotency_key: "sub-1".into(),
                supplier_id: supplier.clone(),
                reason: String::new(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("submit");
    client
        .verify_supplier(as_person(
            pb::VerifySupplierRequest {
                idempotency_key: "ver-1".into(),
                supplier_id: supplier.clone(),
                reason: "licence checked against the registry".into(),
            },
            TRUST_SAFETY,
            Role::TrustSafety,
        ))
        .await
        .expect("verify");
    client
        .enroll_trade_assurance(as_person(
            pb::EnrollTradeAssuranceRequest {
                idempotency_key: "enr-1".into(),
                supplier_id: supplier.clone(),
                ta_limit: usd(1_000_000_000_000),
                reason: "cover for the fault drill's contracts".into(),
            },
            TRUST_SAFETY,
            Role::TrustSafety,
        ))
        .await
        .expect("enrol");
    supplier
}

/// What the callers saw: every failure's code, and the contracts granted.
#[derive(Default)]
struct Outcomes {
    failures: BTreeMap<String, usize>,
    granted: Vec<String>,
}

/// One caller: reserves cover for contract after contract, retrying each with
/// its own key on UNAVAILABLE until it is granted, until told to stop.
async fn caller(
    mut client: SupplierRegistryServiceClient<Channel>,
    supplier: String,
    caller: usize,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let contract = format!("contract-{caller}-{n}");
        loop {
            let request = pb::ReserveCoverRequest {
                idempotency_key: format!("reserve-{caller}-{n}"),
                supplier_id: supplier.clone(),
                contract_id: contract.clone(),
                amount: usd(AMOUNT_MINOR),
            };
            match client.reserve_cover(from_contract(request)).await {
                Ok(_) => {
                    outcomes.lock().unwrap().granted.push(contract.clone());
                    break;
                }
                Err(status) => {
                    let code = status.code();
                    *outcomes
                        .lock()
                        .unwrap()
                        .failures
                        .entry(format!("{code:?}: {}", status.message()))
                        .or_default() += 1;
                    if code != Code::Unavailable {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// When readiness (`""`) first reports `wanted`, polled every 20 ms.
async fn readiness_reaches(channel: Channel, wanted: HealthStatus) -> Instant {
    let bound = Instant::now() + PATIENCE;
    loop {
        if health_status(channel.clone(), "").await == Ok(wanted) {
            return Instant::now();
        }
        assert!(Instant::now() < bound, "readiness never became {wanted:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seconds_after(later: Instant, earlier: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64()
}

#[test]
fn a_postgres_restart_under_load_is_unavailable_and_every_retried_call_applies_once() {
    let cluster = PrivateCluster::start();
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &cluster.url),
            // Calls made while the database is down fail after this long.
            ("DATABASE_ACQUIRE_TIMEOUT", "1s"),
        ],
    );
    registry.wait_serving();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (outcomes, supplier, down_lag, up_lag) = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", registry.addr()))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut client = SupplierRegistryServiceClient::new(channel.clone());
        let supplier = badged_supplier(&mut client).await;

        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let callers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(caller(
                    client.clone(),
                    supplier.clone(),
                    i,
                    stop.clone(),
                    outcomes.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;

        let stopping = tokio::task::spawn_blocking({
            let data_path = cluster.data_path();
            move || {
                let output = Command::new(repo_root().join("scripts/dev-postgres.sh"))
                    .arg("stop")
                    .env("TA_PG_DATA_DIR", data_path)
                    .env_remove("TA_PG_PORT")
                    .output()
                    .expect("stop");
                assert!(output.status.success(), "{output:?}");
                Instant::now()
            }
        });
        let not_serving = readiness_reaches(channel.clone(), HealthStatus::NotServing).await;
        let stopped = stopping.await.expect("stop task");
        // Down for a while, with the callers retrying.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let starting = tokio::task::spawn_blocking({
            let data_path = cluster.data_path();
            move || {
                let output = Command::new(repo_root().join("scripts/dev-postgres.sh"))
                    .arg("start")
                    .env_remove("DATABASE_URL")
                    .env_remove("TA_PG_PORT")
                    .env("TA_PG_DATA_DIR", data_path)
                    .output()
                    .expect("start");
                assert!(output.status.success(), "{output:?}");
                Instant::now()
            }
        });
        let started = starting.await.expect("start task");
        let serving = readiness_reaches(channel.clone(), HealthStatus::Serving).await;
        // Calls go through again before the callers stop.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        for task in callers {
            task.await.expect("caller");
        }
        let outcomes = Arc::try_unwrap(outcomes)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap();
        (
            outcomes,
            supplier,
            seconds_after(not_serving, stopped),
            seconds_after(serving, started),
        )
    });
    eprintln!(
        "readiness followed the database down in {down_lag:.2}s and up in {up_lag:.2}s; \
         {} reservations granted; failures seen: {:?}",
        outcomes.granted.len(),
        outcomes.failures
    );

    // Every failed call said UNAVAILABLE (never INTERNAL), and there were some.
    let unexpected: Vec<_> = outcomes
        .failures
        .keys()
        .filter(|failure| !failure.starts_with("Unavailable"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(!outcomes.failures.is_empty(), "the restart was not felt");

    // Each contract, retried under its key, was granted once and stored once.
    let granted: HashSet<&String> = outcomes.granted.iter().collect();
    assert_eq!(
        granted.len(),
        outcomes.granted.len(),
        "a contract granted twice"
    );
    let mut db = Session::connect(&cluster.url);
    let stored = db.int(&format!(
        "SELECT count(*) FROM supplier_registry.cover_reservations WHERE supplier_id = '{supplier}'"
    ));
    assert_eq!(stored, outcomes.granted.len() as i64);
    let reserved = db.int(&format!(
        "SELECT cover_reserved_minor FROM supplier_registry.suppliers WHERE id = '{supplier}'"
    ));
    assert_eq!(reserved, outcomes.granted.len() as i64 * AMOUNT_MINOR);

    // Readiness followed the database within a few of its 250 ms re-checks
    // (about a second; the bound is loose for a loaded machine).
    assert!(
        down_lag < 3.0,
        "NOT_SERVING {down_lag:.2}s after the database stopped"
    );
    assert!(
        up_lag < 3.0,
        "SERVING {up_lag:.2}s after the database was back"
    );
    drop(db);
    drop(registry);
}

// --- undecodable requests --------------------------------------------------------

/// Sends the given bytes as the request message, unchanged; reads any answer
/// as raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawBytes;

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

async fn send_raw(addr: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> tonic::Status {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match grpc
        .unary(request, path.parse().expect("path"), RawCodec)
        .await
    {
        Ok(_) => panic!("{path} accepted undecodable bytes"),
        Err(status) => status,
    }
}

/// A string field (1) whose bytes are not UTF-8, then a valid rest.
fn invalid_utf8_in_field_one() -> Vec<u8> {
    vec![0x0a, 0x02, 0xff, 0xfe]
}

/// A length-delimited field whose length varint never ends.
fn truncated_varint() -> Vec<u8> {
    vec![0x0a, 0x80]
}

#[test]
fn undecodable_requests_are_invalid_argument_on_every_service_and_change_nothing() {
    let database = fresh_database();
    let mut services: Vec<Service> = SERVICES
        .iter()
        .map(|name| Service::spawn(name, &[("DATABASE_URL", &database.url)]))
        .collect();
    for service in &mut services {
        service.wait_serving();
    }
    let supplier_token = mint(SUPPLIER, Role::Supplier);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for service in &services {
            for body in [truncated_varint(), invalid_utf8_in_field_one()] {
                let status =
                    send_raw(&service.addr(), "/grpc.health.v1.Health/Check", None, body).await;
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{}: {status:?}",
                    service.name
                );
                assert!(!status.message().contains("Protobuf"), "{status:?}");
            }
        }
        let registry = &services[0];
        assert_eq!(registry.name, SUPPLIER_REGISTRY);
        let register = format!("/{SUPPLIER_SERVICE}/RegisterSupplier");
        let valid_then_broken = {
            let mut bytes = pb::RegisterSupplierRequest {
                idempotency_key: "raw-1".into(),
                legal_name: "Raw Bytes Ltd.".into(),
                country_code: "CN".into(),
                business_licence_number: "LIC-RAW-1".into(),
                contacts: vec![],
                owner_principal_id: String::new(),
                reason: String::new(),
            }
            .encode_to_vec();
            // legal_name (field 2) again, not UTF-8: decoding fails after a valid prefix.
            bytes.extend_from_slice(&[0x12, 0x01, 0xc3]);
            bytes
        };
        for body in [
            truncated_varint(),
            invalid_utf8_in_field_one(),
            valid_then_broken,
        ] {
            let status = send_raw(&registry.addr(), &register, Some(&supplier_token), body).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(!status.message().contains("Protobuf"), "{status:?}");
        }
    });
    let mut db = database.session();
    assert_eq!(
        db.int("SELECT count(*) FROM supplier_registry.suppliers"),
        0
    );
    assert_eq!(
        db.int("SELECT count(*) FROM supplier_registry.idempotency_keys"),
        0
    );
    let log = services[0].log();
    assert!(
        log.contains("request refused before its handler ran"),
        "{log}"
    );
}
