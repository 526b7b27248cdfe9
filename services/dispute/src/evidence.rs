//! The evidence store: the shared content-addressed store of `ta-objects`
//! (a local directory or an S3-compatible bucket, `EVIDENCE_STORE`), which
//! checks uploads while they stream, resumes cut-off ones and leaves nothing
//! behind a refused one. Evidence is stored by SHA-256, per claim in the
//! database and once in the store.

pub use ta_objects::{
    Kind, Limits, MAX_CHUNK, Store as EvidenceStore, Upload, is_sha256_hex, location,
};
