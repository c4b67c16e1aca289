//! The HTTPS client every sender shares: HTTP/2 where the provider offers
//! it (APNs requires it; FCM and Web Push services take it), rustls with
//! the system's roots and, for tests or a private push service, one extra
//! CA file.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Longest a provider may take to answer one push.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer body read (providers answer a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A provider's answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Https {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("push CA file {path}: {why}")]
    Ca { path: String, why: String },
}

impl Https {
    /// A client trusting the system's roots and `extra_ca` (PEM) if given.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let ca = |why: String| ClientError::Ca {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| ca(e.to_string()))?)
                    .map_err(|e| ca(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(ca("no certificate in it".into()));
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        // Small HTTP/2 frames (headers, then a short body) must not wait
        // for Nagle: with the peer's delayed ACK every push took ~40-100 ms
        // (measured: 403 pushes/s, p50 98 ms before; docs/benchmarks.md).
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Providers keep HTTP/2 connections open for many pushes.
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self { client })
    }

    /// Sends one request; an error is a transport failure (retryable).
    pub async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<Answer, String> {
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("answer body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}
