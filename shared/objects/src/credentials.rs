//! An AWS shared-credentials file, read where the settings are checked
//! (config) and where the S3 client rereads it when it rotates (s3).

use std::path::Path;

use object_store::aws::AwsCredential;

/// The `[default]` profile of an AWS shared credentials file (or its keys
/// outside any section).
///
/// # Errors
/// The file cannot be read, or lacks a key.
pub fn read_credentials(path: &Path) -> Result<AwsCredential, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut section: Option<String> = None;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            continue;
        }
        if section.as_deref().is_some_and(|s| s != "default") {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{}: `{line}` is not key = value", path.display()));
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => key_id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret_key)) if !key_id.is_empty() && !secret_key.is_empty() => {
            Ok(AwsCredential {
                key_id,
                secret_key,
                token: token.filter(|t| !t.is_empty()),
            })
        }
        _ => Err(format!(
            "{} has no aws_access_key_id and aws_secret_access_key in its [default] profile",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_is_read_from_its_default_profile() {
        let dir = std::env::temp_dir().join(format!("ta-objects-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[other]\naws_access_key_id = NO\n\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        let credential = read_credentials(&file).unwrap();
        assert_eq!(
            (credential.key_id.as_str(), credential.secret_key.as_str()),
            ("AKIA1", "s3cr3t")
        );
        assert_eq!(credential.token, None);
        std::fs::write(&file, "[default]\naws_access_key_id = AKIA1\n").unwrap();
        assert!(read_credentials(&file).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
