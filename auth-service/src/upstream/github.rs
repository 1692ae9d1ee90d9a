//! GitHub: OAuth 2 without OpenID Connect (PKCE S256 all the same). After the code
//! exchange the person is whoever `GET {api}/user` says, and `sub` is their numeric
//! `id` — logins can be renamed and then taken by someone else, ids cannot. When the
//! public `email` is null, the verified primary address from `GET {api}/user/emails`
//! is used (needs the `user:email` scope).

use std::sync::Arc;

use reqwest::Url;
use serde_json::Value;

use super::http::{GetError, TokenHttp, get_json};
use super::oauth::{self, AuthRequest, ClientAuth, ClientCredentials, TokenEndpoint};
use super::{Completed, Identity, LoginSecrets, LoginStart, UpstreamError, UpstreamTokens};

pub const DEFAULT_OAUTH_URL: &str = "https://github.com";
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Read the profile and the e-mail addresses, nothing else.
pub const SCOPES: [&str; 2] = ["read:user", "user:email"];
const API_HEADERS: [(&str, &str); 2] = [
    ("accept", "application/vnd.github+json"),
    ("x-github-api-version", "2022-11-28"),
];

/// GitHub (or GitHub Enterprise Server, with other base URLs). Cheap to clone.
#[derive(Clone)]
pub struct GitHubProvider {
    inner: Arc<Inner>,
}

struct Inner {
    creds: ClientCredentials,
    authorize: Url,
    token: Url,
    user: Url,
    emails: Url,
    scopes: Vec<String>,
    http: reqwest::Client,
    token_http: TokenHttp,
}

impl std::fmt::Debug for GitHubProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubProvider")
            .field("client", &self.inner.creds)
            .field("authorize", &self.inner.authorize.as_str())
            .field("user", &self.inner.user.as_str())
            .finish_non_exhaustive()
    }
}

fn join(base: &Url, path: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
}

impl GitHubProvider {
    /// `oauth_url` serves `/login/oauth/*`, `api_url` the REST API.
    pub(crate) fn new(
        creds: ClientCredentials,
        oauth_url: &Url,
        api_url: &Url,
        http: reqwest::Client,
        token_http: TokenHttp,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            inner: Arc::new(Inner {
                creds,
                authorize: join(oauth_url, "/login/oauth/authorize")?,
                token: join(oauth_url, "/login/oauth/access_token")?,
                user: join(api_url, "/user")?,
                emails: join(api_url, "/user/emails")?,
                scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                http,
                token_http,
            }),
        })
    }

    fn token_endpoint(&self) -> TokenEndpoint<'_> {
        TokenEndpoint {
            url: self.inner.token.as_str(),
            auth: ClientAuth::Post,
            send_redirect_uri: true,
        }
    }

    pub async fn begin(&self, state: &str, callback_url: &str) -> Result<LoginStart, UpstreamError> {
        oauth::begin(
            &self.inner.creds,
            self.inner.authorize.as_str(),
            callback_url,
            state,
            &AuthRequest {
                scopes: &self.inner.scopes,
                nonce: false,
                extra: &[],
            },
        )
    }

    pub async fn complete(
        &self,
        code: &str,
        callback_url: &str,
        secrets: &LoginSecrets,
    ) -> Result<Completed, UpstreamError> {
        let body = oauth::exchange_code(
            &self.inner.token_http,
            &self.inner.creds,
            &self.token_endpoint(),
            code,
            callback_url,
            secrets,
        )
        .await?;
        let tokens = oauth::upstream_tokens(&body, None);
        let mut user = match self.api(&self.inner.user, &tokens.access_token).await? {
            Value::Object(u) => u,
            _ => {
                return Err(UpstreamError::Invalid("github user is not an object".into()));
            }
        };
        // The numeric id, never the login.
        let sub = match user.get("id") {
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            _ => {
                return Err(UpstreamError::Invalid("github user has no numeric id".into()));
            }
        };
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let mut email = text(user.get("email"));
        if email.is_none() {
            email = self.primary_email(&tokens.access_token).await;
            if let Some(e) = &email {
                user.insert("email".into(), Value::String(e.clone()));
            }
        }
        let name = text(user.get("name")).or_else(|| text(user.get("login")));
        Ok(Completed {
            identity: Identity {
                sub,
                email,
                name,
                permissions: Vec::new(),
                groups: Vec::new(),
                org: None,
            },
            tokens: Some(tokens),
            claims: Value::Object(user),
        })
    }

    async fn api(&self, url: &Url, token: &str) -> Result<Value, UpstreamError> {
        get_json(&self.inner.http, url, Some(token), &API_HEADERS)
            .await
            .map_err(|e| match e {
                GetError::Status(401) => UpstreamError::Invalid("github refused the access token".into()),
                e => e.into_upstream("github api"),
            })
    }

    /// The verified primary address, if the token may read it.
    async fn primary_email(&self, token: &str) -> Option<String> {
        let list = match self.api(&self.inner.emails, token).await {
            Ok(Value::Array(list)) => list,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "github e-mail addresses unavailable");
                return None;
            }
        };
        list.iter()
            .find(|e| e.get("primary") == Some(&Value::Bool(true)) && e.get("verified") == Some(&Value::Bool(true)))
            .and_then(|e| e.get("email"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// GitHub Apps with expiring user tokens hand out refresh tokens; OAuth Apps do not
    /// (then the vault never calls this).
    pub async fn refresh(&self, refresh_token: &str) -> Result<UpstreamTokens, UpstreamError> {
        let body = oauth::refresh(
            &self.inner.token_http,
            &self.inner.creds,
            &self.token_endpoint(),
            refresh_token,
        )
        .await?;
        Ok(oauth::upstream_tokens(&body, Some(refresh_token)))
    }
}
