//! Who may call what: the access matrix derived from the one declaration
//! (the `access` option on each RPC in the proto), every person's role and
//! every service principal against every RPC; buyers and suppliers reach
//! only the accounts they are parties to.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use ta_runtime::auth::Role;
use ta_testkit::access::{Caller, PEOPLE, SERVICES, check_refusals, declared_rpcs};
use tonic::Code;

/// People act as the parties of the account under test, so only the role
/// can be what is refused.
fn request<T>(caller: Caller, message: T) -> tonic::Request<T> {
    let (subject, role) = caller.principal(BUYER, SUPPLIER_OWNER, OPERATOR);
    as_role(message, subject, role)
}

macro_rules! calls {
    ($($rpc:ident($request:ident) => $method:ident),+ $(,)?) => {
        #[derive(Clone, Debug)]
        enum Call {
            $($rpc(pb::$request)),+
        }

        const RPCS: &[&str] = &[$(stringify!($rpc)),+];

        impl Call {
            fn rpc(&self) -> &'static str {
                match self {
                    $(Call::$rpc(_) => stringify!($rpc)),+
                }
            }

            async fn send(self, client: &mut Client, caller: Caller) -> Result<(), tonic::Status> {
                match self {
                    $(Call::$rpc(message) => client.$method(request(caller, message)).await.map(drop)),+
                }
            }
        }
    };
}

calls! {
    OpenEscrowAccount(OpenEscrowAccountRequest) => open_escrow_account,
    GetEscrowAccount(GetEscrowAccountRequest) => get_escrow_account,
    AmendEscrowSchedule(AmendEscrowScheduleRequest) => amend_escrow_schedule,
    FundEscrow(FundEscrowRequest) => fund_escrow,
    HandleGatewayWebhook(HandleGatewayWebhookRequest) => handle_gateway_webhook,
    ReleaseToSupplier(ReleaseToSupplierRequest) => release_to_supplier,
    RefundToBuyer(RefundToBuyerRequest) => refund_to_buyer,
    SettleClaim(SettleClaimRequest) => settle_claim,
    FreezeEscrow(FreezeEscrowRequest) => freeze_escrow,
    UnfreezeEscrow(UnfreezeEscrowRequest) => unfreeze_escrow,
    CloseEscrowAccount(CloseEscrowAccountRequest) => close_escrow_account,
    GetEscrowStatement(GetEscrowStatementRequest) => get_escrow_statement,
    RunSupplierPayouts(RunSupplierPayoutsRequest) => run_supplier_payouts,
    ListGatewayTransfers(ListGatewayTransfersRequest) => list_gateway_transfers,
    ListEscrowAccounts(ListEscrowAccountsRequest) => list_escrow_accounts,
    ReconcileLedger(ReconcileLedgerRequest) => reconcile_ledger,
    GetTrialBalance(GetTrialBalanceRequest) => get_trial_balance,
    ListHeldAccounts(ListHeldAccountsRequest) => list_held_accounts,
    ListUnmatchedGatewayItems(ListUnmatchedGatewayItemsRequest) => list_unmatched_gateway_items,
    StreamEscrowEvents(StreamEscrowEventsRequest) => stream_escrow_events,
}

/// One well-formed call of every RPC against account `id`.
fn every_call(id: &str, key: &str) -> Vec<Call> {
    let key = |rpc: &str| format!("{key}-{rpc}");
    let id = || id.to_string();
    let acceptance = Some(pb::Purpose {
        purpose: Some(pb::purpose::Purpose::Acceptance(true)),
    });
    vec![
        Call::OpenEscrowAccount(pb::OpenEscrowAccountRequest {
            idempotency_key: key("open"),
            ..open_request(&key("contract"), vec![payment("full", 100)])
        }),
        Call::GetEscrowAccount(pb::GetEscrowAccountRequest {
            escrow_account_id: id(),
            contract_id: String::new(),
        }),
        Call::AmendEscrowSchedule(pb::AmendEscrowScheduleRequest {
            reason: String::new(),
            idempotency_key: key("amend"),
            escrow_account_id: id(),
            schedule: vec![payment("full", 100)],
            contract_version: 2,
            hold_until: None,
        }),
        Call::FundEscrow(card(&id(), "full", 100, "tok_visa", &key("fund"))),
        Call::HandleGatewayWebhook(webhook(&key("evt"), "customer.created", "x", None)),
        Call::ReleaseToSupplier(pb::ReleaseToSupplierRequest {
            idempotency_key: key("release"),
            escrow_account_id: id(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: acceptance,
        }),
        Call::RefundToBuyer(pb::RefundToBuyerRequest {
            idempotency_key: key("refund"),
            escrow_account_id: id(),
            amount: None,
            reason: "cancelled".into(),
            purpose: Some(pb::Purpose {
                purpose: Some(pb::purpose::Purpose::Cancellation(true)),
            }),
        }),
        Call::SettleClaim(pb::SettleClaimRequest {
            idempotency_key: key("settle"),
            escrow_account_id: id(),
            claim_id: "claim-x".into(),
            refund: None,
            release_rest: false,
            reason: "decided".into(),
        }),
        Call::FreezeEscrow(pb::FreezeEscrowRequest {
            idempotency_key: key("freeze"),
            escrow_account_id: id(),
            claim_id: "claim-x".into(),
            reason: "claim filed".into(),
        }),
        Call::UnfreezeEscrow(pb::UnfreezeEscrowRequest {
            idempotency_key: key("unfreeze"),
            escrow_account_id: id(),
            claim_id: "claim-x".into(),
            reason: "claim withdrawn".into(),
        }),
        Call::CloseEscrowAccount(pb::CloseEscrowAccountRequest {
            idempotency_key: key("close"),
            escrow_account_id: id(),
            reason: "cancelled".into(),
            refund_held: false,
        }),
        Call::GetEscrowStatement(pb::GetEscrowStatementRequest {
            escrow_account_id: id(),
            page: None,
        }),
        Call::RunSupplierPayouts(pb::RunSupplierPayoutsRequest {
            idempotency_key: key("payouts"),
            reason: "the weekly run".into(),
            ..Default::default()
        }),
        Call::ListGatewayTransfers(pb::ListGatewayTransfersRequest {
            supplier_id: SUPPLIER_ID.into(),
            ..Default::default()
        }),
        Call::ListEscrowAccounts(pb::ListEscrowAccountsRequest::default()),
        Call::ReconcileLedger(pb::ReconcileLedgerRequest {}),
        Call::GetTrialBalance(pb::GetTrialBalanceRequest::default()),
        Call::ListHeldAccounts(pb::ListHeldAccountsRequest::default()),
        Call::ListUnmatchedGatewayItems(pb::ListUnmatchedGatewayItemsRequest::default()),
        Call::StreamEscrowEvents(pb::StreamEscrowEventsRequest { after_sequence: 0 }),
    ]
}

#[test]
fn every_rpc_of_the_service_declares_who_may_call_it_and_is_listed_here() {
    let mut rpcs = RPCS.to_vec();
    rpcs.sort_unstable();
    assert_eq!(declared_rpcs(ESCROW_SERVICE), rpcs);
    assert_eq!(every_call("x", "k").len(), RPCS.len());
}

#[sqlx::test(migrations = false)]
async fn callers_the_proto_does_not_declare_are_refused_and_change_nothing(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-matrix", 100).await.escrow_account_id;
    let before = snapshot(&pool).await;
    let (refused, cells) = check_refusals(
        ESCROW_SERVICE,
        every_call(&id, "k"),
        Call::rpc,
        async |call, caller| call.send(&mut client, caller).await,
    )
    .await;
    assert_eq!(cells, RPCS.len() * (PEOPLE.len() + SERVICES.len()));
    assert!(
        refused > cells / 2,
        "least privilege: {refused} of {cells} refused"
    );
    assert_eq!(snapshot(&pool).await, before, "refusals write nothing");
    // Each service principal calls only what is its own.
    for (service, own) in [
        ("escrow", 0),
        ("supplier-registry", 0),
        ("messaging", 0),
        ("payment-gateway", 1),
    ] {
        let allowed = RPCS
            .iter()
            .filter(|rpc| Caller::Service(service).declared_for(ESCROW_SERVICE, rpc))
            .count();
        assert_eq!(allowed, own, "{service}");
    }
}

#[sqlx::test(migrations = false)]
async fn callers_the_proto_declares_get_past_authorization(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-allowed", 100).await.escrow_account_id;
    for (n, caller) in Caller::all().enumerate() {
        for call in every_call(&id, &format!("k{n}")) {
            let rpc = call.rpc();
            if !caller.declared_for(ESCROW_SERVICE, rpc) {
                continue;
            }
            if let Err(status) = call.send(&mut client, caller).await {
                assert_ne!(
                    status.message(),
                    caller.refusal(ESCROW_SERVICE, rpc),
                    "{caller:?} is declared for {rpc}"
                );
                assert_ne!(status.code(), Code::Unauthenticated, "{caller:?} {rpc}");
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn buyers_and_suppliers_reach_only_their_own_accounts(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-own", 500).await.escrow_account_id;
    let get = || pb::GetEscrowAccountRequest {
        escrow_account_id: id.clone(),
        contract_id: String::new(),
    };
    let statement = || pb::GetEscrowStatementRequest {
        escrow_account_id: id.clone(),
        page: None,
    };
    // The parties read it.
    client.get_escrow_account(buyer(get())).await.unwrap();
    client
        .get_escrow_account(as_role(get(), SUPPLIER_OWNER, Role::Supplier))
        .await
        .unwrap();
    client
        .get_escrow_statement(as_role(statement(), SUPPLIER_OWNER, Role::Supplier))
        .await
        .unwrap();
    let before = snapshot(&pool).await;
    // Others are told it does not exist, as for an id that does not.
    let not_found = format!("escrow account {id} not found");
    let strangers = [
        (OTHER_BUYER, Role::Buyer),
        (OTHER_SUPPLIER_OWNER, Role::Supplier),
        (BUYER, Role::Supplier),
        (SUPPLIER_OWNER, Role::Buyer),
    ];
    for (subject, role) in strangers {
        let status = client
            .get_escrow_account(as_role(get(), subject, role))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{subject} {role}");
        assert_eq!(status.message(), not_found, "{subject} {role}");
        let by_contract = client
            .get_escrow_account(as_role(
                pb::GetEscrowAccountRequest {
                    escrow_account_id: String::new(),
                    contract_id: "c-own".into(),
                },
                subject,
                role,
            ))
            .await
            .unwrap_err();
        assert_eq!(by_contract.code(), Code::NotFound, "{subject} {role}");
        assert_eq!(
            by_contract.message(),
            "escrow account of contract c-own not found"
        );
        let status = client
            .get_escrow_statement(as_role(statement(), subject, role))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{subject} {role}");
        assert_eq!(status.message(), not_found, "{subject} {role}");
    }
    let status = client
        .fund_escrow(as_role(
            card(&id, "full", 500, "tok_visa", "stranger-fund"),
            OTHER_BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), not_found);
    let status = client
        .list_gateway_transfers(as_role(
            pb::ListGatewayTransfersRequest {
                supplier_id: SUPPLIER_ID.into(),
                ..Default::default()
            },
            OTHER_SUPPLIER_OWNER,
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(snapshot(&pool).await, before, "nothing written");
}
