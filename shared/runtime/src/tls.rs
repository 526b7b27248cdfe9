//! TLS on the gRPC listener and on calls to other services (rustls with ring).
//!
//! Every certificate, key and CA file is re-read when it changes, without a
//! restart: the value built from the files (a certificate with its key, a
//! verifier over a CA bundle) is a [`Reloading`] one. Whoever needs it (a
//! handshake, through the rustls resolver and verifier traits) asks for the
//! current value; at most once per `TLS_RELOAD_INTERVAL` that looks at the
//! files' modification time and length, and when they changed, reads and
//! checks them again. A good new file replaces the value for the next
//! handshake (connections already open keep theirs); a bad one (unreadable,
//! no certificate, a key that does not match) is logged with the reason and
//! the previous value stays, until the files change again. Kubernetes
//! updates a mounted Secret by swapping a symlink: the path's metadata
//! follows it, so the swap is seen as a change.
//!
//! At start-up, a missing or bad file stops the process; the message names
//! its variable.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::{
        ResolvesClientCert, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

use crate::config::TlsConfig;

/// The one crypto provider: ring (as sqlx's rustls), never a process default.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// gRPC is HTTP/2: both sides offer only `h2`.
const ALPN_H2: &[u8] = b"h2";

/// The TLS of a process, from its settings: the listener's and the peers'.
pub struct Tls {
    /// `None`: the listener is plaintext.
    pub server: Option<ServerTls>,
    /// `None`: peers are called in plaintext only (no PEER_TLS_CA_FILE).
    pub peers: Option<PeerTls>,
}

impl Tls {
    /// Reads and checks every file the settings name.
    ///
    /// # Errors
    /// A file is missing, unreadable or bad; the message names its variable.
    pub fn from_config(config: &TlsConfig) -> Result<Self, String> {
        let every = config.tls_reload_interval;
        let own = match (&config.grpc_tls_cert_file, &config.grpc_tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(ReloadingKey::new(
                ("GRPC_TLS_CERT_FILE", cert),
                ("GRPC_TLS_KEY_FILE", key),
                every,
            )?)),
            (None, None) => None,
            _ => return Err("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE go together".into()),
        };
        let server = match &own {
            Some(key) => Some(ServerTls::new(
                key.clone(),
                config
                    .grpc_tls_client_ca_file
                    .as_deref()
                    .map(|ca| ("GRPC_TLS_CLIENT_CA_FILE", ca)),
                every,
            )?),
            None if config.grpc_tls_client_ca_file.is_some() => {
                return Err("GRPC_TLS_CLIENT_CA_FILE needs GRPC_TLS_CERT_FILE".into());
            }
            None => None,
        };
        let peers = match &config.peer_tls_ca_file {
            Some(ca) => {
                let identity = match (&config.peer_tls_cert_file, &config.peer_tls_key_file) {
                    (Some(cert), Some(key)) => Some(Arc::new(ReloadingKey::new(
                        ("PEER_TLS_CERT_FILE", cert),
                        ("PEER_TLS_KEY_FILE", key),
                        every,
                    )?)),
                    (None, None) => own.clone(),
                    _ => return Err("PEER_TLS_CERT_FILE and PEER_TLS_KEY_FILE go together".into()),
                };
                Some(PeerTls::new(("PEER_TLS_CA_FILE", ca), identity, every)?)
            }
            None if config.peer_tls_cert_file.is_some() => {
                return Err("PEER_TLS_CERT_FILE needs PEER_TLS_CA_FILE".into());
            }
            None => None,
        };
        Ok(Self { server, peers })
    }
}

/// The listener's TLS: its certificate (re-read on change) and, for mutual
/// TLS, the CA its clients' certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    mutual: bool,
}

impl ServerTls {
    fn new(
        key: Arc<ReloadingKey>,
        client_ca: Option<(&'static str, &Path)>,
        every: Duration,
    ) -> Result<Self, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = match client_ca {
            Some((variable, path)) => {
                let verifier = ReloadingClientVerifier(Reloading::new(
                    vec![(variable, path.to_owned())],
                    every,
                    |files| {
                        let (variable, path) = &files[0];
                        let roots = read_roots(variable, path)?;
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                            .build()
                            .map_err(|e| format!("{variable}: {}: {e}", path.display()))
                    },
                )?);
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(key);
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            mutual: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// TLS to peers: their certificates verified against PEER_TLS_CA_FILE (for
/// the host name or IP address of the peer's URL), and the client
/// certificate this service presents (mutual TLS), both re-read on change.
#[derive(Clone)]
pub struct PeerTls {
    config: Arc<rustls::ClientConfig>,
}

impl PeerTls {
    fn new(
        (variable, ca): (&'static str, &Path),
        identity: Option<Arc<ReloadingKey>>,
        every: Duration,
    ) -> Result<Self, String> {
        let verifier = ReloadingServerVerifier(Reloading::new(
            vec![(variable, ca.to_owned())],
            every,
            |files| {
                let (variable, path) = &files[0];
                let roots = read_roots(variable, path)?;
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("{variable}: {}: {e}", path.display()))
            },
        )?);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match identity {
            Some(key) => builder.with_client_cert_resolver(key),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

// --- values re-read when their files change -----------------------------------------

/// What identifies a file's content cheaply: modification time and length
/// (`None`: the file cannot be read now).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

type Files = Vec<(&'static str, PathBuf)>;
type Load<T> = Box<dyn Fn(&Files) -> Result<T, String> + Send + Sync>;

/// A value built from files (each named by its variable), rebuilt when they change.
struct Reloading<T> {
    files: Files,
    every: Duration,
    load: Load<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Loads the value now: an error here stops the process.
    fn new(
        files: Files,
        every: Duration,
        load: impl Fn(&Files) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = files.iter().map(|(_, path)| stamp(path)).collect();
        let current = Arc::new(load(&files)?);
        Ok(Self {
            files,
            every,
            load: Box::new(load),
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, re-read first if the files changed (looked at
    /// once per interval at most).
    fn get(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.every {
            state.checked = Instant::now();
            let stamps: Vec<Stamp> = self.files.iter().map(|(_, path)| stamp(path)).collect();
            if stamps != state.stamps {
                // Taken before reading: a write during the read is seen next time.
                state.stamps = stamps;
                match (self.load)(&self.files) {
                    Ok(value) => {
                        state.current = Arc::new(value);
                        tracing::info!(files = %self.names(), "TLS files changed: reloaded");
                    }
                    Err(error) => tracing::warn!(
                        files = %self.names(),
                        %error,
                        "TLS files changed but cannot be used: keeping the previous ones"
                    ),
                }
            }
        }
        state.current.clone()
    }

    fn names(&self) -> String {
        self.files
            .iter()
            .map(|(variable, path)| format!("{variable}={}", path.display()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its private key: what the listener presents, and
/// what this service presents to peers under mutual TLS.
#[derive(Debug)]
pub(crate) struct ReloadingKey(Reloading<CertifiedKey>);

impl ReloadingKey {
    fn new(
        cert: (&'static str, &Path),
        key: (&'static str, &Path),
        every: Duration,
    ) -> Result<Self, String> {
        Reloading::new(
            vec![(cert.0, cert.1.to_owned()), (key.0, key.1.to_owned())],
            every,
            |files| certified_key(&files[0], &files[1]),
        )
        .map(Self)
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Clients' certificates checked against a CA bundle re-read on change.
#[derive(Debug)]
struct ReloadingClientVerifier(Reloading<Arc<dyn ClientCertVerifier>>);

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// None: the CA names would have to outlive a reload. Clients send their
    /// certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// Peers' certificates checked against a CA bundle re-read on change.
#[derive(Debug)]
struct ReloadingServerVerifier(Reloading<Arc<WebPkiServerVerifier>>);

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

// --- reading the files ---------------------------------------------------------------

fn read(variable: &str, path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{variable}: cannot read {}: {e}", path.display()))
}

fn read_certificates(variable: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(variable, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{variable}: {}: not PEM certificates: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{variable}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certificates)
}

fn read_roots(variable: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(variable, path)? {
        roots
            .add(certificate)
            .map_err(|e| format!("{variable}: {}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

fn certified_key(
    (cert_variable, cert_path): &(&'static str, PathBuf),
    (key_variable, key_path): &(&'static str, PathBuf),
) -> Result<CertifiedKey, String> {
    let chain = read_certificates(cert_variable, cert_path)?;
    let pem = read(key_variable, key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{key_variable}: {}: no PEM private key: {e}",
            key_path.display()
        )
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_variable}: {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "{key_variable} ({}) is not the key of {cert_variable} ({}): {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: PathBuf,
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
        ca_pem: String,
    }

    impl Pki {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ta-tls-{label}-{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            fs::create_dir_all(&dir).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_pem = params.self_signed(&key).unwrap().pem();
            fs::write(dir.join("ca.crt"), &ca_pem).unwrap();
            Self {
                dir,
                ca: rcgen::Issuer::new(params, key),
                ca_pem,
            }
        }

        /// A leaf for localhost with `serial`, written as `name`.crt/.key.
        fn leaf(&self, name: &str, serial: u64) -> (PathBuf, PathBuf, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.serial_number = Some(serial.into());
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let (crt, pem) = (
                self.dir.join(format!("{name}.crt")),
                self.dir.join(format!("{name}.key")),
            );
            fs::write(&crt, cert.pem()).unwrap();
            fs::write(&pem, key.serialize_pem()).unwrap();
            (crt, pem, cert.der().to_vec())
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn served(key: &ReloadingKey) -> Vec<u8> {
        key.0.get().cert[0].to_vec()
    }

    #[test]
    fn a_changed_certificate_is_served_and_a_bad_one_keeps_the_previous() {
        let pki = Pki::new("reload");
        let (crt, pem, first) = pki.leaf("server", 1);
        let key = ReloadingKey::new(
            ("GRPC_TLS_CERT_FILE", &crt),
            ("GRPC_TLS_KEY_FILE", &pem),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(served(&key), first);

        // A certificate whose key is not the one on disk: kept the first.
        let other = pki.leaf("other", 2);
        fs::copy(&other.0, &crt).unwrap();
        assert_eq!(served(&key), first);
        // Garbage: still the first.
        fs::write(&crt, "not a certificate").unwrap();
        assert_eq!(served(&key), first);

        // A good pair: served from the next handshake on.
        let (_, _, third) = pki.leaf("server", 3);
        assert_eq!(served(&key), third);
    }

    #[test]
    fn files_are_looked_at_once_per_interval_at_most() {
        let pki = Pki::new("interval");
        let (crt, pem, first) = pki.leaf("server", 1);
        let key = ReloadingKey::new(
            ("GRPC_TLS_CERT_FILE", &crt),
            ("GRPC_TLS_KEY_FILE", &pem),
            Duration::from_secs(3_600),
        )
        .unwrap();
        pki.leaf("server", 2);
        assert_eq!(served(&key), first, "not looked at again within the hour");
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let pki = Pki::new("settings");
        let (crt, pem, _) = pki.leaf("server", 1);
        let missing = pki.dir.join("missing.pem");
        let config = |cert: &Path, key: &Path, ca: Option<&Path>| TlsConfig {
            grpc_tls_cert_file: Some(cert.to_owned()),
            grpc_tls_key_file: Some(key.to_owned()),
            grpc_tls_client_ca_file: ca.map(Path::to_owned),
            ..TlsConfig::default()
        };
        let error = |config: TlsConfig| Tls::from_config(&config).err().unwrap();

        assert!(error(config(&missing, &pem, None)).starts_with("GRPC_TLS_CERT_FILE: cannot read"));
        assert!(error(config(&crt, &missing, None)).starts_with("GRPC_TLS_KEY_FILE: cannot read"));
        assert!(error(config(&crt, &crt, None)).starts_with("GRPC_TLS_KEY_FILE:"));
        assert!(error(config(&pem, &pem, None)).starts_with("GRPC_TLS_CERT_FILE:"));
        let (_, other_key, _) = pki.leaf("other", 2);
        assert!(
            error(config(&crt, &other_key, None)).contains("is not the key of GRPC_TLS_CERT_FILE")
        );
        assert!(error(config(&crt, &pem, Some(&missing))).starts_with("GRPC_TLS_CLIENT_CA_FILE:"));
        let peers = TlsConfig {
            peer_tls_ca_file: Some(missing.clone()),
            ..TlsConfig::default()
        };
        assert!(error(peers).starts_with("PEER_TLS_CA_FILE: cannot read"));

        let ca = pki.dir.join("ca.crt");
        assert_eq!(fs::read_to_string(&ca).unwrap(), pki.ca_pem);
        let tls = Tls::from_config(&TlsConfig {
            peer_tls_ca_file: Some(ca.clone()),
            ..config(&crt, &pem, Some(&ca))
        })
        .unwrap();
        assert!(tls.server.as_ref().is_some_and(ServerTls::mutual));
        assert!(tls.peers.is_some());
        let plaintext = Tls::from_config(&TlsConfig::default()).unwrap();
        assert!(plaintext.server.is_none() && plaintext.peers.is_none());
    }
}
