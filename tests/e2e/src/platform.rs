//! The platform as the journey tests meet it: supplier-registry, escrow and
//! contract as real processes on one fresh database (each in its own schema),
//! wired to each other by their `*_URL` settings, escrow paying through the
//! sandbox payment gateway process (its own schema too) and receiving its
//! signed webhooks over HTTP, plus the steps every story starts with (a
//! verified supplier with a Trade Assurance limit, terms).
//!
//! [`Platform::start_tls`] starts the same platform over mutual TLS: every
//! gRPC listener TLS only and requiring a client certificate, the services
//! calling each other at https:// URLs each with its own certificate (which
//! names it: tokens are bound to it), the harness's grpcurl presenting the
//! test client's.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, SystemTime},
};

use crate::*;

pub const CONTRACT_SERVICE: &str = "tradeassurance.contract.v1.ContractService";
pub const ESCROW_SERVICE: &str = "tradeassurance.escrow.v1.EscrowService";

pub fn registry_method(name: &str) -> String {
    format!("{SUPPLIER_SERVICE}/{name}")
}
pub fn contract_method(name: &str) -> String {
    format!("{CONTRACT_SERVICE}/{name}")
}
pub fn escrow_method(name: &str) -> String {
    format!("{ESCROW_SERVICE}/{name}")
}

pub fn usd(amount_minor: i64) -> Value {
    json!({ "currency_code": "USD", "amount_minor": amount_minor })
}

/// RFC 3339 for `now + offset` (negative offsets are in the past).
pub fn at(offset: Duration) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() + offset).to_string()
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Tokens of the platform's staff, one per duty (staff act in one duty at a
/// time), and of a back end reading views and feeds.
#[derive(Clone, Debug)]
pub struct Staff {
    /// Supplier onboarding, verification, Trade Assurance limits, restrictions.
    pub trust_safety: String,
    /// Escalations, claim decisions, freezes, evidence, cancelling on a party's behalf.
    pub arbiter: String,
    /// Direct releases and refunds, settlements, payouts, re-driving parked work.
    pub finance: String,
    /// Read-only: every view, the ledger's reports, the workflow backlog.
    pub support: String,
    /// A back end: reads views and event feeds, never changes anything.
    pub platform: String,
}

impl Staff {
    /// One token per duty, each with a subject of its own.
    pub fn mint() -> Self {
        Self {
            trust_safety: mint("ts-journey", Role::TrustSafety),
            arbiter: mint("arbiter-journey", Role::Arbiter),
            finance: mint("finance-journey", Role::Finance),
            support: mint("support-journey", Role::Support),
            platform: mint("platform-journey", Role::Platform),
        }
    }
}

/// The three services a contract's life needs, and the payment gateway.
pub struct Platform {
    pub database: TestDatabase,
    pub gateway: GatewaySandbox,
    pub registry: Service,
    pub escrow: Service,
    pub contract: Service,
    contract_env: Vec<(String, String)>,
    escrow_env: Vec<(String, String)>,
    /// Staff tokens, one per duty.
    pub staff: Staff,
    /// `http` or `https` (under TLS): the scheme of the peer URLs.
    scheme: &'static str,
    /// The certificates the services use (none in plaintext).
    tls: Option<TlsFiles>,
    /// How the harness's calls reach the services.
    pub transport: Transport,
}

impl Platform {
    /// `contract_env` adds to the contract's settings, e.g.
    /// `CONTRACT_TERM_DAY=1s` so a term's days pass in seconds.
    pub fn start(contract_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], contract_env)
    }

    /// [`Self::start`] with `every_env` given to every service (e.g. the
    /// `OTEL_*` settings).
    pub fn start_with(every_env: &[(&str, &str)], contract_env: &[(&str, &str)]) -> Self {
        Self::start_over(None, every_env, contract_env)
    }

    /// [`Self::start`] over mutual TLS with the certificates of `tls`:
    /// plaintext is refused everywhere, and so is a client without a
    /// certificate signed by `tls.ca`.
    pub fn start_tls(tls: &TlsFiles, contract_env: &[(&str, &str)]) -> Self {
        Self::start_over(Some(tls), &[], contract_env)
    }

    fn start_over(
        tls: Option<&TlsFiles>,
        every_env: &[(&str, &str)],
        contract_env: &[(&str, &str)],
    ) -> Self {
        let database = fresh_database();
        let (scheme, transport) = match tls {
            Some(tls) => ("https", tls.transport()),
            None => ("http", Transport::Plaintext),
        };
        let tls_env = |service: &str| tls.map(|tls| tls.service_env(service)).unwrap_or_default();
        let fast: Vec<(String, String)> = [
            ("DATABASE_URL", database.url.as_str()),
            ("WORKFLOW_OUTBOX_POLL_INTERVAL", "100ms"),
            ("WORKFLOW_TIMER_POLL_INTERVAL", "100ms"),
        ]
        .iter()
        .chain(every_env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        // Escrow's webhook endpoint, where the gateway delivers.
        let webhooks = format!("127.0.0.1:{}", free_port());
        let gateway = GatewaySandbox::start(
            &database.url,
            &format!("http://{webhooks}/v1/gateway-webhooks"),
            &[],
        );
        let mut registry_env = fast.clone();
        registry_env.extend(tls_env(SUPPLIER_REGISTRY));
        let mut registry = spawn_with(SUPPLIER_REGISTRY, &registry_env, &transport);
        let mut escrow_env = fast.clone();
        escrow_env.extend(tls_env(ESCROW));
        escrow_env.push(("ESCROW_GATEWAY_URL".into(), gateway.base_url()));
        escrow_env.push(("ESCROW_WEBHOOK_LISTEN_ADDR".into(), webhooks));
        let mut escrow = spawn_with(ESCROW, &escrow_env, &transport);
        registry.wait_serving();
        escrow.wait_serving();
        let mut env = fast;
        env.extend(tls_env(CONTRACT));
        env.push((
            "SUPPLIER_REGISTRY_URL".into(),
            format!("{scheme}://{}", registry.addr()),
        ));
        env.push(("ESCROW_URL".into(), format!("{scheme}://{}", escrow.addr())));
        for (k, v) in contract_env {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let contract = spawn_with(CONTRACT, &env, &transport);
        let mut platform = Self {
            database,
            gateway,
            registry,
            escrow,
            contract,
            contract_env: env,
            escrow_env,
            staff: Staff::mint(),
            scheme,
            tls: tls.cloned(),
            transport,
        };
        platform.contract.wait_serving();
        platform
    }

    /// Another contract process on the same database (a second replica, or
    /// one restarted after a kill), with the same settings plus `extra`.
    pub fn spawn_contract(&self, extra: &[(&str, &str)]) -> Service {
        let mut env = self.contract_env.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut service = spawn_with(CONTRACT, &env, &self.transport);
        service.wait_serving();
        service
    }

    /// Another escrow process on the same database and gateway (a second
    /// replica, or one restarted after a kill), with the same settings plus
    /// `extra`. The gateway delivers its webhooks to the first escrow's
    /// endpoint; a replica's own endpoint is on a port of its own.
    pub fn spawn_escrow(&self, extra: &[(&str, &str)]) -> Service {
        let mut env = self.escrow_env.clone();
        let own_webhooks = format!("127.0.0.1:{}", free_port());
        env.retain(|(key, _)| key != "ESCROW_WEBHOOK_LISTEN_ADDR");
        env.push(("ESCROW_WEBHOOK_LISTEN_ADDR".into(), own_webhooks));
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut service = spawn_with(ESCROW, &env, &self.transport);
        service.wait_serving();
        service
    }

    pub fn session(&self) -> Session {
        self.database.session()
    }

    /// A verified supplier owned by `owner`; enrolled with `limit_minor` USD
    /// of Trade Assurance cover when given. Returns its id.
    pub fn supplier(&self, owner: &str, limit_minor: Option<i64>) -> String {
        let token = mint(owner, Role::Supplier);
        let registered = self.registry.call_ok(
            &registry_method("RegisterSupplier"),
            Some(&token),
            &json!({
                "idempotency_key": format!("register-{owner}"),
                "legal_name": format!("{owner} Manufacturing Co."),
                "country_code": "CN",
                "business_licence_number": licence_number(owner),
                "contacts": [{ "name": "Li Wei", "email": "sales@example.com" }]
            }),
        );
        let id = registered["supplier"]["supplierId"]
            .as_str()
            .expect("supplierId")
            .to_owned();
        self.registry.call_ok(
            &registry_method("SubmitVerification"),
            Some(&token),
            &json!({ "idempotency_key": "submit", "supplier_id": id }),
        );
        self.registry.call_ok(
            &registry_method("VerifySupplier"),
            Some(&self.staff.trust_safety),
            &json!({ "idempotency_key": format!("verify-{id}"), "supplier_id": id,
                     "reason": "business licence checked against the registry" }),
        );
        if let Some(limit) = limit_minor {
            self.registry.call_ok(
                &registry_method("EnrollTradeAssurance"),
                Some(&self.staff.trust_safety),
                &json!({ "idempotency_key": format!("enrol-{id}"), "supplier_id": id, "ta_limit": usd(limit),
                         "reason": "three years of clean trade history" }),
            );
        }
        id
    }

    /// The cover figures of a supplier: (reserved, remaining) in minor units.
    pub fn cover(&self, supplier_id: &str) -> (i64, i64) {
        let cover = self.registry.call_ok(
            &registry_method("GetCover"),
            Some(&self.staff.support),
            &json!({ "supplier_id": supplier_id }),
        );
        (
            int(&cover["coverReserved"]["amountMinor"]),
            int(&cover["coverRemaining"]["amountMinor"]),
        )
    }

    pub fn contract_call(
        &self,
        method: &str,
        token: &str,
        body: &Value,
    ) -> Result<Value, RpcError> {
        self.contract
            .call(&contract_method(method), Some(token), body)
    }

    pub fn contract_ok(&self, method: &str, token: &str, body: &Value) -> Value {
        self.contract
            .call_ok(&contract_method(method), Some(token), body)
    }

    pub fn get_contract(&self, contract_id: &str) -> Value {
        self.contract_ok(
            "GetContract",
            &self.staff.support,
            &json!({ "contract_id": contract_id }),
        )["contract"]
            .clone()
    }

    /// Waits until the contract's status is `status` (the outbox, the feed
    /// and the timers move it in the background); returns the contract.
    pub fn wait_status(&self, contract_id: &str, status: &str) -> Value {
        wait_until(
            PATIENCE,
            &format!("contract {contract_id} to be {status}"),
            || {
                let contract = self.get_contract(contract_id);
                if contract["status"] == status {
                    Ok(contract)
                } else {
                    Err(format!("status {}", contract["status"]))
                }
            },
        )
    }

    /// The actions of the contract's timeline, oldest first.
    pub fn timeline_actions(&self, contract_id: &str) -> Vec<String> {
        let timeline = self.contract_ok(
            "GetContractTimeline",
            &self.staff.platform,
            &json!({ "contract_id": contract_id, "page": { "page_size": 100 } }),
        );
        timeline["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn escrow_account(&self, contract_id: &str) -> Value {
        self.escrow.call_ok(
            &escrow_method("GetEscrowAccount"),
            Some(&self.staff.platform),
            &json!({ "contract_id": contract_id }),
        )
    }

    /// Pays one milestone by card (approved), as the buyer.
    pub fn pay_by_card(&self, buyer: &str, account_id: &str, milestone: &str, amount_minor: i64) {
        let funded = self.escrow.call_ok(
            &escrow_method("FundEscrow"),
            Some(buyer),
            &json!({
                "idempotency_key": format!("pay-{account_id}-{milestone}"),
                "escrow_account_id": account_id,
                "milestone_id": milestone,
                "amount": usd(amount_minor),
                "card": { "card_token": "tok_visa" }
            }),
        );
        assert_eq!(
            funded["fundingAttempt"]["status"], "FUNDING_STATUS_SUCCEEDED",
            "{funded:#}"
        );
    }

    /// The ledger holds together: every currency sums to zero, no balance
    /// is negative or differs from its postings.
    pub fn assert_ledger_reconciles(&self) {
        let report = self.escrow.call_ok(
            &escrow_method("ReconcileLedger"),
            Some(&self.staff.finance),
            &json!({}),
        );
        let differences = report["differences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(differences.is_empty(), "ledger differences: {report:#}");
    }
}

/// A business licence number of its own for each owner name.
fn licence_number(owner: &str) -> String {
    let hash = owner
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("9131{:010}", hash % 10_000_000_000)
}

fn spawn_with(binary: &str, env: &[(String, String)], transport: &Transport) -> Service {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut service = Service::spawn(binary, &pairs);
    service.transport = transport.clone();
    service
}

/// Terms a buyer and supplier agree on: 1,000 mugs at 3.00 USD and 10
/// cartons at 10.00 USD (3,100.00 USD), FOB Shanghai, 30 % deposit after
/// signing and the balance before shipment, no inspection, unless changed.
pub fn terms(protection: &str) -> Value {
    json!({
        "title": "Stoneware mugs, spring collection",
        "line_items": [
            { "sku": "MUG-350", "description": "350 ml stoneware mug", "quantity": 1000, "unit": "pcs", "unit_price": usd(300) },
            { "sku": "BOX-24", "description": "Carton for 24 mugs", "quantity": 10, "unit": "carton", "unit_price": usd(1000) }
        ],
        "specifications": [{ "sku": "MUG-350", "name": "glaze", "value": "lead-free, food safe" }],
        "quality_criteria": [{
            "criterion_id": "QC-1", "name": "Wall thickness", "sku": "MUG-350",
            "metric": "wall thickness", "method": "micrometer, 5 points, ISO 2859-1 AQL 2.5",
            "comparator": "COMPARATOR_WITHIN_TOLERANCE", "target_value": "4.0", "tolerance": "0.3", "unit": "mm"
        }],
        "shipment_deadline": at(days(20)),
        "delivery_deadline": at(days(45)),
        "delivery_terms": { "incoterm": "INCOTERM_FOB", "named_place": "Shanghai port", "destination_country_code": "DE" },
        "inspection": { "kind": "INSPECTION_KIND_NONE" },
        "payment_terms": {
            "scheme": "PAYMENT_SCHEME_DEPOSIT_AND_BALANCE",
            "milestones": [
                { "milestone_id": "deposit", "share_basis_points": 3000, "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 3 },
                { "milestone_id": "balance", "share_basis_points": 7000, "trigger": "PAYMENT_TRIGGER_BEFORE_SHIPMENT_DEADLINE", "due_days": 2 }
            ]
        },
        "inspection_period_days": 7,
        "claim_window_days": 0,
        "protection": protection
    })
}

/// Payment terms of one milestone, `full`, 100 % due `due_days` after signing.
pub fn full_prepayment(due_days: u32) -> Value {
    json!({
        "scheme": "PAYMENT_SCHEME_FULL_PREPAYMENT",
        "milestones": [{ "milestone_id": "full", "share_basis_points": 10000,
                         "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": due_days }]
    })
}

/// A contract both parties signed on `terms`: created by the buyer, signed
/// by the supplier and then the buyer. Returns its id.
pub fn signed_contract(
    platform: &Platform,
    buyer: &str,
    supplier: &str,
    supplier_id: &str,
    terms: &Value,
) -> String {
    let created = platform.contract_ok(
        "CreateContractDraft",
        buyer,
        &json!({ "idempotency_key": unique_name("draft"), "supplier_id": supplier_id, "terms": terms }),
    );
    let id = created["contract"]["contractId"]
        .as_str()
        .expect("contractId")
        .to_owned();
    for (who, key) in [(supplier, "sign-supplier"), (buyer, "sign-buyer")] {
        platform.contract_ok(
            "SignContract",
            who,
            &json!({ "idempotency_key": format!("{key}-{id}"), "contract_id": id, "version": 1 }),
        );
    }
    id
}

pub const DISPUTE_SERVICE: &str = "tradeassurance.dispute.v1.DisputeService";

pub fn dispute_method(name: &str) -> String {
    format!("{DISPUTE_SERVICE}/{name}")
}

impl Platform {
    /// The dispute service on the platform's database, calling its contract,
    /// escrow and supplier-registry, with its evidence in the directory
    /// `evidence_dir` and `extra` settings (e.g. `DISPUTE_TERM_DAY=1s`, or
    /// `EVIDENCE_STORE=s3://...`, which replaces the directory). Serving when
    /// returned.
    pub fn spawn_dispute(&self, evidence_dir: &std::path::Path, extra: &[(&str, &str)]) -> Service {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.database.url.clone()),
            ("WORKFLOW_OUTBOX_POLL_INTERVAL".into(), "100ms".into()),
            ("WORKFLOW_TIMER_POLL_INTERVAL".into(), "100ms".into()),
            (
                "SUPPLIER_REGISTRY_URL".into(),
                format!("{}://{}", self.scheme, self.registry.addr()),
            ),
            (
                "CONTRACT_URL".into(),
                format!("{}://{}", self.scheme, self.contract.addr()),
            ),
            (
                "ESCROW_URL".into(),
                format!("{}://{}", self.scheme, self.escrow.addr()),
            ),
            ("EVIDENCE_STORE".into(), evidence_dir.display().to_string()),
        ];
        if let Some(tls) = &self.tls {
            env.extend(tls.service_env(DISPUTE));
        }
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut service = spawn_with(DISPUTE, &env, &self.transport);
        service.wait_serving();
        service
    }

    /// A Trade Assurance contract paid in full (310,000 minor units) by card,
    /// shipped and received: DELIVERED, its escrow account holding it all.
    /// Returns (contract id, escrow account id).
    pub fn delivered_contract(
        &self,
        buyer: &str,
        supplier: &str,
        supplier_id: &str,
        claim_window_days: u32,
        inspection_period_days: u32,
    ) -> (String, String) {
        let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
        prepaid["payment_terms"] = json!({
            "scheme": "PAYMENT_SCHEME_FULL_PREPAYMENT",
            "milestones": [{ "milestone_id": "full", "share_basis_points": 10000,
                             "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 300 }]
        });
        prepaid["claim_window_days"] = json!(claim_window_days);
        prepaid["inspection_period_days"] = json!(inspection_period_days);
        let id = signed_contract(self, buyer, supplier, supplier_id, &prepaid);
        let active = self.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
        let account = active["escrowAccountId"]
            .as_str()
            .expect("escrow account")
            .to_owned();
        self.pay_by_card(buyer, &account, "full", 310_000);
        self.wait_status(&id, "CONTRACT_STATUS_FUNDED");
        self.contract_ok(
            "RecordShipment",
            supplier,
            &json!({ "idempotency_key": format!("ship-{id}"), "contract_id": id,
                     "carrier": "DHL", "tracking_number": "JD014600006281", "final": true }),
        );
        self.contract_ok(
            "ConfirmReceipt",
            buyer,
            &json!({ "idempotency_key": format!("receipt-{id}"), "contract_id": id }),
        );
        self.wait_status(&id, "CONTRACT_STATUS_DELIVERED");
        (id, account)
    }
}

// --- the sandbox payment gateway ------------------------------------------------------

/// The gateway's binary, as `cargo build --workspace --bins` writes it.
pub const GATEWAY_SANDBOX: &str = "payment-gateway-sandbox";

/// The sandbox payment gateway as a process (HTTP on a free loopback port,
/// its state in schema `gateway_sandbox` of the platform's database), and a
/// client of its control API for fault-injection tests: faults, credits,
/// settlements, the books (to compare with escrow's `GetTrialBalance`), the
/// webhooks it sent.
pub struct GatewaySandbox {
    pub service: Service,
}

impl GatewaySandbox {
    /// Starts the gateway delivering webhooks to `webhook_url`, signed with
    /// [`TEST_WEBHOOK_SECRET`], payouts and refunds paid after 500 ms, quick
    /// redelivery; `extra` adds or overrides `GATEWAY_SANDBOX_*` settings.
    /// Ready when returned.
    pub fn start(database_url: &str, webhook_url: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut env = vec![
            ("DATABASE_URL", database_url),
            ("GATEWAY_SANDBOX_LISTEN_ADDR", listen.as_str()),
            ("GATEWAY_SANDBOX_WEBHOOK_URL", webhook_url),
            ("GATEWAY_SANDBOX_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET),
            ("GATEWAY_SANDBOX_SETTLE_AFTER", "500ms"),
            ("GATEWAY_SANDBOX_POLL_INTERVAL", "100ms"),
            ("GATEWAY_SANDBOX_WEBHOOK_RETRY_BASE", "200ms"),
            ("GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP", "2s"),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((*k, *v));
        }
        let mut service = Service::spawn(GATEWAY_SANDBOX, &env);
        // Service::spawn chose a gRPC port the gateway does not use.
        service.port = port;
        let mut gateway = Self { service };
        gateway.wait_ready();
        gateway
    }

    fn wait_ready(&mut self) {
        let what = format!("{} to answer /healthz", GATEWAY_SANDBOX);
        wait_until(PATIENCE, &what, || {
            if let Some(status) = self.service.exit_status() {
                panic!(
                    "{GATEWAY_SANDBOX} exited ({status}):\n{}",
                    self.service.log()
                );
            }
            match self.request("GET", "/healthz", None)? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        });
    }

    /// `http://127.0.0.1:<port>`, escrow's `ESCROW_GATEWAY_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.service.addr())
    }

    /// One HTTP/1.0 call: the status and the JSON body (a string if not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        self.request_with(method, path, &[], body)
    }

    /// [`Self::request`] with extra headers (e.g. `Idempotency-Key`).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let addr = self.service.addr();
        let mut stream =
            TcpStream::connect(&addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(PATIENCE))
            .and_then(|()| stream.set_write_timeout(Some(PATIENCE)))
            .map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head}"))?;
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
        Ok((status, body))
    }

    /// An acting call of the gateway's own API (`/v1/charges`, ...) under
    /// `key`, as escrow would make it: the status and body.
    pub fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        self.request_with("POST", path, &[("Idempotency-Key", key)], Some(body))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// A control call that must answer 2xx; its body.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match self.request(method, path, body) {
            Ok((status, body)) if (200..300).contains(&status) => body,
            Ok((status, body)) => panic!("{method} {path}: {status} {body}"),
            Err(error) => panic!("{method} {path}: {error}"),
        }
    }

    /// Replaces the faults (fields left out take their defaults), e.g.
    /// `{"latency_ms": 300}`, `{"fail_nth": {"kind": "payout", "n": 3}}`,
    /// `{"hold_settlement": true}`, `{"lose_next": 1}`; the faults in force.
    pub fn set_faults(&self, faults: &Value) -> Value {
        self.control("PUT", "/sandbox/faults", Some(faults))
    }

    pub fn faults(&self) -> Value {
        self.control("GET", "/sandbox/faults", None)
    }

    /// Credits a pending bank transfer (`amount_minor`: its own when None).
    pub fn credit_bank_transfer(&self, id: &str, amount_minor: Option<i64>) -> Value {
        let body = amount_minor.map_or_else(|| json!({}), |a| json!({ "amount_minor": a }));
        self.control(
            "POST",
            &format!("/sandbox/bank_transfers/{id}/credit"),
            Some(&body),
        )
    }

    pub fn disburse_pay_later(&self, id: &str) -> Value {
        self.control("POST", &format!("/sandbox/pay_later/{id}/disburse"), None)
    }

    pub fn reject_pay_later(&self, id: &str) -> Value {
        self.control("POST", &format!("/sandbox/pay_later/{id}/reject"), None)
    }

    /// Pays a pending payout or refund (one held by `hold_settlement`).
    pub fn pay_transfer(&self, id: &str) -> Value {
        self.control("POST", &format!("/sandbox/transfers/{id}/pay"), None)
    }

    pub fn fail_transfer(&self, id: &str, failure_code: &str) -> Value {
        self.control(
            "POST",
            &format!("/sandbox/transfers/{id}/fail"),
            Some(&json!({ "failure_code": failure_code })),
        )
    }

    /// Per currency: money in, out, out pending and held at the gateway.
    pub fn books(&self) -> Value {
        self.control("GET", "/sandbox/books", None)
    }

    /// The books' line of `currency` (zeros when nothing moved in it).
    pub fn books_of(&self, currency: &str) -> Value {
        self.books()["currencies"]
            .as_array()
            .and_then(|lines| lines.iter().find(|l| l["currency"] == currency).cloned())
            .unwrap_or_else(|| {
                json!({ "currency": currency, "money_in_minor": 0, "money_out_minor": 0,
                        "out_pending_minor": 0, "held_minor": 0, "payouts_paid": 0 })
            })
    }

    /// Every operation, oldest first.
    pub fn operations(&self) -> Vec<Value> {
        self.control("GET", "/sandbox/operations", None)["operations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What the gateway did under `key`, if it saw it.
    pub fn operation(&self, key: &str) -> Option<Value> {
        match self.request("GET", &format!("/v1/operations/{key}"), None) {
            Ok((200, body)) => Some(body),
            Ok((404, _)) => None,
            other => panic!("GET /v1/operations/{key}: {other:?}"),
        }
    }

    /// Every webhook event with its delivery attempts, oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.control("GET", "/sandbox/events", None)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Delivers an event again (a lost one included).
    pub fn redeliver(&self, event_id: &str) {
        self.control(
            "POST",
            &format!("/sandbox/webhooks/redeliver/{event_id}"),
            None,
        );
    }
}

// --- escrow restarted in place, its webhook endpoint (gateway_faults) ---------------

impl Platform {
    /// Escrow's webhook endpoint, `127.0.0.1:<port>`: where the gateway
    /// delivers its events (`POST /v1/gateway-webhooks`).
    pub fn escrow_webhook_addr(&self) -> String {
        self.escrow_env
            .iter()
            .find(|(key, _)| key == "ESCROW_WEBHOOK_LISTEN_ADDR")
            .map(|(_, addr)| addr.clone())
            .expect("escrow has a webhook endpoint")
    }

    /// Kills escrow (SIGKILL, if it still runs) and starts it again on the
    /// same gRPC and webhook addresses, so contract (`ESCROW_URL`) and the
    /// gateway (its webhook URL) reach the new process; `extra` adds to or
    /// overrides its settings. Ready when returned.
    pub fn restart_escrow(&mut self, extra: &[(&str, &str)]) {
        self.escrow.kill();
        let port = self.escrow.port;
        let mut env = self.escrow_env.clone();
        env.push(("GRPC_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut service = spawn_with(ESCROW, &env, &self.transport);
        // Service::spawn chose a port; the setting above overrides it.
        service.port = port;
        service.wait_serving();
        self.escrow = service;
    }
}
