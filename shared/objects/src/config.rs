//! The store's settings, read the same way by every service that uses it
//! (dispute and contract must name the same store).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use ta_runtime::config::{DurationRange, Secret};

use crate::Limits;

/// Where the files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory (created when missing).
    Dir(PathBuf),
    /// An S3-compatible bucket, and the prefix inside it ("" for none).
    S3 { bucket: String, prefix: String },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// `s3://bucket[/prefix]`, `file:///dir` or an absolute directory.
///
/// # Errors
/// Anything else, saying why.
pub fn parse_location(text: &str) -> Result<Location, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(format!(
                "`{bucket}` is not an S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|part| part == "." || part == ".." || (part.is_empty() && !prefix.is_empty()))
            || prefix.contains(|c: char| c.is_control() || c == '\\')
        {
            return Err(format!(
                "`{prefix}` is not a key prefix (no empty, . or .. parts)"
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    let path = text.strip_prefix("file://").unwrap_or(text);
    if text.contains("://") && !text.starts_with("file://") {
        return Err(format!(
            "`{text}`: only s3://bucket[/prefix] and local directories (a path or file:///path) are supported"
        ));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("`{text}` is not an absolute directory"));
    }
    Ok(Location::Dir(path))
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("`{text}` is not an http(s):// URL"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "`{text}` must be scheme://host[:port], without a path"
        ));
    }
    Ok(text.to_owned())
}

fn parse_region(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not a region name, e.g. us-east-1"))
    }
}

/// The evidence store: dispute's evidence and contract's inspection reports'
/// files, by SHA-256, in one place. `Debug` shows the secret access key and
/// the session token as `<redacted>`.
#[derive(Args, Clone, Debug)]
pub struct StoreConfig {
    /// Where the files live: a local directory (an absolute path or
    /// file:///path; created when missing; for one replica, or a volume every
    /// replica of dispute and contract mounts) or s3://bucket[/prefix] (an
    /// S3-compatible bucket; what several replicas share).
    #[arg(long = "evidence-store", env = "EVIDENCE_STORE", value_name = "EVIDENCE_STORE",
          default_value = "/tmp/trade-assurance-evidence", value_parser = parse_location)]
    pub location: Location,
    /// For s3://: the endpoint of an S3-compatible server, scheme://host[:port]
    /// (e.g. MinIO's); unset: AWS S3 itself, by region.
    #[arg(long = "evidence-s3-endpoint", env = "EVIDENCE_S3_ENDPOINT",
          value_name = "EVIDENCE_S3_ENDPOINT", value_parser = parse_endpoint)]
    pub s3_endpoint: Option<String>,
    /// For s3://: the bucket's region.
    #[arg(long = "evidence-s3-region", env = "EVIDENCE_S3_REGION", value_name = "EVIDENCE_S3_REGION",
          default_value = "us-east-1", value_parser = parse_region)]
    pub s3_region: String,
    /// For s3://: allow an http:// endpoint (a local or in-cluster server
    /// only; never across a network you do not own).
    #[arg(long = "evidence-s3-allow-http", env = "EVIDENCE_S3_ALLOW_HTTP",
          value_name = "EVIDENCE_S3_ALLOW_HTTP", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
    /// For s3://: an AWS shared-credentials file (`aws_access_key_id`,
    /// `aws_secret_access_key`, optionally `aws_session_token`, in its
    /// `[default]` profile), read again when it changes so keys rotate
    /// without a restart. Unset: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
    /// else the environment's other AWS credentials (web identity, ECS,
    /// instance metadata).
    #[arg(
        long = "evidence-s3-credentials-file",
        env = "EVIDENCE_S3_CREDENTIALS_FILE",
        value_name = "EVIDENCE_S3_CREDENTIALS_FILE"
    )]
    pub s3_credentials_file: Option<PathBuf>,
    /// For s3://: the access key id (with AWS_SECRET_ACCESS_KEY).
    #[arg(
        long = "aws-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        value_name = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub aws_access_key_id: Option<String>,
    /// For s3://: the secret access key (with AWS_ACCESS_KEY_ID).
    #[arg(
        long = "aws-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub aws_secret_access_key: Option<Secret>,
    /// For s3://: a session token going with the two keys above.
    #[arg(
        long = "aws-session-token",
        env = "AWS_SESSION_TOKEN",
        value_name = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub aws_session_token: Option<Secret>,
    /// For s3://: how long one request to the store may take (each part of
    /// an upload is one), retried with backoff within it.
    #[arg(long = "evidence-s3-request-timeout", env = "EVIDENCE_S3_REQUEST_TIMEOUT",
          value_name = "EVIDENCE_S3_REQUEST_TIMEOUT", default_value = "30s",
          value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(600)))]
    pub s3_request_timeout: Duration,
    /// Largest photo, in bytes.
    #[arg(long = "evidence-max-photo-bytes", env = "EVIDENCE_MAX_PHOTO_BYTES", value_name = "EVIDENCE_MAX_PHOTO_BYTES",
          default_value_t = 25 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1 << 34)))]
    pub max_photo_bytes: u64,
    /// Largest video, in bytes.
    #[arg(long = "evidence-max-video-bytes", env = "EVIDENCE_MAX_VIDEO_BYTES", value_name = "EVIDENCE_MAX_VIDEO_BYTES",
          default_value_t = 500 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1 << 34)))]
    pub max_video_bytes: u64,
    /// Largest document or inspection report's file, in bytes.
    #[arg(long = "evidence-max-document-bytes", env = "EVIDENCE_MAX_DOCUMENT_BYTES", value_name = "EVIDENCE_MAX_DOCUMENT_BYTES",
          default_value_t = 25 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1 << 34)))]
    pub max_document_bytes: u64,
    /// How long a cut-off resumable upload keeps what it received.
    #[arg(long = "evidence-upload-resume-window", env = "EVIDENCE_UPLOAD_RESUME_WINDOW",
          value_name = "EVIDENCE_UPLOAD_RESUME_WINDOW", default_value = "1h",
          value_parser = DurationRange::new(Duration::from_secs(60), Duration::from_secs(7 * 86_400)))]
    pub upload_resume_window: Duration,
}

/// Settings that were renamed when contract began to share the store: set,
/// they stop the process rather than being ignored.
const RENAMED: [(&str, &str); 5] = [
    ("DISPUTE_EVIDENCE_DIR", "EVIDENCE_STORE"),
    (
        "DISPUTE_EVIDENCE_MAX_PHOTO_BYTES",
        "EVIDENCE_MAX_PHOTO_BYTES",
    ),
    (
        "DISPUTE_EVIDENCE_MAX_VIDEO_BYTES",
        "EVIDENCE_MAX_VIDEO_BYTES",
    ),
    (
        "DISPUTE_EVIDENCE_MAX_DOCUMENT_BYTES",
        "EVIDENCE_MAX_DOCUMENT_BYTES",
    ),
    (
        "DISPUTE_UPLOAD_RESUME_WINDOW",
        "EVIDENCE_UPLOAD_RESUME_WINDOW",
    ),
];

impl StoreConfig {
    /// What [`parse_location`] and the value parsers cannot see alone.
    ///
    /// # Errors
    /// A message naming the variables at fault.
    pub fn check(&self) -> Result<(), String> {
        for (old, new) in RENAMED {
            if std::env::var_os(old).is_some() {
                return Err(format!(
                    "{old} is no longer read: set {new} instead (dispute and contract share the store)"
                ));
            }
        }
        let s3 = matches!(self.location, Location::S3 { .. });
        let s3_only = [
            ("EVIDENCE_S3_ENDPOINT", self.s3_endpoint.is_some()),
            (
                "EVIDENCE_S3_CREDENTIALS_FILE",
                self.s3_credentials_file.is_some(),
            ),
            ("EVIDENCE_S3_ALLOW_HTTP", self.s3_allow_http),
        ];
        if !s3 && let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{name} is set but EVIDENCE_STORE is the local directory {}: set EVIDENCE_STORE=s3://bucket[/prefix] or unset {name}",
                self.location
            ));
        }
        if let Some(endpoint) = &self.s3_endpoint
            && endpoint.starts_with("http://")
            && !self.s3_allow_http
        {
            return Err(format!(
                "EVIDENCE_S3_ENDPOINT {endpoint} is plain http: set EVIDENCE_S3_ALLOW_HTTP=true for a local or in-cluster server, or use https"
            ));
        }
        match (&self.aws_access_key_id, &self.aws_secret_access_key) {
            (Some(_), None) => {
                return Err("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY".into());
            }
            (None, Some(_)) => {
                return Err("AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID".into());
            }
            (Some(_), Some(_)) if self.s3_credentials_file.is_some() => {
                return Err(
                    "EVIDENCE_S3_CREDENTIALS_FILE and AWS_ACCESS_KEY_ID are both set: choose one"
                        .into(),
                );
            }
            _ => {}
        }
        if self.aws_session_token.is_some() && self.aws_access_key_id.is_none() {
            return Err("AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID".into());
        }
        if let Some(file) = &self.s3_credentials_file {
            crate::credentials::read_credentials(file)
                .map_err(|e| format!("EVIDENCE_S3_CREDENTIALS_FILE: {e}"))?;
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            photo_bytes: self.max_photo_bytes,
            video_bytes: self.max_video_bytes,
            document_bytes: self.max_document_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        store: StoreConfig,
    }

    fn parse(args: &[&str]) -> Result<StoreConfig, String> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map(|c| c.store)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn locations_are_an_absolute_directory_or_an_s3_bucket() {
        assert_eq!(
            parse_location("s3://evidence-prod/dispute/").unwrap(),
            Location::S3 {
                bucket: "evidence-prod".into(),
                prefix: "dispute".into()
            }
        );
        assert_eq!(
            parse_location("s3://evidence").unwrap(),
            Location::S3 {
                bucket: "evidence".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_location("file:///var/evidence").unwrap(),
            Location::Dir("/var/evidence".into())
        );
        for bad in [
            "s3://Evidence",
            "s3://ab",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "relative/dir",
            "gs://bucket",
        ] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
        let err = parse(&["--evidence-store", "s3://x"]).unwrap_err();
        assert!(err.contains("EVIDENCE_STORE"), "{err}");
    }

    #[test]
    fn s3_settings_must_fit_together() {
        let http = parse(&[
            "--evidence-store",
            "s3://evidence",
            "--evidence-s3-endpoint",
            "http://127.0.0.1:9000",
        ])
        .unwrap();
        let err = http.check().unwrap_err();
        assert!(err.contains("EVIDENCE_S3_ALLOW_HTTP"), "{err}");
        let allowed = parse(&[
            "--evidence-store",
            "s3://evidence",
            "--evidence-s3-endpoint",
            "http://127.0.0.1:9000",
            "--evidence-s3-allow-http",
            "true",
        ])
        .unwrap();
        allowed.check().unwrap();
        let local = parse(&["--evidence-s3-endpoint", "https://s3.example.com"]).unwrap();
        let err = local.check().unwrap_err();
        assert!(err.contains("EVIDENCE_S3_ENDPOINT"), "{err}");
        let half = parse(&[
            "--evidence-store",
            "s3://evidence",
            "--aws-access-key-id",
            "AKIA",
        ])
        .unwrap();
        let err = half.check().unwrap_err();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        let err = parse(&["--evidence-s3-endpoint", "https://host/path"]).unwrap_err();
        assert!(err.contains("EVIDENCE_S3_ENDPOINT"), "{err}");
        let err = parse(&["--evidence-s3-region", "US East"]).unwrap_err();
        assert!(err.contains("EVIDENCE_S3_REGION"), "{err}");
        let missing = parse(&[
            "--evidence-store",
            "s3://evidence",
            "--evidence-s3-credentials-file",
            "/nonexistent/credentials",
        ])
        .unwrap();
        let err = missing.check().unwrap_err();
        assert!(err.contains("EVIDENCE_S3_CREDENTIALS_FILE"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_secret_key_or_the_session_token() {
        let config = parse(&[
            "--evidence-store",
            "s3://evidence",
            "--aws-access-key-id",
            "AKIAEXAMPLE",
            "--aws-secret-access-key",
            "secret-access-key-0123456789",
            "--aws-session-token",
            "session-token-0123456789",
        ])
        .unwrap();
        config.check().unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("secret-access-key-0123456789"), "{shown}");
        assert!(!shown.contains("session-token-0123456789"), "{shown}");
        assert_eq!(
            config.aws_secret_access_key.as_ref().map(Secret::expose),
            Some("secret-access-key-0123456789")
        );
    }
}
