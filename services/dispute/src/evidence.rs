//! The evidence store: files addressed by their SHA-256 through the
//! `object_store` crate (a local directory, `DISPUTE_EVIDENCE_DIR`).
//!
//! An upload is checked while it streams: no chunk above [`MAX_CHUNK`], never
//! more bytes than declared (which is within the kind's limit), and at the end
//! exactly the declared size and SHA-256. Until then the bytes go to the
//! store's multipart upload, which the local store keeps in a staging file
//! beside the final name and renames into place only on completion; any
//! failure, and a stream cut off mid-way, aborts it, so nothing is left
//! behind. A stored file is never written again: the same content arriving
//! later is checked and dropped.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem, path::Path,
};
use sha2::{Digest, Sha256};
use ta_runtime::ServiceError;

/// The largest chunk an upload message may carry, and the size of the chunks
/// a download is sent in.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Parts handed to the store at a time (memory bound of an upload: this many
/// parts of [`PART_SIZE`]).
const PARTS_IN_FLIGHT: usize = 2;
const PART_SIZE: usize = 5 * 1024 * 1024;

/// What one kind of evidence may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindRule {
    pub max_bytes: u64,
    pub content_types: &'static [&'static str],
}

/// The evidence kinds and their limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Photo,
    Video,
    InspectionReport,
    Document,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Photo => "photo",
            Kind::Video => "video",
            Kind::InspectionReport => "inspection_report",
            Kind::Document => "document",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [
            Kind::Photo,
            Kind::Video,
            Kind::InspectionReport,
            Kind::Document,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }

    pub fn content_types(self) -> &'static [&'static str] {
        match self {
            Kind::Photo => &["image/jpeg", "image/png", "image/webp", "image/heic"],
            Kind::Video => &["video/mp4", "video/quicktime", "video/webm"],
            Kind::InspectionReport => &["application/pdf", "image/jpeg", "image/png"],
            Kind::Document => &[
                "application/pdf",
                "image/jpeg",
                "image/png",
                "text/plain",
                "text/csv",
            ],
        }
    }
}

/// Size limits per kind, from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub photo_bytes: u64,
    pub video_bytes: u64,
    pub document_bytes: u64,
}

impl Limits {
    pub fn max_bytes(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Photo => self.photo_bytes,
            Kind::Video => self.video_bytes,
            Kind::InspectionReport | Kind::Document => self.document_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvidenceStore {
    store: Arc<dyn ObjectStore>,
    pub limits: Limits,
}

fn unavailable(error: impl std::fmt::Display) -> ServiceError {
    tracing::error!(%error, "evidence store failed");
    ServiceError::Unavailable("the evidence store cannot be reached; retry".into())
}

/// The store's key of a file with this SHA-256 (lower-case hex).
pub fn location(sha256_hex: &str) -> Path {
    Path::from(format!("sha256/{}/{sha256_hex}", &sha256_hex[..2]))
}

/// Lower-case hex of 64 digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An upload in progress: bytes counted and hashed as they come.
pub struct Upload {
    writer: Option<WriteMultipart>,
    hasher: Sha256,
    received: u64,
    declared_size: u64,
    declared_sha256: String,
    location: Path,
}

impl EvidenceStore {
    /// The local directory store; the directory is created when missing.
    ///
    /// # Errors
    /// The directory cannot be created or opened.
    pub fn local(dir: &std::path::Path, limits: Limits) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("DISPUTE_EVIDENCE_DIR: cannot create {}: {e}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("DISPUTE_EVIDENCE_DIR: {e}"))?;
        Ok(Self {
            store: Arc::new(store),
            limits,
        })
    }

    /// Whether a file with this SHA-256 is stored.
    pub async fn contains(&self, sha256_hex: &str) -> Result<bool, ServiceError> {
        match self.store.head(&location(sha256_hex)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Starts receiving a file of `size` bytes with this SHA-256. A file
    /// already stored is received (and checked) without being written.
    pub async fn begin(&self, size: u64, sha256_hex: &str) -> Result<Upload, ServiceError> {
        let location = location(sha256_hex);
        let writer = if self.contains(sha256_hex).await? {
            None
        } else {
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(unavailable)?;
            Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))
        };
        Ok(Upload {
            writer,
            hasher: Sha256::new(),
            received: 0,
            declared_size: size,
            declared_sha256: sha256_hex.to_owned(),
            location,
        })
    }

    /// The stored file's bytes, in chunks of at most [`MAX_CHUNK`].
    pub async fn read(
        &self,
        sha256_hex: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, ServiceError>> + use<>, ServiceError>
    {
        let got = self
            .store
            .get(&location(sha256_hex))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    ServiceError::internal(format!("evidence file {sha256_hex} is missing"))
                }
                other => unavailable(other),
            })?;
        let inner = got.into_stream();
        Ok(futures_util::stream::unfold(
            (inner, Vec::new(), false),
            |(mut inner, mut buffer, mut done)| async move {
                loop {
                    if buffer.len() >= MAX_CHUNK || (done && !buffer.is_empty()) {
                        let rest = buffer.split_off(buffer.len().min(MAX_CHUNK));
                        let chunk = std::mem::replace(&mut buffer, rest);
                        return Some((Ok(chunk), (inner, buffer, done)));
                    }
                    if done {
                        return None;
                    }
                    match inner.next().await {
                        Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                        Some(Err(e)) => return Some((Err(unavailable(e)), (inner, buffer, true))),
                        None => done = true,
                    }
                }
            },
        ))
    }
}

impl Upload {
    /// Takes the next chunk; refuses one that is too large or goes past the
    /// declared size.
    pub async fn chunk(&mut self, bytes: &[u8]) -> Result<(), ServiceError> {
        if bytes.len() > MAX_CHUNK {
            return Err(ServiceError::invalid(
                "chunk",
                format!("a chunk carries at most {MAX_CHUNK} bytes"),
            ));
        }
        self.received += bytes.len() as u64;
        if self.received > self.declared_size {
            return Err(ServiceError::invalid(
                "metadata.size_bytes",
                format!(
                    "the file is larger than the {} bytes declared",
                    self.declared_size
                ),
            ));
        }
        self.hasher.update(bytes);
        if let Some(writer) = self.writer.as_mut() {
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(unavailable)?;
            writer.write(bytes);
        }
        Ok(())
    }

    /// The whole file came: checks size and SHA-256, then makes it visible.
    /// Whether this upload wrote it (false: it was stored already).
    pub async fn finish(mut self) -> Result<bool, ServiceError> {
        if self.received != self.declared_size {
            let error = ServiceError::invalid(
                "metadata.size_bytes",
                format!(
                    "{} bytes declared, {} received",
                    self.declared_size, self.received
                ),
            );
            self.abort().await;
            return Err(error);
        }
        let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if digest != self.declared_sha256 {
            self.abort().await;
            return Err(ServiceError::invalid(
                "metadata.sha256_hex",
                format!("the file's SHA-256 is {digest}, not the one declared"),
            ));
        }
        match self.writer.take() {
            None => Ok(false),
            Some(writer) => {
                writer.finish().await.map_err(unavailable)?;
                tracing::info!(location = %self.location, bytes = self.received, "evidence stored");
                Ok(true)
            }
        }
    }

    /// Drops what was received; nothing stays in the store.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take()
            && let Err(error) = writer.abort().await
        {
            tracing::warn!(%error, location = %self.location, "aborting an evidence upload failed");
        }
    }
}
