//! DEVELOPMENT ONLY: `mint-token` signs an access token with the development key
//! (`AUTH_DEV_KEY_FILE`) for `make token`, scripts and tests, outside any grant: there
//! is nothing to refresh or revoke. Tokens from users come from `/token` ([`crate::grants`]).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::claims::AccessClaims;
use crate::config::MintArgs;
use crate::key::SigningKey;

/// `client_id` of every minted token.
pub const DEV_CLIENT_ID: &str = "dev-cli";

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot sign the token: {0}")]
    Sign(String),
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
            org_id: None,
            gid: None,
            sub_kind: Some(proto::auth::SUBJECT_KIND_USER.to_owned()),
        }
    }
}

/// Mint a token as `mint-token` does.
pub fn mint(key: &SigningKey, args: &MintArgs) -> Result<String, MintError> {
    AccessClaims::from_args(args)
        .sign(key, args.kid.as_deref())
        .map_err(|e| MintError::Sign(e.to_string()))
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
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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
        let key = SigningKey::from_pem(crate::key::generate_pem().as_bytes(), "x".as_ref()).unwrap();
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
        let key = SigningKey::from_pem(crate::key::generate_pem().as_bytes(), "x".as_ref()).unwrap();
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
