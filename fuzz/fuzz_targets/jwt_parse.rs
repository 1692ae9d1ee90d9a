//! What the gateway reads of a bearer token before it has chosen keys: the
//! `Authorization` value, the JWT header (`alg`, `kid`, `typ`), and the unverified
//! `iss` claim. Driven through `Validator::validate` itself (no issuer is allowed, so
//! every input ends before a key is fetched: no network), plus jsonwebtoken's public
//! header and unverified-claims decoding and `is_access_token_typ` directly, and the
//! refusal the client would get.
//!
//! Input: the token (also tried as the whole `Authorization` value).

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use gateway::auth::{AuthConfig, Validator, is_access_token_typ};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// The claim the gateway reads before verification (`auth::UnverifiedIssuer`).
#[derive(Deserialize)]
#[allow(dead_code)]
struct UnverifiedIssuer {
    #[serde(default)]
    iss: Option<String>,
}

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let cfg = AuthConfig {
        allowed_issuers: Vec::new(),
        resource: "https://mcp.example/mcp".to_owned(),
        resource_metadata_url: "https://mcp.example/.well-known/oauth-protected-resource/mcp".to_owned(),
        jwks_cache_ttl: Duration::from_secs(300),
        required_scopes: vec!["mcp".to_owned()],
        authorization_servers: vec!["https://auth.example".to_owned()],
        issuers_without_typ: Vec::new(),
    };
    Validator::new(cfg, reqwest::Client::new())
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = jsonwebtoken::decode_header(data);
        let _ = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(data);
        return;
    };
    if let Ok(header) = jsonwebtoken::decode_header(text) {
        let _ = is_access_token_typ(header.typ.as_deref());
    }
    let _ = jsonwebtoken::dangerous::insecure_decode_claims::<UnverifiedIssuer>(text);
    let _ = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(text);
    let _ = is_access_token_typ(Some(text));
    let _ = gateway::auth::origin_of(text);

    for authorization in [format!("Bearer {text}"), text.to_owned()] {
        let result = futures::executor::block_on(VALIDATOR.validate(Some(authorization.as_str())));
        let err = result.expect_err("no issuer is allowed: nothing validates");
        // The refusal is a 401 (RFC 6750 challenge and JSON body), never a 5xx.
        let resp = VALIDATOR.reject_response(&err);
        assert!(resp.status().is_client_error(), "{} for {err}", resp.status());
    }
});
