//! The life of a service process: not ready until its database answers and its
//! migrations ran; SIGTERM drains in-flight requests and exits 0; a bad
//! configuration fails at once, naming the variable.

use std::time::Instant;

use e2e_tests::*;

/// `(version, description)` of each migration file in `services/<service>/migrations`,
/// as sqlx records them (`0001_suppliers.sql` → `(1, "suppliers")`).
fn migration_files(service: &str) -> Vec<(i64, String)> {
    let dir = repo_root()
        .join("services")
        .join(service)
        .join("migrations");
    let mut found: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter_map(|name| {
            let stem = name.strip_suffix(".sql")?;
            let (version, description) = stem.split_once('_')?;
            Some((version.parse().ok()?, description.replace('_', " ")))
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no migrations in {}", dir.display());
    found
}

/// Whether the process logged its orderly stop (`INFO stopped`, the last word
/// of the shutdown) and no error.
fn logged_orderly_stop(log: &str) -> bool {
    log.lines()
        .any(|line| line.contains(" INFO ") && line.trim_end().ends_with(" stopped"))
        && !log.contains("service stopped with an error")
}

#[test]
fn health_is_not_serving_until_the_database_exists_and_is_migrated() {
    // The service starts before its database exists.
    let database = TestDatabase::absent();
    assert!(!database.exists());
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &[("DATABASE_URL", &database.url)]);

    // It serves (liveness), but is not ready: it tried the database and failed.
    registry.wait_health("liveness", "SERVING");
    registry.wait_log("database not ready, or migrations or preparation failed");
    assert_eq!(registry.health("").as_deref(), Ok("NOT_SERVING"));
    assert_eq!(
        registry.health(SUPPLIER_SERVICE).as_deref(),
        Ok("NOT_SERVING")
    );
    // The same through grpcurl's plain -d form, as an operator would type it.
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":""}"#,
        &registry.addr(),
        "grpc.health.v1.Health/Check",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        parse_json(&out.stdout, "Health/Check")["status"],
        "NOT_SERVING"
    );
    assert!(
        registry.exit_status().is_none(),
        "it waits for its database"
    );
    // No database, so no migration table anywhere in it.
    assert!(!database.exists());

    // The database appears: migrations run, then SERVING.
    database.create();
    registry.wait_serving();
    assert_eq!(registry.health(SUPPLIER_SERVICE).as_deref(), Ok("SERVING"));
    assert_eq!(registry.health("liveness").as_deref(), Ok("SERVING"));

    let mut session = database.session();
    // The migration table is in the service's own schema, and is the only one.
    let tables = session.strings(
        "SELECT schemaname::text || '.' || tablename::text FROM pg_tables \
         WHERE tablename = '_sqlx_migrations'",
    );
    assert_eq!(tables, ["supplier_registry._sqlx_migrations"]);
    let applied = session.strings(
        "SELECT version::text || ' ' || description || ' ' || success::text \
         FROM supplier_registry._sqlx_migrations ORDER BY version",
    );
    let expected: Vec<String> = migration_files("supplier-registry")
        .into_iter()
        .map(|(version, description)| format!("{version} {description} true"))
        .collect();
    assert_eq!(applied, expected);
    assert_eq!(
        session.int(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'supplier_registry' \
             AND tablename = 'suppliers'"
        ),
        1
    );
    assert!(registry.log().contains("migrations applied: serving"));
}

/// A supplier-registry with one request (SubmitVerification) held inside it:
/// the test holds the supplier's row lock, so the request waits in the database
/// until [`InFlight::release`].
struct InFlight {
    // Field order is drop order: the process first, then the lock, then the database.
    registry: Service,
    request: Option<Background>,
    lock: Session,
    watcher: Session,
    supplier_id: String,
    _database: TestDatabase,
}

impl InFlight {
    fn start(env: &[(&str, &str)]) -> Self {
        let database = fresh_database();
        let mut all = vec![("DATABASE_URL", database.url.as_str())];
        all.extend_from_slice(env);
        let mut registry = Service::spawn(SUPPLIER_REGISTRY, &all);
        registry.wait_serving();

        let supplier = mint("supplier-sigterm", Role::Supplier);
        let registered = registry.call_ok(
            &format!("{SUPPLIER_SERVICE}/RegisterSupplier"),
            Some(&supplier),
            &json!({
                "idempotency_key": "register-1",
                "legal_name": "Drain Test Ltd",
                "country_code": "GB",
                "business_licence_number": "GB-0001",
                "contacts": [{ "name": "Ann", "email": "ann@example.com" }]
            }),
        );
        let supplier_id = registered["supplier"]["supplierId"]
            .as_str()
            .expect("id")
            .to_owned();

        let mut lock = database.session();
        lock.execute(&format!(
            "BEGIN; SELECT 1 FROM supplier_registry.suppliers \
             WHERE id = '{supplier_id}' FOR UPDATE"
        ));
        let mut args = call_args(
            &registry.addr(),
            &format!("{SUPPLIER_SERVICE}/SubmitVerification"),
            Some(&supplier),
            &json!({ "idempotency_key": "submit-1", "supplier_id": supplier_id }),
        );
        // The client does not give up first (the test kills it if it must).
        let max_time = args
            .iter()
            .position(|a| a == "-max-time")
            .expect("-max-time");
        args[max_time + 1] = "600".into();
        let request = grpcurl_spawn(&args);
        let mut watcher = database.session();
        wait_until(
            PATIENCE,
            "the request to wait for the row lock",
            || match watcher.int(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ) {
                0 => Err("no backend waits for a lock".to_owned()),
                _ => Ok(()),
            },
        );
        Self {
            registry,
            request: Some(request),
            lock,
            watcher,
            supplier_id,
            _database: database,
        }
    }

    /// Whether the held request has ended.
    fn request_finished(&mut self) -> bool {
        self.request.as_mut().expect("not waited for").finished()
    }

    /// Releases the row lock: the request can go on.
    fn release(&mut self) {
        self.lock.execute("ROLLBACK");
    }

    /// What grpcurl printed for the held request.
    fn request_output(&mut self) -> std::process::Output {
        self.request.take().expect("not waited for").wait(PATIENCE)
    }

    /// The supplier's verification as stored.
    fn stored_verification(&mut self) -> Vec<String> {
        self.watcher.strings(&format!(
            "SELECT verification FROM supplier_registry.suppliers WHERE id = '{}'",
            self.supplier_id
        ))
    }
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits_zero() {
    // A grace period longer than any wait below: the drain, not the grace period, ends it.
    let mut held = InFlight::start(&[("SHUTDOWN_GRACE_PERIOD", "300s")]);

    let signalled = Instant::now();
    held.registry.terminate();
    held.registry
        .wait_log("shutdown requested: draining in-flight requests");
    // Draining: the process waits for the request it is serving.
    assert!(
        held.registry.exit_status().is_none(),
        "{}",
        held.registry.log()
    );
    assert!(
        !held.request_finished(),
        "the request cannot finish while locked"
    );

    // Let the request finish: it completes normally (so it was served after
    // the shutdown began), then the process exits 0.
    held.release();
    let released = Instant::now();
    let output = held.request_output();
    assert!(
        output.status.success(),
        "the drained request failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer = parse_json(&output.stdout, "SubmitVerification");
    assert_eq!(
        answer["supplier"]["verificationStatus"],
        "VERIFICATION_STATUS_SUBMITTED"
    );
    let status = held.registry.wait_exit(PATIENCE);
    eprintln!(
        "measured: SIGTERM -> exit {:?}; lock released -> exit {:?}",
        signalled.elapsed(),
        released.elapsed()
    );
    assert!(status.success(), "exit status {status}");
    let log = held.registry.log();
    assert!(logged_orderly_stop(&log), "{log}");
    assert!(!log.contains("grace period over"), "{log}");

    // What it answered was committed.
    assert_eq!(held.stored_verification(), ["submitted"]);
}

#[test]
fn sigterm_exits_after_the_grace_period_even_if_a_request_hangs() {
    // The request timeout (which would cancel the hung request) is beyond every wait here.
    let mut held = InFlight::start(&[
        ("SHUTDOWN_GRACE_PERIOD", "1s"),
        ("GRPC_REQUEST_TIMEOUT", "600s"),
    ]);
    held.registry.terminate();
    held.registry.wait_log("grace period over");
    // The row lock is still held, so the request cannot end; the process must end anyway.
    held.registry.wait_exit(PATIENCE);
    assert!(
        !held.request_output().status.success(),
        "the request was cut off"
    );
    held.release();
}

#[test]
fn sigterm_with_a_readiness_delay_reports_not_serving_while_still_answering() {
    let database = fresh_database();
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        // Long enough for the checks below, on any machine.
        &[
            ("DATABASE_URL", &database.url),
            ("SHUTDOWN_READINESS_DELAY", "15s"),
        ],
    );
    registry.wait_serving();
    registry.terminate();
    registry.wait_log("shutdown requested: not serving, still accepting");
    // New connections are still accepted: load balancers see NOT_SERVING and
    // move away; the process itself is alive.
    assert_eq!(registry.health("").as_deref(), Ok("NOT_SERVING"));
    assert_eq!(
        registry.health(SUPPLIER_SERVICE).as_deref(),
        Ok("NOT_SERVING")
    );
    assert_eq!(registry.health("liveness").as_deref(), Ok("SERVING"));
    let status = registry.wait_exit(PATIENCE);
    assert!(status.success(), "exit status {status}");
    let log = registry.log();
    assert!(
        log.contains("shutdown requested: draining in-flight requests"),
        "{log}"
    );
    assert!(logged_orderly_stop(&log), "{log}");
}

#[test]
fn every_service_exits_zero_on_sigterm() {
    let database = fresh_database();
    let mut services: Vec<Service> = SERVICES
        .iter()
        .map(|name| Service::spawn(name, &[("DATABASE_URL", &database.url)]))
        .collect();
    for service in &mut services {
        service.wait_serving();
    }
    for service in &mut services {
        let signalled = Instant::now();
        service.terminate();
        let status = service.wait_exit(PATIENCE);
        eprintln!(
            "measured: {} idle, SIGTERM -> exit {:?}",
            service.name,
            signalled.elapsed()
        );
        assert!(status.success(), "{}: exit status {status}", service.name);
        let log = service.log();
        assert!(
            log.contains("shutdown requested"),
            "{}: {log}",
            service.name
        );
        assert!(logged_orderly_stop(&log), "{}: {log}", service.name);
    }
}

#[test]
fn a_bad_configuration_fails_at_once_naming_the_variable() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    // Nothing listens on port 1: no case below may need the database.
    let good: [(&str, &str); 7] = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/never_used"),
        ("GRPC_LISTEN_ADDR", &listen),
        ("AUTH_JWT_HS256_SECRET", TEST_SECRET),
        ("AUTH_DEV_MODE", "true"),
        ("LOG_FORMAT", "text"),
        ("ESCROW_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET),
        ("ESCROW_GATEWAY_URL", "http://127.0.0.1:9"),
    ];
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();

    // (variable, value or None to leave it unset, where the message goes).
    // Every number and duration has a range; a value outside it is refused
    // at start-up like a malformed one.
    let cases: [(&str, Option<&str>, &str); 25] = [
        ("GRPC_REQUEST_TIMEOUT", Some("ten"), "stderr"),
        ("GRPC_REQUEST_TIMEOUT", Some("0s"), "stderr"),
        ("GRPC_REQUEST_TIMEOUT", Some("2h"), "stderr"),
        ("SHUTDOWN_GRACE_PERIOD", Some("10x"), "stderr"),
        ("SHUTDOWN_GRACE_PERIOD", Some("3h"), "stderr"),
        ("SHUTDOWN_READINESS_DELAY", Some("1h"), "stderr"),
        ("SHUTDOWN_READINESS_DELAY", Some("-1s"), "stderr"),
        ("DATABASE_URL", None, "stderr"),
        ("GRPC_LISTEN_ADDR", Some("nowhere"), "stderr"),
        ("LOG_FORMAT", Some("xml"), "stderr"),
        ("DATABASE_MAX_CONNECTIONS", Some("many"), "stderr"),
        ("DATABASE_MAX_CONNECTIONS", Some("0"), "stderr"),
        ("DATABASE_MAX_CONNECTIONS", Some("100000"), "stderr"),
        ("DATABASE_ACQUIRE_TIMEOUT", Some("0ms"), "stderr"),
        ("DATABASE_ACQUIRE_TIMEOUT", Some("1d"), "stderr"),
        ("IDEMPOTENCY_KEY_RETENTION", Some("1s"), "stderr"),
        ("IDEMPOTENCY_KEY_RETENTION", Some("400d"), "stderr"),
        ("GRPC_MAX_MESSAGE_BYTES", Some("0"), "stderr"),
        ("GRPC_MAX_MESSAGE_BYTES", Some("99999999999"), "stderr"),
        ("GRPC_CONCURRENCY_LIMIT", Some("0"), "stderr"),
        ("AUTH_JWT_LEEWAY_SECONDS", Some("3600"), "stderr"),
        // Checked once parsed: reported through the log (stdout), exit 1.
        ("AUTH_JWT_HS256_SECRET", Some("short"), "log"),
        ("DATABASE_URL", Some("not a url"), "log"),
        ("GRPC_LISTEN_ADDR", Some(&taken_addr), "log"),
        ("AUTH_JWT_JWKS_FILE", Some("/nonexistent/jwks.json"), "log"),
    ];
    for binary_name in SERVICES {
        for (variable, value, channel) in cases {
            let mut env: Vec<(&str, &str)> = good
                .iter()
                .copied()
                .filter(|(k, _)| *k != variable)
                .collect();
            if let Some(value) = value {
                env.push((variable, value));
            }
            let output = run_binary(binary_name, &env, &[]);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let context = format!(
                "{binary_name} with {variable}={value:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
                output.status
            );
            assert!(!output.status.success(), "{context}");
            assert_ne!(output.status.code(), Some(101), "a panic: {context}");
            assert!(!stderr.contains("panicked"), "{context}");
            // A value checked before logging starts (contract's service
            // credentials) is reported on stderr even where others log it.
            let message = if channel == "stderr" {
                stderr.to_string()
            } else {
                format!("{stdout}{stderr}")
            };
            assert!(message.contains(variable), "{context}");
        }
        // No secret at all.
        let env: Vec<(&str, &str)> = good
            .iter()
            .copied()
            .filter(|(k, _)| *k != "AUTH_JWT_HS256_SECRET")
            .collect();
        let output = run_binary(binary_name, &env, &[]);
        assert!(!output.status.success());
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            said.contains("AUTH_JWT_HS256_SECRET"),
            "{binary_name}: {output:?}"
        );
    }
    drop(taken);

    // Escrow's webhook secret: required, and long enough to resist guessing.
    for value in [None, Some("short")] {
        let mut env: Vec<(&str, &str)> = good
            .iter()
            .copied()
            .filter(|(k, _)| *k != "ESCROW_WEBHOOK_SECRET")
            .collect();
        if let Some(value) = value {
            env.push(("ESCROW_WEBHOOK_SECRET", value));
        }
        let output = run_binary(ESCROW, &env, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{value:?}: {stderr}");
        assert!(
            stderr.contains("ESCROW_WEBHOOK_SECRET"),
            "{value:?}: {stderr}"
        );
    }

    // The supplier registry's own policy settings.
    for (variable, value) in [
        ("PENALTY_RESTRICTION_THRESHOLD", "0"),
        ("PENALTY_RESTRICTION_THRESHOLD", "lots"),
        ("PENALTY_LIMIT_REDUCTION_PERCENT", "101"),
    ] {
        let mut env: Vec<(&str, &str)> = good.to_vec();
        env.push((variable, value));
        let output = run_binary(SUPPLIER_REGISTRY, &env, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value}: {stderr}");
        assert_ne!(
            output.status.code(),
            Some(101),
            "{variable}={value}: {stderr}"
        );
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }

    // --help documents the variables.
    for binary_name in SERVICES {
        let output = run_binary(binary_name, &[], &["--help"]);
        assert!(output.status.success(), "{binary_name}: {output:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for variable in [
            "DATABASE_URL",
            "GRPC_LISTEN_ADDR",
            "AUTH_JWT_HS256_SECRET",
            "GRPC_REQUEST_TIMEOUT",
            "SHUTDOWN_GRACE_PERIOD",
            "LOG_FORMAT",
        ] {
            assert!(
                help.contains(variable),
                "{binary_name} --help lacks {variable}:\n{help}"
            );
        }
    }
}
