//! The four binaries against one database: what grpcurl sees through reflection,
//! what health says, and that the API refuses callers without a token.

use std::collections::BTreeSet;

use e2e_tests::*;

const SUPPLIER_PROTO: &str = "proto/tradeassurance/supplier/v1/supplier_registry.proto";
const SUPPLIER_PACKAGE: &str = "tradeassurance.supplier.v1";
/// Every process serves its audit trail of staff changes.
const AUDIT_TRAIL_SERVICE: &str = "tradeassurance.ops.v1.AuditTrailService";
/// Every process serves the workflow admin service over its schema (the registry for its feed).
const WORKFLOW_ADMIN: &str = "tradeassurance.ops.v1.WorkflowAdminService";

/// `grpcurl -plaintext <flags...> <addr> <args...>` that must succeed; its stdout.
fn grpcurl_ok(flags: &[&str], addr: &str, args: &[&str]) -> String {
    let mut all = vec!["-plaintext"];
    all.extend_from_slice(flags);
    all.push(addr);
    all.extend_from_slice(args);
    let output = grpcurl(&all);
    assert!(
        output.status.success(),
        "grpcurl {all:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The services `grpcurl list` shows.
fn list(addr: &str) -> BTreeSet<String> {
    grpcurl_ok(&[], addr, &["list"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn is_reflection(service: &str) -> bool {
    service.starts_with("grpc.reflection.") && service.ends_with(".ServerReflection")
}

/// Names declared at the top level of a .proto file by `keyword` (`rpc`,
/// `message`, `enum`).
fn declared(proto: &str, keyword: &str) -> BTreeSet<String> {
    proto
        .lines()
        .map(str::trim_start)
        .filter_map(|line| line.strip_prefix(keyword)?.strip_prefix(' '))
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn reflection_and_health_of_the_four_services() {
    let database = fresh_database();
    let mut services: Vec<Service> = SERVICES
        .iter()
        .map(|name| Service::spawn(name, &[("DATABASE_URL", &database.url)]))
        .collect();
    for service in &mut services {
        service.wait_serving();
    }

    // --- health: SERVING on all four (the Check grpcurl sends by default) -----------
    for service in &services {
        let out = grpcurl_ok(&[], &service.addr(), &["grpc.health.v1.Health/Check"]);
        let response = parse_json(out.as_bytes(), "Health/Check");
        assert_eq!(response["status"], "SERVING", "{}: {out}", service.name);
        assert_eq!(
            service.health("liveness").as_deref(),
            Ok("SERVING"),
            "{}",
            service.name
        );
    }
    let registry = &services[0];
    assert_eq!(registry.name, SUPPLIER_REGISTRY);
    assert_eq!(registry.health(SUPPLIER_SERVICE).as_deref(), Ok("SERVING"));

    // --- supplier-registry: list ----------------------------------------------------------
    let listed = list(&registry.addr());
    assert!(listed.contains(SUPPLIER_SERVICE), "{listed:?}");
    assert!(listed.contains(HEALTH_SERVICE), "{listed:?}");
    assert!(listed.iter().any(|s| is_reflection(s)), "{listed:?}");
    let api: BTreeSet<&str> = listed
        .iter()
        .map(String::as_str)
        .filter(|s| !is_reflection(s))
        .collect();
    assert_eq!(
        api,
        BTreeSet::from([
            HEALTH_SERVICE,
            SUPPLIER_SERVICE,
            AUDIT_TRAIL_SERVICE,
            WORKFLOW_ADMIN
        ])
    );

    // --- describe the service: every RPC of the proto --------------------------------------
    let proto = std::fs::read_to_string(repo_root().join(SUPPLIER_PROTO)).expect("read the proto");
    let rpcs = declared(&proto, "rpc");
    assert!(rpcs.len() >= 19, "parsed too few rpcs: {rpcs:?}");
    let described = grpcurl_ok(&[], &registry.addr(), &["describe", SUPPLIER_SERVICE]);
    assert!(
        described.contains(&format!("{SUPPLIER_SERVICE} is a service:")),
        "{described}"
    );
    let described_rpcs = declared(&described, "rpc");
    assert_eq!(described_rpcs, rpcs, "{described}");
    // Each RPC with its request and response types.
    for rpc in &rpcs {
        let line = described
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("rpc {rpc} ")))
            .unwrap_or_else(|| panic!("rpc {rpc} not described:\n{described}"));
        assert!(
            line.contains(&format!(".{SUPPLIER_PACKAGE}.{rpc}Request"))
                && line.contains(&format!(".{SUPPLIER_PACKAGE}.{rpc}Response")),
            "{line}"
        );
    }

    // --- describe every message and enum of the package ------------------------------------
    let messages = declared(&proto, "message");
    let enums = declared(&proto, "enum");
    // Every request and response the service names is among the messages.
    for rpc in &rpcs {
        assert!(messages.contains(&format!("{rpc}Request")), "{rpc}Request");
        assert!(
            messages.contains(&format!("{rpc}Response")),
            "{rpc}Response"
        );
    }
    for (names, kind) in [(&messages, "message"), (&enums, "enum")] {
        for name in names {
            let symbol = format!("{SUPPLIER_PACKAGE}.{name}");
            let out = grpcurl_ok(&[], &registry.addr(), &["describe", &symbol]);
            assert!(
                out.contains(&format!(
                    "{symbol} is a{} {kind}:",
                    if kind == "enum" { "n" } else { "" }
                )),
                "describe {symbol}:\n{out}"
            );
            assert!(
                out.contains(&format!("{kind} {name} {{")),
                "describe {symbol}:\n{out}"
            );
        }
    }
    // (An unknown symbol is not described: the checks above mean something.)
    let unknown = grpcurl(&[
        "-plaintext",
        &registry.addr(),
        "describe",
        &format!("{SUPPLIER_PACKAGE}.NoSuchMessage"),
    ]);
    assert!(!unknown.status.success(), "{unknown:?}");
    // ...and grpcurl can build a request of one from its description.
    let template = grpcurl_ok(
        &["-msg-template"],
        &registry.addr(),
        &[
            "describe",
            &format!("{SUPPLIER_PACKAGE}.ReserveCoverRequest"),
        ],
    );
    assert!(template.contains("\"amountMinor\""), "{template}");

    // --- the others: health, reflection and exactly the APIs they serve --------------------------
    for service in &services[1..] {
        let serves: &[&str] = match service.name.as_str() {
            ESCROW => &[
                "tradeassurance.escrow.v1.EscrowService",
                AUDIT_TRAIL_SERVICE,
                "tradeassurance.ops.v1.WorkflowAdminService",
            ],
            CONTRACT => &[
                "tradeassurance.contract.v1.ContractService",
                AUDIT_TRAIL_SERVICE,
                "tradeassurance.ops.v1.WorkflowAdminService",
            ],
            _ => &[
                "tradeassurance.dispute.v1.DisputeService",
                AUDIT_TRAIL_SERVICE,
                "tradeassurance.ops.v1.ReconciliationService",
                "tradeassurance.ops.v1.WorkflowAdminService",
            ],
        };
        let listed = list(&service.addr());
        assert!(
            listed.contains(HEALTH_SERVICE),
            "{}: {listed:?}",
            service.name
        );
        assert!(
            listed.iter().any(|s| is_reflection(s)),
            "{}: {listed:?}",
            service.name
        );
        let other: Vec<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|s| *s != HEALTH_SERVICE && !is_reflection(s))
            .collect();
        assert_eq!(other, serves, "{} lists {other:?}", service.name);
    }

    // --- no token, no API ------------------------------------------------------------------------
    let no_token = registry
        .call(
            &format!("{SUPPLIER_SERVICE}/SearchSuppliers"),
            None,
            &json!({}),
        )
        .expect_err("no token");
    assert!(
        no_token.stderr.contains("Code: Unauthenticated"),
        "{no_token:#?}"
    );
    let garbage = registry
        .call(
            &format!("{SUPPLIER_SERVICE}/GetSupplier"),
            Some("not-a-jwt"),
            &json!({ "supplier_id": "00000000-0000-0000-0000-000000000000" }),
        )
        .expect_err("garbage token");
    assert_eq!(garbage.code, "Unauthenticated", "{garbage:#?}");
    // With a token the same search answers (an empty database: no suppliers).
    let token = mint("buyer-1", Role::Buyer);
    let found = registry.call_ok(
        &format!("{SUPPLIER_SERVICE}/SearchSuppliers"),
        Some(&token),
        &json!({}),
    );
    assert_eq!(found["suppliers"], json!([]), "{found}");
}
