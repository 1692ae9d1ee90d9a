//! Verifying JWTs signed with someone else's keys, for the gateway (bearer access
//! tokens from the allowed issuers) and the auth-service's upstream login (the identity
//! provider's ID tokens, WorkOS's access tokens).
//!
//! It owns: finding an issuer's `jwks_uri` (RFC 8414 / OpenID Connect Discovery),
//! fetching a JWKS (size-capped, time-bounded), the key cache ([`KeyCache`]: TTL,
//! stale-while-revalidate, single flight, a rate-limited refetch for an unknown `kid`,
//! a failed fetch keeping the old keys, a deadline on a whole refresh), choosing the
//! key for a token, the one table of algorithms and key types ([`ALGORITHMS`],
//! [`key_fits`]), and the check of signature and claims with one leeway
//! ([`LEEWAY_SECS`]).
//!
//! It never: logs, stores or returns in an error a token or a claim's value; trusts
//! anything read from a token before its signature is verified, except the header and
//! [`Token::unverified_issuer`] to choose the keys; accepts a key its source did not
//! publish (no `jku`, `x5u` or embedded `jwk`); decides what a refusal looks like on the
//! wire (each caller maps [`VerifyError`] to its own errors: the gateway's `AuthError`
//! codes, the auth-service's `UpstreamError`); fetches from a source more than once per
//! [`MIN_REFRESH_INTERVAL`] outside the TTL.
//!
//! Reading order: [`algorithms`] (the table), [`source`] (discovery and fetching),
//! [`cache`], [`verify`].
//!
//! # Decisions
//!
//! The gateway and the auth-service had a copy each, and the copies had drifted; one
//! policy now, written here.
//!
//! - **Algorithms: RS256, PS256, ES256, EdDSA** — never `none`, never HMAC, no other
//!   sizes. The gateway accepted EdDSA, ES256 and RS256; the auth-service also PS256.
//!   PS256 is kept for both: it is the same RSA key with a sounder padding, and
//!   providers on FAPI profiles sign with it. Refused algorithms are refused before any
//!   key is fetched.
//! - **RSA keys** verify RS256 and PS256 (the gateway took RSA for RS256 only), unless
//!   the key declares its `alg`, which then must be the token's; a modulus shorter than
//!   [`MIN_RSA_BITS`] (2048, RFC 7518 §3.3) is refused as [`VerifyError::WeakKey`] —
//!   neither copy checked the size.
//! - **Leeway: 60 s** on `exp`, `nbf` and `iat` ([`LEEWAY_SECS`]). The gateway allowed
//!   30 s on `exp`/`nbf` and did not look at `iat`; the auth-service allowed 60 s on all
//!   three. The larger value keeps every upstream login that worked working (identity
//!   providers' clocks are not ours), and 30 s more on an access token's life is
//!   small next to its lifetime; the gateway's revocation entries and stream deadlines
//!   follow the same constant. A token's `iat`, when present, must not be in the future
//!   for either caller now.
//! - **Claims every token must have**: `exp`, `iss` (by an [`IssuerRule`]: exact strings,
//!   or same origin for Cloudflare Access), `aud` (by an [`AudienceRule`]: required, or
//!   only checked when present for WorkOS), a non-empty string `sub`; more required
//!   claims per [`Policy`] (the auth-service requires `iat` on ID tokens).
//! - **Fetching**: one request at most [`FETCH_TIMEOUT`] (5 s; the auth-service used
//!   10 s), a whole refresh at most [`FETCH_DEADLINE`] (6 s; the auth-service had
//!   none), documents up to [`MAX_DOCUMENT_BYTES`], an answer redirected to another
//!   origin refused (the gateway did not check).
//! - **Caching**: stale-while-revalidate for both (the auth-service used to fetch
//!   inline once its keys were an hour old); refetch on an unknown `kid` at most every
//!   [`MIN_REFRESH_INTERVAL`] (10 s, as both had).
//!
//! What really differs between the callers is a parameter: the TTL, the refresh
//! interval (tests), a `User-Agent` ([`CacheConfig`]); the [`KeySource`] (an issuer to
//! discover, or a JWKS URL); the issuer and audience rules and extra required claims
//! ([`Policy`]). What belongs to one kind of token stays with its caller: RFC 9068's
//! `typ: at+jwt` in the gateway, OIDC's `nonce` and `azp` in the auth-service.
#![forbid(unsafe_code)]

pub mod algorithms;
pub mod cache;
pub mod source;
pub mod verify;

pub use algorithms::{ALGORITHMS, MIN_RSA_BITS, key_fits};
pub use cache::{CacheConfig, FETCH_DEADLINE, KeyCache, MAX_SOURCES, MIN_REFRESH_INTERVAL};
pub use jsonwebtoken::jwk::Jwk;
pub use jsonwebtoken::{Algorithm, Header};
pub use source::{FETCH_TIMEOUT, KeySource, KeysError, MAX_DOCUMENT_BYTES, discovery_urls};
pub use verify::{
    AudienceRule, Claims, IssuerRule, LEEWAY_SECS, Policy, Token, VerifyError, check_claims, verify_with_key,
};

#[cfg(test)]
mod tests;
