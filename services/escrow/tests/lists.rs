//! The listings: ListEscrowAccounts (its filters, its pages, who sees
//! what, and an index serving every shape of it on a few thousand
//! accounts) and ListGatewayTransfers' kind and reference filters.

mod support;

use escrow::{
    domain::Status,
    storage::{
        accounts::{self, AccountFilter},
        transfers::{self as gateway_transfers, TransferFilter},
    },
};
use serde_json::Value;
use sqlx::PgPool;
use ta_proto::{common::PageRequest, escrow as pb};
use ta_runtime::{auth::Role, money::Currency, timestamps};
use ta_testkit::access::STAFF_AND_PLATFORM;
use tonic::Code;
use uuid::Uuid;

use support::*;

const STRANGER_BUYER: &str = "buyer-stranger";
const STRANGER_OWNER: &str = "supplier-owner-stranger";
const OTHER_SUPPLIER_ID: &str = "0190c5a2-0000-7000-8000-00000000bbbb";

fn list(request: pb::ListEscrowAccountsRequest) -> pb::ListEscrowAccountsRequest {
    pb::ListEscrowAccountsRequest {
        page: Some(PageRequest {
            page_size: 100,
            page_token: String::new(),
        }),
        ..request
    }
}

/// The contract ids a listing answers `subject` in `role`, in its order.
async fn listed(
    client: &mut Client,
    subject: &str,
    role: Role,
    request: pb::ListEscrowAccountsRequest,
) -> Result<Vec<String>, tonic::Status> {
    Ok(client
        .list_escrow_accounts(as_role(list(request), subject, role))
        .await?
        .into_inner()
        .accounts
        .into_iter()
        .map(|a| a.contract_id)
        .collect())
}

async fn staff_lists(client: &mut Client, request: pb::ListEscrowAccountsRequest) -> Vec<String> {
    listed(client, OPERATOR, Role::Finance, request)
        .await
        .expect("finance lists")
}

/// Opens an account for `contract_id` between `buyer` and the supplier
/// `supplier_id` owned by `owner`, in `currency`.
async fn open_for(
    client: &mut Client,
    contract_id: &str,
    buyer: &str,
    supplier_id: &str,
    owner: &str,
    currency: &str,
) -> pb::EscrowAccount {
    let mut schedule = vec![payment("full", 1_000)];
    if let Some(amount) = schedule[0].amount.as_mut() {
        amount.currency_code = currency.into();
    }
    open_with(
        client,
        pb::OpenEscrowAccountRequest {
            buyer_principal_id: buyer.into(),
            supplier_id: supplier_id.into(),
            supplier_owner_principal_id: owner.into(),
            ..open_request(contract_id, schedule)
        },
    )
    .await
}

/// Three accounts: c-1 (BUYER, SUPPLIER_OWNER's supplier, USD), c-2
/// (OTHER_BUYER, OTHER_SUPPLIER_OWNER's other supplier, EUR), c-3 (BUYER,
/// OTHER_SUPPLIER_OWNER's supplier, USD), opened in that order.
async fn three_accounts(client: &mut Client) -> [pb::EscrowAccount; 3] {
    [
        open_for(client, "c-1", BUYER, SUPPLIER_ID, SUPPLIER_OWNER, "USD").await,
        open_for(
            client,
            "c-2",
            OTHER_BUYER,
            OTHER_SUPPLIER_ID,
            OTHER_SUPPLIER_OWNER,
            "EUR",
        )
        .await,
        open_for(
            client,
            "c-3",
            BUYER,
            OTHER_SUPPLIER_ID,
            OTHER_SUPPLIER_OWNER,
            "USD",
        )
        .await,
    ]
}

#[sqlx::test(migrations = false)]
async fn parties_list_only_their_own_accounts_and_staff_and_the_platform_all(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    three_accounts(&mut client).await;
    let all = pb::ListEscrowAccountsRequest::default;

    // Staff duties and the platform see every account, newest first.
    for role in STAFF_AND_PLATFORM {
        assert_eq!(
            listed(&mut client, OPERATOR, role, all()).await.unwrap(),
            ["c-3", "c-2", "c-1"],
            "{role:?}"
        );
    }
    // A buyer its own.
    assert_eq!(
        listed(&mut client, BUYER, Role::Buyer, all())
            .await
            .unwrap(),
        ["c-3", "c-1"]
    );
    assert_eq!(
        listed(&mut client, OTHER_BUYER, Role::Buyer, all())
            .await
            .unwrap(),
        ["c-2"]
    );
    // Naming itself changes nothing; naming another buyer is refused, as
    // ListContracts refuses it.
    let own = || pb::ListEscrowAccountsRequest {
        buyer_principal_id: BUYER.into(),
        ..Default::default()
    };
    assert_eq!(
        listed(&mut client, BUYER, Role::Buyer, own())
            .await
            .unwrap(),
        ["c-3", "c-1"]
    );
    let refused = listed(&mut client, OTHER_BUYER, Role::Buyer, own())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // A supplier those of the suppliers it owns, whatever else it names.
    assert_eq!(
        listed(&mut client, SUPPLIER_OWNER, Role::Supplier, all())
            .await
            .unwrap(),
        ["c-1"]
    );
    assert_eq!(
        listed(&mut client, OTHER_SUPPLIER_OWNER, Role::Supplier, all())
            .await
            .unwrap(),
        ["c-3", "c-2"]
    );
    assert_eq!(
        listed(
            &mut client,
            OTHER_SUPPLIER_OWNER,
            Role::Supplier,
            pb::ListEscrowAccountsRequest {
                buyer_principal_id: BUYER.into(),
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        ["c-3"]
    );
    assert_eq!(
        listed(
            &mut client,
            SUPPLIER_OWNER,
            Role::Supplier,
            pb::ListEscrowAccountsRequest {
                supplier_id: OTHER_SUPPLIER_ID.into(),
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        Vec::<String>::new(),
        "another owner's supplier: an empty page"
    );
    // Strangers get nothing of anyone's.
    assert!(
        listed(&mut client, STRANGER_BUYER, Role::Buyer, all())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        listed(&mut client, STRANGER_OWNER, Role::Supplier, all())
            .await
            .unwrap()
            .is_empty()
    );
    // An inspector is no party to escrow accounts.
    let inspector = listed(&mut client, "agency-1", Role::Inspector, all())
        .await
        .unwrap_err();
    assert_eq!(inspector.code(), Code::PermissionDenied, "{inspector:?}");
}

#[sqlx::test(migrations = false)]
async fn filters_combine_and_each_account_is_shown_as_get_escrow_account_shows_it(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let [one, two, three] = three_accounts(&mut client).await;
    // c-1 funded and frozen for a claim; c-3 funded, then cancelled (refunded
    // and closed); c-2 awaits its funding.
    for (account, key) in [(&one, "fund-1"), (&three, "fund-3")] {
        client
            .fund_escrow(buyer(card(
                &account.escrow_account_id,
                "full",
                1_000,
                "tok_visa",
                key,
            )))
            .await
            .expect("funded");
    }
    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "freeze-1".into(),
            escrow_account_id: one.escrow_account_id.clone(),
            claim_id: "claim-1".into(),
            reason: "claim filed".into(),
        }))
        .await
        .expect("frozen");
    client
        .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
            idempotency_key: "close-3".into(),
            escrow_account_id: three.escrow_account_id.clone(),
            reason: "cancelled".into(),
            refund_held: true,
        }))
        .await
        .expect("closed");

    let status = |s: pb::EscrowAccountStatus| pb::ListEscrowAccountsRequest {
        statuses: vec![s as i32],
        ..Default::default()
    };
    assert_eq!(
        staff_lists(&mut client, status(pb::EscrowAccountStatus::Funded)).await,
        ["c-1"]
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                statuses: vec![
                    pb::EscrowAccountStatus::AwaitingFunding as i32,
                    pb::EscrowAccountStatus::Closed as i32
                ],
                ..Default::default()
            }
        )
        .await,
        ["c-3", "c-2"],
        "any of the statuses"
    );
    let currency = |code: &str| pb::ListEscrowAccountsRequest {
        currency_code: code.into(),
        ..Default::default()
    };
    assert_eq!(staff_lists(&mut client, currency("EUR")).await, ["c-2"]);
    assert_eq!(
        staff_lists(&mut client, currency("USD")).await,
        ["c-3", "c-1"]
    );
    assert!(staff_lists(&mut client, currency("JPY")).await.is_empty());
    let holding = |held: bool| pb::ListEscrowAccountsRequest {
        holding_money: Some(held),
        ..Default::default()
    };
    assert_eq!(staff_lists(&mut client, holding(true)).await, ["c-1"]);
    assert_eq!(
        staff_lists(&mut client, holding(false)).await,
        ["c-3", "c-2"]
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                contract_id: "c-2".into(),
                ..Default::default()
            }
        )
        .await,
        ["c-2"]
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                supplier_id: OTHER_SUPPLIER_ID.into(),
                currency_code: "USD".into(),
                ..Default::default()
            }
        )
        .await,
        ["c-3"],
        "filters combine"
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                buyer_principal_id: BUYER.into(),
                holding_money: Some(false),
                ..Default::default()
            }
        )
        .await,
        ["c-3"]
    );
    // The created range: at or after `created_after`, before `created_before`.
    let created = two.created_at.expect("created_at");
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                created_after: Some(created),
                ..Default::default()
            }
        )
        .await,
        ["c-3", "c-2"]
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                created_before: Some(created),
                ..Default::default()
            }
        )
        .await,
        ["c-1"]
    );
    assert_eq!(
        staff_lists(
            &mut client,
            pb::ListEscrowAccountsRequest {
                created_after: Some(created),
                created_before: three.created_at,
                ..Default::default()
            }
        )
        .await,
        ["c-2"]
    );

    // Each listed account is the account GetEscrowAccount answers: what it
    // holds, its totals, its freezes and their claims.
    let page = client
        .list_escrow_accounts(finance(list(Default::default())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.next_page_token, "");
    for listed in &page.accounts {
        let got = account(&mut client, &listed.escrow_account_id)
            .await
            .account
            .expect("account");
        assert_eq!(*listed, got);
    }
    let frozen = page
        .accounts
        .iter()
        .find(|a| a.contract_id == "c-1")
        .expect("c-1");
    assert_eq!(minor(&frozen.held), 1_000);
    assert_eq!(minor(&frozen.funded_total), 1_000);
    assert_eq!(
        frozen
            .active_freezes
            .iter()
            .map(|f| f.claim_id.as_str())
            .collect::<Vec<_>>(),
        ["claim-1"]
    );
    let closed = page
        .accounts
        .iter()
        .find(|a| a.contract_id == "c-3")
        .expect("c-3");
    assert_eq!(minor(&closed.held), 0);
    assert_eq!(minor(&closed.refunded_total), 1_000);
    assert_eq!(closed.status, pb::EscrowAccountStatus::Closed as i32);
}

#[sqlx::test(migrations = false)]
async fn pages_continue_newest_first_and_bad_filters_are_each_named(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    for i in 0..7 {
        open(&mut client, &format!("c-page-{i}"), 100).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_escrow_accounts(buyer(pb::ListEscrowAccountsRequest {
                page: Some(PageRequest {
                    page_size: 3,
                    page_token: token.clone(),
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.accounts.len() <= 3);
        seen.extend(page.accounts.into_iter().map(|a| a.contract_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = (0..7).rev().map(|i| format!("c-page-{i}")).collect();
    assert_eq!(seen, newest_first, "every account once, newest first");

    // A token of another listing, and every bad filter at once.
    let held_token = ta_runtime::paging::token("held", &["1", &Uuid::nil().to_string()]);
    let refused = client
        .list_escrow_accounts(finance(pb::ListEscrowAccountsRequest {
            page: Some(PageRequest {
                page_size: 101,
                page_token: held_token,
            }),
            buyer_principal_id: "a buyer".into(),
            supplier_id: "x".repeat(65),
            contract_id: "c/1".into(),
            statuses: vec![0, 9],
            currency_code: "usd".into(),
            created_after: Some(timestamps::to_proto(timestamps::now())),
            created_before: Some(timestamps::to_proto(
                timestamps::now() - time::Duration::days(1),
            )),
            holding_money: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        violated_fields(&refused),
        [
            "buyer_principal_id",
            "contract_id",
            "created_after",
            "currency_code",
            "page.page_size",
            "page.page_token",
            "statuses[0]",
            "statuses[1]",
            "supplier_id",
        ]
    );
}

// ---- Every shape of the listing is served by an index ----------------------

/// Seeds `count` accounts straight into the tables (as opened accounts
/// are: terms, and an `escrow_held` ledger account, a third of them
/// holding money): 300 buyers, 200 suppliers of 150 owners, four
/// currencies, four statuses, one a minute.
async fn seed(pool: &PgPool, count: i32) {
    sqlx::query(
        "INSERT INTO escrow.escrow_accounts (id, contract_id, buyer_principal_id, supplier_id, \
           currency, status, created_at, updated_at, closed_at, hold_until, \
           supplier_owner_principal_id) \
         SELECT gen_random_uuid(), 'seed-' || i, 'buyer-' || (i % 300), 'supplier-' || (i % 200), \
           (ARRAY['USD', 'EUR', 'JPY', 'GBP'])[i % 4 + 1], \
           (ARRAY['awaiting_funding', 'partially_funded', 'funded', 'closed'])[i % 4 + 1], \
           now() - i * interval '1 minute', now() - i * interval '1 minute', \
           CASE WHEN i % 4 = 3 THEN now() END, now() + interval '30 days', \
           'owner-' || (i % 200 % 150) \
         FROM generate_series(1, $1) AS i",
    )
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO escrow.account_terms (escrow_account_id, payment_scheme, \
           supplier_owner_principal_id) \
         SELECT id, 'direct', supplier_owner_principal_id FROM escrow.escrow_accounts \
         WHERE contract_id LIKE 'seed-%'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO escrow.ledger_accounts (id, kind, owner, currency, non_negative, eager, \
           balance_minor) \
         SELECT gen_random_uuid(), 'escrow_held', id::text, currency, true, true, \
           CASE WHEN right(contract_id, 1) IN ('0', '3', '6') THEN 1000 ELSE 0 END \
         FROM escrow.escrow_accounts WHERE contract_id LIKE 'seed-%'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE escrow.escrow_accounts, escrow.account_terms, escrow.ledger_accounts")
        .execute(pool)
        .await
        .unwrap();
}

/// Every plan node, depth first.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for child in children {
            nodes(child, out);
        }
    }
}

fn on_accounts(node: &Value) -> bool {
    node.get("Relation Name").and_then(Value::as_str) == Some("escrow_accounts")
}

fn node_type(node: &Value) -> &str {
    node.get("Node Type").and_then(Value::as_str).unwrap_or("")
}

/// An index scan, or the heap scan of a bitmap built from indexes.
fn through_an_index(node: &Value) -> bool {
    node_type(node).contains("Index") || node_type(node) == "Bitmap Heap Scan"
}

#[sqlx::test(migrations = false)]
async fn every_filter_shape_reads_the_accounts_through_an_index(pool: PgPool) {
    let escrow = start(pool).await;
    seed(&escrow.pool, 4_000).await;
    let usd = Currency::parse("USD");
    let now = timestamps::now();
    let base = AccountFilter::default;
    let shapes: Vec<(&str, AccountFilter)> = vec![
        ("staff, unfiltered", base()),
        (
            "a buyer's own",
            AccountFilter {
                buyer_principal_id: Some("buyer-7".into()),
                ..base()
            },
        ),
        (
            "a supplier's own",
            AccountFilter {
                supplier_owner_principal_id: Some("owner-7".into()),
                ..base()
            },
        ),
        (
            "by supplier",
            AccountFilter {
                supplier_id: Some("supplier-7".into()),
                ..base()
            },
        ),
        (
            "by contract",
            AccountFilter {
                contract_id: Some("seed-77".into()),
                ..base()
            },
        ),
        (
            "by one status",
            AccountFilter {
                statuses: vec![Status::Funded],
                ..base()
            },
        ),
        (
            "by two statuses",
            AccountFilter {
                statuses: vec![Status::AwaitingFunding, Status::PartiallyFunded],
                ..base()
            },
        ),
        (
            "by currency",
            AccountFilter {
                currency: usd,
                ..base()
            },
        ),
        (
            "by created range",
            AccountFilter {
                created_after: Some(now - time::Duration::days(2)),
                created_before: Some(now - time::Duration::days(1)),
                ..base()
            },
        ),
        (
            "holding money",
            AccountFilter {
                holding_money: Some(true),
                ..base()
            },
        ),
        (
            "holding nothing",
            AccountFilter {
                holding_money: Some(false),
                ..base()
            },
        ),
        (
            "finance: status, currency and created range",
            AccountFilter {
                statuses: vec![Status::Funded, Status::Closed],
                currency: usd,
                created_after: Some(now - time::Duration::days(3)),
                ..base()
            },
        ),
        (
            "a buyer's own holding money in a status",
            AccountFilter {
                buyer_principal_id: Some("buyer-9".into()),
                statuses: vec![Status::Funded],
                holding_money: Some(true),
                ..base()
            },
        ),
        (
            "a supplier's own by its supplier and currency",
            AccountFilter {
                supplier_owner_principal_id: Some("owner-9".into()),
                supplier_id: Some("supplier-9".into()),
                currency: usd,
                ..base()
            },
        ),
    ];
    let mut conn = escrow.pool.acquire().await.unwrap();
    assert_indexed(&mut conn, &shapes, now).await;

    // And what the plans serve is the right page: a buyer's own, newest first.
    let page = accounts::list_accounts(
        &mut conn,
        &AccountFilter {
            buyer_principal_id: Some("buyer-7".into()),
            ..base()
        },
        None,
        5,
    )
    .await
    .unwrap();
    let contracts: Vec<&str> = page.iter().map(|(a, _)| a.contract_id.as_str()).collect();
    assert_eq!(
        contracts,
        ["seed-7", "seed-307", "seed-607", "seed-907", "seed-1207"]
    );
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM escrow.ledger_accounts WHERE kind = 'escrow_held' \
         AND balance_minor > 0",
    )
    .fetch_one(&escrow.pool)
    .await
    .unwrap();
    let holding = accounts::list_accounts(
        &mut conn,
        &AccountFilter {
            holding_money: Some(true),
            ..base()
        },
        None,
        10_000,
    )
    .await
    .unwrap();
    assert_eq!(i64::try_from(holding.len()).unwrap(), held);
    assert_eq!(held, 1_200, "seed-N holds money when N ends in 0, 3 or 6");

    // Most accounts end up closed: with one in a hundred holding money, the
    // plans for money held or not still read the accounts by index.
    sqlx::query(
        "UPDATE escrow.ledger_accounts l SET balance_minor = \
           CASE WHEN right(a.contract_id, 2) = '00' THEN 1000 ELSE 0 END \
         FROM escrow.escrow_accounts a WHERE l.kind = 'escrow_held' AND l.owner = a.id::text",
    )
    .execute(&escrow.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE escrow.ledger_accounts")
        .execute(&escrow.pool)
        .await
        .unwrap();
    let money = |held| AccountFilter {
        holding_money: Some(held),
        ..base()
    };
    let rare = [
        ("holding money, rare", money(true)),
        ("holding nothing, most", money(false)),
    ];
    assert_indexed(&mut conn, &rare, now).await;
    let holding = accounts::list_accounts(&mut conn, &money(true), None, 10_000)
        .await
        .unwrap();
    assert_eq!(holding.len(), 40);
}

/// Each listing shape, first page and a later one, reads the accounts
/// through an index and never sequentially.
async fn assert_indexed(
    conn: &mut sqlx::PgConnection,
    shapes: &[(&str, AccountFilter)],
    now: time::OffsetDateTime,
) {
    for (name, filter) in shapes {
        for after in [None, Some((now - time::Duration::hours(5), Uuid::max()))] {
            let plan = accounts::explain_list_accounts(conn, filter, after, 21)
                .await
                .unwrap();
            let mut all = Vec::new();
            nodes(&plan[0]["Plan"], &mut all);
            let pretty = serde_json::to_string_pretty(&plan).unwrap();
            assert!(
                !all.iter()
                    .any(|n| on_accounts(n) && node_type(n) == "Seq Scan"),
                "{name} (after {after:?}) reads every account:\n{pretty}"
            );
            assert!(
                all.iter().any(|n| on_accounts(n) && through_an_index(n)),
                "{name} (after {after:?}) uses no index of the accounts:\n{pretty}"
            );
        }
    }
}

/// Seeds `count` gateway transfers straight into the tables (each with its
/// hold): a third each payouts (to 50 suppliers), buyer refunds and
/// suspense refunds, in every status, one a minute.
async fn seed_transfers(pool: &PgPool, count: i32) {
    for statement in [
        "INSERT INTO escrow.ledger_accounts (id, kind, owner, currency, non_negative, eager) \
         VALUES ('00000000-0000-0000-0000-00000000000a', 'suspense', 'platform', 'USD', false, true), \
                ('00000000-0000-0000-0000-00000000000b', 'gateway_clearing', 'platform', 'USD', \
                 false, true)",
        "INSERT INTO escrow.transfers (id, purpose_scope, purpose) \
         SELECT md5('seed-' || i)::uuid, 'seed', 'seed-' || i FROM generate_series(1, $1) AS i",
        "INSERT INTO escrow.holds (id, debit_account_id, credit_account_id, currency, \
           amount_minor, status, expires_at) \
         SELECT md5('seed-' || i)::uuid, '00000000-0000-0000-0000-00000000000a', \
           '00000000-0000-0000-0000-00000000000b', 'USD', 100, 'pending', \
           now() + interval '1 day' FROM generate_series(1, $1) AS i",
        "INSERT INTO escrow.gateway_transfers (id, direction, status, supplier_id, currency, \
           amount_minor, gateway_reference, created_at, resolved_at, gateway_key, \
           source_reference, beneficiary) \
         SELECT md5('seed-' || i)::uuid, \
           (ARRAY['payout', 'buyer_refund', 'suspense_refund'])[i % 3 + 1], \
           (ARRAY['sending', 'pending', 'unknown', 'paid', 'failed'])[i % 5 + 1], \
           CASE WHEN i % 3 = 0 THEN 'supplier-' || (i % 50) END, 'USD', 100, \
           CASE WHEN i % 5 <> 0 THEN 'gw-' || i END, now() - i * interval '1 minute', \
           CASE WHEN i % 5 >= 3 THEN now() END, 'seed:' || i, \
           CASE WHEN i % 3 <> 0 THEN 'ch-' || i END, 'seed-' || i \
         FROM generate_series(1, $1) AS i",
        "ANALYZE escrow.gateway_transfers",
    ] {
        let query = sqlx::query(statement);
        let query = if statement.contains("$1") {
            query.bind(count)
        } else {
            query
        };
        query.execute(pool).await.unwrap();
    }
}

#[sqlx::test(migrations = false)]
async fn every_transfer_filter_reads_the_transfers_through_an_index(pool: PgPool) {
    let escrow = start(pool).await;
    seed_transfers(&escrow.pool, 4_000).await;
    let now = timestamps::now();
    let base = || TransferFilter {
        supplier_id: None,
        direction: None,
        status: None,
        kinds: None,
        reference: None,
        after: None,
        limit: 20,
    };
    let seeded_id = sqlx::query_scalar::<_, Uuid>("SELECT md5('seed-77')::uuid")
        .fetch_one(&escrow.pool)
        .await
        .unwrap();
    let shapes: Vec<(&str, TransferFilter)> = vec![
        ("unfiltered", base()),
        (
            "a supplier's",
            TransferFilter {
                supplier_id: Some("supplier-7".into()),
                ..base()
            },
        ),
        (
            "by direction",
            TransferFilter {
                direction: Some("suspense_refund"),
                ..base()
            },
        ),
        (
            "refunds",
            TransferFilter {
                kinds: Some(&["buyer_refund", "suspense_refund"]),
                ..base()
            },
        ),
        (
            "by status",
            TransferFilter {
                status: Some("unknown"),
                ..base()
            },
        ),
        (
            "by the gateway's reference",
            TransferFilter {
                reference: Some("ch-77".into()),
                ..base()
            },
        ),
        (
            "by escrow's id",
            TransferFilter {
                reference: Some(seeded_id.to_string()),
                ..base()
            },
        ),
        (
            "refunds by reference, in a status",
            TransferFilter {
                kinds: Some(&["buyer_refund", "suspense_refund"]),
                reference: Some("gw-77".into()),
                status: Some("pending"),
                ..base()
            },
        ),
        (
            "a supplier's in a status, after a cursor",
            TransferFilter {
                supplier_id: Some("supplier-9".into()),
                status: Some("paid"),
                after: Some((now - time::Duration::hours(5), Uuid::max())),
                ..base()
            },
        ),
    ];
    let mut conn = escrow.pool.acquire().await.unwrap();
    for (name, filter) in &shapes {
        let plan = gateway_transfers::explain_list_transfers(&mut conn, filter)
            .await
            .unwrap();
        let mut all = Vec::new();
        nodes(&plan[0]["Plan"], &mut all);
        let on_transfers =
            |n: &Value| n.get("Relation Name").and_then(Value::as_str) == Some("gateway_transfers");
        let pretty = serde_json::to_string_pretty(&plan).unwrap();
        assert!(
            !all.iter()
                .any(|n| on_transfers(n) && node_type(n) == "Seq Scan"),
            "{name} reads every transfer:\n{pretty}"
        );
        assert!(
            all.iter().any(|n| on_transfers(n) && through_an_index(n)),
            "{name} uses no index of the transfers:\n{pretty}"
        );
    }
    // By escrow's id, the one transfer.
    let found = gateway_transfers::list_transfers(
        &mut conn,
        &TransferFilter {
            reference: Some(seeded_id.to_string()),
            ..base()
        },
    )
    .await
    .unwrap();
    assert_eq!(found.iter().map(|t| t.id).collect::<Vec<_>>(), [seeded_id]);
}

// ---- Gateway transfers: what an unmatched item names finds its refund -------

/// The finding: "ListGatewayTransfers returned nothing for refunds that
/// unmatched items pointed at". A credit beyond what the payment needs is
/// parked in suspense and sent back; ListUnmatchedGatewayItems shows it as
/// a LATE_CREDIT naming the credited payment (`gateway_reference`) and the
/// refund (`gateway_transfer_id`).
#[sqlx::test(migrations = false)]
async fn a_late_credits_refund_is_found_by_what_its_unmatched_item_names(pool: PgPool) {
    let escrow = start_with(
        pool,
        &[
            "--gateway-check-after",
            "100ms",
            "--gateway-worker-poll",
            "50ms",
        ],
    )
    .await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-late", 1_000).await.escrow_account_id;
    let attempt = client
        .fund_escrow(buyer(bank(&id, "full", 1_000, "b-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let excess = Event::new(
        "evt-1",
        "bank_transfer.credited",
        &attempt.gateway_reference,
    )
    .client(&attempt.funding_attempt_id)
    .usd(1_015);
    assert_eq!(
        deliver(&mut client, &excess).await,
        pb::WebhookOutcome::Applied
    );
    // A payout too, so the filters have something to leave out.
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "release".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: Some(pb::Purpose {
                purpose: Some(pb::purpose::Purpose::Acceptance(true)),
            }),
        }))
        .await
        .expect("released");
    client
        .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
            idempotency_key: "payouts".into(),
            reason: "the weekly run".into(),
            ..Default::default()
        }))
        .await
        .expect("payouts");

    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1, "{items:#?}");
    let item = &items[0];
    assert_eq!(item.kind, "LATE_CREDIT");
    assert_eq!(minor(&item.amount), 15);
    assert_eq!(item.gateway_reference, attempt.gateway_reference);

    let transfers_where = |request: pb::ListGatewayTransfersRequest| {
        let mut client = client.clone();
        async move {
            client
                .list_gateway_transfers(finance(pb::ListGatewayTransfersRequest {
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: String::new(),
                    }),
                    ..request
                }))
                .await
                .expect("list transfers")
                .into_inner()
                .transfers
        }
    };
    // What the finding saw: the refund is no BUYER_REFUND (it sends back
    // a credit in suspense, not money owed to the buyer), and a supplier
    // filter leaves every refund out; unfiltered, it is there.
    let all = transfers_where(Default::default()).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        transfers_where(pb::ListGatewayTransfersRequest {
            direction: pb::GatewayTransferDirection::BuyerRefund as i32,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert!(
        transfers_where(pb::ListGatewayTransfersRequest {
            supplier_id: SUPPLIER_ID.into(),
            direction: pb::GatewayTransferDirection::SuspenseRefund as i32,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // The refund is found by every name the item (or its attempt) gives it,
    // and by its kind.
    let refund_id = item.gateway_transfer_id.clone();
    for reference in [
        item.gateway_reference.clone(),
        item.gateway_transfer_id.clone(),
        attempt.funding_attempt_id.clone(),
    ] {
        let found = transfers_where(pb::ListGatewayTransfersRequest {
            reference: reference.clone(),
            ..Default::default()
        })
        .await;
        assert_eq!(
            found
                .iter()
                .map(|t| t.gateway_transfer_id.as_str())
                .collect::<Vec<_>>(),
            [refund_id.as_str()],
            "by {reference}"
        );
        assert_eq!(
            found[0].direction,
            pb::GatewayTransferDirection::SuspenseRefund as i32
        );
    }
    let refunds = transfers_where(pb::ListGatewayTransfersRequest {
        kind: pb::GatewayTransferKind::Refund as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].gateway_transfer_id, refund_id);
    let payouts = transfers_where(pb::ListGatewayTransfersRequest {
        kind: pb::GatewayTransferKind::Payout as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(payouts.len(), 1);
    assert_eq!(
        payouts[0].direction,
        pb::GatewayTransferDirection::Payout as i32
    );
    // Once the gateway took it, the refund's own gateway id finds it too;
    // a reference nothing has finds nothing.
    let sent = eventually("the refund sent", || {
        let mut client = client.clone();
        let refund_id = refund_id.clone();
        async move {
            let found = client
                .list_gateway_transfers(finance(pb::ListGatewayTransfersRequest {
                    reference: refund_id,
                    ..Default::default()
                }))
                .await
                .ok()?
                .into_inner()
                .transfers;
            found.into_iter().find(|t| !t.gateway_reference.is_empty())
        }
    })
    .await;
    let by_gateway_id = transfers_where(pb::ListGatewayTransfersRequest {
        reference: sent.gateway_reference.clone(),
        kind: pb::GatewayTransferKind::Refund as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(by_gateway_id.len(), 1);
    assert_eq!(by_gateway_id[0].gateway_transfer_id, refund_id);
    assert!(
        transfers_where(pb::ListGatewayTransfersRequest {
            reference: "rf_nothing".into(),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert!(
        transfers_where(pb::ListGatewayTransfersRequest {
            reference: item.gateway_reference.clone(),
            kind: pb::GatewayTransferKind::Payout as i32,
            ..Default::default()
        })
        .await
        .is_empty(),
        "filters combine"
    );
}
