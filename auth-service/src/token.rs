//! `POST /token`, `POST /revoke` (RFC 7009) and `POST /introspect` (RFC 7662).
//!
//! Every answer carries `Cache-Control: no-store`; errors come from the one table in
//! [`crate::errors`] (`invalid_client` is 401, with `WWW-Authenticate: Basic` when
//! the client tried HTTP Basic). The grant logic itself is in [`crate::grants`].

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::clients::{AuthMethod, ClientError, ClientRecord};
use crate::errors::{Code, OAuthError};
use crate::flow::{requested_scopes, resource_matches};
use crate::grants::GrantError;
use crate::server::OAuth;

fn no_store_json(body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

/// Count the outcome under `label` (grant type or endpoint) and answer.
fn answer(oauth: &OAuth, label: &str, result: Result<HttpResponse, OAuthError>) -> HttpResponse {
    match result {
        Ok(resp) => {
            oauth.metrics.token(label, "ok");
            resp
        }
        Err(e) => {
            if e.code != Code::TemporarilyUnavailable {
                tracing::info!(endpoint = label, error = e.label(), description = %e.description, "request refused");
            }
            oauth.metrics.token(label, e.label());
            e.error_response()
        }
    }
}

fn grant_error(oauth: &OAuth, grant_type: &str, e: &GrantError) -> OAuthError {
    match e {
        GrantError::Invalid(reason) if *reason == crate::grants::REFRESH_REUSED => oauth.metrics.refresh_reuse.inc(),
        GrantError::Invalid(_) => {}
        _ => tracing::error!(grant_type, error = %e, "token request failed"),
    }
    OAuthError::from(e)
}

/// Parse the form (repeated parameters are an error) and authenticate the client.
async fn authenticated(
    oauth: &OAuth,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(HashMap<String, String>, ClientRecord), OAuthError> {
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
        return Err(OAuthError::new(
            Code::InvalidRequest,
            "body must be application/x-www-form-urlencoded",
        ));
    }
    let form = parse_form(body)?;
    let basic = req.headers().contains_key(header::AUTHORIZATION);
    let client_err = |e: ClientError| OAuthError::from(&e).basic(basic);
    let (client_id, secret, method) = crate::clients::client_credentials(req, &form).map_err(client_err)?;
    let client = oauth
        .clients
        .authenticate(&client_id, secret.as_deref(), method)
        .await
        .map_err(client_err)?;
    if let Err(e) = oauth.clients.touch(&client).await {
        tracing::warn!(error = %e, "cannot note client use");
    }
    Ok((form, client))
}

/// Grant types `/token` knows.
const SUPPORTED_GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

/// `POST /token`.
pub async fn token(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let (form, client) = match authenticated(&oauth, &req, &body).await {
        Ok(x) => x,
        Err(e) => return answer(&oauth, "token", Err(e)),
    };
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or_default();
    let label = match grant_type {
        "" => "none",
        g if SUPPORTED_GRANT_TYPES.contains(&g) => g,
        _ => "other",
    };
    let result = grant(&oauth, &form, &client, grant_type).await;
    answer(&oauth, label, result)
}

async fn grant(
    oauth: &OAuth,
    form: &HashMap<String, String>,
    client: &ClientRecord,
    grant_type: &str,
) -> Result<HttpResponse, OAuthError> {
    let resource = form.get("resource").map(String::as_str);
    if let Some(r) = resource
        && !resource_matches(&oauth.cfg.resource, r)
    {
        return Err(OAuthError::new(
            Code::InvalidTarget,
            "resource does not name this MCP server",
        ));
    }
    if grant_type.is_empty() {
        return Err(OAuthError::new(Code::InvalidRequest, "grant_type is missing"));
    }
    if !SUPPORTED_GRANT_TYPES.contains(&grant_type) {
        return Err(OAuthError::new(
            Code::UnsupportedGrantType,
            "grant_type is not supported",
        ));
    }
    if !client.grant_types.iter().any(|g| g == grant_type) {
        return Err(OAuthError::new(
            Code::UnauthorizedClient,
            "client is not registered for this grant_type",
        ));
    }
    let result = match grant_type {
        "authorization_code" => {
            let (Some(code), Some(verifier)) = (form.get("code"), form.get("code_verifier")) else {
                return Err(OAuthError::new(
                    Code::InvalidRequest,
                    "code and code_verifier are required",
                ));
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
                return Err(OAuthError::new(Code::InvalidRequest, "refresh_token is required"));
            };
            let scopes = form
                .get("scope")
                .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .filter(|s| !s.is_empty());
            oauth.grants.refresh(token, &client.client_id, scopes, resource).await
        }
        _ => {
            // client_credentials. Only the operator's machine clients act for
            // themselves; a registered client never can, whatever it registered
            // (defence in depth: registration refuses the grant type too).
            if !client.machine || client.token_endpoint_auth_method == AuthMethod::None {
                return Err(OAuthError::new(
                    Code::UnauthorizedClient,
                    "client_credentials is only for machine clients the operator configured",
                ));
            }
            let scopes = requested_scopes(oauth, client, form.get("scope").map(String::as_str))
                .map_err(|e| OAuthError::new(Code::InvalidScope, e))?;
            oauth
                .grants
                .client_token(&client.client_id, &scopes, &oauth.cfg.resource)
        }
    };
    result
        .map(|answer| no_store_json(&answer))
        .map_err(|e| grant_error(oauth, grant_type, &e))
}

/// `POST /revoke` (RFC 7009): always 200 for a token that is unknown, already
/// revoked, or not this client's (no oracle), after authenticating the client.
pub async fn revoke(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let result = revoke_inner(&req, &body, &oauth).await;
    answer(&oauth, "revoke", result)
}

async fn revoke_inner(req: &HttpRequest, body: &[u8], oauth: &OAuth) -> Result<HttpResponse, OAuthError> {
    let (form, client) = authenticated(oauth, req, body).await?;
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return Err(OAuthError::new(Code::InvalidRequest, "token is required"));
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
        Ok(()) => Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()),
        Err(e) => {
            tracing::error!(error = %e, "revocation failed");
            Err(OAuthError::unavailable())
        }
    }
}

/// `POST /introspect` (RFC 7662), only for the resource servers the operator
/// configured (machine clients with `introspect: true`): it reveals who a token is
/// for, so no self-registered client may call it.
pub async fn introspect(req: HttpRequest, body: web::Bytes, oauth: web::Data<OAuth>) -> HttpResponse {
    let result = introspect_inner(&req, &body, &oauth).await;
    answer(&oauth, "introspect", result)
}

async fn introspect_inner(req: &HttpRequest, body: &[u8], oauth: &OAuth) -> Result<HttpResponse, OAuthError> {
    let (form, client) = authenticated(oauth, req, body).await?;
    if !client.introspect || client.token_endpoint_auth_method == AuthMethod::None {
        tracing::info!(client_id = %client.client_id, "introspection refused: not a configured resource server");
        return Err(OAuthError::new(
            Code::InvalidClient,
            "introspection is only for the resource servers the operator configured",
        )
        .basic(req.headers().contains_key(header::AUTHORIZATION)));
    }
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return Err(OAuthError::new(Code::InvalidRequest, "token is required"));
    };
    let failed = |e: GrantError| {
        tracing::error!(error = %e, "introspection failed");
        OAuthError::unavailable()
    };
    let inactive = || no_store_json(&json!({ "active": false }));
    if let Some(c) = oauth.grants.verify_access(token, true) {
        return match oauth
            .grants
            .is_revoked(c.gid.as_deref(), &c.jti)
            .await
            .map_err(failed)?
        {
            false => Ok(no_store_json(&json!({
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
            }))),
            true => Ok(inactive()),
        };
    }
    Ok(match oauth.grants.refresh_token_grant(token).await.map_err(failed)? {
        Some(g) => no_store_json(&json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": g.client_id,
            "sub": g.identity.sub,
            "aud": g.resource,
            "iss": oauth.issuer,
            "scope": g.scopes.join(" "),
        })),
        None => inactive(),
    })
}
/// A form-urlencoded body as the token, revocation and introspection endpoints read
/// it: every parameter at most once (RFC 6749 §3.2), else `invalid_request`.
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::new(
                Code::InvalidRequest,
                format!("parameter {k} appears more than once"),
            ));
        }
    }
    Ok(form)
}
