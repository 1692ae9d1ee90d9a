//! The check of one token: header, key, signature, then claims, in that order, so a
//! forged token is reported as forged whatever its claims say.
//!
//! Claims, every token: `exp` present and not past (with [`LEEWAY_SECS`]); `nbf`, if
//! present, not in the future; `iat`, if present, not in the future; `iss` by the
//! [`IssuerRule`]; `aud` by the [`AudienceRule`]; `sub` a non-empty string; plus the
//! policy's required claims. Times are JSON numbers (NumericDate, RFC 7519 §2).

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, errors::ErrorKind};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::algorithms::{is_accepted, is_weak, key_fits};
use crate::cache::KeyCache;
use crate::source::{KeySource, KeysError};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds: one value for every
/// token this crate checks.
pub const LEEWAY_SECS: u64 = 60;

/// The verified claims of a token.
pub type Claims = Map<String, Value>;

/// Why a token was refused. Callers map this to their own errors; the messages here
/// are for logs and name no token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not three base64url parts with a JSON header (an unknown `alg`, `none`
    /// included, lands here), or the payload is not a JSON object.
    #[error("not a jwt")]
    Malformed,
    /// A known algorithm outside [`crate::ALGORITHMS`] (HMAC among them).
    #[error("algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(Algorithm),
    /// The token names a `kid` the source does not publish.
    #[error("no key with the token's kid")]
    UnknownKid,
    /// The token names no `kid`, and not exactly one of the source's keys fits its `alg`.
    #[error("token has no kid and no single key fits")]
    NoKid,
    /// The named key cannot verify the token's `alg` (key type, or the key's own `alg`).
    #[error("algorithm does not fit the key")]
    KeyMismatch,
    /// The named key is an RSA key shorter than [`crate::MIN_RSA_BITS`].
    #[error("the key is too weak")]
    WeakKey,
    /// The source published a key that cannot be used (bad parameters).
    #[error("the key is unusable")]
    UnusableKey,
    /// The source's keys could not be fetched and none are cached.
    #[error("signing keys unavailable: {0}")]
    Keys(KeysError),
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("issued in the future")]
    IssuedInFuture,
    /// `iss` missing or not accepted by the [`IssuerRule`].
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` not accepted by the [`AudienceRule`] (or missing where it is required).
    #[error("wrong audience")]
    WrongAudience,
    #[error("no {0} claim")]
    MissingClaim(&'static str),
    /// A claim with the wrong type (`exp` not a number, `sub` empty, ...).
    #[error("malformed {0} claim")]
    MalformedClaim(&'static str),
}

/// How `iss` is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerRule {
    /// Exactly one of these strings.
    Exact(Vec<String>),
    /// Any URL on this origin, without credentials or fragment: Cloudflare Access for
    /// SaaS, whose issuer is a path on the team domain. The origin's own scheme and
    /// host rules are the caller's to check when it configures the origin.
    SameOrigin(url::Origin),
}

/// How `aud` is checked: it is a string or an array of strings, and must contain one
/// of the accepted values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceRule {
    /// `aud` must be present.
    Required(Vec<String>),
    /// A token without `aud` is accepted (WorkOS access tokens, whose JWKS is per
    /// client already); one with `aud` must name an accepted value.
    IfPresent(Vec<String>),
}

/// What a token's claims must say, beyond what every token must (module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub issuer: &'a IssuerRule,
    pub audience: &'a AudienceRule,
    /// Claims that must be present besides `exp` and `sub` (e.g. `iat` for ID tokens).
    pub required_claims: &'a [&'static str],
}

/// A token whose header has been read and whose algorithm is accepted; nothing in it
/// is verified yet.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    raw: &'a str,
    header: Header,
}

impl<'a> Token<'a> {
    /// Read the header; refuse algorithms outside [`crate::ALGORITHMS`].
    pub fn parse(raw: &'a str) -> Result<Self, VerifyError> {
        let header = jsonwebtoken::decode_header(raw).map_err(|_| VerifyError::Malformed)?;
        if !is_accepted(header.alg) {
            return Err(VerifyError::UnsupportedAlgorithm(header.alg));
        }
        Ok(Self { raw, header })
    }

    /// The header (unverified until [`verify_with_key`] succeeds).
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn alg(&self) -> Algorithm {
        self.header.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// The `iss` claim, read WITHOUT verification: only to choose whose keys to verify
    /// with. `Ok(None)` when there is none; `Malformed` when the payload is not JSON or
    /// `iss` is not a string.
    pub fn unverified_issuer(&self) -> Result<Option<String>, VerifyError> {
        #[derive(serde::Deserialize)]
        struct Unverified {
            #[serde(default)]
            iss: Option<String>,
        }
        jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(self.raw)
            .map(|c| c.iss)
            .map_err(|_| VerifyError::Malformed)
    }
}

impl KeyCache {
    /// Verify `token` with `source`'s keys and check its claims against `policy`.
    pub async fn verify(
        &self,
        token: &Token<'_>,
        source: &KeySource,
        policy: &Policy<'_>,
    ) -> Result<Claims, VerifyError> {
        let jwk = self
            .key_for(source, token.kid(), token.alg())
            .await
            .map_err(VerifyError::Keys)?
            .ok_or(match token.kid() {
                Some(_) => VerifyError::UnknownKid,
                None => VerifyError::NoKid,
            })?;
        verify_with_key(token, &jwk, policy)
    }
}

/// Verify `token`'s signature with `jwk` and check its claims against `policy`, now.
pub fn verify_with_key(token: &Token<'_>, jwk: &Jwk, policy: &Policy<'_>) -> Result<Claims, VerifyError> {
    verify_at(token, jwk, policy, now_secs())
}

fn verify_at(token: &Token<'_>, jwk: &Jwk, policy: &Policy<'_>, now: u64) -> Result<Claims, VerifyError> {
    let alg = token.alg();
    if is_weak(jwk) {
        return Err(VerifyError::WeakKey);
    }
    if !key_fits(jwk, alg) {
        return Err(VerifyError::KeyMismatch);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| VerifyError::UnusableKey)?;
    // Signature only: every claim is checked below, by this crate's rules.
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(token.raw, &key, &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => VerifyError::BadSignature,
        ErrorKind::InvalidAlgorithm => VerifyError::KeyMismatch,
        _ => VerifyError::Malformed,
    })?;
    check_claims(&data.claims, policy, now)?;
    Ok(data.claims)
}

/// The claim rules of the module documentation, at `now` (seconds since the epoch).
pub fn check_claims(claims: &Claims, policy: &Policy<'_>, now: u64) -> Result<(), VerifyError> {
    for name in ["exp", "sub"].iter().chain(policy.required_claims) {
        if !claims.contains_key(*name) {
            return Err(VerifyError::MissingClaim(name));
        }
    }
    let now = now as f64;
    let leeway = LEEWAY_SECS as f64;
    let time = |name: &'static str| -> Result<Option<f64>, VerifyError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(VerifyError::MalformedClaim(name)),
        }
    };
    if time("exp")?.is_some_and(|exp| exp + leeway < now) {
        return Err(VerifyError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(VerifyError::NotYetValid);
    }
    if time("iat")?.is_some_and(|iat| iat > now + leeway) {
        return Err(VerifyError::IssuedInFuture);
    }
    let iss = claims.get("iss").and_then(Value::as_str);
    let issuer_ok = match (policy.issuer, iss) {
        (_, None) => false,
        (IssuerRule::Exact(accepted), Some(iss)) => accepted.iter().any(|a| a == iss),
        (IssuerRule::SameOrigin(origin), Some(iss)) => Url::parse(iss).is_ok_and(|u| {
            u.username().is_empty() && u.password().is_none() && u.fragment().is_none() && &u.origin() == origin
        }),
    };
    if !issuer_ok {
        return Err(VerifyError::WrongIssuer);
    }
    let (accepted, required) = match policy.audience {
        AudienceRule::Required(a) => (a, true),
        AudienceRule::IfPresent(a) => (a, false),
    };
    let audience_ok = match claims.get("aud") {
        None => !required,
        Some(Value::String(aud)) => accepted.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| accepted.iter().any(|a| a == aud)),
        Some(_) => false,
    };
    if !audience_ok {
        return Err(VerifyError::WrongAudience);
    }
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        _ => Err(VerifyError::MalformedClaim("sub")),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    use super::*;

    const ED_PEM: &[u8] = include_bytes!("testdata/ed25519.pem");
    const ED_OTHER_PEM: &[u8] = include_bytes!("testdata/ed25519-other.pem");
    const P256_PEM: &[u8] = include_bytes!("testdata/p256.pem");
    const RSA_PEM: &[u8] = include_bytes!("testdata/rsa.pem");
    const RSA_1024_PEM: &[u8] = include_bytes!("testdata/rsa-1024.pem");
    const ISS: &str = "https://id.example.com";
    const AUD: &str = "https://mcp.example.com/mcp";
    const NOW: u64 = 1_800_000_000;

    fn encoding_key(pem: &[u8], alg: Algorithm) -> EncodingKey {
        match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .unwrap()
    }

    /// The public key of `pem`, published without an `alg` (it fits every algorithm of its type).
    fn jwk(pem: &[u8], alg: Algorithm) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&encoding_key(pem, alg), alg).unwrap();
        jwk.common.key_algorithm = None;
        jwk.common.key_id = Some("k".into());
        jwk
    }

    fn sign(pem: &[u8], alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some("k".into());
        jsonwebtoken::encode(&header, claims, &encoding_key(pem, alg)).unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice", "aud": AUD, "iat": NOW, "exp": NOW + 300})
    }

    fn exact() -> (IssuerRule, AudienceRule) {
        (
            IssuerRule::Exact(vec![ISS.into()]),
            AudienceRule::Required(vec![AUD.into()]),
        )
    }

    fn check(token: &str, jwk: &Jwk, policy: &Policy<'_>) -> Result<Claims, VerifyError> {
        verify_at(&Token::parse(token)?, jwk, policy, NOW)
    }

    fn check_default(token: &str, jwk: &Jwk) -> Result<Claims, VerifyError> {
        let (issuer, audience) = exact();
        let policy = Policy {
            issuer: &issuer,
            audience: &audience,
            required_claims: &[],
        };
        check(token, jwk, &policy)
    }

    fn with(patch: Value) -> Value {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn every_accepted_algorithm_verifies() {
        for (pem, alg) in [
            (ED_PEM, Algorithm::EdDSA),
            (P256_PEM, Algorithm::ES256),
            (RSA_PEM, Algorithm::RS256),
            (RSA_PEM, Algorithm::PS256),
        ] {
            let claims = check_default(&sign(pem, alg, &claims()), &jwk(pem, alg)).unwrap();
            assert_eq!(claims["sub"], "alice", "{alg:?}");
        }
        // One RSA key, published without an alg, verifies both paddings.
        let rsa = jwk(RSA_PEM, Algorithm::RS256);
        assert!(check_default(&sign(RSA_PEM, Algorithm::PS256, &claims()), &rsa).is_ok());
    }

    #[test]
    fn none_hmac_and_other_sizes_are_refused_before_any_key() {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        assert_eq!(Token::parse(&none).unwrap_err(), VerifyError::Malformed);
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            Token::parse(&hs).unwrap_err(),
            VerifyError::UnsupportedAlgorithm(Algorithm::HS256)
        );
        let rs384 = sign(RSA_PEM, Algorithm::RS384, &claims());
        assert_eq!(
            Token::parse(&rs384).unwrap_err(),
            VerifyError::UnsupportedAlgorithm(Algorithm::RS384)
        );
        assert_eq!(Token::parse("a.b").unwrap_err(), VerifyError::Malformed);
    }

    #[test]
    fn key_must_fit_and_be_strong_enough() {
        // An ES256 token checked with an Ed25519 key.
        let es = sign(P256_PEM, Algorithm::ES256, &claims());
        assert_eq!(
            check_default(&es, &jwk(ED_PEM, Algorithm::EdDSA)).unwrap_err(),
            VerifyError::KeyMismatch
        );
        // A key that declares RS256 does not verify PS256.
        let mut declared = jwk(RSA_PEM, Algorithm::RS256);
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        let ps = sign(RSA_PEM, Algorithm::PS256, &claims());
        assert_eq!(check_default(&ps, &declared).unwrap_err(), VerifyError::KeyMismatch);
        // A 1024-bit RSA key is refused even though its signature is good.
        let weak = sign(RSA_1024_PEM, Algorithm::RS256, &claims());
        assert_eq!(
            check_default(&weak, &jwk(RSA_1024_PEM, Algorithm::RS256)).unwrap_err(),
            VerifyError::WeakKey
        );
    }

    #[test]
    fn forged_tokens_are_bad_signatures_whatever_their_claims() {
        let key = jwk(ED_PEM, Algorithm::EdDSA);
        let forged = sign(ED_OTHER_PEM, Algorithm::EdDSA, &claims());
        assert_eq!(check_default(&forged, &key).unwrap_err(), VerifyError::BadSignature);
        let expired = sign(ED_OTHER_PEM, Algorithm::EdDSA, &with(json!({"exp": NOW - 3600})));
        assert_eq!(check_default(&expired, &key).unwrap_err(), VerifyError::BadSignature);
        // Payload swapped after signing.
        let good = sign(ED_PEM, Algorithm::EdDSA, &claims());
        let other = sign(ED_PEM, Algorithm::EdDSA, &with(json!({"sub": "mallory"})));
        let (g, o): (Vec<&str>, Vec<&str>) = (good.split('.').collect(), other.split('.').collect());
        let swapped = format!("{}.{}.{}", g[0], o[1], g[2]);
        assert_eq!(check_default(&swapped, &key).unwrap_err(), VerifyError::BadSignature);
    }

    #[test]
    fn times_with_one_leeway() {
        let key = jwk(ED_PEM, Algorithm::EdDSA);
        let run = |patch: Value| check_default(&sign(ED_PEM, Algorithm::EdDSA, &with(patch)), &key);
        let leeway = LEEWAY_SECS;
        assert!(run(json!({"exp": NOW - leeway})).is_ok(), "exp within the leeway");
        assert_eq!(run(json!({"exp": NOW - leeway - 1})).unwrap_err(), VerifyError::Expired);
        assert!(run(json!({"nbf": NOW + leeway})).is_ok(), "nbf within the leeway");
        assert_eq!(
            run(json!({"nbf": NOW + leeway + 1})).unwrap_err(),
            VerifyError::NotYetValid
        );
        assert!(run(json!({"iat": NOW + leeway})).is_ok(), "iat within the leeway");
        assert_eq!(
            run(json!({"iat": NOW + leeway + 1})).unwrap_err(),
            VerifyError::IssuedInFuture
        );
        assert!(
            run(json!({"exp": (NOW + 10) as f64 + 0.5})).is_ok(),
            "fractional NumericDate"
        );
        assert_eq!(run(json!({"exp": null})).unwrap_err(), VerifyError::MissingClaim("exp"));
        assert_eq!(
            run(json!({"exp": "tomorrow"})).unwrap_err(),
            VerifyError::MalformedClaim("exp")
        );
        assert_eq!(
            run(json!({"nbf": "now"})).unwrap_err(),
            VerifyError::MalformedClaim("nbf")
        );
        assert!(run(json!({"iat": null})).is_ok(), "iat is optional unless required");
    }

    #[test]
    fn issuer_rules() {
        let key = jwk(ED_PEM, Algorithm::EdDSA);
        let run = |patch: Value| check_default(&sign(ED_PEM, Algorithm::EdDSA, &with(patch)), &key);
        for iss in [
            json!("https://evil.example.com"),
            json!(format!("{ISS}/")),
            json!(null),
            json!(7),
        ] {
            assert_eq!(run(json!({"iss": iss})).unwrap_err(), VerifyError::WrongIssuer, "{iss}");
        }
        let team = Url::parse("https://team.cloudflareaccess.com").unwrap().origin();
        let issuer = IssuerRule::SameOrigin(team);
        let audience = AudienceRule::Required(vec![AUD.into()]);
        let policy = Policy {
            issuer: &issuer,
            audience: &audience,
            required_claims: &[],
        };
        let run = |iss: &str| {
            check(
                &sign(ED_PEM, Algorithm::EdDSA, &with(json!({"iss": iss}))),
                &key,
                &policy,
            )
        };
        assert!(run("https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/client").is_ok());
        for iss in [
            "https://evil.example.com/cdn-cgi/access/sso/oidc/client",
            "http://team.cloudflareaccess.com/x",
            "https://user@team.cloudflareaccess.com/x",
            "https://team.cloudflareaccess.com/x#f",
            "not a url",
        ] {
            assert_eq!(run(iss).unwrap_err(), VerifyError::WrongIssuer, "{iss}");
        }
    }

    #[test]
    fn audience_rules() {
        let key = jwk(ED_PEM, Algorithm::EdDSA);
        let run = |patch: Value| check_default(&sign(ED_PEM, Algorithm::EdDSA, &with(patch)), &key);
        assert!(run(json!({"aud": ["https://other", AUD]})).is_ok());
        for aud in [
            json!("https://mcp.example.com/other"),
            json!(format!("{AUD}/")),
            json!(["a", "b"]),
            json!(null),
            json!(42),
        ] {
            assert_eq!(
                run(json!({"aud": aud})).unwrap_err(),
                VerifyError::WrongAudience,
                "{aud}"
            );
        }
        let issuer = IssuerRule::Exact(vec![ISS.into()]);
        let audience = AudienceRule::IfPresent(vec!["client".into()]);
        let policy = Policy {
            issuer: &issuer,
            audience: &audience,
            required_claims: &[],
        };
        let run = |patch: Value| check(&sign(ED_PEM, Algorithm::EdDSA, &with(patch)), &key, &policy);
        assert!(run(json!({"aud": null})).is_ok(), "no aud at all");
        assert!(run(json!({"aud": "client"})).is_ok());
        assert_eq!(run(json!({"aud": "other"})).unwrap_err(), VerifyError::WrongAudience);
    }

    #[test]
    fn required_claims_and_sub() {
        let key = jwk(ED_PEM, Algorithm::EdDSA);
        let (issuer, audience) = exact();
        let policy = Policy {
            issuer: &issuer,
            audience: &audience,
            required_claims: &["iat", "nonce"],
        };
        let run = |patch: Value| check(&sign(ED_PEM, Algorithm::EdDSA, &with(patch)), &key, &policy);
        assert_eq!(run(json!({})).unwrap_err(), VerifyError::MissingClaim("nonce"));
        assert!(run(json!({"nonce": "n"})).is_ok());
        assert_eq!(
            run(json!({"nonce": "n", "iat": null})).unwrap_err(),
            VerifyError::MissingClaim("iat")
        );
        for (sub, err) in [
            (json!(null), VerifyError::MissingClaim("sub")),
            (json!(""), VerifyError::MalformedClaim("sub")),
            (json!(7), VerifyError::MalformedClaim("sub")),
        ] {
            assert_eq!(run(json!({"nonce": "n", "sub": sub})).unwrap_err(), err);
        }
    }

    #[test]
    fn unverified_issuer_is_only_read() {
        let token = sign(ED_OTHER_PEM, Algorithm::EdDSA, &claims());
        let parsed = Token::parse(&token).unwrap();
        assert_eq!(parsed.unverified_issuer().unwrap().as_deref(), Some(ISS));
        assert_eq!(parsed.kid(), Some("k"));
        let no_iss = sign(ED_PEM, Algorithm::EdDSA, &with(json!({"iss": null})));
        assert_eq!(Token::parse(&no_iss).unwrap().unverified_issuer().unwrap(), None);
        let odd = sign(ED_PEM, Algorithm::EdDSA, &with(json!({"iss": 7})));
        assert_eq!(
            Token::parse(&odd).unwrap().unverified_issuer().unwrap_err(),
            VerifyError::Malformed
        );
    }
}
