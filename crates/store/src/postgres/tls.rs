//! TLS to Postgres (or RDS Proxy, which requires it by default):
//! `sslmode=require` in DATABASE_URL turns it on, verified against the
//! system's roots plus `sslrootcert=PATH` if given (RDS's CA bundle), with
//! the host name checked. `disable` and `prefer` (tokio-postgres' default)
//! connect in plain text: a `prefer` that quietly fell back would hide a
//! misconfiguration, and one that verified would break on servers with
//! self-signed certificates (Debian's default) — say `require` to mean it.

use std::path::{Path, PathBuf};

use tokio_postgres::config::SslMode;

use crate::StoreError;

/// DATABASE_URL without `sslrootcert` (tokio-postgres does not know it), and
/// the path it named.
pub fn split_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(PathBuf::from(path));
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

/// Whether connections must be encrypted.
pub fn required(config: &tokio_postgres::Config) -> bool {
    config.get_ssl_mode() == SslMode::Require
}

/// The rustls connector: system roots, plus the CA file if any.
pub fn connector(
    root_cert: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system root rustls cannot read is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = root_cert {
        let pem = std::fs::read(path)
            .map_err(|e| StoreError::Internal(format!("sslrootcert {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls::pki_types::CertificateDer<'static> = cert.map_err(|e| {
                StoreError::Internal(format!("sslrootcert {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Internal(format!("sslrootcert {}: {e}", path.display()))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(StoreError::Internal(format!(
                "sslrootcert {}: no certificate in it",
                path.display()
            )));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslmode=require&sslrootcert=/etc/rds.pem"),
            (
                "postgres://u@h/db?sslmode=require".to_owned(),
                Some("/etc/rds.pem".into())
            )
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("/ca.pem".into()))
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }
}
