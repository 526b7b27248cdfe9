//! TLS on the gRPC listeners, through the real binaries and the real grpcurl,
//! with certificates made here (rcgen): plaintext is refused when TLS is on;
//! under mutual TLS a client without a certificate, or with one of another
//! CA, is refused and one signed by the CA is served (health and reflection
//! included, and the probes' plaintext listener serves health only); a
//! certificate rotated on disk is served to the next connection
//! without a restart, a bad one is refused and the previous one stays; a
//! token is accepted only from a client certificate that stands for its
//! principal (a service's SPIFFE ID for a service's token; no workload, or
//! an edge gateway, for a person's); and a whole journey (all four
//! services, the sandbox gateway) runs with mutual TLS between the
//! services, each calling with its own certificate.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use e2e_tests::{platform::*, scenario::*, *};
use tokio_rustls::rustls::{
    self, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

// --- certificates ----------------------------------------------------------------

/// A CA and the certificates it signs, as PEM files in a directory of their own.
struct Pki {
    dir: TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{label} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key).expect("CA certificate");
        fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write ca.crt");
        Self {
            dir,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A certificate for 127.0.0.1 and localhost, for servers and clients
    /// alike, with `serial`: written to `<name>.crt` and `<name>.key` (each
    /// replaced at once, as a Secret's update is). It names no workload.
    fn issue(&self, name: &str, serial: u64) -> (PathBuf, PathBuf) {
        self.issue_naming(name, serial, None)
    }

    /// [`Self::issue`] naming the workload `spiffe` by its SPIFFE ID
    /// ([`spiffe_id`]).
    fn issue_naming(&self, name: &str, serial: u64, spiffe: Option<&str>) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        if let Some(workload) = spiffe {
            params.subject_alt_names.push(rcgen::SanType::URI(
                spiffe_id(workload).try_into().expect("a URI"),
            ));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca).expect("certificate");
        let (crt, pem) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        replace(&crt, cert.pem().as_bytes());
        replace(&pem, key.serialize_pem().as_bytes());
        (crt, pem)
    }

    /// The files of a platform over mutual TLS: each service's own
    /// certificate naming it (serials 1 to 4) and the test client's, which
    /// names no workload (serial 100).
    fn files(&self) -> TlsFiles {
        let services = SERVICES
            .iter()
            .zip(1..)
            .map(|(service, serial)| {
                let (cert, key) = self.issue_naming(service, serial, Some(service));
                ((*service).to_owned(), cert, key)
            })
            .collect();
        let (client_cert, client_key) = self.issue("client", 100);
        TlsFiles {
            ca: self.ca(),
            services,
            client_cert,
            client_key,
        }
    }
}

/// Writes `path` whole at once (a temporary file renamed over it).
fn replace(path: &Path, contents: &[u8]) {
    let temporary = path.with_extension("new");
    fs::write(&temporary, contents).expect("write");
    fs::rename(&temporary, path).expect("rename");
}

// --- what a client sees ------------------------------------------------------------

/// The serial number of the certificate `addr` presents to a new TLS
/// connection, verified against `ca`.
fn served_serial(addr: &str, ca: &Path) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
            roots
                .add(certificate.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").expect("IP address");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let presented = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("no certificate presented")?;
        Ok(serial_of(presented))
    })
}

/// The serialNumber of an X.509 certificate (DER): Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ...
fn serial_of(der: &[u8]) -> u64 {
    /// (tag, header length, content length) of the DER element at the start of `bytes`.
    fn element(bytes: &[u8]) -> (u8, usize, usize) {
        let first = bytes[1];
        if first < 0x80 {
            (bytes[0], 2, usize::from(first))
        } else {
            let n = usize::from(first & 0x7f);
            let length = bytes[2..2 + n]
                .iter()
                .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
            (bytes[0], 2 + n, length)
        }
    }
    let (_, header, _) = element(der);
    let tbs = &der[header..];
    let (_, header, _) = element(tbs);
    let mut rest = &tbs[header..];
    let (tag, header, length) = element(rest);
    if tag == 0xa0 {
        rest = &rest[header + length..];
    }
    let (tag, header, length) = element(rest);
    assert_eq!(tag, 0x02, "serialNumber is an INTEGER");
    rest[header..header + length]
        .iter()
        .fold(0u64, |serial, byte| (serial << 8) | u64::from(*byte))
}

fn health(transport: &Transport, service: &Service) -> Result<String, String> {
    health_status_over(transport, &service.addr(), "")
}

fn tls_env(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

// --- the tests ----------------------------------------------------------------------

#[test]
fn under_mutual_tls_only_a_client_with_a_certificate_of_the_ca_is_served() {
    let database = fresh_database();
    let pki = Pki::new("mtls");
    let files = pki.files();
    let settings = files.service_env(SUPPLIER_REGISTRY);
    let mut env = tls_env(&settings);
    env.push(("DATABASE_URL", &database.url));
    // The probes' plaintext listener: the health service only.
    let probes = format!("127.0.0.1:{}", free_port());
    env.push(("GRPC_HEALTH_LISTEN_ADDR", &probes));
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &env);
    registry.transport = files.transport();
    registry.wait_serving();
    assert_eq!(health(&files.transport(), &registry), Ok("SERVING".into()));

    // Plaintext: refused.
    let plaintext = health(&Transport::Plaintext, &registry).expect_err("plaintext refused");
    assert!(!plaintext.is_empty());
    // TLS without a client certificate: refused.
    let anonymous = Transport::Tls {
        ca: files.ca.clone(),
        identity: None,
    };
    health(&anonymous, &registry).expect_err("no client certificate: refused");
    // A client certificate of another CA: refused.
    let stranger = Pki::new("stranger");
    let strangers = Transport::Tls {
        ca: files.ca.clone(),
        identity: Some(stranger.issue("client", 7)),
    };
    health(&strangers, &registry).expect_err("another CA's certificate: refused");
    // The server verified with another CA: the client refuses it.
    let misled = Transport::Tls {
        ca: stranger.ca(),
        identity: Some((files.client_cert.clone(), files.client_key.clone())),
    };
    health(&misled, &registry).expect_err("the server's certificate is not the stranger's CA's");

    // With the CA's client certificate: health, reflection and the API.
    let mut list = files.transport().grpcurl_args();
    list.extend([
        "-max-time".into(),
        "10".into(),
        registry.addr(),
        "list".into(),
    ]);
    let listed = grpcurl(&list);
    assert!(
        output_text(&listed).contains(SUPPLIER_SERVICE),
        "reflection over mutual TLS: {}",
        output_text(&listed)
    );
    let support = mint("support-tls", Role::Support);
    let missing = registry
        .call(
            &registry_method("GetSupplier"),
            Some(&support),
            &json!({ "supplier_id": "01890a5d-ac96-774b-bcce-b302099a8057" }),
        )
        .expect_err("no such supplier");
    assert_eq!(missing.code, "NotFound", "{missing:#?}");
    registry.wait_log("TLS handshake failed");

    assert_eq!(
        health_status_over(&Transport::Plaintext, &probes, "liveness"),
        Ok("SERVING".into())
    );
    let listed = grpcurl(&["-plaintext", "-max-time", "10", &probes, "list"]);
    assert!(
        output_text(&listed).contains(HEALTH_SERVICE)
            && !output_text(&listed).contains(SUPPLIER_SERVICE),
        "the health service alone on the health-only listener: {}",
        output_text(&listed)
    );
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let database = fresh_database();
    let pki = Pki::new("rotation");
    let (cert, key) = pki.issue("server", 1);
    let (cert_file, key_file) = (cert.display().to_string(), key.display().to_string());
    // TLS without client certificates: any client that trusts the CA.
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &database.url),
            ("GRPC_TLS_CERT_FILE", &cert_file),
            ("GRPC_TLS_KEY_FILE", &key_file),
            ("TLS_RELOAD_INTERVAL", "200ms"),
        ],
    );
    registry.transport = Transport::Tls {
        ca: pki.ca(),
        identity: None,
    };
    registry.wait_serving();
    health(&Transport::Plaintext, &registry).expect_err("plaintext refused");
    assert_eq!(served_serial(&registry.addr(), &pki.ca()), Ok(1));

    // A bad file: the previous certificate stays, and the log says why.
    replace(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    // (The files are looked at when a connection comes, at most every 200ms.)
    wait_until(PATIENCE, "the bad certificate to be refused", || {
        assert_eq!(served_serial(&registry.addr(), &pki.ca()), Ok(1));
        if registry
            .log()
            .contains("cannot be used: keeping the previous ones")
        {
            Ok(())
        } else {
            Err(registry.log())
        }
    });
    assert_eq!(registry.health(""), Ok("SERVING".into()));

    // A new pair: the next connection sees it, the process never restarted.
    let pid = registry.pid();
    pki.issue("server", 2);
    wait_until(
        PATIENCE,
        "the rotated certificate (serial 2)",
        || match served_serial(&registry.addr(), &pki.ca())? {
            2 => Ok(()),
            other => Err(format!("serial {other}")),
        },
    );
    assert_eq!(registry.health(""), Ok("SERVING".into()));
    assert!(registry.exit_status().is_none());
    assert_eq!(registry.pid(), pid);
    registry.wait_log("TLS files changed: reloaded");
}

#[test]
fn bad_tls_settings_stop_the_process_naming_the_variable() {
    let database = fresh_database();
    let pki = Pki::new("settings");
    let (cert, key) = pki.issue("server", 1);
    let missing = pki.path("missing.crt");
    let cert = cert.display().to_string();
    let key = key.display().to_string();
    let missing = missing.display().to_string();
    let ca = pki.ca().display().to_string();
    for (env, variable) in [
        (
            vec![
                ("GRPC_TLS_CERT_FILE", missing.as_str()),
                ("GRPC_TLS_KEY_FILE", key.as_str()),
            ],
            "GRPC_TLS_CERT_FILE",
        ),
        (
            vec![("GRPC_TLS_CERT_FILE", cert.as_str())],
            "GRPC_TLS_KEY_FILE",
        ),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", cert.as_str()),
                ("GRPC_TLS_KEY_FILE", key.as_str()),
                ("GRPC_TLS_CLIENT_CA_FILE", missing.as_str()),
            ],
            "GRPC_TLS_CLIENT_CA_FILE",
        ),
        (vec![("PEER_TLS_CA_FILE", key.as_str())], "PEER_TLS_CA_FILE"),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", cert.as_str()),
                ("GRPC_TLS_KEY_FILE", key.as_str()),
                ("GRPC_TLS_CLIENT_CA_FILE", ca.as_str()),
                ("GRPC_TLS_BIND_SERVICE_IDENTITY", "yes"),
            ],
            "GRPC_TLS_BIND_SERVICE_IDENTITY",
        ),
        // Binding without client certificates: nothing to bind to.
        (
            vec![
                ("GRPC_TLS_CERT_FILE", cert.as_str()),
                ("GRPC_TLS_KEY_FILE", key.as_str()),
                ("GRPC_TLS_BIND_SERVICE_IDENTITY", "true"),
            ],
            "GRPC_TLS_BIND_SERVICE_IDENTITY",
        ),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", cert.as_str()),
                ("GRPC_TLS_KEY_FILE", key.as_str()),
                ("GRPC_TLS_CLIENT_CA_FILE", ca.as_str()),
                ("GRPC_TLS_EDGE_GATEWAYS", "ingress,edge/gateway"),
            ],
            "GRPC_TLS_EDGE_GATEWAYS",
        ),
    ] {
        let mut env = env;
        env.extend([
            ("DATABASE_URL", database.url.as_str()),
            ("AUTH_JWT_HS256_SECRET", TEST_SECRET),
            ("AUTH_DEV_MODE", "true"),
            ("GRPC_LISTEN_ADDR", "127.0.0.1:0"),
        ]);
        let output = run_binary(SUPPLIER_REGISTRY, &env, &[]);
        assert!(!output.status.success(), "{env:?} must not start");
        let said = output_text(&output);
        assert!(said.contains(variable), "{env:?}: {said}");
    }
}

/// What `token` gets from a call to supplier-registry's `method` over
/// `transport`: `Ok` when the call passed authentication and authorization
/// (the handler answered, e.g. NOT_FOUND for the made-up supplier), else
/// the refusal's code and message.
fn admitted(
    registry: &Service,
    transport: &Transport,
    method: &str,
    token: &str,
) -> Result<(), (String, String)> {
    let supplier = "01890a5d-ac96-774b-bcce-b302099a8057";
    let body = if method == "RecordPenalty" {
        json!({
            "idempotency_key": "penalty-binding",
            "supplier_id": supplier,
            "claim_id": "01890a5d-ac96-774b-bcce-b302099a8058",
            "points": 6,
            "reason": "quality mismatch upheld"
        })
    } else {
        json!({ "supplier_id": supplier })
    };
    match call_over(
        transport,
        &registry.addr(),
        &registry_method(method),
        Some(token),
        &body,
    ) {
        Err(error) if ["Unauthenticated", "PermissionDenied"].contains(&error.code.as_str()) => {
            Err((error.code, error.message))
        }
        Err(error) => {
            assert_eq!(error.code, "NotFound", "{method}: {error:#?}");
            Ok(())
        }
        Ok(answer) => panic!("{method}: the made-up supplier was found: {answer}"),
    }
}

#[test]
fn under_mutual_tls_a_token_passes_only_from_the_certificate_of_its_principal() {
    let database = fresh_database();
    let pki = Pki::new("binding");
    let files = pki.files();
    let settings = files.service_env(SUPPLIER_REGISTRY);
    let mut env = tls_env(&settings);
    env.push(("DATABASE_URL", &database.url));
    // The edge gateway `ingress` may carry people's tokens (no setting is
    // needed for GRPC_TLS_BIND_SERVICE_IDENTITY: on under mutual TLS).
    env.push(("GRPC_TLS_EDGE_GATEWAYS", "ingress"));
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &env);
    registry.transport = files.transport();
    registry.wait_serving();
    registry.wait_log("bind_service_identity=true");

    let as_contract = files.transport_as(CONTRACT);
    let as_dispute = files.transport_as(DISPUTE);
    let anonymous = files.transport();
    let ingress = Transport::Tls {
        ca: files.ca.clone(),
        identity: Some(pki.issue_naming("ingress", 200, Some("ingress"))),
    };
    let backoffice = Transport::Tls {
        ca: files.ca.clone(),
        identity: Some(pki.issue_naming("backoffice", 201, Some("backoffice"))),
    };
    let contract = mint_service(CONTRACT, SUPPLIER_REGISTRY);
    let dispute = mint_service(DISPUTE, SUPPLIER_REGISTRY);
    let buyer = mint("buyer-binding", Role::Buyer);

    // A service's token from its own certificate: served.
    assert_eq!(
        admitted(&registry, &as_contract, "GetSupplier", &contract),
        Ok(())
    );
    assert_eq!(
        admitted(&registry, &as_dispute, "RecordPenalty", &dispute),
        Ok(())
    );

    // Contract's workload with dispute's token, for a method dispute may
    // call: refused, and the log names both identities.
    let (code, message) =
        admitted(&registry, &as_contract, "RecordPenalty", &dispute).expect_err("refused");
    assert_eq!(code, "Unauthenticated", "{message}");
    assert!(
        message.contains(&spiffe_id(CONTRACT)) && message.contains("does not name service dispute"),
        "{message}"
    );
    registry.wait_log("the token's principal is not the client certificate's");
    let log = registry.log();
    let line = log
        .lines()
        .find(|line| line.contains("the token's principal is not the client certificate's"))
        .expect("the refusal is logged");
    assert!(
        line.contains("token_subject=dispute") && line.contains(&spiffe_id(CONTRACT)),
        "{line}"
    );

    // A person's token from a service's certificate: refused.
    let (code, _) = admitted(&registry, &as_contract, "GetSupplier", &buyer).expect_err("refused");
    assert_eq!(code, "Unauthenticated");
    // A service's token from a certificate naming no workload: refused.
    let (code, _) = admitted(&registry, &anonymous, "GetSupplier", &contract).expect_err("refused");
    assert_eq!(code, "Unauthenticated");
    // A person's token from a certificate naming no workload (a back end),
    // or the edge gateway: served; from another workload's: refused.
    assert_eq!(
        admitted(&registry, &anonymous, "GetSupplier", &buyer),
        Ok(())
    );
    assert_eq!(admitted(&registry, &ingress, "GetSupplier", &buyer), Ok(()));
    let (code, _) = admitted(&registry, &backoffice, "GetSupplier", &buyer).expect_err("refused");
    assert_eq!(code, "Unauthenticated");
    // The method policy still applies after the binding: contract's own
    // token for dispute's method.
    let (code, _) =
        admitted(&registry, &as_contract, "RecordPenalty", &contract).expect_err("refused");
    assert_eq!(code, "PermissionDenied");

    // GRPC_TLS_BIND_SERVICE_IDENTITY=false: mutual TLS as before, the
    // certificate is not compared with the token.
    let mut env = tls_env(&settings);
    env.push(("DATABASE_URL", &database.url));
    env.push(("GRPC_TLS_BIND_SERVICE_IDENTITY", "false"));
    let mut unbound = Service::spawn(SUPPLIER_REGISTRY, &env);
    unbound.transport = files.transport();
    unbound.wait_serving();
    assert_eq!(
        admitted(&unbound, &as_contract, "RecordPenalty", &dispute),
        Ok(())
    );
    assert_eq!(
        admitted(&unbound, &as_contract, "GetSupplier", &buyer),
        Ok(())
    );
}

#[test]
fn the_whole_journey_runs_over_mutual_tls() {
    let pki = Pki::new("journey");
    let files = pki.files();
    let platform = Platform::start_tls(&files, &[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(
        store.path(),
        &[
            ("DISPUTE_TERM_DAY", "1s"),
            ("DISPUTE_NEGOTIATION_DAYS", "2"),
            ("DISPUTE_AUTO_ESCALATION_DAYS", "60"),
        ],
    );
    for service in [
        &platform.registry,
        &platform.escrow,
        &platform.contract,
        &dispute,
    ] {
        health(&Transport::Plaintext, service)
            .expect_err(&format!("{}: plaintext refused", service.name));
        let anonymous = Transport::Tls {
            ca: files.ca.clone(),
            identity: None,
        };
        health(&anonymous, service)
            .expect_err(&format!("{}: no client certificate, refused", service.name));
    }

    // Contract reserves cover at the registry and opens the escrow account,
    // escrow takes the card payment through the gateway, contract follows
    // escrow's feed: all of it between the services over mutual TLS.
    let owner = "supplier-tls";
    let buyer = mint("buyer-tls", Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    assert_eq!(platform.cover(&supplier_id).0, 310_000);

    // Dispute calls contract (and back, through its feed) over mutual TLS too.
    let filed = dispute.call_ok(
        &dispute_method("FileClaim"),
        Some(&buyer),
        &json!({
            "idempotency_key": "file-tls",
            "contract_id": contract_id,
            "reason": "CLAIM_REASON_DAMAGE",
            "quality_criterion_ids": ["QC-1"],
            "amount_claimed": usd(100_000),
            "description": "12 of 40 cartons arrived crushed"
        }),
    );
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_claim_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    platform.wait_status(&contract_id, "CONTRACT_STATUS_IN_DISPUTE");
    dispute.call_ok(
        &dispute_method("WithdrawClaim"),
        Some(&buyer),
        &json!({ "idempotency_key": "withdraw-tls", "claim_id": claim_id, "reason": "replaced" }),
    );
    wait_claim_effects(&dispute, &buyer, &claim_id);
    let resumed = platform.wait_status(&contract_id, "CONTRACT_STATUS_DELIVERED");
    assert_eq!(resumed["openClaimId"], "");
    platform.assert_ledger_reconciles();
    for service in [&platform.contract, &dispute] {
        assert!(
            !service.log().contains("PEER_TLS_CA_FILE is not set"),
            "{}",
            service.log()
        );
    }
    // Every call between the services came from the caller's own
    // certificate: each server bound the tokens, and refused none.
    for service in [
        &platform.registry,
        &platform.escrow,
        &platform.contract,
        &dispute,
    ] {
        let log = service.log();
        assert!(log.contains("bind_service_identity=true"), "{log}");
        assert!(
            !log.contains("the token's principal is not the client certificate's"),
            "{}: {log}",
            service.name
        );
    }
}
