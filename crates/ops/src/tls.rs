//! TLS for the services' listeners (the bridge's wss, notify-svc's gRPC),
//! with rustls on the aws-lc-rs provider.
//!
//! [`ServerTls`] holds the current `ServerConfig`; every accepted socket
//! takes the config of the moment, so [`ServerTls::reload`] (on SIGHUP, or
//! when [`ServerTls::watch`] sees a file change) serves new handshakes with
//! the new certificate while open connections keep the session they began
//! with: nothing is dropped. A reload that fails (a half-copied file, a key
//! that does not match its certificate) keeps the old config and says why.
//!
//! Client certificates are checked against a configured CA: required
//! (mutual TLS) or optional. They authenticate the transport only; what a
//! caller may do still comes from its bearer token.

use std::{
    io,
    marker::PhantomData,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use notify_core::setting::Setting;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

/// Longest TLS handshake: a client that opens a socket and stalls is
/// dropped after this (slowloris), without holding an accept slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes by default;
/// rotation tools (certbot, cert-manager, a systemd timer) rarely run more
/// than daily, and a stat of three files every 2 s costs nothing.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Handshakes in progress at once on one gRPC listener; more wait in the
/// kernel's accept queue. Bounds the CPU a connect storm can take.
const MAX_HANDSHAKES: usize = 256;

/// Where a listener's certificate, key and client CA live (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    pub client_auth: ClientAuth,
    /// How often to look for changed files (zero: reload on SIGHUP only).
    pub watch_every: Duration,
}

/// The names a binary gives its listener's TLS settings.
pub trait ServerTlsNames: Clone + Send + Sync + 'static {
    const CERT: Setting;
    const KEY: Setting;
    const WATCH_SECS: Setting;
}

/// A listener's certificate, key and reload watch: flattened into a
/// binary's args (client certificates are notify-svc's own settings).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct ServerTlsArgs<N: ServerTlsNames> {
    /// Serve TLS with this certificate chain (PEM; reloaded on SIGHUP or
    /// when the file changes, open connections kept). Unset: plaintext.
    #[arg(id = N::CERT.env, long = N::CERT.long, env = N::CERT.env, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(id = N::KEY.env, long = N::KEY.long, env = N::KEY.env, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// How often to look for changed TLS files, in seconds (0: reload on SIGHUP only).
    #[arg(id = N::WATCH_SECS.env, long = N::WATCH_SECS.long, env = N::WATCH_SECS.env, value_name = "SECS", default_value_t = WATCH_EVERY.as_secs())]
    pub watch_secs: u64,
    #[arg(skip)]
    names: PhantomData<N>,
}

impl<N: ServerTlsNames> ServerTlsArgs<N> {
    /// The files to serve (None: plaintext), with `client_auth`.
    pub fn files(&self, client_auth: ClientAuth) -> Result<Option<TlsFiles>, TlsError> {
        let files = TlsFiles::from_settings(self.cert.clone(), self.key.clone(), client_auth)
            .map_err(|e| TlsError::Config(format!("{} / {}: {e}", N::CERT.env, N::KEY.env)))?;
        Ok(files.map(|f| TlsFiles {
            watch_every: Duration::from_secs(self.watch_secs),
            ..f
        }))
    }
}

/// Whether clients must show a certificate signed by a configured CA.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificates asked for.
    #[default]
    Off,
    /// Asked for; a client without one is let in, a bad one is refused.
    Optional(PathBuf),
    /// Mutual TLS: a client without a valid certificate fails the handshake.
    Required(PathBuf),
}

impl ClientAuth {
    /// From the `*_TLS_CLIENT_CA` and `*_TLS_CLIENT_AUTH` settings:
    /// `required` (the default once a CA is given) or `optional`.
    pub fn from_settings(ca: Option<PathBuf>, mode: Option<&str>) -> Result<Self, TlsError> {
        match (ca, mode) {
            (None, None) => Ok(Self::Off),
            (None, Some(_)) => Err(TlsError::Config(
                "a client auth mode needs a client CA file".into(),
            )),
            (Some(ca), None | Some("required")) => Ok(Self::Required(ca)),
            (Some(ca), Some("optional")) => Ok(Self::Optional(ca)),
            (Some(_), Some(other)) => Err(TlsError::Config(format!(
                "client auth mode {other:?}: use required or optional"
            ))),
        }
    }

    fn ca(&self) -> Option<&Path> {
        match self {
            Self::Off => None,
            Self::Optional(ca) | Self::Required(ca) => Some(ca),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Config(String),
}

impl TlsFiles {
    /// From the three settings every service has (`*_TLS_CERT`, `*_TLS_KEY`,
    /// and the client CA): none means plaintext; a certificate without its
    /// key (or the other way round) is a mistake.
    pub fn from_settings(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_auth: ClientAuth,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert,
                key,
                client_auth,
                watch_every: WATCH_EVERY,
            })),
            (None, None) if client_auth == ClientAuth::Off => Ok(None),
            (None, None) => Err(TlsError::Config(
                "a client CA needs TLS: set the certificate and key too".into(),
            )),
            _ => Err(TlsError::Config(
                "set both the TLS certificate and its key".into(),
            )),
        }
    }

    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_auth.ca());
        paths
    }

    /// Reads the files and builds a config (protocols offered in `alpn`).
    fn build(&self, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| TlsError::File {
            path: self.key.clone(),
            why: format!("no private key: {e}"),
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let verifier = client_verifier(ca, &self.client_auth, provider)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // Refuses a key that does not belong to the certificate, so a
        // half-done rotation keeps the old pair rather than serving a broken one.
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::File {
                path: self.cert.clone(),
                why: format!("certificate and key do not fit together: {e}"),
            })?;
        config.alpn_protocols = alpn.to_vec();
        Ok(config)
    }
}

fn client_verifier(
    ca: &Path,
    mode: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: ca.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match mode {
        ClientAuth::Optional(_) => builder.allow_unauthenticated(),
        _ => builder,
    };
    builder
        .build()
        .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            why: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            why: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// A client config (for https JWKS fetches, wss clients) that trusts the
/// CA file `ca`, or the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR`
/// honoured) when there is none.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    path: ca.to_owned(),
                    why: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no trusted CA certificates: install ca-certificates or give a CA file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What the files looked like when last loaded: a change of any length or
/// modification time means "reload".
type Stamp = Vec<Option<(u64, SystemTime)>>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.len(), m.modified().ok()?))
        })
        .collect()
}

/// A listener's TLS config that can be swapped while it serves.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
    reloads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files; `alpn` lists the protocols offered (`h2` for gRPC,
    /// `http/1.1` for WebSocket).
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = files.build(&alpn)?;
        Ok(Arc::new(Self {
            files,
            alpn,
            current: RwLock::new(Arc::new(config)),
            reloads: Default::default(),
        }))
    }

    /// Re-reads the files. On error the config in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(self.files.build(&self.alpn)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the handshake on `io` with the config of the moment, within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(io))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Reloads on SIGHUP and, unless `watch_every` is zero, whenever a
    /// file's size or modification time changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file change only");
                None
            }
        };
        let paths = self.files.paths();
        let mut seen = stamp(&paths);
        let polling = !self.files.watch_every.is_zero();
        let mut tick = tokio::time::interval(self.files.watch_every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                _ = tick.tick(), if polling => {
                    let now = stamp(&paths);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "file change"
                }
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(why, cert = %self.files.cert.display(), "TLS certificates reloaded")
                }
                Err(e) => {
                    tracing::error!(why, error = %e, "TLS reload failed; still serving the previous certificate")
                }
            }
        }
    }
}

/// TLS connections accepted on `listener`, handshakes run concurrently (a
/// slow one holds up no other), for `tonic`'s `serve_with_incoming`. Ends at
/// `stop`. Failed handshakes are logged at debug and skipped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    // Small: a handshaken connection waits here only until tonic polls.
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
