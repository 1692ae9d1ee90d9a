//! A JSON Web Key Set as an issuer serves it (the gateway fetches one per allowed
//! issuer, the auth-service its identity provider's): `jwt_verify::parse_jwks`, then
//! for every key and accepted algorithm `key_fits` (with the RSA modulus size check)
//! and `select` by `kid`, as `KeyCache` chooses the key for a token.
//!
//! Input: the JWKS document.

#![no_main]

use jwt_verify::algorithms::{key_algorithms, parse_jwks, select};
use jwt_verify::{ALGORITHMS, key_fits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Some(keys) = parse_jwks(&doc) else {
        return;
    };
    for alg in ALGORITHMS {
        for key in &keys {
            if key_fits(key, alg) {
                assert!(
                    key_algorithms(key).contains(&alg),
                    "{alg:?} fits a key that cannot verify it"
                );
                // What verification does next with the chosen key.
                let _ = jsonwebtoken::DecodingKey::from_jwk(key);
            }
            if let Some(kid) = key.common.key_id.as_deref() {
                let chosen = select(&keys, Some(kid), alg).expect("a kid in the set names a key");
                assert_eq!(
                    chosen.common.key_id.as_deref(),
                    Some(kid),
                    "select by kid returned another kid"
                );
            }
        }
        if let Some(chosen) = select(&keys, None, alg) {
            assert!(key_fits(&chosen, alg), "without a kid only a fitting key is chosen");
        }
    }
});
