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
//!
//! A resumable upload (opt-in) streams into a partial file of its own under
//! `.partial/` instead, named by claim, SHA-256 and uploader. Cut off, the
//! partial stays (for the resume window, then the sweep removes it) and a new
//! upload resumes from what it holds; refused, it is removed; complete and
//! checked, it is copied into the store and removed.

use std::{
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use futures_util::StreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem, path::Path,
};
use sha2::{Digest, Sha256};
use ta_runtime::ServiceError;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

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
    /// Where resumable uploads keep what they received.
    partials: PathBuf,
    pub limits: Limits,
}

/// A resumable upload's bytes so far.
struct Partial {
    file: tokio::fs::File,
    path: PathBuf,
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
    store: Arc<dyn ObjectStore>,
    writer: Option<WriteMultipart>,
    partial: Option<Partial>,
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
            partials: dir.join(".partial"),
            limits,
        })
    }

    fn partial_path(&self, claim_id: &str, sha256_hex: &str, uploader: &str) -> PathBuf {
        let who = hex::encode(Sha256::digest(uploader.as_bytes()));
        self.partials
            .join(format!("{claim_id}-{sha256_hex}-{}", &who[..16]))
    }

    /// How many bytes of the uploader's resumable upload of this file to this
    /// claim are held.
    pub async fn progress(
        &self,
        claim_id: &str,
        sha256_hex: &str,
        uploader: &str,
    ) -> Result<u64, ServiceError> {
        match tokio::fs::metadata(self.partial_path(claim_id, sha256_hex, uploader)).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Starts or resumes a resumable upload at `resume_from` (at most what is
    /// held; what follows it is dropped and sent again).
    pub async fn begin_resumable(
        &self,
        claim_id: &str,
        sha256_hex: &str,
        uploader: &str,
        size: u64,
        resume_from: u64,
    ) -> Result<Upload, ServiceError> {
        let held = self.progress(claim_id, sha256_hex, uploader).await?;
        if resume_from > held {
            return Err(ServiceError::invalid(
                "metadata.resume_from",
                format!("the server holds {held} bytes of this upload: resume from at most that"),
            ));
        }
        tokio::fs::create_dir_all(&self.partials)
            .await
            .map_err(unavailable)?;
        let path = self.partial_path(claim_id, sha256_hex, uploader);
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(unavailable)?;
        // The hash of what is kept, read back; then the rest is appended.
        let mut hasher = Sha256::new();
        let mut left = resume_from;
        let mut buffer = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
            let n = file.read(&mut buffer[..want]).await.map_err(unavailable)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            left -= n as u64;
        }
        file.set_len(resume_from).await.map_err(unavailable)?;
        file.seek(std::io::SeekFrom::Start(resume_from))
            .await
            .map_err(unavailable)?;
        Ok(Upload {
            store: self.store.clone(),
            writer: None,
            partial: Some(Partial { file, path }),
            hasher,
            received: resume_from,
            declared_size: size,
            declared_sha256: sha256_hex.to_owned(),
            location: location(sha256_hex),
        })
    }

    /// Removes resumable uploads' partial files untouched for `window`.
    pub async fn sweep_partials(&self, window: std::time::Duration) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.partials).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let stale = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > window);
            if stale {
                let _ = tokio::fs::remove_file(entry.path()).await;
                tracing::info!(path = %entry.path().display(), "stale partial upload removed");
            }
        }
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
            store: self.store.clone(),
            writer,
            partial: None,
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
        if let Some(partial) = self.partial.as_mut() {
            partial.file.write_all(bytes).await.map_err(unavailable)?;
        }
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
        if self.received < self.declared_size && self.partial.is_some() {
            // A resumable upload that ended early keeps what it received.
            let (received, declared) = (self.received, self.declared_size);
            self.suspend().await;
            return Err(ServiceError::FailedPrecondition(format!(
                "{received} of the {declared} bytes declared received: kept, resume from {received}"
            )));
        }
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
        if let Some(mut partial) = self.partial.take() {
            partial.file.flush().await.map_err(unavailable)?;
            let wrote = copy_into_store(&self.store, &self.location, &partial.path).await?;
            drop(partial.file);
            let _ = tokio::fs::remove_file(&partial.path).await;
            return Ok(wrote);
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

    /// The stream was cut off: a resumable upload keeps what it received;
    /// any other is dropped.
    pub async fn suspend(mut self) {
        if let Some(partial) = self.partial.take() {
            let mut file = partial.file;
            let _ = file.flush().await;
            tracing::info!(path = %partial.path.display(), bytes = self.received, "resumable upload suspended");
            return;
        }
        self.abort().await;
    }

    /// Drops what was received; nothing stays in the store.
    pub async fn abort(mut self) {
        if let Some(partial) = self.partial.take() {
            drop(partial.file);
            let _ = tokio::fs::remove_file(&partial.path).await;
        }
        if let Some(writer) = self.writer.take()
            && let Err(error) = writer.abort().await
        {
            tracing::warn!(%error, location = %self.location, "aborting an evidence upload failed");
        }
    }
}

/// A completed resumable upload into the store, unless it is there already.
async fn copy_into_store(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    path: &FsPath,
) -> Result<bool, ServiceError> {
    match store.head(location).await {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(unavailable(e)),
    }
    let upload = store.put_multipart(location).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut file = tokio::fs::File::open(path).await.map_err(unavailable)?;
    let mut buffer = vec![0u8; MAX_CHUNK];
    loop {
        let n = match file.read(&mut buffer).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(unavailable(e));
            }
        };
        if n == 0 {
            break;
        }
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(unavailable)?;
        writer.write(&buffer[..n]);
    }
    writer.finish().await.map_err(unavailable)?;
    tracing::info!(%location, "evidence stored (resumable upload)");
    Ok(true)
}
