//! How clients (the bridge, BetTracker, the CLI, benches) reach notify-svc:
//! `http://` in plaintext; `https://` over TLS, trusting the system's roots
//! or a given CA file, with a client certificate when notify-svc requires
//! mutual TLS. Files are read on every call, so a client that reconnects
//! picks up a rotated certificate.

use std::{fmt, marker::PhantomData, path::PathBuf};

use notify_core::setting::Setting;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS settings of a client of notify-svc (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for mutual TLS.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// The names a client binary gives its credential and TLS settings towards
/// notify-svc: `{PREFIX}_TOKEN`, `{PREFIX}_CA`, `{PREFIX}_CERT`, `{PREFIX}_KEY`.
pub trait CallerNames: Clone + Send + Sync + 'static {
    const TOKEN: Setting;
    const CA: Setting;
    const CERT: Setting;
    const KEY: Setting;
}

/// How a client presents itself to notify-svc: a caller token and TLS
/// files, flattened into the client binary's args.
#[derive(Clone, clap::Args)]
#[group(skip)]
pub struct CallerArgs<N: CallerNames> {
    /// This client's credential for notify-svc (a NOTIFY_API_TOKENS token;
    /// none: a loopback notify-svc in dev mode).
    #[arg(id = N::TOKEN.env, long = N::TOKEN.long, env = N::TOKEN.env, value_name = "TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA (PEM) to trust for an https:// notify-svc instead of the system's roots.
    #[arg(id = N::CA.env, long = N::CA.long, env = N::CA.env, value_name = "PEM", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) when notify-svc requires mutual TLS.
    #[arg(id = N::CERT.env, long = N::CERT.long, env = N::CERT.env, value_name = "PEM", global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(id = N::KEY.env, long = N::KEY.long, env = N::KEY.env, value_name = "PEM", global = true)]
    pub key: Option<PathBuf>,
    #[arg(skip)]
    names: PhantomData<N>,
}

impl<N: CallerNames> CallerArgs<N> {
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

impl<N: CallerNames> fmt::Debug for CallerArgs<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerArgs")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls", &self.tls())
            .finish()
    }
}

/// Why an endpoint could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("bad notify-svc URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Config(String),
}

/// An endpoint for `url` with TLS set up as `tls` says (no timeouts or
/// socket options: callers choose those).
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, ChannelError> {
    let bad_url = |why: String| ChannelError::Url {
        url: url.to_owned(),
        why,
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad_url(e.to_string()))?;
    let configured = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
    if !url.starts_with("https://") {
        if configured {
            return Err(bad_url(
                "TLS files are set but the URL is not https://".into(),
            ));
        }
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(ChannelError::Config(
                "a client certificate needs its key, and the other way round".into(),
            ));
        }
    }
    endpoint
        .tls_config(config)
        .map_err(|e| bad_url(e.to_string()))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ChannelError> {
    std::fs::read(path).map_err(|e| ChannelError::File {
        path: path.clone(),
        why: e.to_string(),
    })
}
