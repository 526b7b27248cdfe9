//! The content-addressed file store: files named by their SHA-256, through
//! the `object_store` crate, in a local directory or an S3-compatible bucket
//! ([`StoreConfig`], `EVIDENCE_STORE`). Dispute keeps its evidence here, and
//! contract the files its inspection reports name.
//!
//! An upload is checked while it streams: no chunk above [`MAX_CHUNK`], never
//! more bytes than declared (which is within the kind's limit), and at the end
//! exactly the declared size and SHA-256. Until then the bytes go to the
//! store's multipart upload (the local store keeps a staging file beside the
//! final name and renames it into place on completion; S3 makes the object
//! visible only when the upload completes); any failure, and a stream cut
//! off mid-way, aborts it, so nothing is left behind. A stored file is never
//! written again: the same content arriving later is checked and dropped.
//!
//! A resumable upload (opt-in) streams into segments of its own under
//! `partial/<name>/<offset>` in the same store instead, named by owner (a
//! claim), SHA-256 and uploader, so that any replica can resume it. Cut off,
//! what arrived is written as a segment and stays (for the resume window,
//! then the sweep removes it) and a new upload resumes from what the segments
//! hold; refused, they are removed; complete and checked, they are copied
//! into the store in order and removed.

pub mod config;
mod credentials;
mod s3;

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, local::LocalFileSystem, path::Path,
    prefix::PrefixStore,
};
use sha2::{Digest, Sha256};
use ta_runtime::ServiceError;

pub use config::{Location, StoreConfig};

/// The largest chunk an upload message may carry, and the size of the chunks
/// a download is sent in.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Parts handed to the store at a time (memory bound of an upload: this many
/// parts of [`PART_SIZE`]).
const PARTS_IN_FLIGHT: usize = 2;
/// S3's smallest part (but the last).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// A resumable upload's bytes are written to the store in segments of this
/// size (its memory bound), and what is held when it is cut off.
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// The kinds of file and their limits.
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

/// The store, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages.
    location: String,
    pub limits: Limits,
}

fn unavailable(error: impl std::fmt::Display) -> ServiceError {
    tracing::error!(%error, "file store failed");
    ServiceError::Unavailable("the file store cannot be reached; retry".into())
}

/// The store's key of a file with this SHA-256 (lower-case hex).
pub fn location(sha256_hex: &str) -> Path {
    Path::from(format!("sha256/{}/{sha256_hex}", &sha256_hex[..2]))
}

/// Lower-case hex of 64 digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One stored segment of a resumable upload.
#[derive(Debug)]
struct Segment {
    path: Path,
    offset: u64,
    size: u64,
}

/// A resumable upload's place in the store and the bytes not written yet.
struct Partial {
    prefix: Path,
    /// Offset of `buffer`'s first byte.
    start: u64,
    buffer: Vec<u8>,
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

impl Store {
    /// The store the configuration names.
    ///
    /// # Errors
    /// A message naming the variables at fault.
    pub fn from_config(config: &StoreConfig) -> Result<Self, String> {
        config.check()?;
        match &config.location {
            Location::Dir(dir) => Self::local(dir, config.limits()),
            Location::S3 { bucket, prefix } => {
                let s3 = s3::build(config, bucket)?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                Ok(Self {
                    store,
                    location: config.location.to_string(),
                    limits: config.limits(),
                })
            }
        }
    }

    /// The local directory store; the directory is created when missing.
    ///
    /// # Errors
    /// The directory cannot be created or opened.
    pub fn local(dir: &std::path::Path, limits: Limits) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("EVIDENCE_STORE: cannot create {}: {e}", dir.display()))?;
        let store =
            LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("EVIDENCE_STORE: {e}"))?;
        Ok(Self {
            store: Arc::new(store),
            location: dir.display().to_string(),
            limits,
        })
    }

    /// Where the store is (a directory, or `s3://bucket/prefix`).
    pub fn describe(&self) -> &str {
        &self.location
    }

    /// Whether the store answers: for start-up,
    /// so a wrong bucket or refused credentials stop the process.
    ///
    /// # Errors
    /// A message naming `EVIDENCE_STORE` and what the store said.
    pub async fn probe(&self) -> Result<(), String> {
        // A listing: a missing bucket is an error, where a missing key is not.
        self.store
            .list_with_delimiter(Some(&Path::from("sha256")))
            .await
            .map(|_| ())
            .map_err(|e| format!("EVIDENCE_STORE: {} cannot be used: {e}", self.location))
    }

    fn partial_prefix(owner: &str, sha256_hex: &str, uploader: &str) -> Path {
        let who = hex::encode(Sha256::digest(uploader.as_bytes()));
        Path::from(format!("partial/{owner}-{sha256_hex}-{}", &who[..16]))
    }

    /// The segments under `prefix`, in order of offset.
    async fn segments(&self, prefix: &Path) -> Result<Vec<Segment>, ServiceError> {
        segments(&self.store, prefix).await
    }

    /// How many bytes of the uploader's resumable upload of this file (for
    /// this owner, e.g. a claim) are held.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the store cannot be reached.
    pub async fn progress(
        &self,
        owner: &str,
        sha256_hex: &str,
        uploader: &str,
    ) -> Result<u64, ServiceError> {
        let prefix = Self::partial_prefix(owner, sha256_hex, uploader);
        Ok(held(&self.segments(&prefix).await?))
    }

    /// Starts or resumes a resumable upload at `resume_from` (at most what is
    /// held; what follows it is dropped and sent again).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` past what is held; `UNAVAILABLE`.
    pub async fn begin_resumable(
        &self,
        owner: &str,
        sha256_hex: &str,
        uploader: &str,
        size: u64,
        resume_from: u64,
    ) -> Result<Upload, ServiceError> {
        let prefix = Self::partial_prefix(owner, sha256_hex, uploader);
        let segments = self.segments(&prefix).await?;
        let held = held(&segments);
        if resume_from > held {
            return Err(ServiceError::invalid(
                "metadata.resume_from",
                format!("the server holds {held} bytes of this upload: resume from at most that"),
            ));
        }
        // The hash of what is kept, read back; a segment reaching past
        // `resume_from` is cut there, and those after it are dropped.
        let mut hasher = Sha256::new();
        for segment in &segments {
            if segment.offset >= resume_from {
                self.store
                    .delete(&segment.path)
                    .await
                    .map_err(unavailable)?;
                continue;
            }
            let bytes = self
                .store
                .get(&segment.path)
                .await
                .map_err(unavailable)?
                .bytes()
                .await
                .map_err(unavailable)?;
            let keep = usize::try_from((resume_from - segment.offset).min(segment.size))
                .unwrap_or(bytes.len())
                .min(bytes.len());
            hasher.update(&bytes[..keep]);
            if keep < bytes.len() {
                self.store
                    .put(&segment.path, PutPayload::from(bytes.slice(..keep)))
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(Upload {
            store: self.store.clone(),
            writer: None,
            partial: Some(Partial {
                prefix,
                start: resume_from,
                buffer: Vec::new(),
            }),
            hasher,
            received: resume_from,
            declared_size: size,
            declared_sha256: sha256_hex.to_owned(),
            location: location(sha256_hex),
        })
    }

    /// Removes resumable uploads untouched (no segment written) for `window`.
    pub async fn sweep_partials(&self, window: std::time::Duration) {
        let listed: Result<Vec<_>, _> = self
            .store
            .list(Some(&Path::from("partial")))
            .try_collect()
            .await;
        let Ok(listed) = listed else { return };
        let mut newest: std::collections::BTreeMap<String, (std::time::SystemTime, Vec<Path>)> =
            std::collections::BTreeMap::new();
        for meta in listed {
            let Some(upload) = meta.location.parts().nth(1) else {
                continue;
            };
            let at = std::time::SystemTime::from(meta.last_modified);
            let entry = newest
                .entry(upload.as_ref().to_owned())
                .or_insert((at, Vec::new()));
            entry.0 = entry.0.max(at);
            entry.1.push(meta.location);
        }
        for (upload, (at, paths)) in newest {
            if at.elapsed().is_ok_and(|age| age > window) {
                for path in paths {
                    let _ = self.store.delete(&path).await;
                }
                tracing::info!(%upload, "stale partial upload removed");
            }
        }
    }

    /// Whether a file with this SHA-256 is stored.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the store cannot be reached.
    pub async fn contains(&self, sha256_hex: &str) -> Result<bool, ServiceError> {
        match self.store.head(&location(sha256_hex)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Starts receiving a file of `size` bytes with this SHA-256. A file
    /// already stored is received (and checked) without being written.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the store cannot be reached.
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
    ///
    /// # Errors
    /// `INTERNAL` when the file is missing; `UNAVAILABLE`.
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
                    ServiceError::internal(format!("stored file {sha256_hex} is missing"))
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

/// The segments under `prefix` (named by their offset), in order.
async fn segments(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<Segment>, ServiceError> {
    let listed: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(unavailable)?;
    let mut segments: Vec<Segment> = listed
        .into_iter()
        .filter_map(|meta| {
            let offset = meta.location.filename()?.parse().ok()?;
            Some(Segment {
                path: meta.location,
                offset,
                size: meta.size,
            })
        })
        .collect();
    segments.sort_by_key(|s| s.offset);
    Ok(segments)
}

/// The bytes the segments hold from offset 0 without a gap.
fn held(segments: &[Segment]) -> u64 {
    let mut end = 0;
    for segment in segments {
        if segment.offset > end {
            break;
        }
        end = end.max(segment.offset + segment.size);
    }
    end
}

impl Partial {
    /// Writes what is buffered as the segment at `start`.
    async fn flush(&mut self, store: &Arc<dyn ObjectStore>) -> Result<(), ServiceError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buffer);
        let size = bytes.len() as u64;
        store
            .put(
                &self.prefix.clone().join(format!("{:020}", self.start)),
                PutPayload::from(bytes),
            )
            .await
            .map_err(unavailable)?;
        self.start += size;
        Ok(())
    }

    async fn remove(&self, store: &Arc<dyn ObjectStore>) {
        if let Ok(segments) = segments(store, &self.prefix).await {
            for segment in segments {
                let _ = store.delete(&segment.path).await;
            }
        }
    }
}

impl Upload {
    /// Takes the next chunk; refuses one that is too large or goes past the
    /// declared size.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`; `UNAVAILABLE`.
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
            partial.buffer.extend_from_slice(bytes);
            if partial.buffer.len() >= SEGMENT_SIZE {
                partial.flush(&self.store).await?;
            }
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
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (size or SHA-256 differ), `FAILED_PRECONDITION` (a
    /// resumable upload ended early: kept); `UNAVAILABLE`.
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
        if let Some(partial) = self.partial.take() {
            let wrote = copy_into_store(&self.store, &self.location, &partial).await?;
            partial.remove(&self.store).await;
            return Ok(wrote);
        }
        match self.writer.take() {
            None => Ok(false),
            Some(writer) => {
                writer.finish().await.map_err(unavailable)?;
                tracing::info!(location = %self.location, bytes = self.received, "file stored");
                Ok(true)
            }
        }
    }

    /// Feeds the rest of an upload's client stream in, then checks and
    /// stores the file; whether it was stored now (false: it was there).
    /// `chunk` takes each message's bytes (`None`: not a chunk, refused). A
    /// stream cut off suspends the upload (a resumable one keeps what came,
    /// any other leaves nothing); a refused message or chunk leaves nothing.
    ///
    /// # Errors
    /// The stream's own status when it is cut off, else the refusal.
    pub async fn receive<M>(
        mut self,
        stream: &mut tonic::Streaming<M>,
        chunk: impl Fn(M) -> Option<Vec<u8>>,
    ) -> Result<bool, tonic::Status> {
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    self.suspend().await;
                    return Err(status);
                }
            };
            let result = match chunk(message) {
                Some(bytes) => self.chunk(&bytes).await,
                None => Err(ServiceError::invalid(
                    "chunk",
                    "every message after the first carries bytes only",
                )),
            };
            if let Err(error) = result {
                self.abort().await;
                return Err(error.into());
            }
        }
        Ok(self.finish().await?)
    }

    /// The stream was cut off: a resumable upload keeps what it received;
    /// any other is dropped.
    pub async fn suspend(mut self) {
        if let Some(mut partial) = self.partial.take() {
            match partial.flush(&self.store).await {
                Ok(()) => {
                    tracing::info!(prefix = %partial.prefix, bytes = self.received, "resumable upload suspended");
                }
                Err(_) => {
                    tracing::warn!(prefix = %partial.prefix, "a suspended upload's last bytes were not kept");
                }
            }
            return;
        }
        self.abort().await;
    }

    /// Drops what was received; nothing stays in the store.
    pub async fn abort(mut self) {
        if let Some(partial) = self.partial.take() {
            partial.remove(&self.store).await;
        }
        if let Some(writer) = self.writer.take()
            && let Err(error) = writer.abort().await
        {
            tracing::warn!(%error, location = %self.location, "aborting an upload failed");
        }
    }
}

/// A completed resumable upload into the store (its segments in order, then
/// what is still buffered), unless the file is there already.
async fn copy_into_store(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    partial: &Partial,
) -> Result<bool, ServiceError> {
    match store.head(location).await {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(unavailable(e)),
    }
    let segments = segments(store, &partial.prefix).await?;
    let upload = store.put_multipart(location).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut written = 0u64;
    for segment in segments.iter().filter(|s| s.offset < partial.start) {
        let mut bytes = match store.get(&segment.path).await {
            Ok(got) => got.into_stream(),
            Err(e) => {
                let _ = writer.abort().await;
                return Err(unavailable(e));
            }
        };
        while let Some(next) = bytes.next().await {
            let chunk = match next {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(unavailable(e));
                }
            };
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(unavailable)?;
            written += chunk.len() as u64;
            writer.write(&chunk);
        }
    }
    if written != partial.start {
        let _ = writer.abort().await;
        return Err(ServiceError::Aborted(format!(
            "the kept part of this upload changed while it resumed ({written} of {} bytes): upload it again",
            partial.start
        )));
    }
    writer.write(&partial.buffer);
    writer.finish().await.map_err(unavailable)?;
    tracing::info!(%location, "file stored (resumable upload)");
    Ok(true)
}
