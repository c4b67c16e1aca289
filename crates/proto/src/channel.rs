//! How clients (the bridge, BetTracker, the CLI, benches) reach notify-svc:
//! `http://` in plaintext; `https://` over TLS, trusting the system's roots
//! or a given CA file, with a client certificate when notify-svc requires
//! mutual TLS. Files are read on every call, so a client that reconnects
//! picks up a rotated certificate.

use std::path::PathBuf;

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
