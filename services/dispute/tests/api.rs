//! Dispute served in-process over its own test database (no peers): who
//! reaches a claim, the evidence store's checks, and a filing that cannot
//! read the contract changing nothing.

use clap::Parser;
use dispute::{
    Links, SPEC, api,
    config::Config,
    domain::claim::{Claim, Policy, Reason, Remedy},
    storage::{
        self,
        claims::{self, ClaimRecord},
    },
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use ta_proto::dispute::{
    self as pb, dispute_service_client::DisputeServiceClient, download_evidence_response,
    upload_evidence_request,
};
use ta_runtime::{
    auth::Role,
    money::{Currency, Money},
    timestamps,
};
use ta_testkit::{RunningService, authorized};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

const BUYER: &str = "buyer-1";
const OWNER: &str = "owner-1";

struct Dispute {
    _server: RunningService,
    client: DisputeServiceClient<Channel>,
    evidence_dir: std::path::PathBuf,
}

async fn start(pool: &PgPool) -> Dispute {
    let evidence_dir = std::env::temp_dir().join(format!("dispute-api-{}", Uuid::now_v7()));
    let dir = evidence_dir.display().to_string();
    let config = Config::try_parse_from(ta_testkit::command_line(
        "dispute",
        pool,
        &[
            "--evidence-store",
            &dir,
            "--evidence-max-photo-bytes",
            "100000",
        ],
    ))
    .expect("config");
    let links = Links::from_config(&config).expect("links");
    let service_api = api(&config, pool.clone(), links);
    let server =
        RunningService::start(&SPEC, config.common.clone(), pool.clone(), service_api).await;
    let client = DisputeServiceClient::new(server.channel.clone());
    Dispute {
        _server: server,
        client,
        evidence_dir,
    }
}

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").unwrap())
}

/// A negotiating claim of `BUYER` against `OWNER`'s supplier.
async fn negotiating_claim(pool: &PgPool) -> Uuid {
    let now = timestamps::now();
    let mut claim = Claim::file(usd(40_000), usd(100_000), now, &Policy::default()).unwrap();
    claim.opened(usd(100_000), now, &Policy::default()).unwrap();
    let record = ClaimRecord {
        claim_id: Uuid::now_v7(),
        contract_id: Uuid::now_v7().to_string(),
        escrow_account_id: "account-1".into(),
        buyer_principal_id: BUYER.into(),
        supplier_id: Uuid::now_v7().to_string(),
        supplier_principal_id: OWNER.into(),
        reason: Reason::Damage,
        remedy: Remedy::Refund,
        quality_criterion_ids: Vec::new(),
        description: "crushed".into(),
        goods_shipped: true,
        claim,
        supplier_rejected_at: None,
        supplier_rejection_reason: String::new(),
        supplier_counter_evidence_ids: Vec::new(),
        escalated_by: None,
        escalation_reason: String::new(),
        decision_due_at: None,
        accepted_offer_id: String::new(),
        resolved_by: None,
        resolved_at: None,
        withdrawn_at: None,
        withdrawal_reason: String::new(),
        refusal_reason: String::new(),
        effects_completed_at: None,
        new_shipment_deadline: None,
        updated_at: now,
    };
    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &record).await.unwrap();
    let mut saved = record.clone();
    claims::save_claim(&mut tx, &mut saved, now).await.unwrap();
    tx.commit().await.unwrap();
    record.claim_id
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.map(|_| ()).err().map_or(Code::Ok, |s| s.code())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn only_the_parties_and_operators_reach_a_claim(pool: PgPool) {
    let mut d = start(&pool).await;
    let id = negotiating_claim(&pool).await.to_string();
    let get = |subject: &str, role: Role| {
        authorized(
            pb::GetClaimRequest {
                claim_id: id.clone(),
            },
            subject,
            role,
        )
    };
    for (subject, role, want) in [
        (BUYER, Role::Buyer, Code::Ok),
        (OWNER, Role::Supplier, Code::Ok),
        ("ops-1", Role::Arbiter, Code::Ok),
        // Strangers are told it does not exist; inspectors may not call.
        ("buyer-2", Role::Buyer, Code::NotFound),
        ("owner-2", Role::Supplier, Code::NotFound),
        ("agency-1", Role::Inspector, Code::PermissionDenied),
    ] {
        assert_eq!(
            code(d.client.get_claim(get(subject, role)).await),
            want,
            "{subject}"
        );
    }
    let listed =
        |subject: &str, role: Role| authorized(pb::ListClaimsRequest::default(), subject, role);
    let mine = d
        .client
        .list_claims(listed(BUYER, Role::Buyer))
        .await
        .unwrap();
    assert_eq!(mine.into_inner().claims.len(), 1);
    let theirs = d
        .client
        .list_claims(listed("buyer-2", Role::Buyer))
        .await
        .unwrap();
    assert!(theirs.into_inner().claims.is_empty());
    let owners = d
        .client
        .list_claims(listed(OWNER, Role::Supplier))
        .await
        .unwrap();
    assert_eq!(owners.into_inner().claims.len(), 1);

    // Offers are the supplier's, decisions the operators'.
    let offer = |subject: &str, role: Role, key: &str| {
        authorized(
            pb::MakeOfferRequest {
                idempotency_key: key.into(),
                claim_id: id.clone(),
                kind: pb::OfferKind::FullRefund as i32,
                ..Default::default()
            },
            subject,
            role,
        )
    };
    assert_eq!(
        code(d.client.make_offer(offer(BUYER, Role::Buyer, "o-1")).await),
        Code::PermissionDenied
    );
    let stranger = d
        .client
        .make_offer(offer("owner-2", Role::Supplier, "o-2"))
        .await
        .expect_err("another supplier's offer");
    assert_eq!(stranger.code(), Code::NotFound, "{stranger:?}");
    assert_eq!(stranger.message(), format!("claim {id} not found"));
    let made = d
        .client
        .make_offer(offer(OWNER, Role::Supplier, "o-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        made.offer.unwrap().refund_amount,
        Some(usd(100_000).to_proto())
    );
    let decide = authorized(
        pb::DecideClaimRequest {
            idempotency_key: "d-1".into(),
            claim_id: id.clone(),
            outcome: pb::ClaimOutcome::FullRefund as i32,
            reason: "x".into(),
            ..Default::default()
        },
        BUYER,
        Role::Buyer,
    );
    assert_eq!(
        code(d.client.decide_claim(decide).await),
        Code::PermissionDenied
    );
}

fn upload_messages(
    claim_id: &str,
    size: u64,
    sha: &str,
    content_type: &str,
    bytes: &[u8],
) -> Vec<pb::UploadEvidenceRequest> {
    let mut messages = vec![pb::UploadEvidenceRequest {
        idempotency_key: format!(
            "up-{}-{size}-{}",
            &sha[..12],
            content_type.replace('/', "_")
        ),
        reason: String::new(),
        part: Some(upload_evidence_request::Part::Metadata(
            pb::EvidenceMetadata {
                claim_id: claim_id.into(),
                kind: pb::EvidenceKind::Photo as i32,
                filename: "carton.jpg".into(),
                content_type: content_type.into(),
                size_bytes: size,
                sha256_hex: sha.into(),
                ..Default::default()
            },
        )),
    }];
    for chunk in bytes.chunks(16 * 1024) {
        messages.push(pb::UploadEvidenceRequest {
            idempotency_key: String::new(),
            reason: String::new(),
            part: Some(upload_evidence_request::Part::Chunk(chunk.to_vec())),
        });
    }
    messages
}

fn files(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
    walk(dir)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn evidence_is_checked_while_it_streams_and_stored_by_its_hash(pool: PgPool) {
    let mut d = start(&pool).await;
    let id = negotiating_claim(&pool).await.to_string();
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    let upload = |messages: Vec<pb::UploadEvidenceRequest>, subject: &str, role: Role| {
        authorized(tokio_stream::iter(messages), subject, role)
    };
    let len = bytes.len() as u64;
    for (size, sha, content_type, want) in [
        (200_000, sha.as_str(), "image/jpeg", "size_bytes"),
        (len, sha.as_str(), "application/zip", "content_type"),
        (len, &"0".repeat(64)[..], "image/jpeg", "SHA-256"),
        (len + 1, sha.as_str(), "image/png", "received"),
    ] {
        let refused = d
            .client
            .upload_evidence(upload(
                upload_messages(&id, size, sha, content_type, &bytes),
                BUYER,
                Role::Buyer,
            ))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(want), "{want}: {refused:?}");
    }
    assert_eq!(files(&d.evidence_dir), 0, "nothing stored");
    let stranger = d
        .client
        .upload_evidence(upload(
            upload_messages(&id, len, &sha, "image/jpeg", &bytes),
            "buyer-2",
            Role::Buyer,
        ))
        .await
        .expect_err("not a party");
    assert_eq!(stranger.code(), Code::NotFound, "{stranger:?}");
    assert_eq!(stranger.message(), format!("claim {id} not found"));

    let stored = d
        .client
        .upload_evidence(upload(
            upload_messages(&id, len, &sha, "image/jpeg", &bytes),
            OWNER,
            Role::Supplier,
        ))
        .await
        .unwrap()
        .into_inner()
        .evidence
        .unwrap();
    assert_eq!(files(&d.evidence_dir), 1);
    let mut stream = d
        .client
        .download_evidence(authorized(
            pb::DownloadEvidenceRequest {
                evidence_id: stored.evidence_id.clone(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    let mut first = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.part {
            Some(download_evidence_response::Part::Evidence(e)) => first = Some(e),
            Some(download_evidence_response::Part::Chunk(c)) => back.extend_from_slice(&c),
            None => {}
        }
    }
    assert_eq!(first.unwrap().evidence_id, stored.evidence_id);
    assert_eq!(back, bytes);
    let claim = d
        .client
        .get_claim(authorized(
            pb::GetClaimRequest { claim_id: id },
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner()
        .claim
        .unwrap();
    assert_eq!(claim.evidence_count, 1);
    let _ = std::fs::remove_dir_all(&d.evidence_dir);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_whose_contract_cannot_be_read_is_not_filed(pool: PgPool) {
    let mut d = start(&pool).await;
    let filed = d
        .client
        .file_claim(authorized(
            pb::FileClaimRequest {
                idempotency_key: "f-1".into(),
                contract_id: Uuid::now_v7().to_string(),
                reason: ta_proto::common::ClaimReason::Damage as i32,
                amount_claimed: Some(usd(1000).to_proto()),
                description: "broken".into(),
                ..Default::default()
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("contract is not configured");
    assert_eq!(filed.code(), Code::Unavailable, "{filed:?}");
    let invalid = d
        .client
        .file_claim(authorized(
            pb::FileClaimRequest {
                idempotency_key: "f-2".into(),
                ..Default::default()
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("every field named");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    for field in ["contract_id", "reason", "amount_claimed", "description"] {
        assert!(invalid.message().contains(field), "{field}: {invalid:?}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM dispute.claims")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

fn resumable_messages(
    claim_id: &str,
    key: &str,
    sha: &str,
    bytes: &[u8],
    size: u64,
    resume_from: u64,
) -> Vec<pb::UploadEvidenceRequest> {
    let mut messages = vec![pb::UploadEvidenceRequest {
        idempotency_key: key.into(),
        reason: String::new(),
        part: Some(upload_evidence_request::Part::Metadata(
            pb::EvidenceMetadata {
                claim_id: claim_id.into(),
                kind: pb::EvidenceKind::Photo as i32,
                filename: "carton.jpg".into(),
                content_type: "image/jpeg".into(),
                size_bytes: size,
                sha256_hex: sha.into(),
                resumable: true,
                resume_from,
                ..Default::default()
            },
        )),
    }];
    for chunk in bytes.chunks(10_000) {
        messages.push(pb::UploadEvidenceRequest {
            idempotency_key: String::new(),
            reason: String::new(),
            part: Some(upload_evidence_request::Part::Chunk(chunk.to_vec())),
        });
    }
    messages
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_resumable_upload_cut_off_resumes_where_the_server_stopped(pool: PgPool) {
    let mut d = start(&pool).await;
    let id = negotiating_claim(&pool).await.to_string();
    let bytes: Vec<u8> = (0..60_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let progress = |d: &mut Dispute| {
        let mut client = d.client.clone();
        let (id, sha) = (id.clone(), sha.clone());
        async move {
            client
                .get_upload_progress(authorized(
                    pb::GetUploadProgressRequest {
                        claim_id: id,
                        sha256_hex: sha,
                    },
                    BUYER,
                    Role::Buyer,
                ))
                .await
                .unwrap()
                .into_inner()
                .received_bytes
        }
    };
    assert_eq!(progress(&mut d).await, 0);

    // Two chunks, then the client hangs up.
    let first: Vec<_> = resumable_messages(&id, "r-1", &sha, &bytes, size, 0)
        .into_iter()
        .take(3)
        .collect();
    let stream = tokio_stream::StreamExt::chain(tokio_stream::iter(first), tokio_stream::pending());
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        d.client
            .upload_evidence(authorized(stream, BUYER, Role::Buyer)),
    )
    .await;
    assert!(cut.is_err(), "cut off");
    let mut held = 0;
    for _ in 0..50 {
        held = progress(&mut d).await;
        if held == 20_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let partial_dir = d.evidence_dir.join(".partial");
    let listing: Vec<_> = std::fs::read_dir(&partial_dir)
        .map(|r| {
            r.flatten()
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).ok()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(held, 20_000, "what arrived is kept: {listing:?}");
    // Nothing is evidence yet, and another uploader holds nothing.
    let evidence = d
        .client
        .list_evidence(authorized(
            pb::ListEvidenceRequest {
                claim_id: id.clone(),
                page: None,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner()
        .evidence;
    assert!(evidence.is_empty());

    let too_far = d
        .client
        .upload_evidence(authorized(
            tokio_stream::iter(resumable_messages(
                &id,
                "r-2",
                &sha,
                &bytes[30_000..],
                size,
                30_000,
            )),
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("beyond what the server holds");
    assert_eq!(too_far.code(), Code::InvalidArgument);
    assert!(too_far.message().contains("20000"), "{too_far:?}");
    assert_eq!(
        progress(&mut d).await,
        20_000,
        "a refused resume keeps nothing new"
    );

    let stored = d
        .client
        .upload_evidence(authorized(
            tokio_stream::iter(resumable_messages(
                &id,
                "r-3",
                &sha,
                &bytes[20_000..],
                size,
                20_000,
            )),
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner()
        .evidence
        .unwrap();
    assert_eq!(stored.metadata.unwrap().sha256_hex, sha);
    assert_eq!(progress(&mut d).await, 0, "the partial is gone");
    assert_eq!(files(&d.evidence_dir), 1, "only the stored file");
    let _ = std::fs::remove_dir_all(&d.evidence_dir);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_arbiter_change_leaves_one_audit_entry(pool: PgPool) {
    let mut d = start(&pool).await;
    let id = negotiating_claim(&pool).await.to_string();
    fn arbiter<T>(message: T) -> tonic::Request<T> {
        authorized(message, "arbiter-1", Role::Arbiter)
    }

    // The parties' own acts are the claim's timeline, not staff actions.
    d.client
        .escalate_claim(authorized(
            pb::EscalateClaimRequest {
                idempotency_key: "buyer-escalates".into(),
                claim_id: "00000000-0000-0000-0000-000000000000".into(),
                reason: "no answer".into(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("no such claim");

    let bytes: Vec<u8> = (0..2_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut messages = upload_messages(&id, bytes.len() as u64, &sha, "image/jpeg", &bytes);
    messages[0].reason = "the carrier's damage report, sent to us by e-mail".into();
    d.client
        .upload_evidence(authorized(
            tokio_stream::iter(messages),
            "arbiter-1",
            Role::Arbiter,
        ))
        .await
        .expect("evidence added by the arbiter");
    let escalate = pb::EscalateClaimRequest {
        idempotency_key: "escalate".into(),
        claim_id: id.clone(),
        reason: "the parties stopped answering".into(),
    };
    d.client
        .escalate_claim(arbiter(escalate.clone()))
        .await
        .expect("escalated");
    d.client
        .escalate_claim(arbiter(escalate))
        .await
        .expect("a retry replays");
    let reasonless = d
        .client
        .decide_claim(arbiter(pb::DecideClaimRequest {
            idempotency_key: "decide-blank".into(),
            claim_id: id.clone(),
            outcome: pb::ClaimOutcome::FullRefund as i32,
            reason: " ".into(),
            ..Default::default()
        }))
        .await
        .expect_err("a decision needs its reason");
    assert_eq!(reasonless.code(), Code::InvalidArgument);
    d.client
        .decide_claim(arbiter(pb::DecideClaimRequest {
            idempotency_key: "decide".into(),
            claim_id: id.clone(),
            outcome: pb::ClaimOutcome::FullRefund as i32,
            reason: "the carton was crushed in transit".into(),
            ..Default::default()
        }))
        .await
        .expect("decided");

    let entries = ta_testkit::audit_entries(d._server.channel.clone()).await;
    let methods = ta_testkit::audited_methods(&entries);
    assert_eq!(methods, ["UploadEvidence", "EscalateClaim", "DecideClaim"]);
    let mut declared = ta_testkit::staff_mutations(dispute::DISPUTE_SERVICE);
    declared.sort_unstable();
    let mut covered = methods.clone();
    covered.sort();
    assert_eq!(
        covered, declared,
        "every staff mutation of dispute is audited here"
    );
    for entry in &entries {
        let actor = entry.actor.as_ref().unwrap();
        assert_eq!(actor.principal_id, "arbiter-1");
        assert_eq!(actor.role, ta_proto::common::Role::Arbiter as i32);
        assert!(!entry.reason.is_empty());
    }
    // The upload's claim is in its metadata: the trail keeps the request.
    assert_eq!(entries[0].resource_id, "");
    assert_eq!(
        entries[0].reason,
        "the carrier's damage report, sent to us by e-mail"
    );
    assert_eq!(
        (
            entries[1].resource_type.as_str(),
            entries[1].resource_id.as_str()
        ),
        ("claim", id.as_str())
    );
    assert_eq!(entries[2].reason, "the carton was crushed in transit");
}
