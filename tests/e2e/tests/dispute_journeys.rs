//! A claim's life through the real binaries (supplier-registry, escrow,
//! contract, dispute) and the real grpcurl, with evidence streamed through a
//! raw gRPC client: every path checked against the escrow account, the
//! contract's state and the supplier's penalty points.

use std::{path::Path, process::Command, time::Duration};

use e2e_tests::{platform::*, *};
use ta_proto::dispute::{
    self as pb, dispute_service_client::DisputeServiceClient, download_evidence_response,
    upload_evidence_request,
};
use tokio_stream::StreamExt;

const BUYER: &str = "buyer-dispute";

fn fast_dispute(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("DISPUTE_TERM_DAY", "1s"),
        ("DISPUTE_NEGOTIATION_DAYS", "2"),
        ("DISPUTE_AUTO_ESCALATION_DAYS", "60"),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v));
    }
    env
}

fn dcall(dispute: &Service, method: &str, token: &str, body: &Value) -> Result<Value, RpcError> {
    dispute.call(&dispute_method(method), Some(token), body)
}

fn dcall_ok(dispute: &Service, method: &str, token: &str, body: &Value) -> Value {
    dispute.call_ok(&dispute_method(method), Some(token), body)
}

fn get_claim(dispute: &Service, token: &str, claim_id: &str) -> Value {
    dcall_ok(dispute, "GetClaim", token, &json!({ "claim_id": claim_id }))["claim"].clone()
}

/// Waits until the claim satisfies `ok`; returns it.
fn wait_claim(
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

fn wait_status(dispute: &Service, token: &str, claim_id: &str, status: &str) -> Value {
    wait_claim(dispute, token, claim_id, status, |c| c["status"] == status)
}

fn wait_effects(dispute: &Service, token: &str, claim_id: &str) -> Value {
    wait_claim(dispute, token, claim_id, "effects completed", |c| {
        !c["effectsCompletedAt"].is_null()
    })
}

fn file_claim(
    dispute: &Service,
    buyer: &str,
    key: &str,
    contract_id: &str,
    reason: &str,
    amount_minor: i64,
) -> Result<Value, RpcError> {
    dcall(
        dispute,
        "FileClaim",
        buyer,
        &json!({
            "idempotency_key": key,
            "contract_id": contract_id,
            "reason": reason,
            "quality_criterion_ids": ["QC-1"],
            "amount_claimed": usd(amount_minor),
            "description": "12 of 40 cartons arrived crushed, mugs broken"
        }),
    )
}

fn timeline_actions(dispute: &Service, token: &str, claim_id: &str) -> Vec<String> {
    let timeline = dcall_ok(
        dispute,
        "GetClaimTimeline",
        token,
        &json!({ "claim_id": claim_id, "page": { "page_size": 100 } }),
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

fn penalty_points(platform: &Platform, supplier_id: &str) -> i64 {
    let supplier = platform.registry.call_ok(
        &registry_method("GetSupplier"),
        Some(&platform.staff.support),
        &json!({ "supplier_id": supplier_id }),
    );
    int(&supplier["supplier"]["penaltyPoints"])
}

/// The supplier's inquiries and response rate, once they are `want`: each
/// claim that opened is an inquiry, the supplier's first answer its reply
/// (dispute records both through its outbox).
fn wait_response_rate(platform: &Platform, supplier_id: &str, want: (i64, i64)) {
    wait_until(PATIENCE, "the supplier's response rate", || {
        let supplier = platform.registry.call_ok(
            &registry_method("GetSupplier"),
            Some(&platform.staff.platform),
            &json!({ "supplier_id": supplier_id }),
        )["supplier"]
            .clone();
        let got = (
            int(&supplier["inquiryCount"]),
            int(&supplier["responseRateBasisPoints"]),
        );
        if got == want {
            Ok(())
        } else {
            Err(format!("(inquiries, basis points) {got:?}, want {want:?}"))
        }
    });
}

fn account(platform: &Platform, contract_id: &str) -> Value {
    platform.escrow_account(contract_id)["account"].clone()
}

fn freezes(account: &Value) -> usize {
    account["activeFreezes"].as_array().map_or(0, Vec::len)
}

/// The postings of the escrow statement made for `claim_id`: (kind, amount),
/// refunds first.
fn claim_postings(platform: &Platform, account_id: &str, claim_id: &str) -> Vec<(String, i64)> {
    let statement = platform.escrow.call_ok(
        &escrow_method("GetEscrowStatement"),
        Some(&platform.staff.support),
        &json!({ "escrow_account_id": account_id, "page": { "page_size": 100 } }),
    );
    let mut postings: Vec<(String, i64)> = statement["postings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["purpose"]["claimId"] == claim_id)
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or_default().to_owned(),
                int(&p["amount"]["amountMinor"]),
            )
        })
        .collect();
    postings.sort_by_key(|(kind, _)| kind != "POSTING_KIND_REFUND");
    postings
}

// ---- Evidence through a raw client -----------------------------------------

/// Deterministic bytes that do not compress.
fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let dir = TempDir::new("sha");
    let path = dir.path().join("file");
    std::fs::write(&path, bytes).expect("write");
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// Every file under `dir`, staging files included.
fn stored_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(dispute: &Service) -> DisputeServiceClient<tonic::transport::Channel> {
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

struct Upload<'a> {
    key: &'a str,
    claim_id: &'a str,
    kind: pb::EvidenceKind,
    content_type: &'a str,
    declared_size: u64,
    sha256_hex: String,
    bytes: &'a [u8],
}

fn upload_messages(u: &Upload<'_>) -> Vec<pb::UploadEvidenceRequest> {
    let mut messages = vec![pb::UploadEvidenceRequest {
        idempotency_key: u.key.to_owned(),
        part: Some(upload_evidence_request::Part::Metadata(
            pb::EvidenceMetadata {
                claim_id: u.claim_id.to_owned(),
                kind: u.kind as i32,
                filename: "evidence.bin".into(),
                content_type: u.content_type.into(),
                size_bytes: u.declared_size,
                sha256_hex: u.sha256_hex.clone(),
                description: "as received".into(),
                quality_criterion_ids: vec!["QC-1".into()],
                ..Default::default()
            },
        )),
        // A party's upload: only staff give a reason.
        reason: String::new(),
    }];
    for chunk in u.bytes.chunks(1024 * 1024) {
        messages.push(pb::UploadEvidenceRequest {
            idempotency_key: String::new(),
            part: Some(upload_evidence_request::Part::Chunk(chunk.to_vec())),
            reason: String::new(),
        });
    }
    messages
}

fn upload(dispute: &Service, token: &str, u: &Upload<'_>) -> Result<pb::Evidence, tonic::Status> {
    let messages = upload_messages(u);
    runtime().block_on(async {
        let mut client = client(dispute).await;
        client
            .upload_evidence(authorized(tokio_stream::iter(messages), token))
            .await
            .map(|r| r.into_inner().evidence.expect("evidence"))
    })
}

/// Sends the metadata and the first chunks, then hangs up mid-stream.
fn upload_cut_off(dispute: &Service, token: &str, u: &Upload<'_>) {
    let messages: Vec<_> = upload_messages(u).into_iter().take(3).collect();
    runtime().block_on(async {
        let mut client = client(dispute).await;
        let stream = tokio_stream::iter(messages).chain(tokio_stream::pending());
        let call = client.upload_evidence(authorized(stream, token));
        let cut = tokio::time::timeout(Duration::from_millis(700), call).await;
        assert!(cut.is_err(), "the upload cannot finish without its bytes");
    });
}

/// (the evidence, the file's bytes).
fn download(
    dispute: &Service,
    token: &str,
    evidence_id: &str,
) -> Result<(pb::Evidence, Vec<u8>), tonic::Status> {
    runtime().block_on(async {
        let mut client = client(dispute).await;
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

// ---- Journeys ------------------------------------------------------------------

#[test]
fn a_damage_claim_negotiated_escalated_and_decided_splits_the_money() {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(
        store.path(),
        &fast_dispute(&[("DISPUTE_NEGOTIATION_DAYS", "8")]),
    );
    let owner = "supplier-damaged";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let arbiter = platform.staff.arbiter.clone();
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, account_id) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);

    // Only the contract's buyer files; to another the contract does not exist.
    let stranger = mint("buyer-stranger", Role::Buyer);
    let denied = file_claim(
        &dispute,
        &stranger,
        "file-x",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        1000,
    )
    .expect_err("not the buyer");
    assert_eq!(denied.code, "NotFound", "{denied:#?}");
    assert_eq!(denied.message, format!("contract {contract_id} not found"));
    let too_much = file_claim(
        &dispute,
        &buyer,
        "file-y",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        310_001,
    )
    .expect_err("more than is held");
    assert_eq!(too_much.code, "InvalidArgument", "{too_much:#?}");
    let reship = dcall(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "file-z", "contract_id": contract_id, "reason": "CLAIM_REASON_DAMAGE",
                 "remedy": "REMEDY_RESHIPMENT", "amount_claimed": usd(1000), "description": "broken" }),
    )
    .expect_err("reshipment is for goods not shipped");
    assert!(reship.message.contains("remedy"), "{reship:#?}");

    let filed = file_claim(
        &dispute,
        &buyer,
        "file-1",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        200_000,
    )
    .expect("files");
    assert_eq!(
        filed["claim"]["status"], "CLAIM_STATUS_OPENING",
        "{filed:#}"
    );
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    let again = file_claim(
        &dispute,
        &buyer,
        "file-1",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        200_000,
    )
    .expect("a retry replays");
    assert_eq!(again["claim"]["claimId"], claim_id.as_str());

    // Opened: the contract is in dispute and escrow frozen for this claim.
    let open = wait_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    assert_eq!(open["supplierPrincipalId"], owner);
    assert_eq!(
        platform.get_contract(&contract_id)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );
    let frozen = account(&platform, &contract_id);
    assert_eq!(
        frozen["activeFreezes"][0]["claimId"],
        claim_id.as_str(),
        "{frozen:#}"
    );
    // The buyer may not escalate while the negotiation window is open.
    let early = dcall(
        &dispute,
        "EscalateClaim",
        &buyer,
        &json!({ "idempotency_key": "escalate-early", "claim_id": claim_id, "reason": "no agreement" }),
    )
    .expect_err("the window is open");
    assert_eq!(early.code, "FailedPrecondition", "{early:#?}");
    // Nobody else sees the claim, not even that it exists.
    let other_supplier = mint("supplier-other", Role::Supplier);
    let hidden = dcall(
        &dispute,
        "GetClaim",
        &other_supplier,
        &json!({ "claim_id": claim_id }),
    )
    .expect_err("not a party");
    assert_eq!(hidden.code, "NotFound", "{hidden:#?}");
    assert_eq!(hidden.message, format!("claim {claim_id} not found"));

    // Evidence: a photo up, down by its hash, the same bytes.
    let photo = file_bytes(300_000, 7);
    let photo_sha = sha256_hex(&photo);
    let photo_upload = Upload {
        key: "photo-1",
        claim_id: &claim_id,
        kind: pb::EvidenceKind::Photo,
        content_type: "image/jpeg",
        declared_size: photo.len() as u64,
        sha256_hex: photo_sha.clone(),
        bytes: &photo,
    };
    let evidence = upload(&dispute, &buyer, &photo_upload).expect("uploads");
    let evidence_id = evidence.evidence_id.clone();
    assert_eq!(
        evidence.metadata.as_ref().expect("metadata").sha256_hex,
        photo_sha
    );
    let replay = upload(&dispute, &buyer, &photo_upload).expect("a retry replays");
    assert_eq!(replay.evidence_id, evidence_id);
    let (downloaded, bytes) = download(&dispute, &supplier, &evidence_id).expect("downloads");
    assert_eq!(downloaded.evidence_id, evidence_id);
    assert_eq!(sha256_hex(&bytes), photo_sha);
    assert_eq!(bytes, photo);
    let stranger_download = download(&dispute, &other_supplier, &evidence_id).expect_err("hidden");
    assert_eq!(stranger_download.code(), tonic::Code::NotFound);
    assert_eq!(
        stranger_download.message(),
        format!("evidence {evidence_id} not found")
    );

    // A 20 MB video in 1 MiB chunks, and back with the same SHA-256.
    let video = file_bytes(20_000_000, 11);
    let video_sha = sha256_hex(&video);
    let video_evidence = upload(
        &dispute,
        &supplier,
        &Upload {
            key: "video-1",
            claim_id: &claim_id,
            kind: pb::EvidenceKind::Video,
            content_type: "video/mp4",
            declared_size: video.len() as u64,
            sha256_hex: video_sha.clone(),
            bytes: &video,
        },
    )
    .expect("20 MB uploads");
    let (_, video_back) =
        download(&dispute, &buyer, &video_evidence.evidence_id).expect("downloads");
    assert_eq!(video_back.len(), video.len());
    assert_eq!(sha256_hex(&video_back), video_sha);
    let before = stored_files(store.path());
    assert_eq!(before.len(), 2, "{before:?}");

    // Refused uploads leave nothing behind: too large, a forbidden type, a
    // wrong hash, fewer bytes than declared, a stream cut off.
    let other = file_bytes(50_000, 13);
    let other_sha = sha256_hex(&other);
    let refusals = [
        (
            pb::EvidenceKind::Photo,
            "image/jpeg",
            26 * 1024 * 1024,
            other_sha.clone(),
            "size_bytes",
        ),
        (
            pb::EvidenceKind::Photo,
            "application/x-msdownload",
            other.len() as u64,
            other_sha.clone(),
            "content_type",
        ),
        (
            pb::EvidenceKind::Photo,
            "image/png",
            other.len() as u64,
            photo_sha.clone(),
            "SHA-256",
        ),
        (
            pb::EvidenceKind::Document,
            "application/pdf",
            other.len() as u64 + 10,
            other_sha.clone(),
            "received",
        ),
    ];
    for (i, (kind, content_type, size, sha, named)) in refusals.into_iter().enumerate() {
        let key = format!("bad-{i}");
        let refused = upload(
            &dispute,
            &buyer,
            &Upload {
                key: &key,
                claim_id: &claim_id,
                kind,
                content_type,
                declared_size: size,
                sha256_hex: sha,
                bytes: &other,
            },
        )
        .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(named), "{named}: {refused:?}");
    }
    upload_cut_off(
        &dispute,
        &buyer,
        &Upload {
            key: "cut-1",
            claim_id: &claim_id,
            kind: pb::EvidenceKind::Video,
            content_type: "video/mp4",
            declared_size: video.len() as u64 + 1,
            sha256_hex: other_sha,
            bytes: &video,
        },
    );
    wait_until(PATIENCE, "the cut-off upload's staging file to go", || {
        let now = stored_files(store.path());
        if now == before {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let listed = dcall_ok(
        &dispute,
        "ListEvidence",
        &supplier,
        &json!({ "claim_id": claim_id }),
    );
    assert_eq!(
        listed["evidence"].as_array().map(Vec::len),
        Some(2),
        "{listed:#}"
    );

    // The supplier offers part; the buyer rejects it with counter-evidence.
    let offered = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-1", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(50_000), "message": "we refund the broken cartons" }),
    );
    let offer_id = offered["offer"]["offerId"]
        .as_str()
        .expect("offerId")
        .to_owned();
    let not_buyer = dcall(
        &dispute,
        "AcceptOffer",
        &supplier,
        &json!({ "idempotency_key": "accept-x", "claim_id": claim_id, "offer_id": offer_id }),
    )
    .expect_err("the supplier cannot accept its own offer");
    assert_eq!(not_buyer.code, "FailedPrecondition", "{not_buyer:#?}");
    let stranger_accepts = dcall(
        &dispute,
        "AcceptOffer",
        &other_supplier,
        &json!({ "idempotency_key": "accept-y", "claim_id": claim_id, "offer_id": offer_id }),
    )
    .expect_err("not a party");
    assert_eq!(stranger_accepts.code, "NotFound", "{stranger_accepts:#?}");
    assert_eq!(
        stranger_accepts.message,
        format!("claim {claim_id} not found")
    );
    let rejected = dcall_ok(
        &dispute,
        "RejectOffer",
        &buyer,
        &json!({ "idempotency_key": "reject-1", "claim_id": claim_id, "offer_id": offer_id,
                 "reason": "far more than the cartons broke", "counter_evidence_ids": [evidence_id] }),
    );
    assert_eq!(
        rejected["claim"]["offers"][0]["status"],
        "OFFER_STATUS_REJECTED"
    );

    // The buyer escalates once the negotiation window has passed.
    let escalated = wait_until(PATIENCE, "the buyer's escalation", || {
        dcall(
            &dispute,
            "EscalateClaim",
            &buyer,
            &json!({ "idempotency_key": "escalate-1", "claim_id": claim_id, "reason": "no agreement" }),
        )
        .map_err(|e| format!("{e:#?}"))
    });
    assert_eq!(escalated["claim"]["status"], "CLAIM_STATUS_ESCALATED");
    assert_eq!(escalated["claim"]["escalatedBy"]["principalId"], BUYER);

    // An arbiter decides a partial refund; escrow splits the money, the
    // contract completes, the supplier is penalised.
    let not_arbiter = dcall(
        &dispute,
        "DecideClaim",
        &buyer,
        &json!({ "idempotency_key": "decide-x", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_FULL_REFUND", "reason": "x" }),
    )
    .expect_err("arbiters decide");
    assert_eq!(not_arbiter.code, "PermissionDenied", "{not_arbiter:#?}");
    for staff in [&platform.staff.finance, &platform.staff.support] {
        let other_duty = dcall(
            &dispute,
            "DecideClaim",
            staff,
            &json!({ "idempotency_key": "decide-y", "claim_id": claim_id,
                     "outcome": "CLAIM_OUTCOME_FULL_REFUND", "reason": "not my duty" }),
        )
        .expect_err("arbiters decide");
        assert_eq!(other_duty.code, "PermissionDenied", "{other_duty:#?}");
    }
    let decision = json!({ "idempotency_key": "decide-1", "claim_id": claim_id,
        "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND", "refund_amount": usd(120_000),
        "reason": "photos show 15 of 40 cartons crushed" });
    let decided = dcall_ok(&dispute, "DecideClaim", &arbiter, &decision);
    assert_eq!(decided["claim"]["status"], "CLAIM_STATUS_DECIDED");
    let replayed = dcall_ok(&dispute, "DecideClaim", &arbiter, &decision);
    assert_eq!(
        replayed["claim"]["resolution"],
        decided["claim"]["resolution"]
    );
    let twice = dcall(
        &dispute,
        "DecideClaim",
        &arbiter,
        &json!({ "idempotency_key": "decide-2", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_FULL_REFUND", "reason": "again" }),
    )
    .expect_err("decided once");
    assert_eq!(twice.code, "FailedPrecondition", "{twice:#?}");

    let done = wait_effects(&dispute, &buyer, &claim_id);
    assert_eq!(done["resolution"]["penaltyPoints"], 6, "{done:#}");
    let contract = platform.wait_status(&contract_id, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(contract["acceptance"], "ACCEPTANCE_KIND_CLAIM_OUTCOME");
    let settled = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &contract_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(
        int(&settled["refundedTotal"]["amountMinor"]),
        120_000,
        "{settled:#}"
    );
    assert_eq!(
        int(&settled["releasedTotal"]["amountMinor"]),
        190_000,
        "{settled:#}"
    );
    assert_eq!(int(&settled["held"]["amountMinor"]), 0, "{settled:#}");
    assert_eq!(freezes(&settled), 0);
    assert_eq!(penalty_points(&platform, &supplier_id), 6);
    assert_eq!(
        claim_postings(&platform, &account_id, &claim_id),
        [
            ("POSTING_KIND_REFUND".to_owned(), 120_000),
            ("POSTING_KIND_RELEASE".to_owned(), 190_000)
        ],
        "the statement: one refund and the rest released, both naming the claim"
    );
    platform.assert_ledger_reconciles();

    let actions = timeline_actions(&dispute, &supplier, &claim_id);
    let wanted = [
        "claim.filed",
        "claim.opened",
        "evidence.added",
        "offer.made",
        "offer.rejected",
        "claim.escalated",
        "claim.decided",
        "claim.effects_completed",
    ];
    for action in wanted {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    assert_eq!(
        actions.last().map(String::as_str),
        Some("claim.effects_completed")
    );
    // Evidence is added only while the claim is open.
    let closed = upload(
        &dispute,
        &buyer,
        &Upload {
            key: "late",
            claim_id: &claim_id,
            kind: pb::EvidenceKind::Photo,
            content_type: "image/jpeg",
            declared_size: photo.len() as u64,
            sha256_hex: photo_sha,
            bytes: &photo,
        },
    )
    .expect_err("decided");
    assert_eq!(closed.code(), tonic::Code::FailedPrecondition, "{closed:?}");
}

#[test]
fn a_withdrawn_claim_resumes_the_contract_for_good_and_a_late_one_is_refused_with_the_reason() {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-withdrawn";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);

    let filed = file_claim(
        &dispute,
        &buyer,
        "file-1",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        100_000,
    )
    .expect("files");
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    let second = file_claim(
        &dispute,
        &buyer,
        "file-2",
        &contract_id,
        "CLAIM_REASON_SHORT_QUANTITY",
        1000,
    )
    .expect_err("one open claim per contract");
    assert_eq!(second.code, "FailedPrecondition", "{second:#?}");
    assert!(second.message.contains("already"), "{second:#?}");

    let withdrawn = dcall_ok(
        &dispute,
        "WithdrawClaim",
        &buyer,
        &json!({ "idempotency_key": "withdraw-1", "claim_id": claim_id, "reason": "the supplier replaced the cartons" }),
    );
    assert_eq!(withdrawn["claim"]["status"], "CLAIM_STATUS_WITHDRAWN");
    wait_effects(&dispute, &buyer, &claim_id);
    let resumed = platform.wait_status(&contract_id, "CONTRACT_STATUS_DELIVERED");
    assert_eq!(resumed["openClaimId"], "");
    let held = account(&platform, &contract_id);
    assert_eq!(freezes(&held), 0, "{held:#}");
    assert_eq!(int(&held["held"]["amountMinor"]), 310_000);
    assert_eq!(penalty_points(&platform, &supplier_id), 0);

    // Never reopened, nor filed again for the same reason.
    let reopened = dcall(
        &dispute,
        "EscalateClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "reopen", "claim_id": claim_id, "reason": "the buyer asked to reopen" }),
    )
    .expect_err("withdrawn is final");
    assert_eq!(reopened.code, "FailedPrecondition", "{reopened:#?}");
    let refiled = file_claim(
        &dispute,
        &buyer,
        "file-3",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        100_000,
    )
    .expect_err("withdrawn for good");
    assert_eq!(refiled.code, "FailedPrecondition", "{refiled:#?}");
    assert!(refiled.message.contains("withdrawn"), "{refiled:#?}");
    let actions = timeline_actions(&dispute, &buyer, &claim_id);
    assert_eq!(
        actions,
        [
            "claim.filed",
            "claim.opened",
            "claim.withdrawn",
            "claim.effects_completed"
        ],
    );

    // A claim window of one day (a second here): a claim after it is refused
    // by the contract, and the claim says why.
    let (late_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 1, 30);
    std::thread::sleep(Duration::from_secs(2));
    let late = file_claim(
        &dispute,
        &buyer,
        "file-late",
        &late_id,
        "CLAIM_REASON_DAMAGE",
        100_000,
    )
    .expect("filed, then asked");
    let late_claim = late["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    let refused = wait_status(&dispute, &buyer, &late_claim, "CLAIM_STATUS_REFUSED");
    assert!(
        refused["refusalReason"]
            .as_str()
            .is_some_and(|r| r.starts_with("CLAIM_WINDOW_CLOSED: ")),
        "{refused:#}"
    );
    assert_eq!(
        platform.get_contract(&late_id)["status"],
        "CONTRACT_STATUS_DELIVERED"
    );
    assert_eq!(freezes(&account(&platform, &late_id)), 0);
    let offer = dcall(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-late", "claim_id": late_claim, "kind": "OFFER_KIND_FULL_REFUND" }),
    )
    .expect_err("refused is final");
    assert_eq!(offer.code, "FailedPrecondition", "{offer:#?}");
}

#[test]
fn an_unsettled_claim_escalates_by_itself_a_release_completes_and_a_full_refund_restricts_the_supplier()
 {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(
        store.path(),
        &fast_dispute(&[("DISPUTE_AUTO_ESCALATION_DAYS", "4")]),
    );
    let owner = "supplier-timer";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = file_claim(
        &dispute,
        &buyer,
        "file-1",
        &contract_id,
        "CLAIM_REASON_QUALITY_MISMATCH",
        310_000,
    )
    .expect("files");
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    // The open claim is an inquiry the supplier has not answered yet.
    wait_response_rate(&platform, &supplier_id, (1, 0));
    dcall_ok(
        &dispute,
        "RejectClaim",
        &supplier,
        &json!({ "idempotency_key": "reject", "claim_id": claim_id, "reason": "the glaze is as agreed" }),
    );
    // Its rejection is the reply: one inquiry, answered.
    wait_response_rate(&platform, &supplier_id, (1, 10_000));
    let escalated = wait_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_ESCALATED");
    assert_eq!(
        escalated["escalatedBy"]["role"], "ROLE_SERVICE",
        "{escalated:#}"
    );
    assert_eq!(
        escalated["supplierRejectionReason"],
        "the glaze is as agreed"
    );

    dcall_ok(
        &dispute,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide", "claim_id": claim_id,
                 "outcome": "CLAIM_OUTCOME_RELEASE_TO_SUPPLIER", "reason": "QC-1 within tolerance on re-test" }),
    );
    let done = wait_effects(&dispute, &buyer, &claim_id);
    assert_eq!(done["resolution"]["penaltyPoints"], 0, "{done:#}");
    platform.wait_status(&contract_id, "CONTRACT_STATUS_COMPLETED");
    let released = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &contract_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(
        int(&released["releasedTotal"]["amountMinor"]),
        310_000,
        "{released:#}"
    );
    assert_eq!(
        int(&released["refundedTotal"]["amountMinor"]),
        0,
        "{released:#}"
    );
    assert_eq!(penalty_points(&platform, &supplier_id), 0);
    let actions = timeline_actions(&dispute, &buyer, &claim_id);
    assert!(
        actions.iter().any(|a| a == "claim.rejected_by_supplier"),
        "{actions:?}"
    );

    // A full refund decided against the supplier, with the points that reach
    // the restriction threshold: the contract is refunded, the supplier
    // restricted and its limit lowered.
    let (refund_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = file_claim(
        &dispute,
        &buyer,
        "file-2",
        &refund_id,
        "CLAIM_REASON_OTHER",
        310_000,
    )
    .expect("files");
    let refund_claim = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&dispute, &buyer, &refund_claim, "CLAIM_STATUS_NEGOTIATING");
    dcall_ok(
        &dispute,
        "EscalateClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "escalate-2", "claim_id": refund_claim, "reason": "counterfeit goods reported" }),
    );
    dcall_ok(
        &dispute,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide-2", "claim_id": refund_claim, "outcome": "CLAIM_OUTCOME_FULL_REFUND",
                 "reason": "the goods are not the ones agreed", "penalty_points": 24 }),
    );
    let done = wait_effects(&dispute, &buyer, &refund_claim);
    assert_eq!(
        int(&done["resolution"]["refundAmount"]["amountMinor"]),
        310_000
    );
    platform.wait_status(&refund_id, "CONTRACT_STATUS_REFUNDED");
    let refunded = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &refund_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(int(&refunded["refundedTotal"]["amountMinor"]), 310_000);
    assert_eq!(int(&refunded["releasedTotal"]["amountMinor"]), 0);
    // The second claim was decided without a word from the supplier: two
    // inquiries, one answered.
    wait_response_rate(&platform, &supplier_id, (2, 5_000));
    let restricted = platform.registry.call_ok(
        &registry_method("GetSupplier"),
        Some(&platform.staff.support),
        &json!({ "supplier_id": supplier_id }),
    )["supplier"]
        .clone();
    assert_eq!(int(&restricted["penaltyPoints"]), 24, "{restricted:#}");
    assert_eq!(
        restricted["status"], "SUPPLIER_STATUS_RESTRICTED",
        "{restricted:#}"
    );
    assert_eq!(
        int(&restricted["taLimit"]["amountMinor"]),
        500_000,
        "{restricted:#}"
    );
    platform.assert_ledger_reconciles();
}

/// The feed's events from `after`, read for a few seconds (it stays open).
fn feed_events(dispute: &Service, token: &str, after: u64) -> Vec<pb::DisputeEvent> {
    runtime().block_on(async {
        let mut client = client(dispute).await;
        let mut stream = client
            .stream_dispute_events(authorized(
                pb::StreamDisputeEventsRequest {
                    after_sequence: after,
                },
                token,
            ))
            .await
            .expect("the feed opens")
            .into_inner();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await {
            if let Some(event) = message.event {
                events.push(event);
            }
        }
        events
    })
}

#[test]
fn settlements_between_the_parties_and_counter_offers_refund_without_a_penalty_and_the_feed_tells_them()
 {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(
        store.path(),
        &fast_dispute(&[("DISPUTE_NEGOTIATION_DAYS", "8")]),
    );
    let owner = "supplier-settles";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(2_000_000));

    // The supplier accepts the claim (a full refund offer), the buyer takes it.
    let (full_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = file_claim(
        &dispute,
        &buyer,
        "file-full",
        &full_id,
        "CLAIM_REASON_QUALITY_MISMATCH",
        310_000,
    )
    .expect("files");
    let full_claim = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&dispute, &buyer, &full_claim, "CLAIM_STATUS_NEGOTIATING");
    let offered = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-full", "claim_id": full_claim, "kind": "OFFER_KIND_FULL_REFUND",
                 "message": "we accept the claim" }),
    );
    assert_eq!(
        int(&offered["offer"]["refundAmount"]["amountMinor"]),
        310_000
    );
    let offer_id = offered["offer"]["offerId"]
        .as_str()
        .expect("offerId")
        .to_owned();
    let settled = dcall_ok(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "accept-full", "claim_id": full_claim, "offer_id": offer_id }),
    );
    assert_eq!(settled["claim"]["status"], "CLAIM_STATUS_SETTLED");
    assert_eq!(
        settled["claim"]["resolution"]["acceptedOfferId"],
        offer_id.as_str()
    );
    wait_effects(&dispute, &buyer, &full_claim);
    platform.wait_status(&full_id, "CONTRACT_STATUS_REFUNDED");
    let refunded = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &full_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(int(&refunded["refundedTotal"]["amountMinor"]), 310_000);
    assert_eq!(int(&refunded["releasedTotal"]["amountMinor"]), 0);

    // A partial offer, raised, countered by the buyer: the rest goes to the
    // supplier.
    let (part_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = file_claim(
        &dispute,
        &buyer,
        "file-part",
        &part_id,
        "CLAIM_REASON_SHORT_QUANTITY",
        100_000,
    )
    .expect("files");
    let part_claim = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&dispute, &buyer, &part_claim, "CLAIM_STATUS_NEGOTIATING");
    let offer = |key: &str, amount: i64| {
        dcall_ok(
            &dispute,
            "MakeOffer",
            &supplier,
            &json!({ "idempotency_key": key, "claim_id": part_claim, "kind": "OFFER_KIND_PARTIAL_REFUND",
                     "refund_amount": usd(amount) }),
        )["offer"]["offerId"]
            .as_str()
            .expect("offerId")
            .to_owned()
    };
    let first = offer("offer-1", 60_000);
    offer("offer-2", 80_000);
    let stale = dcall(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "accept-1", "claim_id": part_claim, "offer_id": first }),
    )
    .expect_err("superseded");
    assert_eq!(stale.code, "FailedPrecondition", "{stale:#?}");
    // The buyer counters; the supplier rejects, then accepts a lower counter.
    let counter = |key: &str, amount: i64| {
        dcall_ok(
            &dispute,
            "CounterOffer",
            &buyer,
            &json!({ "idempotency_key": key, "claim_id": part_claim, "kind": "OFFER_KIND_PARTIAL_REFUND",
                     "refund_amount": usd(amount), "message": "what the missing cartons cost" }),
        )["offer"]
            .clone()
    };
    let high = counter("counter-1", 95_000);
    assert_eq!(high["madeBy"], "OFFER_PARTY_BUYER", "{high:#}");
    let high_id = high["offerId"].as_str().expect("offerId").to_owned();
    let own = dcall(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "accept-own", "claim_id": part_claim, "offer_id": high_id }),
    )
    .expect_err("the supplier answers a counter-offer");
    assert_eq!(own.code, "FailedPrecondition", "{own:#?}");
    dcall_ok(
        &dispute,
        "RejectOffer",
        &supplier,
        &json!({ "idempotency_key": "reject-counter", "claim_id": part_claim, "offer_id": high_id,
                 "reason": "only 8 cartons are missing" }),
    );
    let low_id = counter("counter-2", 85_000)["offerId"]
        .as_str()
        .expect("offerId")
        .to_owned();
    let accepted = dcall_ok(
        &dispute,
        "AcceptOffer",
        &supplier,
        &json!({ "idempotency_key": "accept-2", "claim_id": part_claim, "offer_id": low_id }),
    );
    assert_eq!(accepted["claim"]["status"], "CLAIM_STATUS_SETTLED");
    let statuses: Vec<&str> = accepted["claim"]["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .map(|o| o["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        [
            "OFFER_STATUS_SUPERSEDED",
            "OFFER_STATUS_SUPERSEDED",
            "OFFER_STATUS_REJECTED",
            "OFFER_STATUS_ACCEPTED"
        ]
    );
    wait_effects(&dispute, &buyer, &part_claim);
    platform.wait_status(&part_id, "CONTRACT_STATUS_COMPLETED");
    let split = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &part_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(int(&split["refundedTotal"]["amountMinor"]), 85_000);
    assert_eq!(int(&split["releasedTotal"]["amountMinor"]), 225_000);
    assert_eq!(
        penalty_points(&platform, &supplier_id),
        0,
        "settlements cost no points"
    );
    platform.assert_ledger_reconciles();

    // The feed: staff and back ends only; every step in order, resumable from a cursor.
    let denied = runtime().block_on(async {
        let mut c = client(&dispute).await;
        c.stream_dispute_events(authorized(
            pb::StreamDisputeEventsRequest { after_sequence: 0 },
            &buyer,
        ))
        .await
        .map(|_| ())
    });
    assert_eq!(
        denied.expect_err("staff and back ends only").code(),
        tonic::Code::PermissionDenied
    );
    let events = feed_events(&dispute, &platform.staff.platform, 0);
    let of_full: Vec<pb::DisputeEventType> = events
        .iter()
        .filter(|e| e.claim.as_ref().is_some_and(|c| c.claim_id == full_claim))
        .map(|e| e.r#type())
        .collect();
    use pb::DisputeEventType as E;
    assert_eq!(
        of_full,
        [
            E::ClaimFiled,
            E::ClaimOpened,
            E::OfferMade,
            E::Settled,
            E::EffectsCompleted
        ]
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let later = feed_events(&dispute, &platform.staff.support, events[4].sequence);
    assert_eq!(later.len(), events.len() - 5);
}

#[test]
fn a_dispute_killed_after_a_decision_moves_the_money_once_when_restarted() {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let owner = "supplier-killed";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, account_id) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let mut first = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let filed = file_claim(
        &first,
        &buyer,
        "file-1",
        &contract_id,
        "CLAIM_REASON_DAMAGE",
        200_000,
    )
    .expect("files");
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_status(&first, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    dcall_ok(
        &first,
        "EscalateClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "escalate", "claim_id": claim_id, "reason": "the buyer's season starts next week" }),
    );
    first.kill();

    // A replica whose relay waits a minute between polls, not woken by a
    // commit: the decision is committed, its calls are in the outbox,
    // nothing has moved yet.
    let mut slow = platform.spawn_dispute(
        store.path(),
        &fast_dispute(&[
            ("WORKFLOW_OUTBOX_POLL_INTERVAL", "60s"),
            ("WORKFLOW_OUTBOX_WAKE_ON_COMMIT", "false"),
        ]),
    );
    dcall_ok(
        &slow,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND",
                 "refund_amount": usd(120_000), "reason": "half the shipment damaged" }),
    );
    let held = account(&platform, &contract_id);
    assert_eq!(int(&held["refundedTotal"]["amountMinor"]), 0, "{held:#}");
    slow.kill();

    let restarted = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    wait_effects(&restarted, &buyer, &claim_id);
    platform.wait_status(&contract_id, "CONTRACT_STATUS_COMPLETED");
    let settled = wait_until(PATIENCE, "the account to close", || {
        let a = account(&platform, &contract_id);
        if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(int(&settled["refundedTotal"]["amountMinor"]), 120_000);
    assert_eq!(int(&settled["releasedTotal"]["amountMinor"]), 190_000);
    assert_eq!(penalty_points(&platform, &supplier_id), 6);
    assert_eq!(
        claim_postings(&platform, &account_id, &claim_id),
        [
            ("POSTING_KIND_REFUND".to_owned(), 120_000),
            ("POSTING_KIND_RELEASE".to_owned(), 190_000)
        ],
        "the statement: one refund and the rest released, both naming the claim"
    );
    let mut session = platform.session();
    assert_eq!(
        session.int(
            "SELECT count(*) FROM dispute.workflow_outbox WHERE method LIKE '%/SettleClaim' OR method LIKE '%/RecordPenalty'"
        ),
        2,
        "one settlement and one penalty call"
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn a_claim_racing_the_acceptance_loses_or_wins_alone_and_a_late_shipment_claim_resumes_the_contract()
 {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-racing";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(2_000_000));

    // The buyer accepts the goods while its claim is being filed: exactly one
    // of the two wins.
    let (raced_id, _) = platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let accept = grpcurl_spawn(&call_args(
        &platform.contract.addr(),
        &contract_method("AcceptGoods"),
        Some(&buyer),
        &json!({ "idempotency_key": "accept-race", "contract_id": raced_id }),
    ));
    let filed = file_claim(
        &dispute,
        &buyer,
        "file-race",
        &raced_id,
        "CLAIM_REASON_DAMAGE",
        100_000,
    );
    let accepted = accept.wait(PATIENCE).status.success();
    match filed {
        Ok(filed) => {
            let claim_id = filed["claim"]["claimId"]
                .as_str()
                .expect("claimId")
                .to_owned();
            let settled = wait_claim(&dispute, &buyer, &claim_id, "opened or refused", |c| {
                c["status"] == "CLAIM_STATUS_NEGOTIATING" || c["status"] == "CLAIM_STATUS_REFUSED"
            });
            let contract = platform.get_contract(&raced_id);
            if settled["status"] == "CLAIM_STATUS_REFUSED" {
                assert!(accepted, "the acceptance won");
                assert_ne!(contract["status"], "CONTRACT_STATUS_IN_DISPUTE");
                assert!(
                    settled["refusalReason"]
                        .as_str()
                        .is_some_and(|r| !r.is_empty())
                );
            } else {
                assert!(!accepted, "the claim won, the acceptance was refused");
                assert_eq!(contract["status"], "CONTRACT_STATUS_IN_DISPUTE");
            }
        }
        Err(refused) => {
            // Accepted before the claim could even be read as open.
            assert!(accepted, "{refused:#?}");
            assert_eq!(refused.code, "FailedPrecondition", "{refused:#?}");
        }
    }

    // Late shipment: nothing shipped by the deadline; a partial refund is
    // decided and the contract resumes, the rest still held for it.
    let mut late = terms("PROTECTION_TRADE_ASSURANCE");
    late["shipment_deadline"] = json!(at(Duration::from_secs(6)));
    late["claim_window_days"] = json!(60);
    late["payment_terms"] = json!({
        "scheme": "PAYMENT_SCHEME_FULL_PREPAYMENT",
        "milestones": [{ "milestone_id": "full", "share_basis_points": 10000,
                         "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 300 }]
    });
    let late_id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &late);
    let active = platform.wait_status(&late_id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account_id = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    platform.pay_by_card(&buyer, &account_id, "full", 310_000);
    platform.wait_status(&late_id, "CONTRACT_STATUS_FUNDED");
    // Refused (NOT_LATE) until the deadline passed; each try is a new claim.
    let mut attempt = 0;
    let claim_id = wait_until(PATIENCE, "the shipment deadline to pass", || {
        attempt += 1;
        dcall(
            &dispute,
            "FileClaim",
            &buyer,
            &json!({ "idempotency_key": format!("file-late-{attempt}"), "contract_id": late_id,
                     "reason": "CLAIM_REASON_LATE_SHIPMENT", "remedy": "REMEDY_RESHIPMENT",
                     "amount_claimed": usd(100_000), "description": "nothing shipped by the deadline" }),
        )
        .map_err(|e| format!("{e:#?}"))
        .and_then(|filed| {
            let id = filed["claim"]["claimId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let claim = wait_claim(&dispute, &buyer, &id, "opened or refused", |c| {
                c["status"] != "CLAIM_STATUS_OPENING"
            });
            if claim["status"] == "CLAIM_STATUS_NEGOTIATING" {
                Ok(id)
            } else {
                Err(format!("{claim:#}"))
            }
        })
    });
    dcall_ok(
        &dispute,
        "EscalateClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "escalate-late", "claim_id": claim_id, "reason": "the supplier missed the shipment deadline" }),
    );
    dcall_ok(
        &dispute,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide-late", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND",
                 "refund_amount": usd(50_000), "reason": "shipped nothing by the deadline",
                 "new_shipment_deadline": at(days(10)) }),
    );
    let decided = wait_effects(&dispute, &buyer, &claim_id);
    assert_eq!(decided["remedy"], "REMEDY_RESHIPMENT", "{decided:#}");
    let new_deadline = decided["resolution"]["newShipmentDeadline"].clone();
    assert!(new_deadline.is_string(), "{decided:#}");
    let resumed = platform.wait_status(&late_id, "CONTRACT_STATUS_FUNDED");
    assert_eq!(
        resumed["agreedShipmentDeadline"], new_deadline,
        "{resumed:#}"
    );
    let held = account(&platform, &late_id);
    assert_eq!(
        int(&held["refundedTotal"]["amountMinor"]),
        50_000,
        "{held:#}"
    );
    assert_eq!(int(&held["releasedTotal"]["amountMinor"]), 0, "{held:#}");
    assert_eq!(int(&held["held"]["amountMinor"]), 260_000, "{held:#}");
    assert_eq!(freezes(&held), 0);
    assert_eq!(penalty_points(&platform, &supplier_id), 6);
}
