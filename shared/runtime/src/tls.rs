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
//!
//! Under mutual TLS the client certificate also says who the client is: its
//! SPIFFE ID, a URI SAN `spiffe://<trust domain>/<workload>` (e.g.
//! `spiffe://trade-assurance/contract`), names the workload, for a service
//! the name its tokens carry as `sub`. [`TlsConnection`] reads it once, when
//! the handshake completes, and every request of the connection carries it
//! as a [`ClientIdentity`]; with GRPC_TLS_BIND_SERVICE_IDENTITY (on by
//! default under mutual TLS) the auth layer accepts a token only from a
//! certificate that stands for its principal ([`ServiceIdentityBinding`]).

use std::{
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll},
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

use crate::config::{TlsConfig, is_workload_name};

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
        let mutual = server.as_ref().is_some_and(ServerTls::mutual);
        let bind = match config.grpc_tls_bind_service_identity {
            Some(true) if !mutual => {
                return Err("GRPC_TLS_BIND_SERVICE_IDENTITY=true needs mutual TLS \
                            (GRPC_TLS_CERT_FILE and GRPC_TLS_CLIENT_CA_FILE): without a client \
                            certificate no connection names a service"
                    .into());
            }
            Some(bind) => bind,
            None => mutual,
        };
        if !bind && !config.grpc_tls_edge_gateways.is_empty() {
            return Err(
                "GRPC_TLS_EDGE_GATEWAYS applies only when service identities are bound \
                        (mutual TLS, GRPC_TLS_BIND_SERVICE_IDENTITY not false)"
                    .into(),
            );
        }
        let server = server.map(|server| ServerTls {
            binding: bind.then(|| ServiceIdentityBinding::new(&config.grpc_tls_edge_gateways)),
            ..server
        });
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
    /// Some: GRPC_TLS_BIND_SERVICE_IDENTITY is on (mutual TLS only).
    binding: Option<ServiceIdentityBinding>,
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
            binding: None,
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// Which tokens a client certificate may carry, when
    /// GRPC_TLS_BIND_SERVICE_IDENTITY is on (`None`: off).
    pub fn service_identity_binding(&self) -> Option<&ServiceIdentityBinding> {
        self.binding.as_ref()
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

// --- who the client is: the SPIFFE ID in its certificate ----------------------------

/// How a SPIFFE ID begins, and its URI scheme (compared case-insensitively
/// when picking a certificate's SPIFFE IDs, so that a malformed one counts).
const SPIFFE_SCHEME: &str = "spiffe://";
const SPIFFE_URI_SCHEME: &str = "spiffe:";

/// The workload a SPIFFE ID names under the platform's convention,
/// `spiffe://<trust domain>/<workload>`: `contract` for
/// `spiffe://trade-assurance/contract`. `None` for an ID of any other shape
/// (a longer path, an upper-case or empty trust domain, a query...). The
/// trust domain is not compared with anything: the client CA
/// (GRPC_TLS_CLIENT_CA_FILE) decides which certificates are believed.
pub fn spiffe_workload(id: &str) -> Option<&str> {
    let (trust_domain, workload) = id.strip_prefix(SPIFFE_SCHEME)?.split_once('/')?;
    let trust_domain_ok = !trust_domain.is_empty()
        && trust_domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    (trust_domain_ok && is_workload_name(workload)).then_some(workload)
}

/// Who the client of a TLS connection is, by its certificate: read once when
/// the handshake completed ([`TlsConnection`]), carried by every request of
/// the connection (a request extension, through tonic's `Connected`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    remote_addr: Option<SocketAddr>,
    certificate: ClientCertificate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientCertificate {
    /// TLS without client authentication.
    Absent,
    /// The SPIFFE IDs of the verified certificate (its URI SANs with the
    /// scheme `spiffe`), as written; none in a certificate without one.
    Spiffe(Arc<[String]>),
    /// Verified by the handshake, but its names cannot be read here: it
    /// stands for no one.
    Unreadable(Arc<str>),
}

impl ClientIdentity {
    /// The identity of a connection from `remote_addr` whose client
    /// presented `chain` (end entity first), verified by the handshake.
    pub fn of_connection(
        remote_addr: Option<SocketAddr>,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Self {
        let certificate = match chain.and_then(<[_]>::first) {
            Some(end_entity) => read_client_certificate(end_entity),
            None => ClientCertificate::Absent,
        };
        Self {
            remote_addr,
            certificate,
        }
    }

    /// The identity of a client that presented the certificate `der`.
    pub fn of_certificate(der: &[u8]) -> Self {
        Self::of_connection(None, Some(&[CertificateDer::from(der)]))
    }

    /// Where the connection comes from.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// Whether the client presented a certificate.
    pub fn has_certificate(&self) -> bool {
        self.certificate != ClientCertificate::Absent
    }

    /// The SPIFFE IDs in the client's certificate (none without one).
    pub fn spiffe_ids(&self) -> &[String] {
        match &self.certificate {
            ClientCertificate::Spiffe(ids) => ids,
            ClientCertificate::Absent | ClientCertificate::Unreadable(_) => &[],
        }
    }

    /// Whether the certificate names `workload`
    /// (`spiffe://<trust domain>/<workload>`).
    pub fn names(&self, workload: &str) -> bool {
        self.spiffe_ids()
            .iter()
            .any(|id| spiffe_workload(id) == Some(workload))
    }

    /// Whether the certificate names a workload at all: it has a SPIFFE ID
    /// (of any shape), or it cannot be read (then it counts as naming one
    /// nobody is, so it carries no token).
    pub fn names_a_workload(&self) -> bool {
        match &self.certificate {
            ClientCertificate::Absent => false,
            ClientCertificate::Spiffe(ids) => !ids.is_empty(),
            ClientCertificate::Unreadable(_) => true,
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.certificate {
            ClientCertificate::Absent => f.write_str("no client certificate"),
            ClientCertificate::Spiffe(ids) if ids.is_empty() => {
                f.write_str("a client certificate without a SPIFFE ID")
            }
            ClientCertificate::Spiffe(ids) => {
                write!(f, "the client certificate of {}", ids.join(", "))
            }
            ClientCertificate::Unreadable(reason) => {
                write!(f, "an unreadable client certificate ({reason})")
            }
        }
    }
}

/// The SPIFFE IDs of a certificate (DER).
fn read_client_certificate(der: &[u8]) -> ClientCertificate {
    use x509_parser::extensions::GeneralName;

    let certificate = match x509_parser::parse_x509_certificate(der) {
        Ok((_, certificate)) => certificate,
        Err(error) => return ClientCertificate::Unreadable(error.to_string().into()),
    };
    match certificate.subject_alternative_name() {
        Ok(None) => ClientCertificate::Spiffe(Arc::new([])),
        Ok(Some(names)) => ClientCertificate::Spiffe(
            names
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri)
                        if uri.get(..SPIFFE_URI_SCHEME.len()).is_some_and(|scheme| {
                            scheme.eq_ignore_ascii_case(SPIFFE_URI_SCHEME)
                        }) =>
                    {
                        Some((*uri).to_owned())
                    }
                    _ => None,
                })
                .collect(),
        ),
        Err(error) => {
            ClientCertificate::Unreadable(format!("subject alternative names: {error}").into())
        }
    }
}

/// GRPC_TLS_BIND_SERVICE_IDENTITY on: the auth layer accepts a token only
/// from a client certificate that stands for its principal. A service's
/// token (`role: service`, `sub: contract`) needs a certificate naming that
/// service; a person's token needs one that names no workload, or an edge
/// gateway listed in GRPC_TLS_EDGE_GATEWAYS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIdentityBinding {
    edge_gateways: Arc<[String]>,
}

impl ServiceIdentityBinding {
    pub fn new(edge_gateways: &[String]) -> Self {
        Self {
            edge_gateways: edge_gateways.into(),
        }
    }

    /// The workloads whose certificates may carry people's tokens.
    pub fn edge_gateways(&self) -> &[String] {
        &self.edge_gateways
    }
}

/// An accepted TLS connection and who its client is: tonic hands the
/// [`ClientIdentity`] to every request of the connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    client: ClientIdentity,
}

impl TlsConnection {
    /// `stream` once its handshake completed (the client's certificate, if
    /// any, verified).
    pub fn new(stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let client =
            ClientIdentity::of_connection(tcp.peer_addr().ok(), session.peer_certificates());
        Self { stream, client }
    }

    pub fn client(&self) -> &ClientIdentity {
        &self.client
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ClientIdentity;

    fn connect_info(&self) -> ClientIdentity {
        self.client.clone()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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
            self.leaf_naming(name, serial, &[])
        }

        /// [`Self::leaf`] with these URI SANs too (a SPIFFE ID).
        fn leaf_naming(
            &self,
            name: &str,
            serial: u64,
            uris: &[&str],
        ) -> (PathBuf, PathBuf, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            for uri in uris {
                params
                    .subject_alt_names
                    .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
            }
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

    #[test]
    fn a_spiffe_id_is_read_from_the_certificate() {
        let pki = Pki::new("spiffe");
        let (_, _, contract) = pki.leaf_naming(
            "contract",
            1,
            &["spiffe://trade-assurance/contract", "https://example.com/x"],
        );
        let client = ClientIdentity::of_certificate(&contract);
        assert!(client.has_certificate());
        assert_eq!(client.spiffe_ids(), ["spiffe://trade-assurance/contract"]);
        assert!(client.names("contract"));
        assert!(!client.names("dispute"));
        assert!(client.names_a_workload());
        assert_eq!(
            client.to_string(),
            "the client certificate of spiffe://trade-assurance/contract"
        );

        // DNS names only (as before this convention): a certificate that
        // names no workload.
        let (_, _, plain) = pki.leaf("plain", 2);
        let client = ClientIdentity::of_certificate(&plain);
        assert!(client.has_certificate());
        assert!(client.spiffe_ids().is_empty());
        assert!(!client.names("localhost") && !client.names_a_workload());
        assert_eq!(
            client.to_string(),
            "a client certificate without a SPIFFE ID"
        );

        // A SPIFFE ID of another shape is kept: it names a workload, but no
        // service of ours.
        let (_, _, istio) = pki.leaf_naming("istio", 3, &["SPIFFE://td/ns/a/sa/contract"]);
        let client = ClientIdentity::of_certificate(&istio);
        assert!(client.names_a_workload() && !client.names("contract"));

        let absent = ClientIdentity::of_connection(None, None);
        assert!(!absent.has_certificate() && !absent.names_a_workload());
        assert_eq!(absent.to_string(), "no client certificate");
        let unreadable = ClientIdentity::of_certificate(b"not DER");
        assert!(unreadable.has_certificate() && unreadable.names_a_workload());
        assert!(!unreadable.names("contract"));
        assert!(
            unreadable
                .to_string()
                .starts_with("an unreadable client certificate")
        );
    }

    #[test]
    fn only_the_conventions_spiffe_ids_name_a_workload() {
        for (id, workload) in [
            ("spiffe://trade-assurance/contract", Some("contract")),
            (
                "spiffe://example.org/supplier-registry",
                Some("supplier-registry"),
            ),
            ("spiffe://td-1.example_x/a.b_c-d", Some("a.b_c-d")),
            ("spiffe://td/ns/prod/sa/contract", None),
            ("spiffe://td/contract/", None),
            ("spiffe://td/", None),
            ("spiffe://td/..", None),
            ("spiffe://td", None),
            ("spiffe:///contract", None),
            ("spiffe://TD/contract", None),
            ("SPIFFE://td/contract", None),
            ("spiffe://td/contract?x=1", None),
            ("spiffe://td/con%74ract", None),
            ("spiffe://user@td/contract", None),
            ("https://td/contract", None),
        ] {
            assert_eq!(spiffe_workload(id), workload, "{id}");
        }
    }

    #[tokio::test]
    async fn an_accepted_connection_carries_its_clients_spiffe_id() {
        use tonic::transport::server::Connected;

        let pki = Pki::new("connection");
        let (crt, key, _) = pki.leaf_naming("contract", 1, &["spiffe://trade-assurance/contract"]);
        let ca = pki.dir.join("ca.crt");
        let tls = Tls::from_config(&TlsConfig {
            grpc_tls_cert_file: Some(crt),
            grpc_tls_key_file: Some(key),
            grpc_tls_client_ca_file: Some(ca.clone()),
            peer_tls_ca_file: Some(ca),
            ..TlsConfig::default()
        })
        .unwrap();
        let server = tls.server.unwrap();
        assert!(server.service_identity_binding().is_some());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = server.acceptor();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsConnection::new(acceptor.accept(tcp).await.unwrap())
        });
        // The service calling a peer presents its own certificate.
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let _client = tls
            .peers
            .unwrap()
            .connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let connection = accepted.await.unwrap();
        let client = connection.connect_info();
        assert!(client.names("contract"));
        assert_eq!(client.spiffe_ids(), ["spiffe://trade-assurance/contract"]);
        assert!(client.remote_addr().is_some());
        assert_eq!(&client, connection.client());
    }

    #[test]
    fn binding_is_on_under_mutual_tls_unless_turned_off() {
        let pki = Pki::new("binding");
        let (crt, pem, _) = pki.leaf("server", 1);
        let ca = pki.dir.join("ca.crt");
        let config = |client_ca: bool, bind: Option<bool>, edge: &[&str]| TlsConfig {
            grpc_tls_cert_file: Some(crt.clone()),
            grpc_tls_key_file: Some(pem.clone()),
            grpc_tls_client_ca_file: client_ca.then(|| ca.clone()),
            grpc_tls_bind_service_identity: bind,
            grpc_tls_edge_gateways: edge.iter().map(|&name| name.to_owned()).collect(),
            ..TlsConfig::default()
        };
        let binding = |config: TlsConfig| {
            Tls::from_config(&config)
                .map(|tls| tls.server.unwrap().service_identity_binding().cloned())
        };

        assert_eq!(
            binding(config(true, None, &[])),
            Ok(Some(ServiceIdentityBinding::default()))
        );
        assert_eq!(
            binding(config(true, Some(true), &[])),
            Ok(Some(ServiceIdentityBinding::default()))
        );
        assert_eq!(binding(config(true, Some(false), &[])), Ok(None));
        assert_eq!(
            binding(config(true, None, &["ingress"])),
            Ok(Some(ServiceIdentityBinding::new(&["ingress".to_owned()])))
        );
        // TLS without client certificates: unchanged, nothing to bind to.
        assert_eq!(binding(config(false, None, &[])), Ok(None));
        assert_eq!(binding(config(false, Some(false), &[])), Ok(None));
        let error = binding(config(false, Some(true), &[])).unwrap_err();
        assert!(
            error.starts_with("GRPC_TLS_BIND_SERVICE_IDENTITY=true needs mutual TLS"),
            "{error}"
        );
        let error = binding(config(true, Some(false), &["ingress"])).unwrap_err();
        assert!(error.starts_with("GRPC_TLS_EDGE_GATEWAYS"), "{error}");
        // Plaintext: refused too when binding is asked for.
        let error = Tls::from_config(&TlsConfig {
            grpc_tls_bind_service_identity: Some(true),
            ..TlsConfig::default()
        })
        .err()
        .unwrap();
        assert!(
            error.starts_with("GRPC_TLS_BIND_SERVICE_IDENTITY"),
            "{error}"
        );
        assert!(
            Tls::from_config(&TlsConfig {
                grpc_tls_bind_service_identity: Some(false),
                ..TlsConfig::default()
            })
            .is_ok()
        );
    }
}
