//! What the scenario suites (`faq_scenarios`, `rolling_scenario`) read and
//! do besides the contract's calls in [`crate::platform`]: the dispute
//! service's calls, the money as escrow's statement shows it, the supplier's
//! standing, gateway webhooks signed as the gateway signs them, evidence
//! streamed through a raw gRPC client, and waiting until the workflow
//! machinery of every service has nothing left to deliver.
//!
//! Everything is read through the services' APIs (grpcurl, or a tonic client
//! for the streaming evidence calls); nothing here reads a service's tables.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use ta_proto::dispute::{
    self as pb, dispute_service_client::DisputeServiceClient, download_evidence_response,
    upload_evidence_request,
};
use tokio_stream::StreamExt;

use crate::{platform::*, *};

pub const WORKFLOW_ADMIN_SERVICE: &str = "tradeassurance.ops.v1.WorkflowAdminService";

// ---- Dispute's calls ------------------------------------------------------------

pub fn dcall(
    dispute: &Service,
    method: &str,
    token: &str,
    body: &Value,
) -> Result<Value, RpcError> {
    dispute.call(&dispute_method(method), Some(token), body)
}

pub fn dcall_ok(dispute: &Service, method: &str, token: &str, body: &Value) -> Value {
    dispute.call_ok(&dispute_method(method), Some(token), body)
}

pub fn get_claim(dispute: &Service, token: &str, claim_id: &str) -> Value {
    dcall_ok(dispute, "GetClaim", token, &json!({ "claim_id": claim_id }))["claim"].clone()
}

/// The `claim.claimId` of a dispute answer.
pub fn claim_id_of(answer: &Value) -> String {
    answer["claim"]["claimId"]
        .as_str()
        .unwrap_or_else(|| panic!("no claim id in {answer:#}"))
        .to_owned()
}

/// Waits until the claim satisfies `ok`; returns it.
pub fn wait_claim(
    dispute: &Service,
    token: &str,
    claim_id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(PATIENCE, &format!("claim {claim_id}: {what}"), || {
        let claim = get_claim(dispute, token, claim_id);
        if ok(&claim) {
            Ok(claim)
        } else {
            Err(format!("{claim:#}"))
        }
    })
}

pub fn wait_claim_status(dispute: &Service, token: &str, claim_id: &str, status: &str) -> Value {
    wait_claim(dispute, token, claim_id, status, |c| c["status"] == status)
}

/// Waits until escrow, contract and supplier-registry acknowledged every
/// effect of the claim's last change.
pub fn wait_claim_effects(dispute: &Service, token: &str, claim_id: &str) -> Value {
    wait_claim(dispute, token, claim_id, "effects completed", |c| {
        !c["effectsCompletedAt"].is_null()
    })
}

/// Files a claim (`body` without its idempotency key) and waits until it is
/// open (NEGOTIATING); returns its id. Panics when it is refused.
pub fn open_claim(dispute: &Service, buyer: &str, key: &str, body: &Value) -> String {
    let mut body = body.clone();
    body["idempotency_key"] = json!(key);
    let filed = dcall_ok(dispute, "FileClaim", buyer, &body);
    assert_eq!(
        filed["claim"]["status"], "CLAIM_STATUS_OPENING",
        "{filed:#}"
    );
    let claim_id = claim_id_of(&filed);
    let claim = wait_claim(dispute, buyer, &claim_id, "opened or refused", |c| {
        c["status"] != "CLAIM_STATUS_OPENING"
    });
    assert_eq!(claim["status"], "CLAIM_STATUS_NEGOTIATING", "{claim:#}");
    claim_id
}

/// The actions of the claim's timeline, oldest first.
pub fn claim_timeline(dispute: &Service, token: &str, claim_id: &str) -> Vec<String> {
    let timeline = dcall_ok(
        dispute,
        "GetClaimTimeline",
        token,
        &json!({ "claim_id": claim_id, "page": { "page_size": 100 } }),
    );
    actions_of(&timeline)
}

fn actions_of(timeline: &Value) -> Vec<String> {
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

/// Whether `wanted` appear in `actions` in this order (others may come between).
pub fn in_order(actions: &[String], wanted: &[&str]) -> bool {
    let mut rest = actions.iter();
    wanted.iter().all(|w| rest.any(|a| a == w))
}

// ---- The money ---------------------------------------------------------------------

/// What one escrow account's postings put on each kind of ledger account
/// (credits minus debits, posted; minor units), as its statement reports:
/// - `escrow_held`: what escrow holds for the contract;
/// - `gateway_clearing`: minus the cash that came in through the gateway for
///   it (the buyer's card or bank transfer), plus what went out (a refund of
///   a credit parked in suspense);
/// - `buyer_refund_payable`: refunds owed to the buyer;
/// - `supplier_payable`: what was released to the supplier;
/// - `financing_partner`: minus what a Pay Later partner funded, plus what
///   went back to its loan;
/// - `suspense`: credits that matched no open payment, until refunded.
///
/// Each currency's balances sum to zero. `pending_held` is what pending
/// holds (a bank transfer or Pay Later not confirmed yet) would add to
/// `escrow_held`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub escrow_held: i64,
    pub gateway_clearing: i64,
    pub buyer_refund_payable: i64,
    pub supplier_payable: i64,
    pub financing_partner: i64,
    pub suspense: i64,
    pub fees: i64,
    pub pending_held: i64,
}

impl Balances {
    fn sum(&self) -> i64 {
        self.escrow_held
            + self.gateway_clearing
            + self.buyer_refund_payable
            + self.supplier_payable
            + self.financing_partner
            + self.suspense
            + self.fees
    }
}

/// The postings of a statement that matter to a reader: (kind, amount,
/// debited kind, credited kind), oldest first.
pub type PostingLine = (String, i64, String, String);

fn short_kind(kind: &Value) -> String {
    kind.as_str()
        .unwrap_or_default()
        .trim_start_matches("LEDGER_ACCOUNT_KIND_")
        .to_lowercase()
}

impl Platform {
    /// The whole statement of an escrow account (every page of postings).
    pub fn statement(&self, account_id: &str) -> Value {
        let mut statement = self.escrow.call_ok(
            &escrow_method("GetEscrowStatement"),
            Some(&self.staff.support),
            &json!({ "escrow_account_id": account_id, "page": { "page_size": 100 } }),
        );
        let mut token = statement["nextPageToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        while !token.is_empty() {
            let page = self.escrow.call_ok(
                &escrow_method("GetEscrowStatement"),
                Some(&self.staff.support),
                &json!({ "escrow_account_id": account_id,
                         "page": { "page_size": 100, "page_token": token } }),
            );
            let more = page["postings"].as_array().cloned().unwrap_or_default();
            statement["postings"]
                .as_array_mut()
                .expect("postings")
                .extend(more);
            token = page["nextPageToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        statement
    }

    /// [`Balances`] of an escrow account; asserts that they sum to zero.
    pub fn balances(&self, account_id: &str) -> Balances {
        let statement = self.statement(account_id);
        let mut balances = Balances::default();
        for line in statement["balances"].as_array().into_iter().flatten() {
            let posted = int(&line["posted"]["amountMinor"]);
            let kind = short_kind(&line["account"]["kind"]);
            let slot = match kind.as_str() {
                "escrow_held" => {
                    balances.pending_held += int(&line["pending"]["amountMinor"]);
                    &mut balances.escrow_held
                }
                "gateway_clearing" => &mut balances.gateway_clearing,
                "buyer_refund_payable" => &mut balances.buyer_refund_payable,
                "supplier_payable" => &mut balances.supplier_payable,
                "financing_partner" => &mut balances.financing_partner,
                "suspense" => &mut balances.suspense,
                "fees" => &mut balances.fees,
                other => panic!("unknown ledger account kind {other}: {statement:#}"),
            };
            *slot += posted;
        }
        assert_eq!(balances.sum(), 0, "a statement sums to zero: {statement:#}");
        balances
    }

    /// The postings of an escrow account as [`PostingLine`]s, oldest first.
    pub fn postings(&self, account_id: &str) -> Vec<PostingLine> {
        let statement = self.statement(account_id);
        statement["postings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("POSTING_KIND_")
                        .to_lowercase(),
                    int(&p["amount"]["amountMinor"]),
                    short_kind(&p["debitAccount"]["kind"]),
                    short_kind(&p["creditAccount"]["kind"]),
                )
            })
            .collect()
    }

    /// Waits until the contract's escrow account has `status` (e.g.
    /// `ESCROW_ACCOUNT_STATUS_CLOSED`); returns the account.
    pub fn wait_account_status(&self, contract_id: &str, status: &str) -> Value {
        wait_until(
            PATIENCE,
            &format!("the escrow account of {contract_id} to be {status}"),
            || {
                let account = self.escrow_account(contract_id)["account"].clone();
                if account["status"] == status {
                    Ok(account)
                } else {
                    Err(format!("{account:#}"))
                }
            },
        )
    }

    /// The escrow account of a contract that became AWAITING_PAYMENT.
    pub fn account_id_of(&self, contract_id: &str) -> String {
        let contract = self.wait_status(contract_id, "CONTRACT_STATUS_AWAITING_PAYMENT");
        contract["escrowAccountId"]
            .as_str()
            .expect("escrow account")
            .to_owned()
    }
}

impl Platform {
    /// Pays every scheduled payment of the contract's escrow account by card,
    /// in order, and waits until the contract is FUNDED.
    pub fn fund_by_card(&self, buyer: &str, contract_id: &str) -> String {
        let account = self.account_id_of(contract_id);
        let schedule = self.escrow_account(contract_id)["account"]["schedule"].clone();
        for payment in schedule.as_array().expect("schedule") {
            let milestone = payment["milestoneId"].as_str().expect("milestoneId");
            self.pay_by_card(
                buyer,
                &account,
                milestone,
                int(&payment["amount"]["amountMinor"]),
            );
        }
        self.wait_status(contract_id, "CONTRACT_STATUS_FUNDED");
        account
    }

    /// A Trade Assurance contract on `terms`, signed, paid in full by card,
    /// shipped and received: DELIVERED. Returns (contract id, escrow account id).
    pub fn deliver(
        &self,
        buyer: &str,
        supplier: &str,
        supplier_id: &str,
        terms: &Value,
    ) -> (String, String) {
        let id = signed_contract(self, buyer, supplier, supplier_id, terms);
        let account = self.fund_by_card(buyer, &id);
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

// ---- The supplier's standing -----------------------------------------------------

/// A supplier as buyers and staff judge it (GetSupplier, private view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub status: String,
    pub badge: bool,
    pub penalty_points: i64,
    pub ta_limit: i64,
    pub cover_reserved: i64,
    pub cover_remaining: i64,
    pub review_count: i64,
    pub average_rating_centi: i64,
}

impl Platform {
    pub fn supplier_view(&self, supplier_id: &str) -> Value {
        self.registry.call_ok(
            &registry_method("GetSupplier"),
            Some(&self.staff.support),
            &json!({ "supplier_id": supplier_id }),
        )["supplier"]
            .clone()
    }

    pub fn standing(&self, supplier_id: &str) -> Standing {
        let s = self.supplier_view(supplier_id);
        Standing {
            status: s["status"].as_str().unwrap_or_default().to_owned(),
            badge: s["tradeAssuranceBadge"] == true,
            penalty_points: int(&s["penaltyPoints"]),
            ta_limit: int(&s["taLimit"]["amountMinor"]),
            cover_reserved: int(&s["coverReserved"]["amountMinor"]),
            cover_remaining: int(&s["coverRemaining"]["amountMinor"]),
            review_count: int(&s["reviewCount"]),
            average_rating_centi: int(&s["averageRatingCenti"]),
        }
    }

    /// Waits until the supplier's (reserved, remaining) cover is `wanted`.
    pub fn wait_cover(&self, supplier_id: &str, wanted: (i64, i64)) {
        wait_until(
            PATIENCE,
            &format!("the cover of {supplier_id} to be {wanted:?}"),
            || match self.cover(supplier_id) {
                cover if cover == wanted => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }

    /// The contracts with reserved cover in supplier-registry: contract id
    /// to amount.
    pub fn cover_reservations(&self, supplier_id: &str) -> BTreeMap<String, i64> {
        let cover = self.registry.call_ok(
            &registry_method("GetCover"),
            Some(&self.staff.platform),
            &json!({ "supplier_id": supplier_id }),
        );
        cover["activeReservations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["contractId"].as_str().unwrap_or_default().to_owned(),
                    int(&r["amount"]["amountMinor"]),
                )
            })
            .collect()
    }

    /// Every contract of a supplier, as the contract service lists them.
    pub fn contracts_of(&self, supplier_id: &str) -> Vec<Value> {
        let mut contracts = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.contract_ok(
                "ListContracts",
                &self.staff.platform,
                &json!({ "supplier_id": supplier_id,
                         "page": { "page_size": 100, "page_token": token } }),
            );
            contracts.extend(page["contracts"].as_array().cloned().unwrap_or_default());
            token = page["nextPageToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if token.is_empty() {
                return contracts;
            }
        }
    }
}

// ---- Quiet ------------------------------------------------------------------------

/// A service's workflow backlog: (outbox rows waiting, parked rows, timers
/// overdue).
/// `support`: a staff token (any duty reads the backlog).
pub fn backlog(service: &Service, support: &str) -> (i64, i64, i64) {
    let backlog = service.call_ok(
        &format!("{WORKFLOW_ADMIN_SERVICE}/GetWorkflowBacklog"),
        Some(support),
        &json!({}),
    );
    (
        int(&backlog["outboxPending"]),
        int(&backlog["outboxParked"]),
        int(&backlog["timersOverdue"]),
    )
}

/// Waits until none of `services` has an outbox row waiting or a timer
/// overdue (a parked row fails the wait at once: nothing would deliver it).
pub fn wait_quiet(services: &[&Service], support: &str) {
    wait_until(
        PATIENCE,
        "every outbox delivered and every due timer fired",
        || {
            let mut busy = Vec::new();
            for service in services {
                let (pending, parked, overdue) = backlog(service, support);
                assert_eq!(parked, 0, "{} parked outbox rows", service.name);
                if pending > 0 || overdue > 0 {
                    busy.push(format!(
                        "{}: {pending} pending, {overdue} overdue",
                        service.name
                    ));
                }
            }
            if busy.is_empty() {
                Ok(())
            } else {
                Err(busy.join("; "))
            }
        },
    );
}

// ---- Gateway webhooks ------------------------------------------------------------

impl Platform {
    /// Delivers a gateway event to escrow as the webhook ingress does:
    /// `{id, type, created, data: {reference, amount_minor?, currency_code?}}`
    /// signed `t=<now>,v1=HMAC-SHA256("<t>.<payload>")` with the test secret.
    pub fn gateway_webhook(
        &self,
        event_id: &str,
        kind: &str,
        reference: &str,
        amount_minor: Option<i64>,
    ) -> Result<Value, RpcError> {
        let (payload, signature) = gateway_event(event_id, kind, reference, amount_minor);
        self.signed_webhook(event_id, &payload, &signature)
    }

    /// Delivers `payload` with the given signature header as it stands.
    pub fn signed_webhook(
        &self,
        event_id: &str,
        payload: &[u8],
        signature: &str,
    ) -> Result<Value, RpcError> {
        let gateway = mint_service("payment-gateway", "escrow");
        self.escrow.call(
            &escrow_method("HandleGatewayWebhook"),
            Some(&gateway),
            &json!({ "idempotency_key": event_id, "payload": base64(payload), "signature": signature }),
        )
    }
}

/// A gateway event as the gateway sends it now: its payload and signature header.
pub fn gateway_event(
    event_id: &str,
    kind: &str,
    reference: &str,
    amount_minor: Option<i64>,
) -> (Vec<u8>, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut data = json!({ "reference": reference });
    if let Some(amount) = amount_minor {
        data["amount_minor"] = json!(amount);
        data["currency_code"] = json!("USD");
    }
    let payload = json!({ "id": event_id, "type": kind, "created": now, "data": data })
        .to_string()
        .into_bytes();
    let signature = sign_webhook(TEST_WEBHOOK_SECRET.as_bytes(), now, &payload);
    (payload, signature)
}

/// The gateway's signature header for `payload` at `timestamp`.
pub fn sign_webhook(secret: &[u8], timestamp: u64, payload: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(payload);
    format!("t={timestamp},v1={}", hex(&hmac_sha256(secret, &message)))
}

// Small enough to keep here rather than add crates to the test package: the
// webhook's HMAC-SHA256, evidence digests, and base64 for grpcurl's bytes.

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (slot, value) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *slot = slot.wrapping_add(value);
        }
    }
    let mut digest = [0u8; 32];
    for (chunk, word) in digest.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let mut inner = pad(0x36);
    inner.extend_from_slice(message);
    let mut outer = pad(0x5c);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (protobuf JSON's encoding of `bytes`).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- Evidence through a raw client ------------------------------------------------

/// One evidence file to upload.
pub struct EvidenceFile<'a> {
    pub key: &'a str,
    pub claim_id: &'a str,
    pub kind: pb::EvidenceKind,
    pub filename: &'a str,
    pub content_type: &'a str,
    pub description: &'a str,
    pub quality_criterion_ids: &'a [&'a str],
    pub bytes: &'a [u8],
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn dispute_client(dispute: &Service) -> DisputeServiceClient<tonic::transport::Channel> {
    DisputeServiceClient::connect(format!("http://{}", dispute.addr()))
        .await
        .expect("connect to dispute")
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", ta_runtime::auth::bearer_metadata(token));
    request
}

/// Streams one evidence file to dispute: its metadata (with the file's true
/// size and SHA-256), then its bytes in 1 MiB chunks.
pub fn upload_evidence(
    dispute: &Service,
    token: &str,
    file: &EvidenceFile<'_>,
) -> Result<pb::Evidence, tonic::Status> {
    let mut messages = vec![pb::UploadEvidenceRequest {
        idempotency_key: file.key.to_owned(),
        part: Some(upload_evidence_request::Part::Metadata(
            pb::EvidenceMetadata {
                claim_id: file.claim_id.to_owned(),
                kind: file.kind as i32,
                filename: file.filename.to_owned(),
                content_type: file.content_type.to_owned(),
                size_bytes: file.bytes.len() as u64,
                sha256_hex: hex(&sha256(file.bytes)),
                description: file.description.to_owned(),
                quality_criterion_ids: file
                    .quality_criterion_ids
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
                ..Default::default()
            },
        )),
        // A party's upload: only staff give a reason.
        reason: String::new(),
    }];
    for chunk in file.bytes.chunks(1024 * 1024) {
        messages.push(pb::UploadEvidenceRequest {
            idempotency_key: String::new(),
            part: Some(upload_evidence_request::Part::Chunk(chunk.to_vec())),
            reason: String::new(),
        });
    }
    runtime().block_on(async {
        let mut client = dispute_client(dispute).await;
        client
            .upload_evidence(authorized(tokio_stream::iter(messages), token))
            .await
            .map(|r| r.into_inner().evidence.expect("evidence"))
    })
}

/// Streams one evidence file back: (its record, its bytes).
pub fn download_evidence(
    dispute: &Service,
    token: &str,
    evidence_id: &str,
) -> Result<(pb::Evidence, Vec<u8>), tonic::Status> {
    runtime().block_on(async {
        let mut client = dispute_client(dispute).await;
        let mut stream = client
            .download_evidence(authorized(
                pb::DownloadEvidenceRequest {
                    evidence_id: evidence_id.to_owned(),
                },
                token,
            ))
            .await?
            .into_inner();
        let mut evidence = None;
        let mut bytes = Vec::new();
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(download_evidence_response::Part::Evidence(e)) => evidence = Some(e),
                Some(download_evidence_response::Part::Chunk(c)) => bytes.extend_from_slice(&c),
                None => {}
            }
        }
        Ok((evidence.expect("the evidence first"), bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            hex(&sha256(long)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn base64_pads_like_protobuf_json() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn in_order_allows_steps_between() {
        let actions: Vec<String> = ["a", "x", "b", "c"].map(String::from).to_vec();
        assert!(in_order(&actions, &["a", "b", "c"]));
        assert!(!in_order(&actions, &["b", "a"]));
    }
}
