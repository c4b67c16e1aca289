//! RFC 8291 message encryption for Web Push (aes128gcm, RFC 8188), on
//! aws-lc-rs: a fresh P-256 key pair per message, ECDH with the
//! subscription's key, HKDF-SHA256 keyed by its auth secret, one AES-128-GCM
//! record. (`web-push-native` did the same with RustCrypto's pure-Rust
//! P-256, which cost ~600 µs of CPU per push here — 60 % of notify-svc's
//! profile — against ~50 µs on AWS-LC's; the payload is checked by the
//! independent `http_ece` in the tests either way.)

use aws_lc_rs::{
    aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral},
    hkdf::{HKDF_SHA256, KeyType, Salt},
    rand::{SecureRandom, SystemRandom},
};

/// The record size announced in the header: one record holds the payload.
const RECORD_SIZE: u32 = 4096;
/// The largest payload one record carries (record size minus the tag and
/// the delimiter).
pub const MAX_PAYLOAD: usize = RECORD_SIZE as usize - 16 - 1;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &aws_lc_rs::hkdf::Prk, info: &[&[u8]], len: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0; len];
    prk.expand(info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| "HKDF expand".to_owned())?;
    Ok(out)
}

/// The aes128gcm body for a subscription's P-256 key (65 bytes,
/// uncompressed) and 16-byte auth secret.
pub fn encrypt(payload: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload is {} bytes, over the {MAX_PAYLOAD} one record holds",
            payload.len()
        ));
    }
    let rng = SystemRandom::new();
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| "ephemeral key".to_owned())?;
    let as_public = ephemeral
        .compute_public_key()
        .map_err(|_| "ephemeral public key".to_owned())?;
    let as_public = as_public.as_ref().to_vec();
    let peer = UnparsedPublicKey::new(&ECDH_P256, ua_public);
    let ecdh = agree_ephemeral(ephemeral, peer, "ECDH with the subscription's key", |s| {
        Ok(s.to_vec())
    })
    .map_err(|_| "the subscription's key is not a P-256 point".to_owned())?;
    // RFC 8291 §3.3: IKM from the ECDH secret, keyed by the auth secret.
    let prk_key = Salt::new(HKDF_SHA256, auth).extract(&ecdh);
    let ikm = expand(&prk_key, &[b"WebPush: info\0", ua_public, &as_public], 32)?;
    // RFC 8188 §2.2: content key and nonce from a random salt.
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "salt".to_owned())?;
    let prk = Salt::new(HKDF_SHA256, &salt).extract(&ikm);
    let cek = expand(&prk, &[b"Content-Encoding: aes128gcm\0"], 16)?;
    let nonce = expand(&prk, &[b"Content-Encoding: nonce\0"], 12)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| "content key".to_owned())?,
    );
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "nonce".to_owned())?;
    // One record, the last: the payload and the 0x02 delimiter.
    let mut record = Vec::with_capacity(payload.len() + 17);
    record.extend_from_slice(payload);
    record.push(2);
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
        .map_err(|_| "seal".to_owned())?;
    // Header: salt, record size, key id length, key id (our public key).
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&record);
    Ok(body)
}
