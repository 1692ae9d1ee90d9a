//! `POST /token`, `POST /revoke` (RFC 7009) and `POST /introspect` (RFC 7662).
//!
//! Every answer carries `Cache-Control: no-store`; errors are RFC 6749 §5.2 bodies
//! (`invalid_client` is 401, with `WWW-Authenticate: Basic` when the client tried
//! HTTP Basic). The grant logic itself is in [`crate::grants`].

use std::collections::HashMap;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::clients::{AuthMethod, ClientError, ClientRecord};
use crate::flow::{requested_scopes, resource_matches};
use crate::grants::GrantError;
use crate::server::OAuth;

/// An RFC 6749 error answer.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(json!({ "error": error, "error_description": description }))
}

fn no_store_json(body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

fn client_error(oauth: &OAuth, endpoint: &str, e: &ClientError, basic: bool) -> HttpResponse {
    tracing::info!(endpoint, error = e.oauth_code(), description = %e.description(), "client refused");
    oauth.metrics.token(endpoint, e.oauth_code());
    let mut resp = oauth_error(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        e.oauth_code(),
        &e.description(),
    );
    if basic && e.status() == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"token\""),
        );
    }
    resp
}

fn grant_error(oauth: &OAuth, grant_type: &str, e: &GrantError) -> HttpResponse {
    match e {
        GrantError::Invalid(reason) => {
            tracing::info!(grant_type, reason, "token request refused");
            oauth.metrics.token(grant_type, "invalid_grant");
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", reason)
        }
        other => {
            tracing::error!(grant_type, error = %other, "token request failed");
            oauth.metrics.token(grant_type, "temporarily_unavailable");
            oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again")
        }
    }
}

/// Parse the form (repeated parameters are an error) and authenticate the client.
async fn authenticated(
    oauth: &OAuth,
    req: &HttpRequest,
    body: &[u8],
    endpoint: &str,
) -> Result<(HashMap<String, String>, ClientRecord), HttpResponse> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        oauth.metrics.token(endpoint, "invalid_request");
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body must be application/x-www-form-urlencoded",
        ));
    }
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            oauth.metrics.token(endpoint, "invalid_request");
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("parameter {k} appears more than once"),
            ));
        }
    }
    let basic = req.headers().contains_key(header::AUTHORIZATION);
    let (client_id, secret, method) =
        crate::clients::client_credentials(req, &form).map_err(|e| client_error(oauth, endpoint, &e, basic))?;
    let client = oauth
        .clients
        .authenticate(&client_id, secret.as_deref(), method)
        .await
        .map_err(|e| client_error(oauth, endpoint, &e, basic))?;
    if let Err(e) = oauth.clients.touch(&client).await {
        tracing::warn!(error = %e, "cannot note client use");
    }
    Ok((form, client))
}

/// `POST /token`.
pub async fn token(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let (form, client) = match authenticated(&oauth, &req, &body, "token").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or_default();
    let resource = form.get("resource").map(String::as_str);
    if let Some(r) = resource
        && !resource_matches(&oauth.cfg.resource, r)
    {
        oauth.metrics.token(grant_type, "invalid_target");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource does not name this MCP server",
        );
    }
    const SUPPORTED: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];
    if !grant_type.is_empty() && !SUPPORTED.contains(&grant_type) {
        oauth.metrics.token("other", "unsupported_grant_type");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type is not supported",
        );
    }
    if !grant_type.is_empty() && !client.grant_types.iter().any(|g| g == grant_type) {
        oauth.metrics.token(grant_type, "unauthorized_client");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "client is not registered for this grant_type",
        );
    }
    let result = match grant_type {
        "authorization_code" => {
            let (Some(code), Some(verifier)) = (form.get("code"), form.get("code_verifier")) else {
                oauth.metrics.token(grant_type, "invalid_request");
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code and code_verifier are required",
                );
            };
            oauth
                .grants
                .redeem_code(
                    code,
                    &client.client_id,
                    form.get("redirect_uri").map(String::as_str),
                    verifier,
                    resource,
                )
                .await
        }
        "refresh_token" => {
            let Some(token) = form.get("refresh_token") else {
                oauth.metrics.token(grant_type, "invalid_request");
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required");
            };
            let scopes = form
                .get("scope")
                .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .filter(|s| !s.is_empty());
            oauth.grants.refresh(token, &client.client_id, scopes, resource).await
        }
        "client_credentials" => {
            // Only the operator's machine clients act for themselves; a registered
            // client never can, whatever it registered (defence in depth: registration
            // refuses the grant type too).
            if !client.machine || client.token_endpoint_auth_method == AuthMethod::None {
                oauth.metrics.token(grant_type, "unauthorized_client");
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "client_credentials is only for machine clients the operator configured",
                );
            }
            let scopes = match requested_scopes(&oauth, &client, form.get("scope").map(String::as_str)) {
                Ok(s) => s,
                Err(e) => {
                    oauth.metrics.token(grant_type, "invalid_scope");
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &e);
                }
            };
            oauth
                .grants
                .client_token(&client.client_id, &scopes, &oauth.cfg.resource)
        }
        "" => {
            oauth.metrics.token("none", "invalid_request");
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing");
        }
        _ => {
            oauth.metrics.token("other", "unsupported_grant_type");
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type is not supported",
            );
        }
    };
    match result {
        Ok(answer) => {
            oauth.metrics.token(grant_type, "ok");
            no_store_json(&answer)
        }
        Err(e) => grant_error(&oauth, grant_type, &e),
    }
}

/// `POST /revoke` (RFC 7009): always 200 for a token that is unknown, already
/// revoked, or not this client's (no oracle), after authenticating the client.
pub async fn revoke(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let (form, client) = match authenticated(&oauth, &req, &body, "revoke").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        oauth.metrics.token("revoke", "invalid_request");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let outcome = async {
        if let Some(grant) = oauth.grants.refresh_token_grant(token).await? {
            if grant.client_id == client.client_id {
                oauth.grants.revoke_grant(&grant.id, "revoked").await?;
            }
            return Ok::<(), GrantError>(());
        }
        if let Some(claims) = oauth.grants.verify_access(token, false)
            && claims.client_id == client.client_id
        {
            oauth.grants.revoke_access_token(&claims).await?;
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            oauth.metrics.token("revoke", "ok");
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Err(e) => {
            tracing::error!(error = %e, "revocation failed");
            oauth.metrics.token("revoke", "temporarily_unavailable");
            oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again")
        }
    }
}

/// `POST /introspect` (RFC 7662), only for the resource servers the operator
/// configured (machine clients with `introspect: true`): it reveals who a token is
/// for, so no self-registered client may call it.
pub async fn introspect(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let (form, client) = match authenticated(&oauth, &req, &body, "introspect").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    if !client.introspect || client.token_endpoint_auth_method == AuthMethod::None {
        tracing::info!(client_id = %client.client_id, "introspection refused: not a configured resource server");
        oauth.metrics.token("introspect", "invalid_client");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "introspection is only for the resource servers the operator configured",
        );
    }
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        oauth.metrics.token("introspect", "invalid_request");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let inactive = || no_store_json(&json!({ "active": false }));
    if let Some(c) = oauth.grants.verify_access(token, true) {
        return match oauth.grants.is_revoked(c.gid.as_deref(), &c.jti).await {
            Ok(false) => {
                oauth.metrics.token("introspect", "ok");
                no_store_json(&json!({
                    "active": true,
                    "token_type": "Bearer",
                    "client_id": c.client_id,
                    "sub": c.sub,
                    "aud": c.aud,
                    "iss": c.iss,
                    "exp": c.exp,
                    "iat": c.iat,
                    "jti": c.jti,
                    "scope": c.scope.unwrap_or_default(),
                }))
            }
            Ok(true) => inactive(),
            Err(e) => {
                tracing::error!(error = %e, "introspection failed");
                oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again")
            }
        };
    }
    match oauth.grants.refresh_token_grant(token).await {
        Ok(Some(g)) => {
            oauth.metrics.token("introspect", "ok");
            no_store_json(&json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": g.client_id,
                "sub": g.identity.sub,
                "aud": g.resource,
                "iss": oauth.issuer,
                "scope": g.scopes.join(" "),
            }))
        }
        Ok(None) => inactive(),
        Err(e) => {
            tracing::error!(error = %e, "introspection failed");
            oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again")
        }
    }
}
