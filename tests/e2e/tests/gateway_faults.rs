//! Escrow at the payment gateway's boundary, with faults injected into the
//! sandbox gateway process (issue 19, "What it must show"): the real escrow
//! and contract binaries, the sandbox as its own process, its webhooks over
//! HTTP to escrow's endpoint.
//!
//! | Fault | Test |
//! |---|---|
//! | 300 ms gateway under 16 concurrent fundings | `a_slow_gateway_...` |
//! | the k-th payout of a run fails | `the_second_payout_of_a_run_...` |
//! | a payout paid after its expiry | `a_payout_paid_after_its_expiry_...` |
//! | escrow SIGKILLed between the call and its record | `escrow_killed_between_...` |
//! | a webhook before the commit; one naming nothing known | `a_webhook_that_overtakes_...` |
//! | two escrow replicas sharing the gateway | `two_escrow_replicas_...` |
//!
//! After each: the money at the gateway (the sandbox's own books) equals the
//! ledger's (`GetTrialBalance`), and `ReconcileLedger` reports nothing but
//! the items for finance the test made on purpose ([`assert_gateway_matches_ledger`]).
//! No test asserts how fast anything is: they assert outcomes and order, and
//! print the latencies the issue names.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use e2e_tests::{platform::*, scenario::*, *};
use ta_proto::escrow::{self as pb, escrow_service_client::EscrowServiceClient};
use tonic::transport::Channel;

const PAYOUT: &str = "GATEWAY_TRANSFER_DIRECTION_PAYOUT";
const SUCCEEDED: &str = "FUNDING_STATUS_SUCCEEDED";

// --- accounts opened on escrow directly ---------------------------------------------

/// An escrow account of one payment (`full`) opened by finance, as
/// contract would open it; contract ignores its events (no such contract).
struct Account {
    id: String,
    buyer: String,
    supplier_id: String,
    amount_minor: i64,
}

fn open_account(platform: &Platform, tag: &str, supplier_id: &str, amount_minor: i64) -> Account {
    let buyer_subject = format!("buyer-{tag}");
    let opened = platform.escrow.call_ok(
        &escrow_method("OpenEscrowAccount"),
        Some(&platform.staff.finance),
        &json!({
            "idempotency_key": format!("open-{tag}"),
            "contract_id": unique_name(&format!("contract-{tag}")),
            "buyer_principal_id": buyer_subject,
            "supplier_id": supplier_id,
            "supplier_owner_principal_id": format!("owner-{supplier_id}"),
            "schedule": [{ "milestone_id": "full", "amount": usd(amount_minor), "due_at": at(days(3)) }],
            "payment_scheme": "ESCROW_PAYMENT_SCHEME_DIRECT",
            "hold_until": at(days(60)),
            "reason": "escrow for an order agreed off-platform, per the buyer's request",
        }),
    );
    Account {
        id: opened["account"]["escrowAccountId"]
            .as_str()
            .unwrap_or_else(|| panic!("no account id: {opened:#}"))
            .to_owned(),
        buyer: mint(&buyer_subject, Role::Buyer),
        supplier_id: supplier_id.to_owned(),
        amount_minor,
    }
}

/// Everything the account holds released to its supplier (the goods accepted).
fn release_all(escrow: &Service, finance: &str, account: &Account) {
    let released = escrow.call_ok(
        &escrow_method("ReleaseToSupplier"),
        Some(finance),
        &json!({ "idempotency_key": format!("accept-{}", account.id),
                 "escrow_account_id": account.id, "reason": "buyer confirmed acceptance by email",
                 "purpose": { "acceptance": true } }),
    );
    assert_eq!(
        int(&released["posting"]["amount"]["amountMinor"]),
        account.amount_minor,
        "{released:#}"
    );
}

/// The account's funding attempts, newest first.
fn attempts(escrow: &Service, support: &str, account_id: &str) -> Vec<Value> {
    escrow.call_ok(
        &escrow_method("GetEscrowAccount"),
        Some(support),
        &json!({ "escrow_account_id": account_id }),
    )["fundingAttempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn run_payouts(escrow: &Service, finance: &str, key: &str) -> Vec<Value> {
    escrow.call_ok(
        &escrow_method("RunSupplierPayouts"),
        Some(finance),
        &json!({ "idempotency_key": key, "reason": "daily payout run" }),
    )["payouts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn payouts(platform: &Platform) -> Vec<Value> {
    platform.escrow.call_ok(
        &escrow_method("ListGatewayTransfers"),
        Some(&platform.staff.finance),
        &json!({ "direction": PAYOUT, "page": { "page_size": 100 } }),
    )["transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every payout escrow sent is PAID; returns them.
fn wait_payouts_paid(platform: &Platform, count: usize) -> Vec<Value> {
    wait_until(PATIENCE, &format!("{count} payouts PAID"), || {
        let listed = payouts(platform);
        let paid = listed
            .iter()
            .filter(|t| t["status"] == "GATEWAY_TRANSFER_STATUS_PAID")
            .count();
        if paid == count && listed.len() == count {
            Ok(listed)
        } else {
            Err(format!("{listed:#?}"))
        }
    })
}

/// The gateway's payouts (every operation of kind payout), per beneficiary.
fn gateway_payouts_by_supplier(gateway: &GatewaySandbox) -> Vec<(String, i64, String)> {
    let mut payouts: Vec<(String, i64, String)> = gateway
        .operations()
        .iter()
        .filter(|o| o["kind"] == "payout")
        .map(|o| {
            (
                o["counterparty"].as_str().unwrap_or_default().to_owned(),
                o["amount_minor"].as_i64().unwrap_or_default(),
                o["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    payouts.sort();
    payouts
}

/// A ledger account kind's USD line of the trial balance: (posted, pending).
fn trial_line(trial: &Value, kind: &str) -> (i64, i64) {
    trial["currencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["currencyCode"] == "USD")
        .flat_map(|c| c["lines"].as_array().cloned().unwrap_or_default())
        .find(|l| l["kind"] == format!("LEDGER_ACCOUNT_KIND_{kind}"))
        .map_or((0, 0), |l| {
            (
                int(&l["posted"]["amountMinor"]),
                int(&l["pending"]["amountMinor"]),
            )
        })
}

fn trial_balance(platform: &Platform) -> Value {
    platform.escrow.call_ok(
        &escrow_method("GetTrialBalance"),
        Some(&platform.staff.support),
        &json!({ "currency_code": "USD" }),
    )
}

/// After each test: once the gateway settled what it had in hand, the money
/// the sandbox's books say the platform holds there (in through charges and
/// bank credits, minus out through paid payouts and refunds) is exactly
/// what escrow's `gateway_clearing` says (its balance is minus that cash),
/// nothing is pending on either side, and `ReconcileLedger` reports nothing
/// but `finance_items` (the kinds of the items for finance the test made on
/// purpose): every balance agrees with its postings, no money sits held
/// without a live deadline, a freeze or an item for finance.
fn assert_gateway_matches_ledger(platform: &Platform, finance_items: &[&str]) {
    let (books, clearing) = wait_until(PATIENCE, "the gateway's books to equal the ledger", || {
        let books = platform.gateway.books_of("USD");
        let trial = trial_balance(platform);
        let cash = books["charges_minor"].as_i64().unwrap_or_default()
            + books["bank_credits_minor"].as_i64().unwrap_or_default()
            - books["money_out_minor"].as_i64().unwrap_or_default();
        let clearing = trial_line(&trial, "GATEWAY_CLEARING");
        let pending: Vec<i64> = trial["currencies"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["lines"].as_array().cloned().unwrap_or_default())
            .map(|l| int(&l["pending"]["amountMinor"]))
            .filter(|p| *p != 0)
            .collect();
        let out_pending = books["out_pending_minor"].as_i64().unwrap_or_default();
        if clearing.0 == -cash && pending.is_empty() && out_pending == 0 {
            Ok((books, clearing))
        } else {
            Err(format!(
                "gateway cash {cash}, clearing {clearing:?}, pending {pending:?}, \
                 out pending at the gateway {out_pending}: {books:#} {trial:#}"
            ))
        }
    });
    eprintln!(
        "money at the gateway: in {} (charges {}, bank credits {}), out {} ({} payouts paid); \
         ledger gateway_clearing {}",
        books["money_in_minor"],
        books["charges_minor"],
        books["bank_credits_minor"],
        books["money_out_minor"],
        books["payouts_paid"],
        clearing.0
    );
    let report = platform.escrow.call_ok(
        &escrow_method("ReconcileLedger"),
        Some(&platform.staff.finance),
        &json!({}),
    );
    let mut kinds: Vec<String> = report["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    let mut expected: Vec<String> = finance_items.iter().map(|k| (*k).to_owned()).collect();
    expected.sort();
    assert_eq!(kinds, expected, "ReconcileLedger: {report:#}");
    let trial = trial_balance(platform);
    for currency in trial["currencies"].as_array().into_iter().flatten() {
        assert_eq!(int(&currency["sum"]["amountMinor"]), 0, "{currency:#}");
    }
}

// --- a gRPC client for concurrent calls ---------------------------------------------

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", ta_runtime::auth::bearer_metadata(token));
    request
}

fn card_funding(account: &Account, key: &str) -> pb::FundEscrowRequest {
    pb::FundEscrowRequest {
        idempotency_key: key.to_owned(),
        escrow_account_id: account.id.clone(),
        milestone_id: "full".into(),
        amount: Some(ta_proto::common::Money {
            currency_code: "USD".into(),
            amount_minor: account.amount_minor,
        }),
        method: Some(pb::fund_escrow_request::Method::Card(pb::CardPayment {
            card_token: "tok_visa".into(),
        })),
    }
}

/// A call's place in the order of events: tickets taken when it was issued
/// and when its answer came, from one counter.
#[derive(Clone, Copy, Debug)]
struct Span {
    issued: u64,
    answered: u64,
    took: Duration,
}

/// The `p`-th percentile (0-100) of `samples`, nearest rank.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

// --- raw HTTP to escrow's webhook endpoint ------------------------------------------

/// POSTs one gateway event to escrow's webhook endpoint as the gateway
/// would: the status, the response's head (its headers) and its body.
fn post_webhook(addr: &str, payload: &[u8], signature: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut request = format!(
        "POST /v1/gateway-webhooks HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Gateway-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    request.extend_from_slice(payload);
    stream.write_all(&request).expect("send the event");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    (status, head.to_owned(), body.to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A UUID no record has (escrow reads `client_reference` as its own id).
fn unknown_uuid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos >> 64) as u32 ^ std::process::id(),
        (nanos >> 48) as u16,
        (nanos >> 36) as u16 & 0xfff,
        (nanos >> 24) as u16 & 0xfff,
        nanos as u64 & 0xffff_ffff_ffff
    )
}

// --- the tests ----------------------------------------------------------------------

/// A 300 ms gateway under 16 concurrent card fundings of 16 accounts: reads,
/// another account's funding and a bank credit's webhook keep answering;
/// every funding succeeds once (one charge at the gateway, one posting each).
#[test]
fn a_slow_gateway_under_16_concurrent_fundings_leaves_reads_webhooks_and_other_accounts_answering()
{
    const BURST: usize = 16;
    let platform = Platform::start(&[]);
    let burst: Vec<Account> = (0..BURST)
        .map(|i| {
            open_account(
                &platform,
                &format!("lat{i}"),
                "supplier-lat",
                10_000 + i as i64,
            )
        })
        .collect();
    let other = open_account(&platform, "lat-other", "supplier-lat", 7_700);
    let bank = open_account(&platform, "lat-bank", "supplier-lat", 5_500);

    // A bank transfer started before the gateway slows down; it is
    // credited (and its webhook delivered) during the burst.
    let started = platform.escrow.call_ok(
        &escrow_method("FundEscrow"),
        Some(&bank.buyer),
        &json!({ "idempotency_key": "bank", "escrow_account_id": bank.id, "milestone_id": "full",
                 "amount": usd(bank.amount_minor), "bank_transfer": { "payer_name": "Lat Bank GmbH" } }),
    );
    let bank_transfer = started["fundingAttempt"]["gatewayReference"]
        .as_str()
        .unwrap_or_else(|| panic!("{started:#}"))
        .to_owned();

    platform.gateway.set_faults(&json!({ "latency_ms": 300 }));
    let addr = format!("http://{}", platform.escrow.addr());
    let support = platform.staff.support.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ticket = Arc::new(AtomicU64::new(0));
    let next = {
        let ticket = ticket.clone();
        move || ticket.fetch_add(1, Ordering::SeqCst)
    };
    let gateway_url = platform.gateway.base_url();
    let (fundings, reads, other_took, credit_took) = runtime.block_on(async {
        let channel = Channel::from_shared(addr)
            .expect("uri")
            .connect()
            .await
            .expect("connect to escrow");
        let done = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for account in &burst {
            let mut client = EscrowServiceClient::new(channel.clone());
            let request = authorized(card_funding(account, "burst"), &account.buyer);
            let (next, done, issued) = (next.clone(), done.clone(), issued.clone());
            tasks.push(tokio::spawn(async move {
                let at = Instant::now();
                let span_start = next();
                issued.fetch_add(1, Ordering::SeqCst);
                let answer = client.fund_escrow(request).await;
                let span = Span {
                    issued: span_start,
                    answered: next(),
                    took: at.elapsed(),
                };
                done.fetch_add(1, Ordering::SeqCst);
                (span, answer.map(tonic::Response::into_inner))
            }));
        }
        // Reads of the accounts while the fundings are in flight.
        let reads = {
            let mut client = EscrowServiceClient::new(channel.clone());
            let (next, done, issued) = (next.clone(), done.clone(), issued.clone());
            let (support, ids) = (
                support.clone(),
                burst.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
            );
            tokio::spawn(async move {
                while issued.load(Ordering::SeqCst) < BURST as u64 {
                    tokio::task::yield_now().await;
                }
                let mut spans = Vec::new();
                let mut i = 0;
                while done.load(Ordering::SeqCst) < BURST as u64 {
                    let request = authorized(
                        pb::GetEscrowAccountRequest {
                            escrow_account_id: ids[i % ids.len()].clone(),
                            contract_id: String::new(),
                        },
                        &support,
                    );
                    let at = Instant::now();
                    let issued = next();
                    let in_flight = BURST as u64 - done.load(Ordering::SeqCst);
                    client.get_escrow_account(request).await.expect("a read");
                    spans.push((
                        Span {
                            issued,
                            answered: next(),
                            took: at.elapsed(),
                        },
                        in_flight,
                    ));
                    i += 1;
                }
                spans
            })
        };
        // Another account's funding, through the same slow gateway.
        let other_funding = {
            let mut client = EscrowServiceClient::new(channel.clone());
            let request = authorized(card_funding(&other, "other"), &other.buyer);
            tokio::spawn(async move {
                let at = Instant::now();
                let answer = client
                    .fund_escrow(request)
                    .await
                    .expect("the other funding");
                (at.elapsed(), answer.into_inner())
            })
        };
        // The bank's credit, reported by the gateway's webhook.
        let credit = {
            let mut client = EscrowServiceClient::new(channel.clone());
            let (support, id) = (support.clone(), bank.id.clone());
            let gateway_url = gateway_url.clone();
            let bank_transfer = bank_transfer.clone();
            tokio::spawn(async move {
                let at = Instant::now();
                tokio::task::spawn_blocking(move || {
                    let addr = gateway_url.trim_start_matches("http://").to_owned();
                    credit_over_http(&addr, &bank_transfer);
                })
                .await
                .expect("credit");
                loop {
                    let account = client
                        .get_escrow_account(authorized(
                            pb::GetEscrowAccountRequest {
                                escrow_account_id: id.clone(),
                                contract_id: String::new(),
                            },
                            &support,
                        ))
                        .await
                        .expect("read the bank account")
                        .into_inner();
                    let succeeded = account
                        .funding_attempts
                        .iter()
                        .any(|a| a.status == pb::FundingStatus::Succeeded as i32);
                    if succeeded {
                        return at.elapsed();
                    }
                    assert!(at.elapsed() < PATIENCE, "the credit was never applied");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let mut fundings = Vec::new();
        for task in tasks {
            fundings.push(task.await.expect("a funding task"));
        }
        let reads = reads.await.expect("reads");
        let (other_took, other_answer) = other_funding.await.expect("other");
        assert_eq!(
            other_answer.funding_attempt.map(|a| a.status),
            Some(pb::FundingStatus::Succeeded as i32)
        );
        (fundings, reads, other_took, credit.await.expect("credit"))
    });

    // Every funding succeeded, once.
    let mut funding_spans = Vec::new();
    for (i, (span, answer)) in fundings.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("funding {i} failed: {e:?}"));
        let attempt = answer.funding_attempt.as_ref().expect("attempt");
        assert_eq!(
            attempt.status,
            pb::FundingStatus::Succeeded as i32,
            "{attempt:?}"
        );
        funding_spans.push(*span);
    }
    let first_answer = funding_spans.iter().map(|s| s.answered).min().unwrap();
    let last_answer = funding_spans.iter().map(|s| s.answered).max().unwrap();
    // Reads issued while fundings were in flight came back before those
    // fundings did: the first read, issued with all 16 waiting on the
    // gateway, answered before any of them; none waited behind a gateway
    // call. (Reads issued as the burst ends may straddle its last answers.)
    assert!(!reads.is_empty(), "no read was issued during the burst");
    let (first_read, in_flight) = reads[0];
    assert_eq!(
        in_flight, BURST as u64,
        "the first read went out during the burst"
    );
    assert!(
        first_read.answered < first_answer,
        "the first read ({first_read:?}) came back after a funding: {funding_spans:?}"
    );
    let before_any = reads
        .iter()
        .filter(|(r, _)| r.answered < first_answer)
        .count();
    let during: Vec<Duration> = reads
        .iter()
        .filter(|(r, _)| r.issued < last_answer)
        .map(|(r, _)| r.took)
        .collect();
    let funding_times: Vec<Duration> = funding_spans.iter().map(|s| s.took).collect();
    eprintln!(
        "300 ms gateway, {BURST} concurrent card fundings: funding p50 {:?} max {:?}; \
         {} reads during the burst, {} of them answered before any funding: p50 {:?} p99 {:?}; \
         another account's funding {:?}; bank credit webhook applied (seen by polling) after {:?}",
        percentile(&funding_times, 50),
        percentile(&funding_times, 100),
        during.len(),
        before_any,
        percentile(&during, 50),
        percentile(&during, 99),
        other_took,
        credit_took,
    );

    // Counted at the gateway: one charge per funding, the sum of their money.
    platform.gateway.set_faults(&json!({}));
    let charges: Vec<Value> = platform
        .gateway
        .operations()
        .into_iter()
        .filter(|o| o["kind"] == "charge")
        .collect();
    let expected: i64 = burst.iter().map(|a| a.amount_minor).sum::<i64>() + other.amount_minor;
    assert_eq!(charges.len(), BURST + 1, "{charges:#?}");
    assert_eq!(
        platform.gateway.books_of("USD")["charges_minor"],
        expected,
        "the gateway took each funding once"
    );
    for account in burst.iter().chain([&other]) {
        let all = attempts(&platform.escrow, &platform.staff.support, &account.id);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0]["status"], SUCCEEDED);
        let charged: Vec<&Value> = charges
            .iter()
            .filter(|c| c["client_reference"] == all[0]["fundingAttemptId"])
            .collect();
        assert_eq!(charged.len(), 1, "one charge for {}", account.id);
        let postings = platform.postings(&account.id);
        assert_eq!(
            postings,
            vec![(
                "funding".to_owned(),
                account.amount_minor,
                "gateway_clearing".to_owned(),
                "escrow_held".to_owned()
            )]
        );
    }
    assert_eq!(
        trial_line(&trial_balance(&platform), "ESCROW_HELD").0,
        expected + bank.amount_minor
    );
    assert_gateway_matches_ledger(&platform, &[]);
}

/// The sandbox's control call that credits a bank transfer, over a plain
/// socket (callable from a blocking task).
fn credit_over_http(addr: &str, bank_transfer: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    let request = format!(
        "POST /sandbox/bank_transfers/{bank_transfer}/credit HTTP/1.0\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}

/// Three accounts of three suppliers, funded by card and released: each
/// supplier is owed its account's money.
fn three_suppliers_owed(platform: &Platform, tag: &str) -> Vec<Account> {
    let accounts: Vec<Account> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            open_account(
                platform,
                &format!("{tag}-{s}"),
                &format!("supplier-{tag}-{s}"),
                100_000 * (i as i64 + 1),
            )
        })
        .collect();
    for account in &accounts {
        platform.pay_by_card(&account.buyer, &account.id, "full", account.amount_minor);
        release_all(&platform.escrow, &platform.staff.finance, account);
    }
    accounts
}

/// The statuses a payout run answered, in the order it sent them.
fn statuses(run: &[Value]) -> Vec<String> {
    run.iter()
        .map(|p| {
            p["status"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("GATEWAY_TRANSFER_STATUS_")
                .to_owned()
        })
        .collect()
}

/// After a run: every supplier paid exactly once, counted in escrow
/// (ListGatewayTransfers), at the gateway (its operations and books) and in
/// the ledger (nothing owed, nothing on its way).
fn assert_each_paid_once(platform: &Platform, accounts: &[Account]) {
    let paid = wait_payouts_paid(platform, accounts.len());
    let mut by_supplier: Vec<(String, i64)> = paid
        .iter()
        .map(|p| {
            (
                p["supplierId"].as_str().unwrap_or_default().to_owned(),
                int(&p["amount"]["amountMinor"]),
            )
        })
        .collect();
    by_supplier.sort();
    let mut owed: Vec<(String, i64)> = accounts
        .iter()
        .map(|a| (a.supplier_id.clone(), a.amount_minor))
        .collect();
    owed.sort();
    assert_eq!(by_supplier, owed);
    let at_gateway = gateway_payouts_by_supplier(&platform.gateway);
    let expected: Vec<(String, i64, String)> = owed
        .iter()
        .map(|(s, a)| (s.clone(), *a, "succeeded".to_owned()))
        .collect();
    assert_eq!(
        at_gateway, expected,
        "one payout per supplier at the gateway"
    );
    let books = platform.gateway.books_of("USD");
    assert_eq!(books["payouts_paid"], accounts.len(), "{books:#}");
    assert_eq!(
        books["payouts_paid_minor"],
        owed.iter().map(|(_, a)| a).sum::<i64>(),
        "{books:#}"
    );
    assert_eq!(
        trial_line(&trial_balance(platform), "SUPPLIER_PAYABLE"),
        (0, 0)
    );
}

/// Three suppliers owed money, the gateway failing the run's second payout
/// call (before acting): the run answers all three recorded, the second
/// SENDING (the others sent, none rolled back), the worker sends it again
/// with its key once its backoff passes, and each supplier is paid exactly
/// once. The gateway worker polls every 200 ms throughout: the run's lease on
/// what it sends (ESCROW_GATEWAY_CHECK_AFTER, longer than the run) keeps it
/// off those rows, so the failed call is the run's own second one.
#[test]
fn the_second_payout_of_a_run_failing_is_sent_again_and_every_supplier_is_paid_once() {
    let platform = Platform::start_with(
        &[
            ("ESCROW_GATEWAY_CHECK_AFTER", "2s"),
            ("ESCROW_GATEWAY_WORKER_POLL", "200ms"),
        ],
        &[],
    );
    let accounts = three_suppliers_owed(&platform, "kth");

    platform
        .gateway
        .set_faults(&json!({ "fail_nth": { "kind": "payout", "n": 2 } }));
    let run = run_payouts(&platform.escrow, &platform.staff.finance, "run-1");
    let answered = statuses(&run);
    eprintln!("the run answered {answered:?}");
    assert_eq!(answered, ["PENDING", "SENDING", "PENDING"], "{run:#?}");
    let mut run_suppliers: Vec<&str> = run
        .iter()
        .map(|p| p["supplierId"].as_str().unwrap_or_default())
        .collect();
    run_suppliers.sort();
    assert_eq!(
        run_suppliers,
        ["supplier-kth-a", "supplier-kth-b", "supplier-kth-c"]
    );
    // Not yet at the gateway: nothing was done under its key.
    let second_key = format!(
        "payout:{}",
        run[1]["gatewayTransferId"].as_str().expect("id")
    );
    assert_eq!(platform.gateway.operation(&second_key), None);
    // A second run meanwhile finds nothing owed: the money is on its way.
    assert_eq!(
        run_payouts(&platform.escrow, &platform.staff.finance, "run-2"),
        Vec::<Value>::new()
    );

    assert_each_paid_once(&platform, &accounts);
    let resent = platform
        .gateway
        .operation(&second_key)
        .expect("sent again under its key");
    assert_eq!(resent["status"], "succeeded", "{resent:#}");
    assert_gateway_matches_ledger(&platform, &[]);
}

/// A payout the gateway holds past ESCROW_PAYOUT_EXPIRY becomes UNKNOWN,
/// is never voided (nothing owed again, no second payout), and when the
/// gateway pays it after all it posts once and is paid once.
#[test]
fn a_payout_paid_after_its_expiry_is_posted_once_and_paid_once() {
    let platform = Platform::start_with(
        &[
            ("ESCROW_PAYOUT_EXPIRY", "2s"),
            ("ESCROW_GATEWAY_CHECK_AFTER", "500ms"),
            ("ESCROW_GATEWAY_WORKER_POLL", "200ms"),
        ],
        &[],
    );
    let account = open_account(&platform, "late-payout", "supplier-late", 250_000);
    platform.pay_by_card(&account.buyer, &account.id, "full", account.amount_minor);
    release_all(&platform.escrow, &platform.staff.finance, &account);

    platform
        .gateway
        .set_faults(&json!({ "hold_settlement": true }));
    let run = run_payouts(&platform.escrow, &platform.staff.finance, "run-1");
    assert_eq!(run.len(), 1, "{run:#?}");
    assert_eq!(
        run[0]["status"], "GATEWAY_TRANSFER_STATUS_PENDING",
        "{run:#?}"
    );
    let reference = run[0]["gatewayReference"]
        .as_str()
        .expect("the gateway's id")
        .to_owned();

    let unknown = wait_until(PATIENCE, "the payout to become UNKNOWN", || {
        let listed = payouts(&platform);
        match listed.as_slice() {
            [one] if one["status"] == "GATEWAY_TRANSFER_STATUS_UNKNOWN" => Ok(one.clone()),
            _ => Err(format!("{listed:#?}")),
        }
    });
    assert!(
        unknown["nextCheckAt"].is_string(),
        "asked about again: {unknown:#}"
    );
    // Unvoided: the money is still on its way, not owed again, so a run
    // pays nothing more; ReconcileLedger lists it for finance.
    assert_eq!(
        trial_line(&trial_balance(&platform), "SUPPLIER_PAYABLE"),
        (account.amount_minor, -account.amount_minor)
    );
    assert_eq!(
        run_payouts(&platform.escrow, &platform.staff.finance, "run-2"),
        Vec::<Value>::new()
    );
    let report = platform.escrow.call_ok(
        &escrow_method("ReconcileLedger"),
        Some(&platform.staff.support),
        &json!({}),
    );
    let kinds: Vec<&str> = report["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["TRANSFER_UNKNOWN"], "{report:#}");
    // Still UNKNOWN, and unvoided, after the worker asked the gateway again
    // (it says pending): its next check moved on.
    let asked_again = wait_until(PATIENCE, "the worker to ask again", || {
        let listed = payouts(&platform);
        match listed.as_slice() {
            [one] if one["nextCheckAt"] != unknown["nextCheckAt"] => Ok(one.clone()),
            _ => Err(format!("{listed:#?}")),
        }
    });
    assert_eq!(
        asked_again["status"], "GATEWAY_TRANSFER_STATUS_UNKNOWN",
        "{asked_again:#}"
    );
    assert_eq!(
        trial_line(&trial_balance(&platform), "SUPPLIER_PAYABLE"),
        (account.amount_minor, -account.amount_minor)
    );

    // The bank pays it late.
    platform.gateway.pay_transfer(&reference);
    let paid = wait_payouts_paid(&platform, 1);
    assert_eq!(paid[0]["gatewayTransferId"], run[0]["gatewayTransferId"]);
    // The webhook delivered again changes nothing.
    let event = platform
        .gateway
        .events()
        .into_iter()
        .find(|e| e["operation_id"] == reference.as_str() && e["type"] == "payout.paid")
        .expect("the payout.paid event");
    let event_id = event["id"].as_str().expect("event id").to_owned();
    platform.gateway.redeliver(&event_id);
    wait_until(PATIENCE, "the redelivery to be answered", || {
        let event = platform
            .gateway
            .events()
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
            .expect("the event");
        let attempts = event["attempts"].as_array().cloned().unwrap_or_default();
        match attempts.last() {
            Some(last) if attempts.len() >= 2 && last["status_code"] == 200 => Ok(()),
            _ => Err(format!("{event:#}")),
        }
    });
    let books = platform.gateway.books_of("USD");
    assert_eq!(books["payouts_paid"], 1, "paid once: {books:#}");
    assert_eq!(
        gateway_payouts_by_supplier(&platform.gateway),
        [(
            "supplier-late".to_owned(),
            account.amount_minor,
            "succeeded".to_owned()
        )]
    );
    assert_eq!(
        trial_line(&trial_balance(&platform), "SUPPLIER_PAYABLE"),
        (0, 0),
        "posted once"
    );
    platform.gateway.set_faults(&json!({}));
    assert_gateway_matches_ledger(&platform, &[]);
}

/// Escrow SIGKILLed while the gateway, having charged the card, holds its
/// answer: restarted, escrow asks the gateway by key and records the charge,
/// once; the contract is funded.
#[test]
fn escrow_killed_between_the_charge_and_its_record_learns_it_by_the_status_query() {
    let mut platform = Platform::start_with(
        &[
            ("ESCROW_GATEWAY_CHECK_AFTER", "3s"),
            ("ESCROW_GATEWAY_WORKER_POLL", "200ms"),
        ],
        &[],
    );
    let owner = "supplier-killed";
    let supplier_id = platform.supplier(owner, Some(10_000_000));
    let buyer_subject = "buyer-killed";
    let buyer = mint(buyer_subject, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
    prepaid["payment_terms"] = full_prepayment(30);
    let contract = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid);
    let account = platform.account_id_of(&contract);

    // The gateway charges, commits, then holds its answer; its webhook is lost.
    platform
        .gateway
        .set_faults(&json!({ "timeout_rate": 1.0, "hang_ms": 60_000, "lose_next": 1 }));
    let fund = grpcurl_spawn(&call_args(
        &platform.escrow.addr(),
        &escrow_method("FundEscrow"),
        Some(&buyer),
        &json!({ "idempotency_key": "pay-killed", "escrow_account_id": account, "milestone_id": "full",
                 "amount": usd(310_000), "card": { "card_token": "tok_visa" } }),
    ));
    let key = format!("fund:{buyer_subject}:pay-killed");
    let charge = wait_until(PATIENCE, "the gateway to charge the card", || {
        platform
            .gateway
            .operations()
            .into_iter()
            .find(|o| o["idempotency_key"] == key.as_str())
            .ok_or_else(|| "no charge yet".to_owned())
    });
    assert_eq!(charge["status"], "succeeded", "{charge:#}");
    let pending = attempts(&platform.escrow, &platform.staff.support, &account);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(
        pending[0]["status"], "FUNDING_STATUS_PENDING",
        "{pending:#?}"
    );

    platform.escrow.kill();
    let answer = fund.wait(PATIENCE);
    assert!(
        !answer.status.success(),
        "FundEscrow answered from a killed escrow"
    );
    platform.gateway.set_faults(&json!({}));
    platform.restart_escrow(&[("ESCROW_GATEWAY_CHECK_AFTER", "500ms")]);

    let settled = wait_until(PATIENCE, "the attempt to be settled", || {
        let all = attempts(&platform.escrow, &platform.staff.support, &account);
        match all.as_slice() {
            [one] if one["status"] != "FUNDING_STATUS_PENDING" => Ok(one.clone()),
            _ => Err(format!("{all:#?}")),
        }
    });
    assert_eq!(settled["status"], SUCCEEDED, "{settled:#}");
    assert_eq!(settled["gatewayReference"], charge["id"], "{settled:#}");
    platform.wait_status(&contract, "CONTRACT_STATUS_FUNDED");

    // The lost webhook, delivered now, is the same charge: nothing more.
    let event = platform
        .gateway
        .events()
        .into_iter()
        .find(|e| e["operation_id"] == charge["id"])
        .expect("the charge's event");
    assert_eq!(event["lost"], true, "{event:#}");
    let event_id = event["id"].as_str().expect("id").to_owned();
    platform.gateway.redeliver(&event_id);
    wait_until(PATIENCE, "the lost event to be delivered", || {
        let event = platform
            .gateway
            .events()
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
            .expect("the event");
        match event["attempts"].as_array().and_then(|a| a.last()) {
            Some(last) if last["status_code"] == 200 => Ok(()),
            _ => Err(format!("{event:#}")),
        }
    });
    // A retry of the request replays the recorded answer.
    let retried = platform.escrow.call_ok(
        &escrow_method("FundEscrow"),
        Some(&buyer),
        &json!({ "idempotency_key": "pay-killed", "escrow_account_id": account, "milestone_id": "full",
                 "amount": usd(310_000), "card": { "card_token": "tok_visa" } }),
    );
    assert_eq!(
        retried["fundingAttempt"]["status"], SUCCEEDED,
        "{retried:#}"
    );

    // Charged once, recorded once.
    let charges: Vec<Value> = platform
        .gateway
        .operations()
        .into_iter()
        .filter(|o| o["kind"] == "charge")
        .collect();
    assert_eq!(charges.len(), 1, "{charges:#?}");
    assert_eq!(platform.gateway.books_of("USD")["charges_minor"], 310_000);
    assert_eq!(
        platform.postings(&account),
        vec![(
            "funding".to_owned(),
            310_000,
            "gateway_clearing".to_owned(),
            "escrow_held".to_owned()
        )]
    );
    assert_eq!(
        platform.escrow_account(&contract)["account"]["status"],
        "ESCROW_ACCOUNT_STATUS_FUNDED"
    );
    assert_gateway_matches_ledger(&platform, &[]);
}

/// The gateway's `payment.succeeded` reaches escrow while FundEscrow still
/// waits for the charge's answer: applied once (the answer, and the event
/// delivered again, are the same charge). An event naming a payment escrow
/// does not know is answered 503 with Retry-After and recorded nowhere
/// within ESCROW_WEBHOOK_RETRY_WINDOW, and kept for finance after it.
#[test]
fn a_webhook_that_overtakes_the_charge_s_answer_applies_once_and_an_unknown_one_waits_its_window() {
    let platform = Platform::start_with(&[("ESCROW_WEBHOOK_RETRY_WINDOW", "3s")], &[]);
    let account = open_account(&platform, "overtake", "supplier-overtake", 42_000);

    // The gateway commits the charge and sends its webhook at once, but
    // holds the answer to escrow's call for 1.5 s.
    platform
        .gateway
        .set_faults(&json!({ "webhook_delay_ms": 0, "timeout_rate": 1.0, "hang_ms": 1_500 }));
    let fund = grpcurl_spawn(&call_args(
        &platform.escrow.addr(),
        &escrow_method("FundEscrow"),
        Some(&account.buyer),
        &json!({ "idempotency_key": "overtaken", "escrow_account_id": account.id, "milestone_id": "full",
                 "amount": usd(account.amount_minor), "card": { "card_token": "tok_visa" } }),
    ));
    let mut fund = Some(fund);
    let mut seen_while_waiting = false;
    let answer = loop {
        let done = fund.as_mut().is_some_and(Background::finished);
        let all = attempts(&platform.escrow, &platform.staff.support, &account.id);
        if !done && all.first().is_some_and(|a| a["status"] == SUCCEEDED) {
            seen_while_waiting = true;
        }
        if done {
            break fund.take().expect("running").wait(PATIENCE);
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let answer = parse_json(&answer.stdout, "FundEscrow");
    assert_eq!(answer["fundingAttempt"]["status"], SUCCEEDED, "{answer:#}");
    assert!(
        seen_while_waiting,
        "the webhook settled the attempt before FundEscrow recorded the gateway's answer"
    );
    platform.gateway.set_faults(&json!({}));
    let charge_id = answer["fundingAttempt"]["gatewayReference"]
        .as_str()
        .expect("charge")
        .to_owned();
    let event = platform
        .gateway
        .events()
        .into_iter()
        .find(|e| e["operation_id"] == charge_id.as_str())
        .expect("payment.succeeded");
    assert_eq!(event["type"], "payment.succeeded");
    let event_id = event["id"].as_str().expect("id").to_owned();
    platform.gateway.redeliver(&event_id);
    wait_until(PATIENCE, "the redelivery to be answered", || {
        let event = platform
            .gateway
            .events()
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
            .expect("the event");
        let attempts = event["attempts"].as_array().cloned().unwrap_or_default();
        match attempts.last() {
            Some(last) if attempts.len() >= 2 && last["status_code"] == 200 => Ok(()),
            _ => Err(format!("{event:#}")),
        }
    });
    assert_eq!(
        platform.postings(&account.id),
        vec![(
            "funding".to_owned(),
            account.amount_minor,
            "gateway_clearing".to_owned(),
            "escrow_held".to_owned()
        )],
        "applied once"
    );
    assert_eq!(
        platform.gateway.books_of("USD")["charges_minor"],
        account.amount_minor
    );

    // An event naming a payment escrow never recorded (yet).
    let webhooks = platform.escrow_webhook_addr();
    let unknown_id = unique_name("evt_unknown");
    let created = unix_now();
    let payload = json!({ "id": unknown_id, "type": "payment.succeeded", "created": created,
                          "data": { "reference": "ch_not_escrow_s", "client_reference": unknown_uuid(),
                                    "amount_minor": 12_345, "currency_code": "USD" } })
    .to_string()
    .into_bytes();
    let deliver = || {
        let signature = sign_webhook(TEST_WEBHOOK_SECRET.as_bytes(), unix_now(), &payload);
        post_webhook(&webhooks, &payload, &signature)
    };
    let (status, head, body) = deliver();
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("\nretry-after:"),
        "{head}"
    );
    let unmatched = || {
        platform.escrow.call_ok(
            &escrow_method("ListUnmatchedGatewayItems"),
            Some(&platform.staff.support),
            &json!({}),
        )["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(unmatched(), Vec::<Value>::new(), "recorded nowhere");
    let report = platform.escrow.call_ok(
        &escrow_method("ReconcileLedger"),
        Some(&platform.staff.support),
        &json!({}),
    );
    assert!(
        report["differences"].as_array().is_none_or(Vec::is_empty),
        "{report:#}"
    );
    // Delivered again until the window closes: 503 each time, then 200.
    let mut refusals = 1;
    let (status, _, body) = wait_until(PATIENCE, "the event to be kept", || {
        let answer = deliver();
        match answer.0 {
            503 => {
                refusals += 1;
                Err(format!("{answer:?}"))
            }
            _ => Ok(answer),
        }
    });
    assert_eq!(status, 200, "{body}");
    eprintln!("the unknown event was refused {refusals} times in its window, then kept: {body}");
    let items = unmatched();
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["kind"], "UNKNOWN_REFERENCE");
    assert_eq!(items[0]["gatewayEventId"], unknown_id.as_str());
    assert_eq!(int(&items[0]["amount"]["amountMinor"]), 12_345);
    // Kept once.
    let (status, _, body) = deliver();
    assert_eq!(status, 200, "{body}");
    assert_eq!(unmatched().len(), 1);
    assert_gateway_matches_ledger(&platform, &["UNKNOWN_REFERENCE"]);
}

/// Two escrow replicas on one database and one gateway: fundings through
/// both, then payout runs started on both at once: every supplier is paid
/// exactly once.
#[test]
fn two_escrow_replicas_sharing_the_gateway_pay_every_supplier_once() {
    let platform = Platform::start_with(
        &[
            ("ESCROW_GATEWAY_CHECK_AFTER", "1s"),
            ("ESCROW_GATEWAY_WORKER_POLL", "200ms"),
        ],
        &[],
    );
    let replica = platform.spawn_escrow(&[]);
    let replicas = [&platform.escrow, &replica];
    let suppliers = ["supplier-rep-a", "supplier-rep-b", "supplier-rep-c"];
    let accounts: Vec<Account> = (0..6)
        .map(|i| {
            open_account(
                &platform,
                &format!("rep{i}"),
                suppliers[i % suppliers.len()],
                20_000 + 1_000 * i as i64,
            )
        })
        .collect();

    // Fundings through both replicas at once, over a 300 ms gateway.
    platform.gateway.set_faults(&json!({ "latency_ms": 300 }));
    thread::scope(|scope| {
        for (i, account) in accounts.iter().enumerate() {
            let escrow = replicas[i % 2];
            scope.spawn(move || {
                let funded = escrow.call_ok(
                    &escrow_method("FundEscrow"),
                    Some(&account.buyer),
                    &json!({ "idempotency_key": "pay", "escrow_account_id": account.id,
                             "milestone_id": "full", "amount": usd(account.amount_minor),
                             "card": { "card_token": "tok_visa" } }),
                );
                assert_eq!(funded["fundingAttempt"]["status"], SUCCEEDED, "{funded:#}");
            });
        }
    });
    for (i, account) in accounts.iter().enumerate() {
        release_all(replicas[(i + 1) % 2], &platform.staff.finance, account);
    }

    // Both replicas run the payouts at the same moment.
    let answers: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
    thread::scope(|scope| {
        for (i, escrow) in replicas.iter().enumerate() {
            let (answers, finance) = (answers.clone(), platform.staff.finance.clone());
            scope.spawn(move || {
                let run = run_payouts(escrow, &finance, &format!("run-on-{i}"));
                answers.lock().expect("answers").push(run);
            });
        }
    });
    let answers = answers.lock().expect("answers").clone();
    let mut started: Vec<String> = answers
        .iter()
        .flatten()
        .map(|p| p["supplierId"].as_str().unwrap_or_default().to_owned())
        .collect();
    eprintln!(
        "payouts started by each replica's run: {:?}",
        answers
            .iter()
            .map(|run| run
                .iter()
                .map(|p| p["supplierId"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    started.sort();
    assert_eq!(started, suppliers, "each supplier's payout started once");
    platform.gateway.set_faults(&json!({}));

    let paid = wait_payouts_paid(&platform, suppliers.len());
    let owed = |supplier: &str| -> i64 {
        accounts
            .iter()
            .filter(|a| a.supplier_id == supplier)
            .map(|a| a.amount_minor)
            .sum()
    };
    let expected: Vec<(String, i64, String)> = suppliers
        .iter()
        .map(|s| ((*s).to_owned(), owed(s), "succeeded".to_owned()))
        .collect();
    assert_eq!(gateway_payouts_by_supplier(&platform.gateway), expected);
    for supplier in suppliers {
        let theirs: Vec<&Value> = paid
            .iter()
            .filter(|p| p["supplierId"] == supplier)
            .collect();
        assert_eq!(theirs.len(), 1, "{paid:#?}");
        assert_eq!(int(&theirs[0]["amount"]["amountMinor"]), owed(supplier));
    }
    let books = platform.gateway.books_of("USD");
    assert_eq!(books["payouts_paid"], 3, "{books:#}");
    assert_eq!(
        trial_line(&trial_balance(&platform), "SUPPLIER_PAYABLE"),
        (0, 0)
    );
    assert_gateway_matches_ledger(&platform, &[]);
}
