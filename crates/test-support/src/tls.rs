//! A throw-away PKI for TLS tests: a CA, server certificates for loopback
//! names, client certificates, all written as PEM files in a [`TestDir`].

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TestDir;

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Replaces these files with `next`'s the way rotation tools do: write
    /// aside, then rename over (key first, then certificate).
    pub fn rotate_to(&self, next: &CertFiles) {
        for (from, to) in [(&next.key, &self.key), (&next.cert, &self.cert)] {
            let aside = to.with_extension("new");
            std::fs::copy(from, &aside).expect("copying the new file");
            std::fs::rename(&aside, to).expect("renaming it over the old one");
        }
    }
}

/// A test certificate authority.
pub struct TestPki {
    dir: TestDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file): what clients or servers trust.
    pub ca: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `ca.pem`.
    pub fn new(name: &str) -> Self {
        let dir = TestDir::create(&format!("pki-{name}"));
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("writing ca.pem");
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, as `FILE.crt`/`FILE.key`.
    pub fn server(&self, file: &str) -> CertFiles {
        self.leaf(
            file,
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> CertFiles {
        self.leaf(name, name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        file: &str,
        common_name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = CertFiles {
            cert: self.dir.join(&format!("{file}.crt")),
            key: self.dir.join(&format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("writing the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("writing the key");
        files
    }

    /// A path in the PKI's directory (for files a test writes itself).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
