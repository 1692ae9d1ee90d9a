//! The claims of our access tokens (RFC 9068 §2.2 plus the identity claims tools
//! use) and how they are signed: EdDSA, `typ: at+jwt`, `kid` of the signing key.
//! The token endpoint ([`crate::grants`]) and the development `mint-token`
//! ([`crate::mint`]) both sign through [`AccessClaims::sign`].

use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::key::SigningKey;

/// RFC 9068 §2.1 media type of a JWT access token, in the `typ` header.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The user's organization at the identity provider (WorkOS `org_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The grant (`proto::auth::GRANT_CLAIM`); revoking it revokes the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// `proto::auth::SUBJECT_KIND_CLAIM`: `user` or `machine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_kind: Option<String>,
}

impl AccessClaims {
    /// Sign with `key`: EdDSA, `typ: at+jwt`, `kid` = `kid` or the key's thumbprint
    /// (another `kid` only for tests of unknown keys).
    pub fn sign(&self, key: &SigningKey, kid: Option<&str>) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(kid.unwrap_or(key.kid()).to_owned());
        jsonwebtoken::encode(&header, self, key.encoding_key())
    }
}
