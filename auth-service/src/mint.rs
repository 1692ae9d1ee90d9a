//! DEVELOPMENT ONLY: mint an RFC 9068 access token with the dev issuer key, for
//! `make token`, scripts and tests. The real token endpoint will come with the OAuth
//! server; this never becomes one.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use crate::config::MintArgs;
use crate::keys::DevKey;

/// `client_id` of every minted token.
pub const DEV_CLIENT_ID: &str = "dev-cli";

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// The claims of a minted token (RFC 9068 §2.2 plus the identity claims tools use).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub nbf: Option<i64>,
    pub jti: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The grant (`proto::auth::GRANT_CLAIM`); revoking it revokes the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// `proto::auth::SUBJECT_KIND_CLAIM`: `user` or `machine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_kind: Option<String>,
}

impl AccessClaims {
    /// Claims for `args`, issued now.
    pub fn from_args(args: &MintArgs) -> Self {
        let now = unix_now();
        Self {
            iss: args.issuer.clone(),
            sub: args.sub.clone(),
            aud: args.audience.clone(),
            iat: now,
            exp: now.saturating_add(args.ttl).max(0),
            nbf: args.nbf_offset.map(|o| now.saturating_add(o).max(0)),
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: DEV_CLIENT_ID.to_owned(),
            scope: args.scope.clone().filter(|s| !s.trim().is_empty()),
            email: args.email.clone(),
            name: args.name.clone(),
            permissions: args.permissions.clone(),
            groups: Vec::new(),
            gid: None,
            sub_kind: Some(proto::auth::SUBJECT_KIND_USER.to_owned()),
        }
    }
}

/// Sign `claims` with `key`: EdDSA, `typ: at+jwt`, `kid` = `kid` or the key's thumbprint.
pub fn sign(key: &DevKey, claims: &AccessClaims, kid: Option<&str>) -> Result<String, MintError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some(kid.unwrap_or(key.kid()).to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding_key()).map_err(|e| MintError::Sign(e.to_string()))
}

/// Mint a token as `mint-token` does.
pub fn mint(key: &DevKey, args: &MintArgs) -> Result<String, MintError> {
    sign(key, &AccessClaims::from_args(args), args.kid.as_deref())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use std::path::PathBuf;

    fn args() -> MintArgs {
        MintArgs {
            key_file: PathBuf::from("unused"),
            issuer: "http://127.0.0.1:8790".into(),
            audience: "http://localhost:8788/mcp".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            name: None,
            scope: Some("a b".into()),
            permissions: vec!["image_generation".into()],
            ttl: 60,
            nbf_offset: None,
            kid: None,
        }
    }

    #[test]
    fn minted_token_has_the_rfc9068_shape() {
        let key = DevKey::from_pem(crate::keys::generate_pem().as_bytes(), "x".as_ref()).unwrap();
        let token = mint(&key, &args()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        let decoding = DecodingKey::from_jwk(key.jwk()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["http://localhost:8788/mcp"]);
        v.set_issuer(&["http://127.0.0.1:8790"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["client_id"], DEV_CLIENT_ID);
        assert_eq!(claims["scope"], "a b");
        assert_eq!(claims["permissions"], serde_json::json!(["image_generation"]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
        assert!(claims["jti"].as_str().unwrap().len() >= 32);
        assert!(claims.get("name").is_none());
        assert!(claims.get("nbf").is_none());
    }

    #[test]
    fn negative_ttl_nbf_and_kid_override() {
        let key = DevKey::from_pem(crate::keys::generate_pem().as_bytes(), "x".as_ref()).unwrap();
        let mut a = args();
        a.ttl = -120;
        a.nbf_offset = Some(30);
        a.kid = Some("other".into());
        let c = AccessClaims::from_args(&a);
        assert_eq!(c.exp - c.iat, -120);
        assert_eq!(c.nbf, Some(c.iat + 30));
        let token = mint(&key, &a).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
            Some("other")
        );
    }
}
