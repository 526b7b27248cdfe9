//! Many orders at once, in every stage of their lives, driven by a few
//! threads against the four real binaries; then every reconciliation and
//! cover figure is checked against what the services themselves say:
//! - escrow's `ReconcileLedger` finds no difference and each currency of the
//!   trial balance sums to zero;
//! - each supplier's reserved cover in supplier-registry is exactly the
//!   cover of its open contracts as the contract service lists them, contract
//!   by contract;
//! - no money sits in escrow without a live deadline or an open claim, and
//!   none for a contract that has ended;
//! - every account's funding is accounted for (held + released + refunded)
//!   and every open claim is the one its contract and its escrow freeze name.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use e2e_tests::{platform::*, scenario::*, *};

const SUPPLIERS: usize = 4;
const BUYERS: usize = 3;
/// Contracts per stage: 17 stages, 51 contracts.
const ROUNDS: usize = 3;
const THREADS: usize = 4;
const LIMIT: i64 = 10_000_000;

/// Where a contract is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Draft,
    OneSignature,
    AwaitingPayment,
    BankTransferPending,
    PartiallyFunded,
    Funded,
    Amended,
    Shipped,
    Delivered,
    Accepted,
    CancelledUnfunded,
    CancelledAfterDeposit,
    RefusedOverLimit,
    ClaimOpen,
    ClaimWithdrawn,
    ClaimDecided,
    ClaimRefundedInFull,
}

const STAGES: [Stage; 17] = [
    Stage::Draft,
    Stage::OneSignature,
    Stage::AwaitingPayment,
    Stage::BankTransferPending,
    Stage::PartiallyFunded,
    Stage::Funded,
    Stage::Amended,
    Stage::Shipped,
    Stage::Delivered,
    Stage::Accepted,
    Stage::CancelledUnfunded,
    Stage::CancelledAfterDeposit,
    Stage::RefusedOverLimit,
    Stage::ClaimOpen,
    Stage::ClaimWithdrawn,
    Stage::ClaimDecided,
    Stage::ClaimRefundedInFull,
];

impl Stage {
    /// The contract's status once the stage is reached.
    fn status(self) -> &'static str {
        match self {
            Stage::Draft | Stage::RefusedOverLimit => "CONTRACT_STATUS_DRAFT",
            Stage::OneSignature => "CONTRACT_STATUS_AWAITING_SIGNATURES",
            Stage::AwaitingPayment | Stage::BankTransferPending => {
                "CONTRACT_STATUS_AWAITING_PAYMENT"
            }
            Stage::PartiallyFunded => "CONTRACT_STATUS_PARTIALLY_FUNDED",
            Stage::Funded | Stage::Amended => "CONTRACT_STATUS_FUNDED",
            Stage::Shipped => "CONTRACT_STATUS_SHIPPED",
            Stage::Delivered | Stage::ClaimWithdrawn => "CONTRACT_STATUS_DELIVERED",
            Stage::Accepted | Stage::ClaimDecided => "CONTRACT_STATUS_COMPLETED",
            Stage::CancelledUnfunded | Stage::CancelledAfterDeposit => "CONTRACT_STATUS_CANCELLED",
            Stage::ClaimOpen => "CONTRACT_STATUS_IN_DISPUTE",
            Stage::ClaimRefundedInFull => "CONTRACT_STATUS_REFUNDED",
        }
    }
}

/// Contract states that hold cover (and, funded, money).
const OPEN: [&str; 6] = [
    "CONTRACT_STATUS_AWAITING_PAYMENT",
    "CONTRACT_STATUS_PARTIALLY_FUNDED",
    "CONTRACT_STATUS_FUNDED",
    "CONTRACT_STATUS_SHIPPED",
    "CONTRACT_STATUS_DELIVERED",
    "CONTRACT_STATUS_IN_DISPUTE",
];
/// States a contract ends in after it had an escrow account.
const ENDED: [&str; 3] = [
    "CONTRACT_STATUS_COMPLETED",
    "CONTRACT_STATUS_CANCELLED",
    "CONTRACT_STATUS_REFUNDED",
];

struct Order {
    stage: Stage,
    contract_id: String,
    claim_id: Option<String>,
}

struct World<'a> {
    platform: &'a Platform,
    dispute: &'a Service,
    suppliers: Vec<(String, String)>,
    buyers: Vec<String>,
}

impl World<'_> {
    fn arbiter(&self) -> &str {
        &self.platform.staff.arbiter
    }

    /// Drives order `n` to its stage; returns what it became.
    fn drive(&self, n: usize, stage: Stage) -> Order {
        let p = self.platform;
        let (supplier_id, supplier) = &self.suppliers[n % SUPPLIERS];
        let buyer = &self.buyers[n % BUYERS];
        // 100 + 7n mugs at 3.00 USD and 10 cartons: every total differs.
        let mugs = 100 + 7 * n as u64;
        let mut terms = terms("PROTECTION_TRADE_ASSURANCE");
        terms["title"] = json!(format!("order {n}: {mugs} mugs"));
        terms["line_items"][0]["quantity"] = json!(mugs);
        if stage == Stage::RefusedOverLimit {
            // 100,000 mugs: 300,000.00 USD, beyond any supplier's limit.
            terms["line_items"][0]["quantity"] = json!(100_000);
        }
        let total = i64::try_from(mugs).expect("small") * 300 + 10_000;
        let deposit = total * 3 / 10;
        let mut order = Order {
            stage,
            contract_id: String::new(),
            claim_id: None,
        };
        let id = if stage == Stage::Draft {
            let created = p.contract_ok(
                "CreateContractDraft",
                buyer,
                &json!({ "idempotency_key": format!("draft-{n}"), "supplier_id": supplier_id, "terms": terms }),
            );
            order.contract_id = created["contract"]["contractId"]
                .as_str()
                .expect("contractId")
                .to_owned();
            return order;
        } else if stage == Stage::OneSignature {
            let created = p.contract_ok(
                "CreateContractDraft",
                buyer,
                &json!({ "idempotency_key": format!("draft-{n}"), "supplier_id": supplier_id, "terms": terms }),
            );
            let id = created["contract"]["contractId"]
                .as_str()
                .expect("contractId")
                .to_owned();
            p.contract_ok(
                "SignContract",
                supplier,
                &json!({ "idempotency_key": format!("sign-{n}"), "contract_id": id, "version": 1 }),
            );
            order.contract_id = id;
            return order;
        } else {
            signed_contract(p, buyer, supplier, supplier_id, &terms)
        };
        order.contract_id.clone_from(&id);
        if stage == Stage::RefusedOverLimit {
            wait_until(PATIENCE, "the activation to be refused", || {
                let c = p.get_contract(&id);
                if c["activationRefusal"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("TA_LIMIT_EXCEEDED"))
                {
                    Ok(())
                } else {
                    Err(format!("{c:#}"))
                }
            });
            return order;
        }
        let account = p.account_id_of(&id);
        let step = |method: &str, who: &str, key: &str| {
            p.contract_ok(
                method,
                who,
                &json!({ "idempotency_key": format!("{key}-{n}"), "contract_id": id,
                         "reason": "the order is no longer needed" }),
            )
        };
        match stage {
            Stage::AwaitingPayment => return order,
            Stage::BankTransferPending => {
                let pending = p.escrow.call_ok(
                    &escrow_method("FundEscrow"),
                    Some(buyer),
                    &json!({ "idempotency_key": format!("bank-{n}"), "escrow_account_id": account,
                             "milestone_id": "deposit", "amount": usd(deposit),
                             "bank_transfer": { "payer_name": "Rolling Imports Ltd" } }),
                );
                assert_eq!(
                    pending["fundingAttempt"]["status"],
                    "FUNDING_STATUS_PENDING"
                );
                return order;
            }
            Stage::CancelledUnfunded => {
                step("CancelContract", buyer, "cancel");
                return order;
            }
            _ => {}
        }
        p.pay_by_card(buyer, &account, "deposit", deposit);
        p.wait_status(&id, "CONTRACT_STATUS_PARTIALLY_FUNDED");
        match stage {
            Stage::PartiallyFunded => return order,
            Stage::CancelledAfterDeposit => {
                step("CancelContract", supplier, "cancel");
                return order;
            }
            _ => {}
        }
        p.pay_by_card(buyer, &account, "balance", total - deposit);
        p.wait_status(&id, "CONTRACT_STATUS_FUNDED");
        match stage {
            Stage::Funded => return order,
            Stage::Amended => {
                // 50 mugs fewer: 150.00 USD less, refunded, cover lowered.
                let mut amended = terms.clone();
                amended["line_items"][0]["quantity"] = json!(mugs - 50);
                p.contract_ok(
                    "ProposeAmendment",
                    supplier,
                    &json!({ "idempotency_key": format!("amend-{n}"), "contract_id": id, "base_version": 1,
                             "terms": amended, "change_note": "50 mugs fewer: the glaze batch ran short" }),
                );
                for (who, key) in [(supplier, "amend-s"), (buyer, "amend-b")] {
                    p.contract_ok(
                        "SignAmendment",
                        who,
                        &json!({ "idempotency_key": format!("{key}-{n}"), "contract_id": id, "version": 2 }),
                    );
                }
                wait_until(PATIENCE, "the amendment to apply", || {
                    let c = p.get_contract(&id);
                    if c["signedVersion"] == 2 {
                        Ok(())
                    } else {
                        Err(format!("{c:#}"))
                    }
                });
                return order;
            }
            _ => {}
        }
        p.contract_ok(
            "RecordShipment",
            supplier,
            &json!({ "idempotency_key": format!("ship-{n}"), "contract_id": id, "carrier": "COSCO",
                     "tracking_number": format!("CS{n:06}"), "final": true }),
        );
        if stage == Stage::Shipped {
            return order;
        }
        p.contract_ok(
            "ConfirmReceipt",
            buyer,
            &json!({ "idempotency_key": format!("receipt-{n}"), "contract_id": id }),
        );
        p.wait_status(&id, "CONTRACT_STATUS_DELIVERED");
        match stage {
            Stage::Delivered => return order,
            Stage::Accepted => {
                p.contract_ok(
                    "AcceptGoods",
                    buyer,
                    &json!({ "idempotency_key": format!("accept-{n}"), "contract_id": id }),
                );
                return order;
            }
            _ => {}
        }
        let claim_id = open_claim(
            self.dispute,
            buyer,
            &format!("claim-{n}"),
            &json!({ "contract_id": id, "reason": "CLAIM_REASON_DAMAGE", "amount_claimed": usd(total / 2),
                     "description": format!("order {n}: cartons crushed") }),
        );
        order.claim_id = Some(claim_id.clone());
        let dispute = |method: &str, who: &str, body: Value| {
            let mut body = body;
            body["idempotency_key"] = json!(format!("{method}-{n}"));
            body["claim_id"] = json!(claim_id);
            dcall_ok(self.dispute, method, who, &body)
        };
        match stage {
            Stage::ClaimOpen => {}
            Stage::ClaimWithdrawn => {
                dispute(
                    "WithdrawClaim",
                    buyer,
                    json!({ "reason": "the supplier replaced the cartons" }),
                );
            }
            Stage::ClaimDecided => {
                dispute(
                    "EscalateClaim",
                    self.arbiter(),
                    json!({ "reason": "the parties stopped answering each other" }),
                );
                dispute(
                    "DecideClaim",
                    self.arbiter(),
                    json!({ "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND", "refund_amount": usd(total / 4),
                            "reason": "a quarter of the cartons crushed" }),
                );
            }
            Stage::ClaimRefundedInFull => {
                let offer = dispute(
                    "MakeOffer",
                    supplier,
                    json!({ "kind": "OFFER_KIND_FULL_REFUND", "message": "we take the claim" }),
                );
                dispute(
                    "AcceptOffer",
                    buyer,
                    json!({ "offer_id": offer["offer"]["offerId"] }),
                );
            }
            other => unreachable!("{other:?}"),
        }
        if stage != Stage::ClaimOpen {
            wait_claim_effects(self.dispute, buyer, &claim_id);
        }
        order
    }
}

#[test]
fn many_orders_in_every_stage_leave_the_ledger_the_cover_and_the_claims_consistent() {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &[]);
    let suppliers: Vec<(String, String)> = (0..SUPPLIERS)
        .map(|s| {
            let owner = format!("supplier-rolling-{s}");
            (
                platform.supplier(&owner, Some(LIMIT)),
                mint(&owner, Role::Supplier),
            )
        })
        .collect();
    let buyers: Vec<String> = (0..BUYERS)
        .map(|b| mint(&format!("buyer-rolling-{b}"), Role::Buyer))
        .collect();
    let world = World {
        platform: &platform,
        dispute: &dispute,
        suppliers,
        buyers,
    };

    // A few threads take the orders one after the other, so the suppliers'
    // cover, the ledger and the feeds see them interleaved.
    let jobs: Vec<(usize, Stage)> = (0..ROUNDS * STAGES.len())
        .map(|n| (n, STAGES[n % STAGES.len()]))
        .collect();
    let next = AtomicUsize::new(0);
    let orders = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                while let Some(&(n, stage)) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let order = world.drive(n, stage);
                    orders.lock().expect("orders").push(order);
                }
            });
        }
    });
    let orders = orders.into_inner().expect("orders");
    assert_eq!(orders.len(), jobs.len());
    wait_quiet(
        &[&platform.contract, &platform.escrow, &dispute],
        &platform.staff.support,
    );

    // Every order is where it was driven to, by the contract's own list.
    let mut contracts: BTreeMap<String, Value> = BTreeMap::new();
    for (supplier_id, _) in &world.suppliers {
        for contract in platform.contracts_of(supplier_id) {
            let id = contract["contractId"].as_str().expect("id").to_owned();
            contracts.insert(id, contract);
        }
    }
    assert_eq!(contracts.len(), orders.len());
    for order in &orders {
        let contract = &contracts[&order.contract_id];
        assert_eq!(
            contract["status"],
            order.stage.status(),
            "{:?}: {contract:#}",
            order.stage
        );
    }

    // 1. The ledger: no difference, every currency sums to zero.
    let report = platform.escrow.call_ok(
        &escrow_method("ReconcileLedger"),
        Some(&platform.staff.finance),
        &json!({}),
    );
    assert!(
        report["differences"].as_array().is_none_or(Vec::is_empty),
        "ledger differences: {report:#}"
    );
    assert!(int(&report["postingsChecked"]) > 0, "{report:#}");
    let trial = platform.escrow.call_ok(
        &escrow_method("GetTrialBalance"),
        Some(&platform.staff.support),
        &json!({}),
    );
    for currency in trial["currencies"].as_array().expect("currencies") {
        assert_eq!(int(&currency["sum"]["amountMinor"]), 0, "{currency:#}");
    }

    // 2. The cover, supplier by supplier: exactly the open contracts, each for
    // its total (after any amendment), and the limit minus their sum left.
    for (supplier_id, _) in &world.suppliers {
        let open: BTreeMap<String, i64> = contracts
            .values()
            .filter(|c| c["supplierId"] == supplier_id.as_str())
            .filter(|c| OPEN.contains(&c["status"].as_str().unwrap_or_default()))
            .map(|c| {
                (
                    c["contractId"].as_str().unwrap_or_default().to_owned(),
                    int(&c["total"]["amountMinor"]),
                )
            })
            .collect();
        assert_eq!(
            platform.cover_reservations(supplier_id),
            open,
            "supplier {supplier_id}: reservations against open contracts"
        );
        let reserved: i64 = open.values().sum();
        assert_eq!(platform.cover(supplier_id), (reserved, LIMIT - reserved));
        let standing = platform.standing(supplier_id);
        assert_eq!(
            (standing.cover_reserved, standing.cover_remaining),
            (reserved, LIMIT - reserved)
        );
    }

    // 3. The money, account by account.
    let mut held_accounts = 0;
    let mut escrow_total = 0;
    for contract in contracts.values() {
        let status = contract["status"].as_str().unwrap_or_default();
        let id = contract["contractId"].as_str().unwrap_or_default();
        let account_id = contract["escrowAccountId"].as_str().unwrap_or_default();
        if account_id.is_empty() {
            assert!(
                [
                    "CONTRACT_STATUS_DRAFT",
                    "CONTRACT_STATUS_AWAITING_SIGNATURES"
                ]
                .contains(&status),
                "{contract:#}"
            );
            continue;
        }
        let account = platform.escrow_account(id)["account"].clone();
        let balances = platform.balances(account_id);
        let held = int(&account["held"]["amountMinor"]);
        assert_eq!(held, balances.escrow_held, "{account:#}");
        assert_eq!(
            int(&account["fundedTotal"]["amountMinor"]),
            held + int(&account["releasedTotal"]["amountMinor"])
                + int(&account["refundedTotal"]["amountMinor"]),
            "what came in is held, released or refunded: {account:#}"
        );
        assert_eq!(
            -balances.gateway_clearing,
            int(&account["fundedTotal"]["amountMinor"]),
            "{account:#}"
        );
        if ENDED.contains(&status) {
            assert_eq!(
                account["status"], "ESCROW_ACCOUNT_STATUS_CLOSED",
                "{contract:#}\n{account:#}"
            );
            assert_eq!((held, balances.pending_held), (0, 0), "{account:#}");
        } else {
            assert!(OPEN.contains(&status), "{contract:#}");
        }
        let freezes: Vec<&str> = account["activeFreezes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| f["claimId"].as_str().unwrap_or_default())
            .collect();
        if status == "CONTRACT_STATUS_IN_DISPUTE" {
            assert_eq!(
                freezes,
                [contract["openClaimId"].as_str().unwrap_or_default()]
            );
        } else {
            assert!(freezes.is_empty(), "{account:#}");
        }
        if held > 0 {
            held_accounts += 1;
            escrow_total += held;
        }
    }

    // 4. No money without a live deadline or an open claim.
    let listed = platform.escrow.call_ok(
        &escrow_method("ListHeldAccounts"),
        Some(&platform.staff.finance),
        &json!({ "page": { "page_size": 100 } }),
    );
    let listed = listed["accounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), held_accounts, "{listed:#?}");
    let now = at(std::time::Duration::ZERO);
    let open_claims: BTreeSet<String> = orders
        .iter()
        .filter(|o| o.stage == Stage::ClaimOpen)
        .filter_map(|o| o.claim_id.clone())
        .collect();
    for entry in &listed {
        let account = &entry["account"];
        escrow_total -= int(&account["held"]["amountMinor"]);
        let contract = &contracts[account["contractId"].as_str().unwrap_or_default()];
        assert!(
            OPEN.contains(&contract["status"].as_str().unwrap_or_default()),
            "money held for a contract that has ended: {contract:#}"
        );
        match account["activeFreezes"].as_array().map(Vec::as_slice) {
            Some([freeze]) => {
                let claim_id = freeze["claimId"].as_str().unwrap_or_default();
                assert!(open_claims.contains(claim_id), "{entry:#}");
                let claim = get_claim(&dispute, &platform.staff.platform, claim_id);
                assert_eq!(claim["status"], "CLAIM_STATUS_NEGOTIATING", "{claim:#}");
            }
            _ => {
                let deadline = entry["nextDeadlineAt"].as_str().unwrap_or_default();
                assert!(deadline > now.as_str(), "a live deadline: {entry:#}");
                assert!(
                    ["payment_due", "hold_expiry", "hold_deadline"]
                        .contains(&entry["nextDeadlineKind"].as_str().unwrap_or_default()),
                    "{entry:#}"
                );
            }
        }
    }
    assert_eq!(
        escrow_total, 0,
        "the listed accounts are the ones holding money"
    );

    // 5. The claims: open ones are their contract's open claim; the others ended.
    let claims = dcall_ok(
        &dispute,
        "ListClaims",
        &platform.staff.support,
        &json!({ "page": { "page_size": 100 } }),
    );
    let claims = claims["claims"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        claims.len(),
        orders.iter().filter(|o| o.claim_id.is_some()).count()
    );
    for claim in &claims {
        let contract = &contracts[claim["contractId"].as_str().unwrap_or_default()];
        let open = contract["status"] == "CONTRACT_STATUS_IN_DISPUTE";
        assert_eq!(
            open,
            claim["status"] == "CLAIM_STATUS_NEGOTIATING",
            "{claim:#}"
        );
        if open {
            assert_eq!(contract["openClaimId"], claim["claimId"]);
        } else {
            assert!(!claim["effectsCompletedAt"].is_null(), "{claim:#}");
        }
    }

    // 6. The cross-service reconciliation, which reads the same books through
    //    the services' APIs, finds nothing either.
    let reconciled = dispute.call_ok(
        "tradeassurance.ops.v1.ReconciliationService/ReconcilePlatform",
        Some(&platform.staff.finance),
        &json!({ "settled_for": "0s" }),
    );
    assert_eq!(
        reconciled["differencesTotal"].as_i64().unwrap_or(0),
        0,
        "{reconciled:#}"
    );
    assert!(
        reconciled["contractsChecked"].as_i64().unwrap_or(0) > 0
            && reconciled["accountsChecked"].as_i64().unwrap_or(0) > 0,
        "{reconciled:#}"
    );
}
