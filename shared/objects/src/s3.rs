//! The S3-compatible backend: object_store's `AmazonS3` built from
//! [`StoreConfig`], with credentials from the environment or a shared
//! credentials file that is read again when it changes.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use object_store::{
    ClientOptions, CredentialProvider, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder, AwsCredential},
};

use crate::{config::StoreConfig, credentials::read_credentials};

/// Credentials from a file, read again when its modification time changes
/// (a rotated Kubernetes Secret); a file that becomes unreadable keeps the
/// last good keys and says so.
#[derive(Debug)]
struct FileCredentials {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Arc<AwsCredential>)>,
}

impl FileCredentials {
    fn new(path: PathBuf) -> Result<Self, String> {
        let credential = read_credentials(&path)?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path,
            cached: Mutex::new((modified, Arc::new(credential))),
        })
    }
}

#[async_trait::async_trait]
impl CredentialProvider for FileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if modified.is_some() && modified != cached.0 {
            match read_credentials(&self.path) {
                Ok(credential) => {
                    tracing::info!(path = %self.path.display(), "S3 credentials file read again");
                    *cached = (modified, Arc::new(credential));
                }
                Err(error) => {
                    tracing::error!(%error, "S3 credentials file unreadable: the last good keys stay in use");
                }
            }
        }
        Ok(cached.1.clone())
    }
}

/// The bucket as the configuration names it.
///
/// # Errors
/// A message naming the variable at fault.
pub fn build(config: &StoreConfig, bucket: &str) -> Result<AmazonS3, String> {
    // reqwest's rustls is built without a provider of its own: ring, as the
    // rest of the process. Installed once; a second call is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The environment's AWS credentials chain (web identity, ECS, instance
    // metadata) applies unless keys are given; our own settings override
    // the AWS_* variables of the same meaning.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&config.s3_region)
        .with_allow_http(config.s3_allow_http)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.s3_allow_http)
                .with_timeout(config.s3_request_timeout)
                .with_connect_timeout(Duration::from_secs(5)),
        )
        .with_retry(RetryConfig {
            max_retries: 4,
            retry_timeout: config.s3_request_timeout,
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &config.s3_endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let (Some(key_id), Some(secret)) = (&config.aws_access_key_id, &config.aws_secret_access_key)
    {
        builder = builder
            .with_access_key_id(key_id)
            .with_secret_access_key(secret.expose());
        if let Some(token) = &config.aws_session_token {
            builder = builder.with_token(token.expose());
        }
    }
    if let Some(file) = &config.s3_credentials_file {
        let provider = FileCredentials::new(file.clone())
            .map_err(|e| format!("EVIDENCE_S3_CREDENTIALS_FILE: {e}"))?;
        builder = builder.with_credentials(Arc::new(provider));
    }
    builder
        .build()
        .map_err(|e| format!("EVIDENCE_STORE: s3://{bucket}: {e}"))
}
