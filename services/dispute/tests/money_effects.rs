//! Dispute against fake peers (contract, escrow and supplier-registry served
//! in-process by `ta_workflow::testing::FakePeer`): a claim's settlement
//! follows the contract's word on the shipment, a refused settlement goes to
//! the operators' queue and is re-driven, and a retried filing or upload
//! replays its first answer.

use clap::Parser;
use dispute::{Links, SPEC, api, config::Config, storage};
use sqlx::PgPool;
use ta_proto::{
    common::ClaimReason,
    contract as contract_pb,
    dispute::{self as pb, dispute_service_client::DisputeServiceClient, upload_evidence_request},
    escrow as escrow_pb,
    ops::{self as ops, workflow_admin_service_client::WorkflowAdminServiceClient},
};
use ta_runtime::auth::Role;
use ta_testkit::{RunningService, authorized, eventually, operator, usd};
use ta_workflow::testing::{self, FakePeer};
use tonic::{Code, Status, transport::Channel};
use uuid::Uuid;

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

const BUYER: &str = "buyer-1";
const OWNER: &str = "owner-1";
const OPERATOR: &str = "ops-1";

struct Harness {
    _server: RunningService,
    client: DisputeServiceClient<Channel>,
    admin: WorkflowAdminServiceClient<Channel>,
    contract: FakePeer,
    escrow: FakePeer,
    _registry: FakePeer,
    evidence: std::path::PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.evidence);
    }
}

/// The contract as GetContract shows it: `status`, 3,000.00 USD in escrow.
fn contract_view(id: &str, status: contract_pb::ContractStatus) -> contract_pb::Contract {
    contract_pb::Contract {
        contract_id: id.into(),
        buyer_principal_id: BUYER.into(),
        supplier_id: "supplier-1".into(),
        supplier_principal_id: OWNER.into(),
        protection: contract_pb::Protection::TradeAssurance.into(),
        status: status.into(),
        escrow_account_id: format!("acct-{id}"),
        total: usd(300_000),
        ..Default::default()
    }
}

fn account(held: i64) -> escrow_pb::EscrowAccount {
    escrow_pb::EscrowAccount {
        currency_code: "USD".into(),
        held: usd(held),
        ..Default::default()
    }
}

/// Dispute with a contract that is FUNDED when a claim is filed but says it
/// SHIPPED when it records the claim (a shipment in between), and an escrow
/// that holds 3,000.00 USD and settles anything.
async fn start(pool: &PgPool) -> Harness {
    let contract = FakePeer::start::<testing::Contract>().await;
    let escrow = FakePeer::start::<testing::Escrow>().await;
    let registry = FakePeer::start::<testing::Registry>().await;
    contract.answer("GetContract", |r: contract_pb::GetContractRequest| {
        Ok(contract_pb::GetContractResponse {
            contract: Some(contract_view(
                &r.contract_id,
                contract_pb::ContractStatus::Funded,
            )),
            version: Some(contract_pb::ContractVersion::default()),
        })
    });
    contract.answer(
        "RecordClaimOpened",
        |r: contract_pb::RecordClaimOpenedRequest| {
            let mut view = contract_view(&r.contract_id, contract_pb::ContractStatus::InDispute);
            view.status_before_dispute = contract_pb::ContractStatus::Shipped.into();
            Ok(contract_pb::RecordClaimOpenedResponse {
                contract: Some(view),
            })
        },
    );
    for method in ["ConfirmClaimOpened", "RecordClaimClosed"] {
        contract.answer(method, |(): ()| Ok(()));
    }
    escrow.answer(
        "GetEscrowAccount",
        |_: escrow_pb::GetEscrowAccountRequest| {
            Ok(escrow_pb::GetEscrowAccountResponse {
                account: Some(account(300_000)),
                funding_attempts: Vec::new(),
            })
        },
    );
    escrow.answer("FreezeEscrow", |_: escrow_pb::FreezeEscrowRequest| {
        Ok(escrow_pb::FreezeEscrowResponse {
            account: Some(account(300_000)),
        })
    });
    for method in ["SettleClaim", "UnfreezeEscrow"] {
        escrow.answer(method, |(): ()| Ok(()));
    }
    for method in ["RecordInquiry", "RecordInquiryReply", "RecordPenalty"] {
        registry.answer(method, |(): ()| Ok(()));
    }
    let evidence = std::env::temp_dir().join(format!("dispute-money-{}", Uuid::now_v7()));
    let (contract_url, escrow_url, registry_url, dir) = (
        contract.url(),
        escrow.url(),
        registry.url(),
        evidence.display().to_string(),
    );
    let config = Config::try_parse_from(ta_testkit::command_line(
        "dispute",
        pool,
        &[
            "--evidence-store",
            &dir,
            "--contract-url",
            &contract_url,
            "--escrow-url",
            &escrow_url,
            "--supplier-registry-url",
            &registry_url,
            "--workflow-outbox-poll-interval",
            "20ms",
            "--workflow-outbox-backoff-base",
            "20ms",
            "--workflow-outbox-backoff-cap",
            "200ms",
        ],
    ))
    .expect("config");
    let links = Links::from_config(&config).expect("links");
    let service = api(&config, pool.clone(), links);
    let server = RunningService::start(&SPEC, config.common.clone(), pool.clone(), service).await;
    Harness {
        client: DisputeServiceClient::new(server.channel.clone()),
        admin: WorkflowAdminServiceClient::new(server.channel.clone()),
        _server: server,
        contract,
        escrow,
        _registry: registry,
        evidence,
    }
}

fn file_request(key: &str, contract_id: &str) -> pb::FileClaimRequest {
    pb::FileClaimRequest {
        idempotency_key: key.into(),
        contract_id: contract_id.into(),
        reason: ClaimReason::LateShipment.into(),
        amount_claimed: usd(100_000),
        description: "shipped two weeks late".into(),
        ..Default::default()
    }
}

impl Harness {
    async fn claim(&mut self, id: &str) -> pb::Claim {
        self.client
            .get_claim(authorized(
                pb::GetClaimRequest {
                    claim_id: id.into(),
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .expect("claim")
            .into_inner()
            .claim
            .expect("claim")
    }

    /// A claim filed, recorded by the contract, frozen and confirmed.
    async fn negotiating_claim(&mut self) -> String {
        self.filed_until(pb::ClaimStatus::Negotiating).await
    }

    /// Files a claim and waits until its opening ends in `status`.
    async fn filed_until(&mut self, status: pb::ClaimStatus) -> String {
        let filed = self
            .client
            .file_claim(authorized(
                file_request("file-1", &Uuid::now_v7().to_string()),
                BUYER,
                Role::Buyer,
            ))
            .await
            .expect("filed")
            .into_inner()
            .claim
            .expect("claim");
        let client = self.client.clone();
        let id = filed.claim_id.clone();
        eventually(&format!("the claim {status:?}"), || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let claim = client
                    .get_claim(authorized(
                        pb::GetClaimRequest { claim_id: id },
                        BUYER,
                        Role::Buyer,
                    ))
                    .await
                    .expect("claim")
                    .into_inner()
                    .claim
                    .expect("claim");
                claim.status() == status
            }
        })
        .await;
        filed.claim_id
    }

    async fn decide_partial_refund(&mut self, id: &str) {
        self.client
            .escalate_claim(authorized(
                pb::EscalateClaimRequest {
                    idempotency_key: "escalate".into(),
                    claim_id: id.into(),
                    reason: "no agreement".into(),
                },
                OPERATOR,
                Role::Arbiter,
            ))
            .await
            .expect("escalated");
        self.client
            .decide_claim(authorized(
                pb::DecideClaimRequest {
                    idempotency_key: "decide".into(),
                    claim_id: id.into(),
                    outcome: pb::ClaimOutcome::PartialRefund.into(),
                    refund_amount: usd(100_000),
                    reason: "two weeks late".into(),
                    ..Default::default()
                },
                OPERATOR,
                Role::Arbiter,
            ))
            .await
            .expect("decided");
    }

    async fn parked(&mut self) -> Vec<ops::OutboxRow> {
        operator::parked(&mut self.admin, OPERATOR).await
    }
}

// ---- finding 9: the settlement follows the contract's word ----------------------

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_on_goods_that_shipped_after_filing_releases_the_rest_at_settlement(pool: PgPool) {
    let mut h = start(&pool).await;
    let id = h.negotiating_claim().await;
    h.decide_partial_refund(&id).await;
    let escrow = &h.escrow;
    eventually("escrow asked to settle", || async {
        !escrow
            .requests::<escrow_pb::SettleClaimRequest>("SettleClaim")
            .is_empty()
    })
    .await;
    let settle = &h
        .escrow
        .requests::<escrow_pb::SettleClaimRequest>("SettleClaim")[0];
    assert_eq!(settle.refund, usd(100_000));
    assert!(
        settle.release_rest,
        "the contract recorded the claim on shipped goods: the rest goes to the supplier"
    );
}

// ---- finding 10: a refused settlement is an operator's item ---------------------

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_refused_settlement_goes_to_the_operators_queue_and_is_re_driven(pool: PgPool) {
    let mut h = start(&pool).await;
    h.escrow
        .answer("SettleClaim", |_: escrow_pb::SettleClaimRequest| {
            Err::<escrow_pb::SettleClaimResponse, _>(Status::failed_precondition(
                "PURPOSE_ALREADY_SETTLED: purpose refund:claim already moved money",
            ))
        });
    let id = h.negotiating_claim().await;
    h.decide_partial_refund(&id).await;
    let parked = operator::escalated(&h.admin, OPERATOR, "the refused settlement parked").await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].method.ends_with("/SettleClaim"));
    assert!(parked[0].last_error.contains("PURPOSE_ALREADY_SETTLED"));
    let backlog = operator::backlog(&mut h.admin, OPERATOR).await;
    assert_eq!(backlog.outbox_parked, 1);
    assert!(
        h.contract
            .requests::<contract_pb::RecordClaimClosedRequest>("RecordClaimClosed")
            .is_empty(),
        "the chain stops at the refusal"
    );
    let timeline = h
        .client
        .get_claim_timeline(authorized(
            pb::GetClaimTimelineRequest {
                claim_id: id.clone(),
                page: None,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    assert!(timeline.iter().any(|e| e.action == "claim.effect_refused"));

    // The operator resolves it at escrow and re-drives: settled, then the
    // contract is told.
    h.escrow.answer("SettleClaim", |(): ()| Ok(()));
    operator::redrive(&mut h.admin, OPERATOR, "redrive-settle", parked[0].id).await;
    let contract = &h.contract;
    eventually("the contract told after the re-drive", || async {
        !contract
            .requests::<contract_pb::RecordClaimClosedRequest>("RecordClaimClosed")
            .is_empty()
    })
    .await;
    assert_eq!(
        h.escrow
            .requests::<escrow_pb::SettleClaimRequest>("SettleClaim")
            .len(),
        2
    );
    assert!(h.parked().await.is_empty());
}

// ---- finding 13: retries after the fact ----------------------------------------

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_or_evidence_retried_after_it_succeeded_replays_its_first_answer(pool: PgPool) {
    let mut h = start(&pool).await;
    let request = file_request("file-once", &Uuid::now_v7().to_string());
    let first = h
        .client
        .file_claim(authorized(request.clone(), BUYER, Role::Buyer))
        .await
        .expect("filed")
        .into_inner();
    // The claim moved on: escrow is frozen, and now holds nothing it would
    // let a new claim take; the contract cannot be reached either.
    h.escrow.answer(
        "GetEscrowAccount",
        |_: escrow_pb::GetEscrowAccountRequest| {
            Ok(escrow_pb::GetEscrowAccountResponse {
                account: Some(account(0)),
                funding_attempts: Vec::new(),
            })
        },
    );
    h.contract
        .answer("GetContract", |_: contract_pb::GetContractRequest| {
            Err::<contract_pb::GetContractResponse, _>(Status::unavailable("contract down"))
        });
    let retried = h
        .client
        .file_claim(authorized(request, BUYER, Role::Buyer))
        .await
        .expect("a retry after success replays the stored answer")
        .into_inner();
    assert_eq!(retried, first);
    assert_eq!(
        h.contract
            .requests::<contract_pb::GetContractRequest>("GetContract")
            .len(),
        1,
        "the retry read nothing"
    );

    // Evidence uploaded, then the claim is withdrawn: the upload's retry
    // replays instead of answering that the claim is closed.
    let id = first.claim.expect("claim").claim_id;
    let client = h.client.clone();
    let claim_id = id.clone();
    eventually("the claim negotiating", || {
        let mut client = client.clone();
        let claim_id = claim_id.clone();
        async move {
            client
                .get_claim(authorized(
                    pb::GetClaimRequest { claim_id },
                    BUYER,
                    Role::Buyer,
                ))
                .await
                .expect("claim")
                .into_inner()
                .claim
                .expect("claim")
                .status()
                == pb::ClaimStatus::Negotiating
        }
    })
    .await;
    let bytes = vec![7_u8; 2_000];
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let upload = || {
        tokio_stream::iter(vec![
            pb::UploadEvidenceRequest {
                idempotency_key: "photo-1".into(),
                reason: String::new(),
                part: Some(upload_evidence_request::Part::Metadata(
                    pb::EvidenceMetadata {
                        claim_id: id.clone(),
                        kind: pb::EvidenceKind::Photo.into(),
                        filename: "carton.jpg".into(),
                        content_type: "image/jpeg".into(),
                        size_bytes: bytes.len() as u64,
                        sha256_hex: sha.clone(),
                        ..Default::default()
                    },
                )),
            },
            pb::UploadEvidenceRequest {
                idempotency_key: String::new(),
                reason: String::new(),
                part: Some(upload_evidence_request::Part::Chunk(bytes.clone())),
            },
        ])
    };
    let stored = h
        .client
        .upload_evidence(authorized(upload(), BUYER, Role::Buyer))
        .await
        .expect("uploaded")
        .into_inner();
    h.client
        .withdraw_claim(authorized(
            pb::WithdrawClaimRequest {
                idempotency_key: "withdraw".into(),
                claim_id: id.clone(),
                reason: "resolved".into(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("withdrawn");
    assert_eq!(h.claim(&id).await.status(), pb::ClaimStatus::Withdrawn);
    let again = h
        .client
        .upload_evidence(authorized(upload(), BUYER, Role::Buyer))
        .await
        .expect("the upload's retry replays")
        .into_inner();
    assert_eq!(again, stored);
    let refused = h
        .client
        .file_claim(authorized(
            file_request("file-new", &Uuid::now_v7().to_string()),
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("a new claim reads the contract");
    assert_eq!(refused.code(), Code::Unavailable);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_above_what_the_freeze_found_held_is_refused_and_the_freeze_lifted(pool: PgPool) {
    let mut h = start(&pool).await;
    // Filing read 3,000.00 USD held; by the freeze a lot's release had left
    // 500.00 USD, less than the 1,000.00 USD claimed.
    h.contract.answer("AbandonClaimOpening", |(): ()| Ok(()));
    h.escrow
        .answer("FreezeEscrow", |_: escrow_pb::FreezeEscrowRequest| {
            Ok(escrow_pb::FreezeEscrowResponse {
                account: Some(account(50_000)),
            })
        });
    let claim_id = h.filed_until(pb::ClaimStatus::Refused).await;
    let claim = h.claim(&claim_id).await;
    assert!(
        claim
            .refusal_reason
            .starts_with("HELD_BELOW_CLAIM: escrow holds 500.00 USD"),
        "{claim:?}"
    );
    let (escrow, contract) = (&h.escrow, &h.contract);
    eventually("the freeze lifted and the contract told", || async {
        escrow
            .requests::<escrow_pb::UnfreezeEscrowRequest>("UnfreezeEscrow")
            .len()
            == 1
            && contract
                .requests::<contract_pb::AbandonClaimOpeningRequest>("AbandonClaimOpening")
                .len()
                == 1
    })
    .await;
    let unfrozen = h
        .escrow
        .requests::<escrow_pb::UnfreezeEscrowRequest>("UnfreezeEscrow");
    assert_eq!(unfrozen[0].claim_id, claim_id);
    assert_eq!(
        h.escrow
            .requests::<escrow_pb::SettleClaimRequest>("SettleClaim")
            .len(),
        0
    );
}
