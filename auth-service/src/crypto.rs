//! Secrets at rest and in cookies.
//!
//! - [`Sealer`]: XChaCha20-Poly1305 AEAD for upstream tokens, claims and signing keys
//!   stored in KV. Keys come from `AUTH_VAULT_KEYS` as `id:base64url(32 bytes)`, the
//!   first one encrypts, all of them decrypt, so an operator rotates by putting a new
//!   key first and dropping the old one once everything was rewritten. Ciphertext
//!   names its key id and binds a context string (the bucket and key it belongs in),
//!   so a value cannot be moved to another record.
//! - [`Signer`]: HMAC-SHA256 with `COOKIE_ENCRYPTION_KEY` for cookies and CSRF tokens.
//! - [`random_token`] / [`sha256_b64`]: opaque secrets and how they are stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("key list is empty")]
    NoKeys,
    #[error("key '{0}' is not id:base64url of 32 bytes")]
    BadKey(String),
    #[error("key id '{0}' appears twice")]
    DuplicateId(String),
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key '{0}', which is not configured")]
    UnknownKey(String),
    #[error("sealed value does not authenticate")]
    Forged,
}

/// A fresh 256-bit secret, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    B64.encode(bytes)
}

/// How opaque secrets are stored: SHA-256, base64url. The secrets are 256-bit random
/// values, so a fast hash is enough (no dictionary to attack).
pub fn sha256_b64(data: &str) -> String {
    B64.encode(Sha256::digest(data.as_bytes()))
}

/// Constant-time equality of two strings.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// AEAD with a rotatable key list.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

impl Sealer {
    /// Parse `id:base64url,id2:base64url`; the first key encrypts.
    pub fn from_list(list: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<(String, XChaCha20Poly1305)> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, b64) = item.split_once(':').ok_or_else(|| CryptoError::BadKey(redact(item)))?;
            let id = id.trim();
            let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let bytes = decode_key(b64)
                .filter(|_| valid_id)
                .ok_or_else(|| CryptoError::BadKey(redact(item)))?;
            if keys.iter().any(|(k, _)| k == id) {
                return Err(CryptoError::DuplicateId(id.to_owned()));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey(redact(item)))?;
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// A new random key entry `id:base64url`, for scripts and tests.
    pub fn generate_entry(id: &str) -> String {
        let bytes: [u8; 32] = rand::random();
        format!("{id}:{}", B64.encode(bytes))
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        self.keys.first().map(|(id, _)| id.as_str()).unwrap_or_default()
    }

    /// Encrypt `plain`, bound to `context`. Output: `id.nonce.ciphertext` (base64url).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, CryptoError> {
        let (id, cipher) = self.keys.first().ok_or(CryptoError::NoKeys)?;
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Malformed)?;
        Ok(format!("{id}.{}.{}", B64.encode(nonce_bytes), B64.encode(ct)))
    }

    /// Decrypt a value made by [`Sealer::seal`] with the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(id), Some(nonce), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let nonce = B64.decode(nonce).map_err(|_| CryptoError::Malformed)?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let ct = B64.decode(ct).map_err(|_| CryptoError::Malformed)?;
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Forged)
    }

    /// Whether `sealed` was made with an older key (to be rewritten).
    pub fn is_stale(&self, sealed: &str) -> bool {
        sealed.split('.').next() != Some(self.current_id())
    }
}

fn decode_key(b64: &str) -> Option<Vec<u8>> {
    let b64 = b64.trim();
    let bytes = B64
        .decode(b64.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(b64))
        .ok()?;
    (bytes.len() == 32).then_some(bytes)
}

/// Never echo key material in an error.
fn redact(item: &str) -> String {
    match item.split_once(':') {
        Some((id, _)) => format!("{id}:…"),
        None => "…".to_owned(),
    }
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 signatures for cookies and CSRF tokens.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// At least 32 bytes of key (any string: the seeds use a random hex string).
    pub fn new(key: &str) -> Result<Self, CryptoError> {
        if key.len() < 32 {
            return Err(CryptoError::BadKey("COOKIE_ENCRYPTION_KEY".into()));
        }
        Ok(Self {
            key: key.as_bytes().to_vec(),
        })
    }

    fn mac(&self, purpose: &str, data: &str) -> HmacSha256 {
        // new_from_slice accepts any key length for HMAC.
        #[allow(clippy::expect_used)]
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data.as_bytes());
        mac
    }

    /// base64url HMAC of `data` for `purpose`.
    pub fn sign(&self, purpose: &str, data: &str) -> String {
        B64.encode(self.mac(purpose, data).finalize().into_bytes())
    }

    /// Constant-time check of a signature made by [`Signer::sign`].
    pub fn verify(&self, purpose: &str, data: &str, signature: &str) -> bool {
        let Ok(sig) = B64.decode(signature) else { return false };
        self.mac(purpose, data).verify_slice(&sig).is_ok()
    }

    /// `base64url(payload).signature` — a value the browser keeps but cannot change.
    pub fn sign_value(&self, purpose: &str, payload: &[u8]) -> String {
        let body = B64.encode(payload);
        let sig = self.sign(purpose, &body);
        format!("{body}.{sig}")
    }

    /// The payload of a [`Signer::sign_value`] value, if its signature holds.
    pub fn open_value(&self, purpose: &str, value: &str) -> Option<Vec<u8>> {
        let (body, sig) = value.rsplit_once('.')?;
        if !self.verify(purpose, body, sig) {
            return None;
        }
        B64.decode(body).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_bind_context() {
        let old = Sealer::generate_entry("k1");
        let new = Sealer::generate_entry("k2");
        let s1 = Sealer::from_list(&old).unwrap();
        let sealed = s1.seal("vault/g1", b"upstream-token").unwrap();
        assert!(!sealed.contains("upstream-token"));
        assert_eq!(s1.open("vault/g1", &sealed).unwrap(), b"upstream-token");
        // Moved to another record: refused.
        assert_eq!(s1.open("vault/g2", &sealed), Err(CryptoError::Forged));
        // Rotation: new key first, old still decrypts, new values use the new key.
        let s2 = Sealer::from_list(&format!("{new},{old}")).unwrap();
        assert_eq!(s2.open("vault/g1", &sealed).unwrap(), b"upstream-token");
        assert!(s2.is_stale(&sealed));
        let resealed = s2.seal("vault/g1", b"x").unwrap();
        assert!(resealed.starts_with("k2."));
        // The old key alone cannot read the new value.
        assert_eq!(
            s1.open("vault/g1", &resealed),
            Err(CryptoError::UnknownKey("k2".into()))
        );
        // Tampering.
        let mut bad = sealed.clone();
        bad.pop();
        bad.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s1.open("vault/g1", &bad).is_err());
    }

    #[test]
    fn key_list_errors_do_not_echo_keys() {
        assert_eq!(Sealer::from_list(" , ").unwrap_err(), CryptoError::NoKeys);
        let err = Sealer::from_list("k1:c2hvcnQ").unwrap_err();
        assert!(!err.to_string().contains("c2hvcnQ"));
        let a = Sealer::generate_entry("a");
        assert!(matches!(
            Sealer::from_list(&format!("{a},{a}")),
            Err(CryptoError::DuplicateId(_))
        ));
        assert!(Sealer::from_list("bad id:AAAA").is_err());
    }

    #[test]
    fn signer_values_and_purposes() {
        let s = Signer::new("0123456789abcdef0123456789abcdef").unwrap();
        let v = s.sign_value("approved", b"{\"sub\":\"alice\"}");
        assert_eq!(s.open_value("approved", &v).unwrap(), b"{\"sub\":\"alice\"}");
        assert!(s.open_value("csrf", &v).is_none(), "purpose is bound");
        let other = Signer::new("ffffffffffffffffffffffffffffffff").unwrap();
        assert!(other.open_value("approved", &v).is_none());
        let (body, sig) = v.rsplit_once('.').unwrap();
        let forged = format!("{}x.{sig}", body);
        assert!(s.open_value("approved", &forged).is_none());
        assert!(Signer::new("short").is_err());
        assert!(ct_eq("abc", "abc") && !ct_eq("abc", "abd") && !ct_eq("a", "ab"));
        assert_eq!(sha256_b64("abc").len(), 43);
        assert_ne!(random_token(), random_token());
    }
}
