//! The OAuth 2 client side shared by every remote provider, on the `oauth2` crate:
//! the authorization URL with PKCE S256, the code exchange and the refresh, and how
//! the token endpoint's answers map onto [`UpstreamError`].
//!
//! Providers differ in small ways, so the token response is our own [`TokenBody`]:
//! `token_type` may be missing (WorkOS), `expires_in` may be a string, and there are
//! optional `id_token` (OIDC) and `user`/`organization_id` (WorkOS) fields. GitHub
//! answers some errors with status 200 and an `error` field; those are recognised too.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    TokenResponse, TokenType, TokenUrl,
};
use serde::{Deserialize, Deserializer, Serialize};

use super::http::{TokenHttp, TokenHttpError};
use super::{LoginSecrets, LoginStart, UpstreamError, UpstreamTokens};

/// Longest authorization code or refresh token we pass on to the provider.
pub const MAX_CODE_LEN: usize = 4096;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the url-encoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post,
}

impl ClientAuth {
    fn auth_type(self) -> AuthType {
        match self {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post => AuthType::RequestBody,
        }
    }

    /// Pick from a discovery document's `token_endpoint_auth_methods_supported`
    /// (absent means `client_secret_basic`, OIDC Discovery §3).
    pub fn from_supported(supported: Option<&[String]>) -> Self {
        match supported {
            Some(m) if !m.iter().any(|m| m == "client_secret_basic") && m.iter().any(|m| m == "client_secret_post") => {
                ClientAuth::Post
            }
            _ => ClientAuth::Basic,
        }
    }
}

/// The registered client at the provider.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: ClientId,
    pub client_secret: Option<ClientSecret>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id.as_str())
            .field("has_client_secret", &self.client_secret.is_some())
            .finish()
    }
}

/// `token_type` as the provider spelt it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenTypeName(pub String);
impl TokenType for TokenTypeName {}

fn default_token_type() -> TokenTypeName {
    TokenTypeName("Bearer".to_owned())
}

/// `expires_in` as a number or a numeric string.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(f64),
        S(String),
    }
    Ok(match Option::<Num>::deserialize(d)? {
        Some(Num::N(n)) if n.is_finite() && n >= 0.0 => Some(n as u64),
        Some(Num::S(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A successful token endpoint response.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenBody {
    pub access_token: AccessToken,
    #[serde(default = "default_token_type")]
    pub token_type: TokenTypeName,
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<RefreshToken>,
    #[serde(default)]
    pub scope: Option<String>,
    /// OIDC.
    #[serde(default)]
    pub id_token: Option<String>,
    /// WorkOS `/user_management/authenticate`.
    #[serde(default)]
    pub user: Option<serde_json::Value>,
    /// WorkOS `/user_management/authenticate`.
    #[serde(default)]
    pub organization_id: Option<String>,
}

impl std::fmt::Debug for TokenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBody")
            .field("token_type", &self.token_type.0)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenResponse for TokenBody {
    type TokenType = TokenTypeName;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &TokenTypeName {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

type Client<HasAuthUrl, HasTokenUrl> = oauth2::Client<
    BasicErrorResponse,
    TokenBody,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random value for `nonce`: 32 bytes, base64url.
pub fn random_nonce() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What goes into the authorization request besides client id, state and PKCE.
#[derive(Debug, Default)]
pub struct AuthRequest<'a> {
    pub scopes: &'a [String],
    pub nonce: bool,
    pub extra: &'a [(String, String)],
}

/// The authorization URL (response_type=code, PKCE S256 with a fresh verifier).
pub fn begin(
    creds: &ClientCredentials,
    authorization_endpoint: &str,
    callback_url: &str,
    state: &str,
    req: &AuthRequest<'_>,
) -> Result<LoginStart, UpstreamError> {
    let auth_url = AuthUrl::new(authorization_endpoint.to_owned())
        .map_err(|_| UpstreamError::Invalid("authorization endpoint is not a url".into()))?;
    let redirect = RedirectUrl::new(callback_url.to_owned())
        .map_err(|_| UpstreamError::Invalid("callback url is not a url".into()))?;
    let client: Client<EndpointSet, EndpointNotSet> = oauth2::Client::new(creds.client_id.clone())
        .set_auth_uri(auth_url)
        .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = req.nonce.then(random_nonce);
    let state = state.to_owned();
    let mut request = client
        .authorize_url(move || CsrfToken::new(state))
        .add_scopes(req.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge);
    if let Some(n) = &nonce {
        request = request.add_extra_param("nonce", n.clone());
    }
    for (k, v) in req.extra {
        request = request.add_extra_param(k.as_str(), v.as_str());
    }
    let (url, _state) = request.url();
    Ok(LoginStart {
        redirect_to: url.to_string(),
        secrets: LoginSecrets {
            pkce_verifier: Some(verifier.secret().clone()),
            nonce,
        },
    })
}

/// The token endpoint and how to reach it.
#[derive(Debug, Clone)]
pub struct TokenEndpoint<'a> {
    pub url: &'a str,
    pub auth: ClientAuth,
    /// Send `redirect_uri` with the code (RFC 6749 §4.1.3); WorkOS does not take it.
    pub send_redirect_uri: bool,
}

fn token_client(
    creds: &ClientCredentials,
    endpoint: &TokenEndpoint<'_>,
) -> Result<Client<EndpointNotSet, EndpointSet>, UpstreamError> {
    let token_url = TokenUrl::new(endpoint.url.to_owned())
        .map_err(|_| UpstreamError::Invalid("token endpoint is not a url".into()))?;
    let mut client = oauth2::Client::new(creds.client_id.clone())
        .set_token_uri(token_url)
        .set_auth_type(endpoint.auth.auth_type());
    if let Some(secret) = &creds.client_secret {
        client = client.set_client_secret(secret.clone());
    }
    Ok(client)
}

/// Exchange an authorization code (with its PKCE verifier).
pub async fn exchange_code(
    http: &TokenHttp,
    creds: &ClientCredentials,
    endpoint: &TokenEndpoint<'_>,
    code: &str,
    callback_url: &str,
    secrets: &LoginSecrets,
) -> Result<TokenBody, UpstreamError> {
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Err(UpstreamError::Invalid("authorization code is malformed".into()));
    }
    let verifier = secrets
        .pkce_verifier
        .clone()
        .ok_or_else(|| UpstreamError::Invalid("login has no pkce verifier".into()))?;
    let client = token_client(creds, endpoint)?;
    let redirect = RedirectUrl::new(callback_url.to_owned())
        .map_err(|_| UpstreamError::Invalid("callback url is not a url".into()))?;
    let mut request = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier));
    if endpoint.send_redirect_uri {
        request = request.set_redirect_uri(Cow::Owned(redirect));
    }
    request
        .request_async(http)
        .await
        .map_err(|e| token_error(e, Grant::Code))
}

/// Use a refresh token.
pub async fn refresh(
    http: &TokenHttp,
    creds: &ClientCredentials,
    endpoint: &TokenEndpoint<'_>,
    refresh_token: &str,
) -> Result<TokenBody, UpstreamError> {
    if refresh_token.is_empty() || refresh_token.len() > MAX_CODE_LEN {
        return Err(UpstreamError::InvalidGrant);
    }
    let client = token_client(creds, endpoint)?;
    let rt = RefreshToken::new(refresh_token.to_owned());
    client
        .exchange_refresh_token(&rt)
        .request_async(http)
        .await
        .map_err(|e| token_error(e, Grant::Refresh))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Code,
    Refresh,
}

/// Error codes that mean the grant (code or refresh token) is dead. GitHub says
/// `bad_verification_code` / `bad_refresh_token` (with status 200).
fn is_dead_grant(error: &str) -> bool {
    matches!(error, "invalid_grant" | "bad_verification_code" | "bad_refresh_token")
}

/// A short, printable error code from the provider (never echo arbitrary text).
pub fn error_code(raw: &str) -> String {
    let code: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if code.is_empty() {
        "unknown_error".to_owned()
    } else {
        code
    }
}

fn token_error(err: RequestTokenError<TokenHttpError, BasicErrorResponse>, grant: Grant) -> UpstreamError {
    let server_error = |code: &str| {
        let code = error_code(code);
        if grant == Grant::Refresh && is_dead_grant(&code) {
            UpstreamError::InvalidGrant
        } else {
            UpstreamError::Invalid(format!("token endpoint answered {code}"))
        }
    };
    match err {
        RequestTokenError::ServerResponse(e) => {
            let code = match e.error() {
                BasicErrorResponseType::Extension(s) => s.clone(),
                other => other.to_string(),
            };
            server_error(&code)
        }
        RequestTokenError::Request(e) => UpstreamError::Unavailable(format!("token endpoint: {e}")),
        // Status 200 but not a token: GitHub puts errors there.
        RequestTokenError::Parse(_, body) => {
            #[derive(Deserialize)]
            struct ErrorBody {
                error: String,
            }
            match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => server_error(&e.error),
                Err(_) => UpstreamError::Invalid("token endpoint answer is not a token response".into()),
            }
        }
        RequestTokenError::Other(_) => UpstreamError::Unavailable("token endpoint answered unexpectedly".into()),
    }
}

/// Our record of the provider's tokens. A refresh that does not rotate the refresh
/// token keeps `previous_refresh`.
pub fn upstream_tokens(body: &TokenBody, previous_refresh: Option<&str>) -> UpstreamTokens {
    UpstreamTokens {
        access_token: body.access_token.secret().clone(),
        token_type: body.token_type.0.clone(),
        refresh_token: body
            .refresh_token
            .as_ref()
            .map(|r| r.secret().clone())
            .filter(|r| !r.is_empty())
            .or_else(|| previous_refresh.map(str::to_owned)),
        expires_at: body.expires_in.map(|s| now_secs().saturating_add(s)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn token_body_is_lenient() {
        let b: TokenBody = serde_json::from_str(
            r#"{"access_token":"AT-secret","expires_in":"3600","refresh_token":"RT-secret","user":{"id":"u"}}"#,
        )
        .unwrap();
        assert_eq!(b.token_type.0, "Bearer");
        assert_eq!(b.expires_in, Some(3600));
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        let t = upstream_tokens(&b, Some("old"));
        assert_eq!(t.refresh_token.as_deref(), Some("RT-secret"));
        let b: TokenBody =
            serde_json::from_str(r#"{"access_token":"a","token_type":"bearer","expires_in":60}"#).unwrap();
        let t = upstream_tokens(&b, Some("old"));
        assert_eq!(t.refresh_token.as_deref(), Some("old"));
        assert_eq!(t.token_type, "bearer");
        assert!(t.expires_at.unwrap() >= now_secs() + 59);
    }

    #[test]
    fn client_auth_choice() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ClientAuth::from_supported(None), ClientAuth::Basic);
        assert_eq!(
            ClientAuth::from_supported(Some(&v(&["client_secret_post"]))),
            ClientAuth::Post
        );
        assert_eq!(
            ClientAuth::from_supported(Some(&v(&["client_secret_post", "client_secret_basic"]))),
            ClientAuth::Basic
        );
        assert_eq!(
            ClientAuth::from_supported(Some(&v(&["private_key_jwt"]))),
            ClientAuth::Basic
        );
    }

    #[test]
    fn error_codes_are_sanitised() {
        assert_eq!(error_code("access_denied"), "access_denied");
        assert_eq!(error_code("<script>x</script>"), "scriptxscript");
        assert_eq!(error_code(""), "unknown_error");
        assert_eq!(error_code(&"a".repeat(500)).len(), 64);
    }

    #[test]
    fn begin_builds_a_pkce_request() {
        let creds = ClientCredentials {
            client_id: ClientId::new("cid".into()),
            client_secret: None,
        };
        let scopes = vec!["openid".to_owned(), "email".to_owned()];
        let extra = vec![("resource".to_owned(), "https://api.example.com".to_owned())];
        let start = begin(
            &creds,
            "https://id.example.com/authorize",
            "https://auth.example.com/callback",
            "st4te",
            &AuthRequest {
                scopes: &scopes,
                nonce: true,
                extra: &extra,
            },
        )
        .unwrap();
        let url = reqwest::Url::parse(&start.redirect_to).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["state"], "st4te");
        assert_eq!(q["scope"], "openid email");
        assert_eq!(q["redirect_uri"], "https://auth.example.com/callback");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["resource"], "https://api.example.com");
        assert_eq!(Some(&q["nonce"]), start.secrets.nonce.as_ref());
        let verifier = start.secrets.pkce_verifier.unwrap();
        let expected = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier));
        assert_eq!(&q["code_challenge"], expected.as_str());
    }
}
