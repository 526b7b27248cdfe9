//! Inspection reports' files: UploadInspectionFile streams one into the
//! content-addressed store of `ta-objects` (the one dispute keeps evidence
//! in, `EVIDENCE_STORE`), checked while it streams (size, media type,
//! SHA-256); a report's results then name it by `sha256:<hex>`.

use sqlx::PgPool;
use ta_objects::{Kind, Store};
use ta_proto::contract::{self as pb, upload_inspection_file_request::Part};
use ta_runtime::{ServiceError, Violations, auth};
use tonic::{Request, Status, Streaming};
use uuid::Uuid;

use crate::storage;

struct Metadata {
    contract_id: Uuid,
    size: u64,
    sha256_hex: String,
}

fn parse(
    meta: Option<&pb::InspectionFileMetadata>,
    store: &Store,
) -> Result<Metadata, ServiceError> {
    let Some(meta) = meta else {
        return Err(ServiceError::invalid(
            "metadata",
            "the first message carries the file's metadata",
        ));
    };
    let mut v = Violations::new();
    let contract_id = Uuid::parse_str(meta.contract_id.trim()).ok();
    if contract_id.is_none() {
        v.add("metadata.contract_id", "must be a contract id (a UUID)");
    }
    let kind = Kind::InspectionReport;
    let content_type = meta.content_type.trim().to_ascii_lowercase();
    if !kind.content_types().contains(&content_type.as_str()) {
        v.add(
            "metadata.content_type",
            format!(
                "an inspection report's file is one of {}",
                kind.content_types().join(", ")
            ),
        );
    }
    let max = store.limits.max_bytes(kind);
    if meta.size_bytes == 0 || meta.size_bytes > max {
        v.add(
            "metadata.size_bytes",
            format!("must be 1 to {max} bytes for an inspection report's file"),
        );
    }
    if !ta_objects::is_sha256_hex(&meta.sha256_hex) {
        v.add(
            "metadata.sha256_hex",
            "must be the file's SHA-256 in 64 lower-case hex digits",
        );
    }
    match contract_id {
        Some(contract_id) if v.is_empty() => Ok(Metadata {
            contract_id,
            size: meta.size_bytes,
            sha256_hex: meta.sha256_hex.clone(),
        }),
        _ => Err(v.into_error()),
    }
}

/// One file, from the agency the signed terms name, between signing and
/// shipment (as its report).
///
/// # Errors
/// `INVALID_ARGUMENT` (metadata, size or hash), `PERMISSION_DENIED` (another
/// agency), `FAILED_PRECONDITION` (not before shipment), `UNAVAILABLE`.
pub async fn upload(
    pool: &PgPool,
    store: &Store,
    request: Request<Streaming<pb::UploadInspectionFileRequest>>,
) -> Result<pb::UploadInspectionFileResponse, Status> {
    let principal = auth::principal(&request)?;
    let mut stream = request.into_inner();
    let first = stream.message().await?;
    let metadata = match first.and_then(|m| m.part) {
        Some(Part::Metadata(m)) => Some(m),
        _ => None,
    };
    let meta = parse(metadata.as_ref(), store)?;
    {
        let mut conn = pool.acquire().await.map_err(ServiceError::from)?;
        let contract = storage::get_contract(&mut conn, meta.contract_id).await?;
        if contract.progress.inspection_agency.is_empty()
            || contract.progress.inspection_agency != principal.subject
        {
            return Err(ServiceError::PermissionDenied(
                "only the inspection agency named in the signed terms uploads this contract's inspection files"
                    .into(),
            )
            .into());
        }
        if !crate::grpc::before_shipment(contract.negotiation.status) {
            return Err(ServiceError::FailedPrecondition(format!(
                "the contract is {}: inspection files are uploaded between signing and shipment",
                contract.negotiation.status.as_str()
            ))
            .into());
        }
    }
    let stored_now = store
        .begin(meta.size, &meta.sha256_hex)
        .await?
        .receive(&mut stream, |message| match message.part {
            Some(Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        })
        .await?;
    tracing::info!(contract_id = %meta.contract_id, sha256 = %meta.sha256_hex, stored_now, "inspection file received");
    Ok(pb::UploadInspectionFileResponse {
        evidence_sha256: format!("sha256:{}", meta.sha256_hex),
        size_bytes: meta.size,
        stored_now,
    })
}
