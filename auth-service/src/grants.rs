//! Grants, authorization codes, refresh tokens and access tokens.
//!
//! A **grant** is one user's consent for one client (for one resource and scope),
//! created when the login finishes. Everything issued later hangs off it:
//!
//! - the **code** (opaque, single-use, stored by its SHA-256): redeeming it flips
//!   `used` by compare-and-swap; a second redemption revokes the grant;
//! - **refresh tokens** `<address>.<secret>`: the address is a random value of its
//!   own, issued with the first refresh token and found through the index entry
//!   `rt.<SHA-256 of the address>` in the grants bucket; it appears nowhere else (not
//!   in access tokens, logs or revocations, which name the grant by its id), so
//!   holding an access token does not let anyone address the grant's refresh state.
//!   The grant keeps the hash of the current secret, the previous one and the last
//!   [`RETIRED_SECRETS_KEPT`] before it. Using the current one rotates (CAS on the
//!   grant, so two replicas never both accept it); the previous one still works for
//!   `refresh_grace` after the rotation (its response may have been lost; each such
//!   use replaces the current token, the window does not restart). A secret this
//!   grant really issued and rotated out is a reuse and revokes the grant (RFC 9700
//!   §4.14.2); a secret it never issued is `invalid_grant` and changes nothing, so
//!   guessing cannot be used to revoke someone else's grant;
//! - **access tokens**: EdDSA JWTs (RFC 9068: `typ: at+jwt`, `kid`, `aud` = the
//!   resource, `client_id`, `scope`, `jti`, the grant id as `gid`), with only the
//!   identity claims tools decide on (`sub`, `email`, `permissions`, `groups`).
//!
//! Revoking a grant marks it, drops its vault entry and writes a revocation that
//! gateways watch, so its access tokens stop working before they expire.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::claims::{ACCESS_TOKEN_TYP, AccessClaims};
use crate::crypto::{ct_eq, random_token, sha256_b64};
use crate::signing::{SigningError, SigningKeys};
use crate::store::{Cas, StoreError, Stores};
use crate::upstream::Identity;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// RFC 6749 `invalid_grant`, with the reason for the logs and the client.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("state kept changing; try again")]
    Contended,
}

/// The `invalid_grant` reason of a refresh token used again after its rotation
/// (the grant is revoked; counted in `auth_refresh_reuse_total`).
pub const REFRESH_REUSED: &str = "refresh token already used";

/// How many rotated-out refresh secrets (before the previous one) a grant remembers,
/// so that the reuse of any of them is detected rather than taken for a guess.
pub const RETIRED_SECRETS_KEPT: usize = 8;

/// Hashes of the refresh token secrets of a grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshState {
    /// SHA-256 of the refresh token's address (the part before the dot).
    pub address: String,
    pub current: String,
    pub previous: Option<String>,
    /// Secrets rotated out before `previous`, newest first, at most
    /// [`RETIRED_SECRETS_KEPT`].
    #[serde(default)]
    pub retired: Vec<String>,
    pub rotated_at: u64,
    pub generation: u32,
}

impl RefreshState {
    /// Whether `hash` is a secret this grant issued and has since rotated out.
    fn was_issued(&self, hash: &str) -> bool {
        self.previous.as_deref().is_some_and(|p| ct_eq(hash, p)) || self.retired.iter().any(|r| ct_eq(hash, r))
    }

    /// Remember `hash` as rotated out, forgetting the oldest beyond the cap.
    fn retire(&mut self, hash: String) {
        self.retired.insert(0, hash);
        self.retired.truncate(RETIRED_SECRETS_KEPT);
    }
}

/// The index entry that leads from a refresh token's address to its grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshAddress {
    grant_id: String,
}

/// The grants bucket key of a refresh token address's index entry.
fn address_key(address_hash: &str) -> String {
    format!("rt.{address_hash}")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub client_id: String,
    pub identity: Identity,
    pub scopes: Vec<String>,
    pub resource: String,
    pub created_at: u64,
    pub refresh: Option<RefreshState>,
    /// Why it was revoked, if it was.
    pub revoked: Option<String>,
}

/// An issued authorization code, stored under the SHA-256 of the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub expires_at: u64,
    pub used: bool,
}

/// What `/token` answers.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// The token machinery shared by the endpoints.
#[derive(Clone)]
pub struct Grants {
    pub stores: Stores,
    pub keys: SigningKeys,
    pub issuer: String,
    pub access_ttl: Duration,
    pub refresh_grace: Duration,
    pub code_ttl: Duration,
}

/// PKCE S256: `BASE64URL(SHA256(verifier)) == challenge`, verifier per RFC 7636 §4.1.
pub fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let valid = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    valid && ct_eq(&sha256_b64(verifier), challenge)
}

/// Split a refresh token into address and secret.
fn split_refresh(token: &str) -> Option<(&str, &str)> {
    let (address, secret) = token.split_once('.')?;
    (!address.is_empty() && !secret.is_empty()).then_some((address, secret))
}

impl Grants {
    /// Create the grant of a finished login and a code for it.
    pub async fn create_with_code(
        &self,
        client_id: &str,
        identity: Identity,
        scopes: Vec<String>,
        resource: &str,
        redirect_uri: &str,
        code_challenge: &str,
    ) -> Result<(Grant, String), GrantError> {
        let now = crate::unix_now();
        let grant = Grant {
            id: random_token(),
            client_id: client_id.to_owned(),
            identity,
            scopes,
            resource: resource.to_owned(),
            created_at: now,
            refresh: None,
            revoked: None,
        };
        if self.stores.grants.create(&grant.id, &grant).await? == Cas::Conflict {
            return Err(GrantError::Contended);
        }
        let code = random_token();
        let record = CodeRecord {
            grant_id: grant.id.clone(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: code_challenge.to_owned(),
            resource: resource.to_owned(),
            expires_at: now + self.code_ttl.as_secs(),
            used: false,
        };
        if self.stores.codes.create(&sha256_b64(&code), &record).await? == Cas::Conflict {
            return Err(GrantError::Contended);
        }
        Ok((grant, code))
    }

    /// `grant_type=authorization_code`. The code is consumed before any other check,
    /// so a failed attempt cannot be retried; a second redemption revokes the grant.
    pub async fn redeem_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: &str,
        resource: Option<&str>,
    ) -> Result<TokenResponse, GrantError> {
        let key = sha256_b64(code);
        let Some((mut record, rev)) = self.stores.codes.get::<CodeRecord>(&key).await? else {
            return Err(GrantError::Invalid("unknown or expired code"));
        };
        if record.used {
            tracing::warn!(client_id, "authorization code replayed; revoking its grant");
            self.revoke_grant(&record.grant_id, "code_replay").await?;
            return Err(GrantError::Invalid("code already used"));
        }
        record.used = true;
        if self.stores.codes.update(&key, &record, rev).await? == Cas::Conflict {
            tracing::warn!(
                client_id,
                "authorization code redeemed concurrently; revoking its grant"
            );
            self.revoke_grant(&record.grant_id, "code_replay").await?;
            return Err(GrantError::Invalid("code already used"));
        }
        if record.client_id != client_id {
            return Err(GrantError::Invalid("code was issued to another client"));
        }
        if crate::unix_now() > record.expires_at {
            return Err(GrantError::Invalid("code expired"));
        }
        if redirect_uri.is_some_and(|r| r != record.redirect_uri) {
            return Err(GrantError::Invalid(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !pkce_ok(verifier, &record.code_challenge) {
            return Err(GrantError::Invalid("code_verifier does not match the code_challenge"));
        }
        if resource.is_some_and(|r| !crate::flow::resource_matches(&record.resource, r)) {
            return Err(GrantError::Invalid("resource does not match the authorization request"));
        }
        let Some((mut grant, grev)) = self.stores.grants.get::<Grant>(&record.grant_id).await? else {
            return Err(GrantError::Invalid("grant no longer exists"));
        };
        if grant.revoked.is_some() {
            return Err(GrantError::Invalid("grant revoked"));
        }
        let address = random_token();
        let secret = random_token();
        let address_hash = sha256_b64(&address);
        grant.refresh = Some(RefreshState {
            address: address_hash.clone(),
            current: sha256_b64(&secret),
            previous: None,
            retired: Vec::new(),
            rotated_at: crate::unix_now(),
            generation: 1,
        });
        let index = RefreshAddress {
            grant_id: grant.id.clone(),
        };
        if self.stores.grants.create(&address_key(&address_hash), &index).await? == Cas::Conflict {
            return Err(GrantError::Contended);
        }
        if self.stores.grants.update(&grant.id, &grant, grev).await? == Cas::Conflict {
            return Err(GrantError::Contended);
        }
        self.respond(&grant, &grant.scopes, Some(format!("{address}.{secret}")))
    }

    /// `grant_type=refresh_token`: rotate (see the module doc). `scopes`, when given,
    /// narrows the new access token's scope (never widens).
    pub async fn refresh(
        &self,
        token: &str,
        client_id: &str,
        scopes: Option<Vec<String>>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, GrantError> {
        let (address, secret) = split_refresh(token).ok_or(GrantError::Invalid("malformed refresh token"))?;
        let address_hash = sha256_b64(address);
        let Some(gid) = self.grant_of_address(&address_hash).await? else {
            return Err(GrantError::Invalid("unknown or expired refresh token"));
        };
        let gid = gid.as_str();
        let presented = sha256_b64(secret);
        for _ in 0..5 {
            let Some((mut grant, rev)) = self.stores.grants.get::<Grant>(gid).await? else {
                return Err(GrantError::Invalid("unknown or expired refresh token"));
            };
            if grant.revoked.is_some() {
                return Err(GrantError::Invalid("grant revoked"));
            }
            let Some(state) = grant.refresh.clone() else {
                return Err(GrantError::Invalid("grant has no refresh token"));
            };
            if !ct_eq(&state.address, &address_hash) {
                return Err(GrantError::Invalid("unknown or expired refresh token"));
            }
            let now = crate::unix_now();
            let is_current = ct_eq(&presented, &state.current);
            let in_grace = state.previous.as_deref().is_some_and(|p| ct_eq(&presented, p))
                && now < state.rotated_at.saturating_add(self.refresh_grace.as_secs());
            if !is_current && !in_grace {
                if state.was_issued(&presented) {
                    tracing::warn!(
                        client_id,
                        grant = gid,
                        "refresh token reused after rotation; revoking the grant"
                    );
                    self.revoke_grant(gid, "refresh_reuse").await?;
                    return Err(GrantError::Invalid(REFRESH_REUSED));
                }
                // Never issued by this grant: a guess or a corrupted token. Refuse it
                // and change nothing, or anyone could revoke any grant.
                tracing::warn!(
                    client_id,
                    grant = gid,
                    "refresh token with a secret this grant never issued"
                );
                return Err(GrantError::Invalid("unknown or expired refresh token"));
            }
            if grant.client_id != client_id {
                return Err(GrantError::Invalid("refresh token was issued to another client"));
            }
            if resource.is_some_and(|r| !crate::flow::resource_matches(&grant.resource, r)) {
                return Err(GrantError::Invalid("resource does not match the grant"));
            }
            if let Some(asked) = &scopes
                && asked.iter().any(|s| !grant.scopes.contains(s))
            {
                return Err(GrantError::Invalid("scope exceeds the grant"));
            }
            let new_secret = random_token();
            let mut next = state.clone();
            next.current = sha256_b64(&new_secret);
            next.generation = state.generation + 1;
            if is_current {
                if let Some(previous) = state.previous {
                    next.retire(previous);
                }
                next.previous = Some(state.current);
                next.rotated_at = now;
            } else {
                // The previous token inside its grace window: its answer was lost.
                // Replace the current one (which was issued, so it is retired, not
                // forgotten); the grace window does not restart.
                next.retire(state.current);
            }
            grant.refresh = Some(next);
            match self.stores.grants.update(gid, &grant, rev).await? {
                Cas::Done(_) => {
                    // Keep the index entry as alive as the grant (both age out together).
                    let index = RefreshAddress {
                        grant_id: gid.to_owned(),
                    };
                    self.stores.grants.put(&address_key(&address_hash), &index).await?;
                    let scopes = scopes.unwrap_or_else(|| grant.scopes.clone());
                    return self.respond(&grant, &scopes, Some(format!("{address}.{new_secret}")));
                }
                Cas::Conflict => continue,
            }
        }
        Err(GrantError::Contended)
    }

    /// `grant_type=client_credentials`: a token for a machine client itself
    /// (`sub` = its id, `sub_kind: machine`). Only operator-made machine clients get
    /// here (see `crate::token`).
    pub fn client_token(
        &self,
        client_id: &str,
        scopes: &[String],
        resource: &str,
    ) -> Result<TokenResponse, GrantError> {
        let now = crate::unix_now();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client_id.to_owned(),
            aud: resource.to_owned(),
            iat: now as i64,
            exp: (now + self.access_ttl.as_secs()) as i64,
            nbf: None,
            jti: random_token(),
            client_id: client_id.to_owned(),
            scope: Some(scopes.join(" ")).filter(|s| !s.is_empty()),
            email: None,
            name: None,
            permissions: Vec::new(),
            groups: Vec::new(),
            org_id: None,
            gid: None,
            sub_kind: Some(proto::auth::SUBJECT_KIND_MACHINE.to_owned()),
        };
        Ok(TokenResponse {
            access_token: self.sign(&claims)?,
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
            refresh_token: None,
            scope: scopes.join(" "),
        })
    }

    fn respond(&self, grant: &Grant, scopes: &[String], refresh: Option<String>) -> Result<TokenResponse, GrantError> {
        let claims = self.user_claims(grant, &grant.resource, scopes, Some(grant.id.clone()));
        Ok(TokenResponse {
            access_token: self.sign(&claims)?,
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
            refresh_token: refresh,
            scope: scopes.join(" "),
        })
    }

    /// A token for a downstream API (`audience`) on `grant`'s user's behalf, signed
    /// like our access tokens: what the vault gives tools when the static-users
    /// provider has no upstream token. Not tied to the grant's refresh (`gid`
    /// absent); short-lived; the expiry is returned.
    pub fn downstream_token(
        &self,
        grant: &Grant,
        audience: &str,
        scopes: &[String],
    ) -> Result<(String, u64), GrantError> {
        let claims = self.user_claims(grant, audience, scopes, None);
        Ok((self.sign(&claims)?, claims.exp.max(0) as u64))
    }

    /// The claims of a token for `grant`'s user, issued now for `audience`.
    fn user_claims(&self, grant: &Grant, audience: &str, scopes: &[String], gid: Option<String>) -> AccessClaims {
        let now = crate::unix_now();
        AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.identity.sub.clone(),
            aud: audience.to_owned(),
            iat: now as i64,
            exp: (now + self.access_ttl.as_secs()) as i64,
            nbf: None,
            jti: random_token(),
            client_id: grant.client_id.clone(),
            scope: Some(scopes.join(" ")).filter(|s| !s.is_empty()),
            email: grant.identity.email.clone(),
            name: grant.identity.name.clone(),
            permissions: grant.identity.permissions.clone(),
            groups: grant.identity.groups.clone(),
            org_id: grant.identity.org.clone(),
            gid,
            sub_kind: Some(proto::auth::SUBJECT_KIND_USER.to_owned()),
        }
    }

    fn sign(&self, claims: &AccessClaims) -> Result<String, GrantError> {
        let key = self.keys.current()?;
        claims
            .sign(&key, None)
            .map_err(|e| GrantError::Signing(SigningError::Sign(e.to_string())))
    }

    /// Verify one of our access tokens (`typ`, signature, issuer; expiry only if
    /// `check_exp`). `None` when it is not ours or does not verify.
    pub fn verify_access(&self, token: &str, check_exp: bool) -> Option<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return None;
        }
        let key = self.keys.by_kid(header.kid.as_deref()?)?;
        let decoding = DecodingKey::from_jwk(key.jwk()).ok()?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.validate_aud = false;
        v.validate_exp = check_exp;
        v.required_spec_claims = ["exp", "iss", "sub"].iter().map(|s| (*s).to_owned()).collect();
        jsonwebtoken::decode::<AccessClaims>(token, &decoding, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// The grant id a refresh token address (its SHA-256) leads to.
    async fn grant_of_address(&self, address_hash: &str) -> Result<Option<String>, GrantError> {
        let entry = self
            .stores
            .grants
            .get::<RefreshAddress>(&address_key(address_hash))
            .await?;
        Ok(entry.map(|(e, _)| e.grant_id))
    }

    /// The grant a refresh token names, if the token is its current (or in-grace
    /// previous) one.
    pub async fn refresh_token_grant(&self, token: &str) -> Result<Option<Grant>, GrantError> {
        let Some((address, secret)) = split_refresh(token) else {
            return Ok(None);
        };
        let address_hash = sha256_b64(address);
        let Some(gid) = self.grant_of_address(&address_hash).await? else {
            return Ok(None);
        };
        let Some((grant, _)) = self.stores.grants.get::<Grant>(&gid).await? else {
            return Ok(None);
        };
        let h = sha256_b64(secret);
        let live = grant.refresh.as_ref().is_some_and(|s| {
            ct_eq(&s.address, &address_hash)
                && (ct_eq(&h, &s.current)
                    || (s.previous.as_deref().is_some_and(|p| ct_eq(&h, p))
                        && crate::unix_now() < s.rotated_at.saturating_add(self.refresh_grace.as_secs())))
        });
        Ok((live && grant.revoked.is_none()).then_some(grant))
    }

    /// Whether a grant or token id was revoked (for introspection).
    pub async fn is_revoked(&self, gid: Option<&str>, jti: &str) -> Result<bool, GrantError> {
        if let Some(gid) = gid
            && self
                .stores
                .revocations
                .get::<proto::auth::Revocation>(&proto::auth::revoked_grant_key(gid))
                .await?
                .is_some()
        {
            return Ok(true);
        }
        Ok(self
            .stores
            .revocations
            .get::<proto::auth::Revocation>(&proto::auth::revoked_token_key(jti))
            .await?
            .is_some())
    }

    /// Revoke a grant: mark it, forget its upstream tokens, and tell the gateways.
    pub async fn revoke_grant(&self, gid: &str, reason: &str) -> Result<(), GrantError> {
        for _ in 0..5 {
            match self.stores.grants.get::<Grant>(gid).await? {
                None => break,
                Some((g, _)) if g.revoked.is_some() => break,
                Some((mut g, rev)) => {
                    g.revoked = Some(reason.to_owned());
                    g.refresh = None;
                    if let Cas::Done(_) = self.stores.grants.update(gid, &g, rev).await? {
                        break;
                    }
                }
            }
        }
        self.stores.vault.delete(gid).await?;
        let revocation = proto::auth::Revocation {
            v: proto::auth::AUTH_WIRE_VERSION,
            until: crate::unix_now() + self.access_ttl.as_secs() + 60,
            reason: reason.to_owned(),
        };
        self.stores
            .revocations
            .put(&proto::auth::revoked_grant_key(gid), &revocation)
            .await?;
        tracing::info!(grant = gid, reason, "grant revoked");
        Ok(())
    }

    /// Revoke one access token until it expires.
    pub async fn revoke_access_token(&self, claims: &AccessClaims) -> Result<(), GrantError> {
        let revocation = proto::auth::Revocation {
            v: proto::auth::AUTH_WIRE_VERSION,
            until: u64::try_from(claims.exp).unwrap_or(0) + 60,
            reason: "revoked".into(),
        };
        self.stores
            .revocations
            .put(&proto::auth::revoked_token_key(&claims.jti), &revocation)
            .await?;
        tracing::info!(client_id = %claims.client_id, "access token revoked");
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_rfc7636_vector() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_ok(verifier, challenge));
        assert!(!pkce_ok("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj", challenge));
        assert!(!pkce_ok("short", &sha256_b64("short")), "verifier too short");
        let bad_chars = "a".repeat(42) + "!";
        assert!(!pkce_ok(&bad_chars, &sha256_b64(&bad_chars)));
        assert!(!pkce_ok(verifier, verifier), "plain is not S256");
    }

    #[test]
    fn refresh_tokens_split() {
        assert_eq!(split_refresh("g.s"), Some(("g", "s")));
        assert_eq!(split_refresh("g."), None);
        assert_eq!(split_refresh(".s"), None);
        assert_eq!(split_refresh("gs"), None);
    }

    fn state() -> RefreshState {
        RefreshState {
            address: "a".into(),
            current: "c".into(),
            previous: None,
            retired: Vec::new(),
            rotated_at: 0,
            generation: 1,
        }
    }

    #[test]
    fn retired_secrets_are_capped_newest_first() {
        let mut s = state();
        for i in 0..(RETIRED_SECRETS_KEPT + 3) {
            s.retire(format!("h{i}"));
        }
        assert_eq!(s.retired.len(), RETIRED_SECRETS_KEPT);
        assert_eq!(s.retired[0], format!("h{}", RETIRED_SECRETS_KEPT + 2));
        assert!(s.was_issued("h3"));
        assert!(!s.was_issued("h2"), "the oldest are forgotten");
        assert!(!s.was_issued("c"), "the current secret is not a rotated-out one");
        assert!(!s.was_issued("never"));
    }
}
