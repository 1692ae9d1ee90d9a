//! The one table of accepted algorithms and the key types that verify them; parsing a
//! JWKS document; choosing the key for a token.
//!
//! | `alg`  | key (`kty`, curve)        | notes                                   |
//! |--------|---------------------------|-----------------------------------------|
//! | RS256  | `RSA`, modulus ≥ 2048 bit | OIDC's mandatory algorithm              |
//! | PS256  | `RSA`, modulus ≥ 2048 bit | the same key with PSS padding           |
//! | ES256  | `EC`, `P-256`             | what our auth-service may sign with     |
//! | EdDSA  | `OKP`, `Ed25519`          | what our auth-service signs with        |
//!
//! Nothing else: never `none`, never HMAC (`HS*`, a shared secret is no public key),
//! no other sizes (`RS384`, `ES384`, ... : no provider we support needs them). A key
//! that declares its `alg` must declare exactly the token's.

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};

/// The only signature algorithms accepted, whoever signed the token.
pub const ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3 and §3.5: "2048 bits or larger").
pub const MIN_RSA_BITS: usize = 2048;

/// Is `alg` in [`ALGORITHMS`]?
pub fn is_accepted(alg: Algorithm) -> bool {
    ALGORITHMS.contains(&alg)
}

/// The algorithms a key can verify, from its type and curve (the table above).
/// Empty for every other key, symmetric keys included.
pub fn key_algorithms(jwk: &Jwk) -> &'static [Algorithm] {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::PS256],
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => &[Algorithm::ES256],
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        _ => &[],
    }
}

/// An RSA key whose modulus is shorter than [`MIN_RSA_BITS`] (or cannot be read).
/// Other key types have fixed sizes and are never weak.
pub fn is_weak(jwk: &Jwk) -> bool {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => rsa_modulus_bits(&p.n).is_none_or(|bits| bits < MIN_RSA_BITS),
        _ => false,
    }
}

fn rsa_modulus_bits(n: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let lead = bytes[first];
    Some((bytes.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize))
}

/// Does this key verify tokens signed with `alg`? `alg` must be accepted, the key's
/// type must fit it, an RSA key must not be weak, and a key that declares its `alg`
/// must declare exactly this one.
pub fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if !is_accepted(alg) || !key_algorithms(jwk).contains(&alg) || is_weak(jwk) {
        return false;
    }
    match jwk.common.key_algorithm {
        None => true,
        Some(declared) => Algorithm::from_str(&declared.to_string()).ok() == Some(alg),
    }
}

/// Parse `{"keys": [...]}`, skipping keys this library cannot represent (an
/// encryption key with an unknown `alg` must not make the whole set unusable) and
/// keys not meant for signatures. `None` when the document is not a key set.
pub fn parse_jwks(doc: &serde_json::Value) -> Option<Vec<Arc<Jwk>>> {
    let keys = doc.get("keys")?.as_array()?;
    Some(
        keys.iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature))
            .map(Arc::new)
            .collect(),
    )
}

/// The key for a token with header `kid` and `alg`.
///
/// A `kid` names the key: among keys with that `kid` one that fits `alg` is
/// preferred, else the first is returned, so that the caller reports a key that does
/// not fit as such rather than as an unknown `kid`. Without a `kid` the choice is only
/// unambiguous when exactly one key fits `alg`.
pub fn select(keys: &[Arc<Jwk>], kid: Option<&str>, alg: Algorithm) -> Option<Arc<Jwk>> {
    match kid {
        Some(kid) => {
            let mut named = keys.iter().filter(|k| k.common.key_id.as_deref() == Some(kid));
            let first = named.next()?;
            if key_fits(first, alg) {
                return Some(first.clone());
            }
            Some(named.find(|k| key_fits(k, alg)).unwrap_or(first).clone())
        }
        None => {
            let mut fitting = keys.iter().filter(|k| key_fits(k, alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use jsonwebtoken::EncodingKey;

    use super::*;

    const RSA_PEM: &[u8] = include_bytes!("testdata/rsa.pem");
    const RSA_1024_PEM: &[u8] = include_bytes!("testdata/rsa-1024.pem");
    const P256_PEM: &[u8] = include_bytes!("testdata/p256.pem");

    fn rsa_jwk(pem: &[u8]) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(pem).unwrap(), Algorithm::RS256).unwrap();
        jwk.common.key_algorithm = None;
        jwk
    }

    fn with_kid(jwk: &Jwk, kid: &str) -> Arc<Jwk> {
        let mut jwk = jwk.clone();
        jwk.common.key_id = Some(kid.into());
        Arc::new(jwk)
    }

    // Moved from gateway/src/auth/jwks.rs.
    #[test]
    fn key_fit_rules() {
        let ed: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"
        }))
        .unwrap();
        assert!(key_fits(&ed, Algorithm::EdDSA));
        assert!(!key_fits(&ed, Algorithm::ES256));
        assert!(!key_fits(&ed, Algorithm::HS256));
        let mut declared = ed.clone();
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA);
        assert!(key_fits(&declared, Algorithm::EdDSA));
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        assert!(!key_fits(&declared, Algorithm::EdDSA));
        let oct: Jwk = serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(!key_fits(&oct, Algorithm::HS256));
    }

    // Moved from gateway/src/auth/jwks.rs.
    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"},
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP-999", "n": "AQAB", "e": "AQAB", "kid": "b"},
            {"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "c"}
        ]});
        let keys = parse_jwks(&doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].common.key_id.as_deref(), Some("a"));
        assert!(parse_jwks(&serde_json::json!({"nokeys": []})).is_none());
    }

    #[test]
    fn rsa_keys_verify_rs256_and_ps256_only() {
        let rsa = rsa_jwk(RSA_PEM);
        assert!(!is_weak(&rsa));
        assert!(key_fits(&rsa, Algorithm::RS256));
        assert!(key_fits(&rsa, Algorithm::PS256));
        for alg in [
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS384,
            Algorithm::ES256,
            Algorithm::HS256,
        ] {
            assert!(!key_fits(&rsa, alg), "{alg:?}");
        }
        // A key published for RS256 is not used for PS256 (and the other way round).
        let mut declared = rsa.clone();
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        assert!(key_fits(&declared, Algorithm::RS256));
        assert!(!key_fits(&declared, Algorithm::PS256));
    }

    #[test]
    fn short_rsa_keys_are_weak() {
        let weak = rsa_jwk(RSA_1024_PEM);
        assert!(is_weak(&weak));
        assert!(!key_fits(&weak, Algorithm::RS256));
        assert_eq!(rsa_modulus_bits("AQAB"), Some(17));
        assert_eq!(rsa_modulus_bits("AIAA"), Some(16), "leading zero byte ignored");
        assert_eq!(rsa_modulus_bits("!!"), None);
    }

    #[test]
    fn only_the_table_is_accepted() {
        assert_eq!(ALGORITHMS.iter().filter(|a| is_accepted(**a)).count(), 4);
        for alg in [
            Algorithm::HS256,
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::ES384,
            Algorithm::RS384,
        ] {
            assert!(!is_accepted(alg), "{alg:?}");
        }
        let ec = Jwk::from_encoding_key(&EncodingKey::from_ec_pem(P256_PEM).unwrap(), Algorithm::ES256).unwrap();
        assert_eq!(key_algorithms(&ec), &[Algorithm::ES256]);
    }

    #[test]
    fn selection_by_kid_or_single_fitting_key() {
        let rsa = rsa_jwk(RSA_PEM);
        let ec = Jwk::from_encoding_key(&EncodingKey::from_ec_pem(P256_PEM).unwrap(), Algorithm::ES256).unwrap();
        let keys = vec![with_kid(&rsa, "r"), with_kid(&ec, "e")];
        let kid = |k: Option<Arc<Jwk>>| k.and_then(|k| k.common.key_id.clone());
        assert_eq!(kid(select(&keys, Some("r"), Algorithm::RS256)).as_deref(), Some("r"));
        // A kid naming a key of the wrong type is still that key (the caller reports the misfit).
        assert_eq!(kid(select(&keys, Some("r"), Algorithm::ES256)).as_deref(), Some("r"));
        assert!(select(&keys, Some("x"), Algorithm::RS256).is_none());
        assert_eq!(kid(select(&keys, None, Algorithm::ES256)).as_deref(), Some("e"));
        assert_eq!(kid(select(&keys, None, Algorithm::PS256)).as_deref(), Some("r"));
        assert!(select(&keys, None, Algorithm::EdDSA).is_none());
        // Two keys under one kid: the one that fits wins.
        let shared = vec![with_kid(&ec, "s"), with_kid(&rsa, "s")];
        let chosen = select(&shared, Some("s"), Algorithm::RS256).unwrap();
        assert!(matches!(chosen.algorithm, AlgorithmParameters::RSA(_)));
        // Without a kid, two fitting keys are ambiguous.
        let two = vec![with_kid(&rsa, "a"), with_kid(&rsa, "b")];
        assert!(select(&two, None, Algorithm::RS256).is_none());
    }
}
