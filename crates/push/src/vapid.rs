//! The VAPID key pair (RFC 8292) that identifies this server to push
//! services: an ECDSA P-256 key, read from a PKCS#8 PEM file or generated
//! (`notify up` makes one in its data directory), and the `sub` contact.
//! The private key never reaches logs or `/info` (its `Debug` is redacted).

use std::path::Path;

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

pub struct Vapid {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public_key_b64())
            .field("subject", &self.subject)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl Vapid {
    /// From a PKCS#8 DER key; `subject` is a `mailto:` or `https:` contact.
    pub fn from_pkcs8(der: &[u8], subject: &str) -> Result<Self, String> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(format!(
                "VAPID subject {subject:?} must be a mailto: or https: contact (RFC 8292)"
            ));
        }
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("VAPID key is not a P-256 PKCS#8 key: {e}"))?;
        Ok(Self {
            pkcs8: der.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            subject: subject.to_owned(),
        })
    }

    /// From a PEM file (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem_file(path: &Path, subject: &str) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("VAPID key {}: {e}", path.display()))?;
        Self::from_pem(&pem, subject)
    }

    /// From PEM text (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str, subject: &str) -> Result<Self, String> {
        Self::from_pkcs8(&pem_body(pem)?, subject)
    }

    /// A new key pair.
    pub fn generate(subject: &str) -> Result<Self, String> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| format!("VAPID key generation: {e}"))?;
        Self::from_pkcs8(doc.as_ref(), subject)
    }

    /// The private key as PEM, to store a generated key.
    pub fn to_pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as browsers take it (`applicationServerKey`):
    /// the uncompressed point, base64url.
    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
}

fn pem_body(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no `BEGIN PRIVATE KEY` block (PKCS#8 PEM expected)".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("PEM body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_pem() {
        let key = Vapid::generate("mailto:ops@example.com").unwrap();
        let dir = std::env::temp_dir().join(format!("vapid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vapid.pem");
        std::fs::write(&file, key.to_pem()).unwrap();
        let again = Vapid::from_pem_file(&file, "mailto:ops@example.com").unwrap();
        assert_eq!(again.public_key_b64(), key.public_key_b64());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(key.public_key_b64()).unwrap().len(),
            65
        );
        assert!(!format!("{key:?}").contains(&key.to_pem()[30..60]));
        assert!(
            Vapid::generate("ops@example.com").is_err(),
            "not a contact URI"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
