//! `whoAmI`: who the gateway says the caller is (issuer, subject, profile claims,
//! scopes, permissions, groups, organization, client, token expiry) and whether the token vault
//! holds a downstream token for them: its expiry and audience, never the token.
//!
//! The audience is the `aud` claim when the upstream access token is a JWT. Its
//! payload is decoded without verifying the signature, only to read `aud`; nothing
//! else from the token reaches the answer. Opaque tokens have no audience (`null`).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use proto::Principal;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::toolbox::{McpTool, ToolCx, ToolFuture};
use crate::vault::{TokenVault, UpstreamToken, VaultError};

pub(crate) const NAME: &str = "whoAmI";

/// Every authenticated caller may ask who they are.
pub struct WhoAmI;

impl McpTool for WhoAmI {
    fn definition(&self) -> Tool {
        tool()
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move { Ok(call(Some(cx.caller), cx.vault).await) })
    }
}

pub(crate) fn tool() -> Tool {
    let mut schema = JsonObject::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), json!({}));
    Tool::new(
        NAME,
        "Show who you are signed in as: identity, claims, scopes, and the audience and \
         expiry of the downstream token (never the token itself).",
        schema,
    )
    .with_annotations(ToolAnnotations::new().read_only(true))
}

pub(crate) async fn call(principal: Option<&Principal>, vault: Option<&dyn TokenVault>) -> CallToolResult {
    let Some(principal) = principal else {
        return CallToolResult::error(vec![ContentBlock::text("whoAmI needs an authenticated caller")]);
    };
    let downstream = match vault {
        Some(vault) => vault.upstream_token(principal).await,
        None => Err(VaultError::NoGrant),
    };
    if let Err(e) = &downstream {
        tracing::debug!(error = %e, "no downstream token for whoAmI");
    }
    let report = report(principal, downstream);
    let text = serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string());
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// The answer, as JSON. Takes the token by value so it is dropped here.
pub(crate) fn report(p: &Principal, downstream: Result<UpstreamToken, VaultError>) -> Value {
    let downstream = match downstream {
        Ok(token) => json!({
            "available": true,
            "expires_at": token.expires_at,
            "audience": audience(&token.access_token),
            "error": null,
        }),
        Err(e) => json!({
            "available": false,
            "expires_at": null,
            "audience": null,
            "error": e.short(),
        }),
    };
    json!({
        "iss": p.iss,
        "sub": p.sub,
        "email": p.email,
        "name": p.name,
        "scopes": p.scopes,
        "permissions": p.permissions,
        "groups": p.groups,
        "organization": p.organization,
        "client_id": p.client_id,
        "kind": p.kind.as_str(),
        "expires_at": p.expires_at,
        "downstream": downstream,
    })
}

/// The `aud` claim of a JWS-compact token (a string or an array of strings), read
/// without verification; `None` for anything else.
fn audience(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("aud")? {
        Value::String(aud) => Some(Value::String(aud.clone())),
        Value::Array(auds) if auds.iter().all(Value::is_string) => Some(Value::Array(auds.clone())),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A recognizable fake token that must never show up in an answer.
    const SECRET: &str = "SECRETSIGNATUREzz9";

    fn jwt(claims: Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.{SECRET}")
    }

    fn token(access_token: String) -> UpstreamToken {
        UpstreamToken {
            access_token,
            token_type: "Bearer".into(),
            expires_at: Some(1_900_000_000),
        }
    }

    fn alice() -> Principal {
        Principal {
            iss: "https://auth.test".into(),
            sub: "alice".into(),
            email: Some("alice@example.test".into()),
            name: Some("Alice".into()),
            scopes: vec!["mcp".into()],
            permissions: vec!["image_generation".into()],
            groups: vec!["staff".into()],
            client_id: Some("client-1".into()),
            expires_at: 1_800_000_000,
            grant_id: Some("g1".into()),
            organization: Some("org_1".into()),
            kind: proto::SubjectKind::User,
        }
    }

    #[test]
    fn reports_identity_claims_and_the_downstream_audience_but_not_the_token() {
        let access = jwt(json!({
            "aud": "https://api.upstream.test",
            "sub": "upstream-user-42",
            "email": "private-upstream-claim@example.test",
        }));
        let report = report(&alice(), Ok(token(access.clone())));
        assert_eq!(report["iss"], "https://auth.test");
        assert_eq!(report["sub"], "alice");
        assert_eq!(report["email"], "alice@example.test");
        assert_eq!(report["name"], "Alice");
        assert_eq!(report["scopes"], json!(["mcp"]));
        assert_eq!(report["permissions"], json!(["image_generation"]));
        assert_eq!(report["groups"], json!(["staff"]));
        assert_eq!(report["client_id"], "client-1");
        assert_eq!(report["organization"], "org_1");
        assert_eq!(report["expires_at"], 1_800_000_000);
        assert_eq!(
            report["downstream"],
            json!({
                "available": true,
                "expires_at": 1_900_000_000,
                "audience": "https://api.upstream.test",
                "error": null,
            })
        );
        let text = report.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(&access), "{text}");
        let payload = access.split('.').nth(1).unwrap();
        assert!(!text.contains(payload), "{text}");
        // Other claims of the upstream token stay out.
        assert!(!text.contains("upstream-user-42"), "{text}");
        assert!(!text.contains("private-upstream-claim"), "{text}");
    }

    #[test]
    fn audience_is_read_from_jwts_only() {
        assert_eq!(audience(&jwt(json!({ "aud": ["a", "b"] }))), Some(json!(["a", "b"])));
        assert_eq!(audience(&jwt(json!({ "sub": "x" }))), None);
        assert_eq!(audience(&jwt(json!({ "aud": 5 }))), None);
        assert_eq!(audience(SECRET), None);
        assert_eq!(audience("gho_opaque.token"), None);
        assert_eq!(audience("a.b.c.d.e"), None);
        assert_eq!(audience("a.!!!.c"), None);
        // Padded base64url is tolerated.
        let padded = format!("h.{}==.s", URL_SAFE_NO_PAD.encode(r#"{"aud":"x"}"#.as_bytes()));
        assert_eq!(audience(&padded), Some(json!("x")));
    }

    #[test]
    fn opaque_tokens_are_available_without_an_audience() {
        let report = report(&alice(), Ok(token(format!("gho_{SECRET}"))));
        assert_eq!(report["downstream"]["available"], true);
        assert_eq!(report["downstream"]["audience"], Value::Null);
        assert!(!report.to_string().contains(SECRET));
    }

    #[test]
    fn vault_errors_are_short_strings() {
        for (e, text) in [
            (VaultError::NoGrant, "no upstream token"),
            (VaultError::NotFound, "not found"),
            (VaultError::Revoked, "revoked"),
            (VaultError::Unavailable("upstream said 502".into()), "unavailable"),
            (VaultError::TimedOut, "timed out"),
            (VaultError::NoResponders, "no responders"),
        ] {
            let report = report(&alice(), Err(e));
            assert_eq!(
                report["downstream"],
                json!({ "available": false, "expires_at": null, "audience": null, "error": text })
            );
        }
    }

    #[tokio::test]
    async fn without_a_vault_or_a_caller() {
        let result = call(Some(&alice()), None).await;
        assert_ne!(result.is_error, Some(true));
        let text = &result.content[0].as_text().unwrap().text;
        let report: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            report["downstream"],
            json!({ "available": false, "expires_at": null, "audience": null, "error": "no upstream token" })
        );
        let result = call(None, None).await;
        assert_eq!(result.is_error, Some(true));
    }
}
