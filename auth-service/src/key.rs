//! One access-token signing key: an Ed25519 key (PKCS#8 PEM) and the OKP JWK it is
//! published as, whose `kid` is its RFC 7638 thumbprint.
//!
//! The rotating key set ([`crate::signing`]) is made of these, sealed in the
//! `auth_keys` bucket. A key can also live in a file ([`load_or_generate`], created
//! with mode 0600): `AUTH_DEV_KEY_FILE`, the DEVELOPMENT key that `mint-token` signs
//! with and the OAuth server publishes next to its own keys. Never in production.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not an ed25519 pkcs#8 pem key")]
    NotEd25519 { path: PathBuf },
    #[error("cannot derive the public key: {0}")]
    Public(String),
}

/// The signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parse an Ed25519 PKCS#8 PEM private key.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, KeyError> {
        let not_ed = || KeyError::NotEd25519 { path: path.to_owned() };
        let encoding = EncodingKey::from_ed_pem(pem).map_err(|_| not_ed())?;
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).map_err(|e| KeyError::Public(e.to_string()))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Public(e.to_string()))?;
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        Ok(Self { encoding, jwk })
    }

    /// The key's id: its RFC 7638 SHA-256 thumbprint, base64url.
    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public key as served in `/jwks.json`.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// Load the key at `path`, or create a new one there (parent directories too) with
/// mode 0600 if the file does not exist.
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    match std::fs::read(path) {
        Ok(pem) => {
            warn_if_readable_by_others(path);
            SigningKey::from_pem(&pem, path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pem = generate_pem();
            match write_new(path, pem.as_bytes()) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "created a development signing key");
                    SigningKey::from_pem(pem.as_bytes(), path)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                    SigningKey::from_pem(&pem, path)
                }
                Err(source) => Err(KeyError::Create {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) => Err(KeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Load an existing key (for `mint-token`, which must not invent a key nobody serves).
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    SigningKey::from_pem(&pem, path)
}

/// A fresh Ed25519 key as PKCS#8 PEM.
pub fn generate_pem() -> String {
    let seed: [u8; 32] = rand::random();
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(&seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "development signing key is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("auth-service-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generates_once_with_mode_0600_and_reloads_the_same_key() {
        let dir = temp_dir("keys");
        let path = dir.join("nested/dev.pem");
        let first = load_or_generate(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = load_or_generate(&path).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.jwk(), second.jwk());
        assert_eq!(load(&path).unwrap().kid(), first.kid());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn jwk_is_okp_ed25519_with_thumbprint_kid() {
        let pem = generate_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), Path::new("x")).unwrap();
        let v = serde_json::to_value(key.jwk()).unwrap();
        assert_eq!(v["kty"], "OKP");
        assert_eq!(v["crv"], "Ed25519");
        assert_eq!(v["alg"], "EdDSA");
        assert_eq!(v["use"], "sig");
        assert!(v.get("d").is_none(), "private part must never be published");
        // 32-byte SHA-256 thumbprint, base64url without padding (vector checked below).
        assert_eq!(key.kid().len(), 43);
    }

    #[test]
    fn rfc8037_test_vector_thumbprint() {
        // RFC 8037 appendix A.1/A.3: this private key has thumbprint
        // kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k.
        let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let key = SigningKey::from_pem(pem.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(
            serde_json::to_value(key.jwk()).unwrap()["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }

    #[test]
    fn rejects_other_keys() {
        let dir = temp_dir("bad");
        let path = dir.join("bad.pem");
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        assert!(matches!(load_or_generate(&path), Err(KeyError::NotEd25519 { .. })));
        assert!(matches!(load(&dir.join("missing.pem")), Err(KeyError::Read { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
