//! Client metadata (RFC 7591 §2) checks, shared by dynamic registration and Client ID
//! Metadata Documents. Unknown fields are ignored; known ones of the wrong type are
//! refused rather than dropped, so a client learns what we did not accept.

use reqwest::Url;
use serde_json::Value;

use super::{AuthMethod, ClientError};

/// Most redirect URIs one client may register.
pub const MAX_REDIRECT_URIS: usize = 16;
/// Longest URI accepted in metadata (redirect, client and logo URIs).
pub const MAX_URI_LEN: usize = 2000;
/// Longest `client_name`, `software_id`, `software_version` (characters).
pub const MAX_NAME_LEN: usize = 200;
/// Longest `scope` value.
pub const MAX_SCOPE_LEN: usize = 1000;

pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// Grant types a client may register or name in its metadata document. Not
/// `client_credentials`: a client that acts for itself is a machine client, which
/// only the operator creates ([`super::machine`]).
pub const SUPPORTED_GRANT_TYPES: [&str; 2] = [GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN];
/// Response types a client may register.
pub const SUPPORTED_RESPONSE_TYPES: [&str; 1] = ["code"];

/// Where the metadata came from: the defaults and rules differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// RFC 7591 registration: `token_endpoint_auth_method` defaults to
    /// `client_secret_basic`.
    Registration,
    /// A Client ID Metadata Document: no shared secret can exist, so only `none`
    /// (also the default).
    MetadataDocument,
}

/// Metadata that passed every check, normalised (duplicates removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validated {
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub auth_method: AuthMethod,
    pub scope: Option<String>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub software_id: Option<String>,
    pub software_version: Option<String>,
}

fn bad(msg: impl Into<String>) -> ClientError {
    ClientError::InvalidClientMetadata(msg.into())
}

fn bad_redirect(msg: impl Into<String>) -> ClientError {
    ClientError::InvalidRedirectUri(msg.into())
}

pub(crate) fn validate(meta: &Value, origin: Origin, supported_scopes: &[String]) -> Result<Validated, ClientError> {
    let obj = meta
        .as_object()
        .ok_or_else(|| bad("client metadata must be a JSON object"))?;
    let field = |key: &str| obj.get(key).filter(|v| !v.is_null());

    let auth_method = match field("token_endpoint_auth_method") {
        None => match origin {
            Origin::Registration => AuthMethod::ClientSecretBasic,
            Origin::MetadataDocument => AuthMethod::None,
        },
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| bad("token_endpoint_auth_method must be a string"))?;
            AuthMethod::parse(s).ok_or_else(|| {
                bad(format!(
                    "token_endpoint_auth_method '{}' is not supported (none, client_secret_basic, client_secret_post)",
                    clip(s)
                ))
            })?
        }
    };
    if origin == Origin::MetadataDocument && auth_method != AuthMethod::None {
        return Err(bad(
            "a client metadata document cannot use a client secret: token_endpoint_auth_method must be none",
        ));
    }

    let grant_types = match string_list(field("grant_types"), "grant_types")? {
        None => vec![GRANT_AUTHORIZATION_CODE.to_owned()],
        Some(list) if list.is_empty() => return Err(bad("grant_types must not be empty")),
        Some(list) => list,
    };
    if grant_types.iter().any(|g| g == GRANT_CLIENT_CREDENTIALS) {
        return Err(bad(
            "grant type 'client_credentials' cannot be registered: machine clients are created by the operator",
        ));
    }
    if let Some(g) = grant_types
        .iter()
        .find(|g| !SUPPORTED_GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(bad(format!(
            "grant type '{}' is not supported (authorization_code, refresh_token)",
            clip(g)
        )));
    }
    let has_code_grant = grant_types.iter().any(|g| g == GRANT_AUTHORIZATION_CODE);

    let response_types = match string_list(field("response_types"), "response_types")? {
        None if has_code_grant => vec!["code".to_owned()],
        None => Vec::new(),
        Some(list) => list,
    };
    if let Some(r) = response_types
        .iter()
        .find(|r| !SUPPORTED_RESPONSE_TYPES.contains(&r.as_str()))
    {
        return Err(bad(format!("response type '{}' is not supported (code)", clip(r))));
    }
    let has_code_response = response_types.iter().any(|r| r == "code");
    if has_code_grant != has_code_response {
        return Err(bad("grant type authorization_code and response type code go together"));
    }

    let redirect_uris = match field("redirect_uris") {
        None if has_code_grant => return Err(bad_redirect("redirect_uris is required")),
        None => Vec::new(),
        Some(v) => {
            let list = string_list(Some(v), "redirect_uris")
                .map_err(|_| bad_redirect("redirect_uris must be an array of strings"))?
                .unwrap_or_default();
            if list.is_empty() && has_code_grant {
                return Err(bad_redirect("redirect_uris must not be empty"));
            }
            if list.len() > MAX_REDIRECT_URIS {
                return Err(bad_redirect(format!("at most {MAX_REDIRECT_URIS} redirect_uris")));
            }
            for uri in &list {
                check_redirect_uri(uri).map_err(bad_redirect)?;
            }
            list
        }
    };

    let scope = match field("scope") {
        None => None,
        Some(v) => {
            let s = v.as_str().ok_or_else(|| bad("scope must be a string"))?;
            if s.len() > MAX_SCOPE_LEN {
                return Err(bad(format!("scope is longer than {MAX_SCOPE_LEN} characters")));
            }
            let mut scopes: Vec<&str> = Vec::new();
            for sc in s.split_whitespace() {
                if !supported_scopes.iter().any(|x| x == sc) {
                    return Err(bad(format!(
                        "scope '{}' is not supported (supported: {})",
                        clip(sc),
                        supported_scopes.join(" ")
                    )));
                }
                if !scopes.contains(&sc) {
                    scopes.push(sc);
                }
            }
            (!scopes.is_empty()).then(|| scopes.join(" "))
        }
    };

    Ok(Validated {
        redirect_uris,
        grant_types,
        response_types,
        auth_method,
        scope,
        client_name: short_text(field("client_name"), "client_name")?,
        client_uri: web_uri(field("client_uri"), "client_uri")?,
        logo_uri: web_uri(field("logo_uri"), "logo_uri")?,
        software_id: short_text(field("software_id"), "software_id")?,
        software_version: short_text(field("software_version"), "software_version")?,
    })
}

/// A JSON array of strings, duplicates removed (order kept); `None` when absent.
fn string_list(v: Option<&Value>, name: &str) -> Result<Option<Vec<String>>, ClientError> {
    let Some(v) = v else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| bad(format!("{name} must be an array of strings")))?;
    let mut out: Vec<String> = Vec::with_capacity(arr.len());
    for item in arr {
        let s = item
            .as_str()
            .ok_or_else(|| bad(format!("{name} must be an array of strings")))?;
        if !out.iter().any(|x| x == s) {
            out.push(s.to_owned());
        }
    }
    Ok(Some(out))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A short human-readable string (names, software ids).
fn short_text(v: Option<&Value>, name: &str) -> Result<Option<String>, ClientError> {
    let Some(v) = v else { return Ok(None) };
    let s = v.as_str().ok_or_else(|| bad(format!("{name} must be a string")))?;
    if s.chars().count() > MAX_NAME_LEN {
        return Err(bad(format!("{name} is longer than {MAX_NAME_LEN} characters")));
    }
    if has_control(s) {
        return Err(bad(format!("{name} must not contain control characters")));
    }
    let s = s.trim();
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// A URI shown on the consent page: absolute http(s), nothing a browser would run.
fn web_uri(v: Option<&Value>, name: &str) -> Result<Option<String>, ClientError> {
    let Some(v) = v else { return Ok(None) };
    let s = v.as_str().ok_or_else(|| bad(format!("{name} must be a string")))?;
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_URI_LEN || has_control(s) || s.contains(char::is_whitespace) {
        return Err(bad(format!("{name} is not a valid URI")));
    }
    match Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => Ok(Some(s.to_owned())),
        _ => Err(bad(format!("{name} must be an absolute http or https URI"))),
    }
}

/// Whether `url` is http(s) on 127.0.0.1, [::1] or localhost (RFC 8252 §7.3).
pub(crate) fn is_loopback_url(url: &Url) -> bool {
    use std::net::{Ipv4Addr, Ipv6Addr};
    matches!(url.scheme(), "http")
        && match url.host() {
            Some(url::Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
            Some(url::Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        }
}

/// Schemes a browser would run, read locally or hand to another protocol: never a
/// redirect target.
const FORBIDDEN_SCHEMES: [&str; 16] = [
    "javascript",
    "data",
    "vbscript",
    "file",
    "blob",
    "about",
    "filesystem",
    "view-source",
    "chrome",
    "chrome-extension",
    "ftp",
    "ws",
    "wss",
    "mailto",
    "tel",
    "sms",
];

/// A redirect URI a client may register: absolute, no fragment, no credentials, no
/// whitespace or control characters; `https`, `http` on a loopback host (native apps,
/// RFC 8252 §7.3), or a private-use scheme (RFC 8252 §7.1) such as
/// `com.example.app:/cb` — or `cursor://…`: the reverse-domain form is only a SHOULD
/// and real MCP clients use plain app names — but never one of [`FORBIDDEN_SCHEMES`]
/// (`javascript:`, `data:`, `file:` …).
pub(crate) fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("redirect uri is longer than {MAX_URI_LEN} characters"));
    }
    if has_control(uri) || uri.contains(char::is_whitespace) {
        return Err("redirect uri must not contain whitespace or control characters".into());
    }
    if uri.contains('#') {
        return Err(format!("redirect uri '{}' must not contain a fragment", clip(uri)));
    }
    let url = Url::parse(uri).map_err(|_| format!("redirect uri '{}' is not an absolute uri", clip(uri)))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("redirect uri must not contain credentials".into());
    }
    match url.scheme() {
        "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("redirect uri '{}' has no host", clip(uri)));
            }
        }
        "http" => {
            if !is_loopback_url(&url) {
                return Err(format!(
                    "redirect uri '{}': http is only allowed on 127.0.0.1, [::1] or localhost; use https",
                    clip(uri)
                ));
            }
        }
        scheme => {
            if FORBIDDEN_SCHEMES.contains(&scheme) {
                return Err(format!(
                    "redirect uri scheme '{}' is not allowed: use https, http on loopback, or a private-use scheme (com.example.app:/cb)",
                    clip(scheme)
                ));
            }
        }
    }
    Ok(())
}

/// At most 100 characters of a client-supplied value in an error message.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes() -> Vec<String> {
        vec!["mcp".into(), "checklist.read".into()]
    }

    fn ok(meta: Value) -> Validated {
        validate(&meta, Origin::Registration, &scopes()).unwrap()
    }

    fn err(meta: Value) -> ClientError {
        validate(&meta, Origin::Registration, &scopes()).unwrap_err()
    }

    #[test]
    fn defaults_and_normalisation() {
        let v = ok(json!({"redirect_uris": ["https://app.example/cb", "https://app.example/cb"]}));
        assert_eq!(v.redirect_uris, vec!["https://app.example/cb"]);
        assert_eq!(v.grant_types, vec!["authorization_code"]);
        assert_eq!(v.response_types, vec!["code"]);
        assert_eq!(v.auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(v.scope, None);
        let v = ok(json!({
            "redirect_uris": ["http://127.0.0.1:3000/cb"],
            "scope": "mcp  mcp checklist.read",
            "client_name": "  Inspector ",
            "unknown_field": {"ignored": true},
            "client_id": "chosen-by-client-ignored",
            "tos_uri": 12,
        }));
        assert_eq!(v.scope.as_deref(), Some("mcp checklist.read"));
        assert_eq!(v.client_name.as_deref(), Some("Inspector"));
    }

    #[test]
    fn client_credentials_is_never_registered() {
        // Issue 8, defect 1: an anonymous registration must not yield a client that
        // gets tokens without anyone logging in.
        for origin in [Origin::Registration, Origin::MetadataDocument] {
            for meta in [
                json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"}),
                json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic"}),
                json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"}),
                json!({"redirect_uris": ["https://app.example/cb"], "grant_types": ["authorization_code", "client_credentials"]}),
            ] {
                let e = validate(&meta, origin, &scopes()).unwrap_err();
                assert_eq!(e.oauth_code(), "invalid_client_metadata", "{meta}");
            }
        }
    }

    #[test]
    fn redirect_uri_rules() {
        for good in [
            "https://app.example/cb",
            "https://app.example:8443/cb?x=1",
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53682/cb",
            "http://[::1]:8080/cb",
            "http://localhost:6274/oauth/callback",
            "com.example.app:/oauth2redirect",
            "cursor.app://callback",
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "myapp://cb",
        ] {
            assert_eq!(check_redirect_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "http://app.example/cb",
            "http://192.168.1.2/cb",
            "http://127.0.0.2/cb",
            "https://app.example/cb#frag",
            "https://app.example/cb#",
            "/relative/cb",
            "cb",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "vbscript:msgbox",
            "blob:https://a.example/uuid",
            "about:blank",
            "https://user:pw@app.example/cb",
            "https://app.example/c b",
            "https://app.example/cb\n",
            "https://",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        assert!(check_redirect_uri(&format!("https://app.example/{}", "a".repeat(MAX_URI_LEN))).is_err());
    }

    #[test]
    fn rejections_have_rfc7591_codes() {
        let code = |meta: Value| err(meta).oauth_code();
        assert_eq!(code(json!({})), "invalid_redirect_uri");
        assert_eq!(code(json!({"redirect_uris": []})), "invalid_redirect_uri");
        assert_eq!(
            code(json!({"redirect_uris": "https://a.example/cb"})),
            "invalid_redirect_uri"
        );
        assert_eq!(
            code(json!({"redirect_uris": ["http://a.example/cb"]})),
            "invalid_redirect_uri"
        );
        let uris: Vec<String> = (0..=MAX_REDIRECT_URIS)
            .map(|i| format!("https://a.example/{i}"))
            .collect();
        assert_eq!(code(json!({"redirect_uris": uris})), "invalid_redirect_uri");
        let r = json!(["https://a.example/cb"]);
        for meta in [
            json!([]),
            json!("x"),
            json!({"redirect_uris": r, "grant_types": ["implicit"]}),
            json!({"redirect_uris": r, "grant_types": ["password"]}),
            json!({"redirect_uris": r, "grant_types": []}),
            json!({"redirect_uris": r, "grant_types": "authorization_code"}),
            json!({"redirect_uris": r, "response_types": ["token"]}),
            json!({"redirect_uris": r, "response_types": []}),
            json!({"redirect_uris": r, "grant_types": ["refresh_token"], "response_types": ["code"]}),
            json!({"redirect_uris": r, "token_endpoint_auth_method": "private_key_jwt"}),
            json!({"redirect_uris": r, "token_endpoint_auth_method": 1}),
            json!({"redirect_uris": r, "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "client_credentials"]}),
            json!({"redirect_uris": r, "scope": "admin"}),
            json!({"redirect_uris": r, "scope": "mcp admin"}),
            json!({"redirect_uris": r, "scope": ["mcp"]}),
            json!({"redirect_uris": r, "client_name": "x".repeat(MAX_NAME_LEN + 1)}),
            json!({"redirect_uris": r, "client_name": "bad\u{0007}name"}),
            json!({"redirect_uris": r, "client_name": 5}),
            json!({"redirect_uris": r, "client_uri": "javascript:alert(1)"}),
            json!({"redirect_uris": r, "logo_uri": "data:image/png;base64,AAAA"}),
            json!({"redirect_uris": r, "logo_uri": "/logo.png"}),
            json!({"redirect_uris": r, "software_id": "s".repeat(MAX_NAME_LEN + 1)}),
        ] {
            assert_eq!(code(meta.clone()), "invalid_client_metadata", "{meta}");
        }
    }

    #[test]
    fn metadata_documents_are_public_clients() {
        let r = json!(["https://a.example/cb"]);
        let v = validate(&json!({"redirect_uris": r}), Origin::MetadataDocument, &scopes()).unwrap();
        assert_eq!(v.auth_method, AuthMethod::None);
        for method in ["client_secret_basic", "client_secret_post"] {
            let e = validate(
                &json!({"redirect_uris": r, "token_endpoint_auth_method": method}),
                Origin::MetadataDocument,
                &scopes(),
            )
            .unwrap_err();
            assert_eq!(e.oauth_code(), "invalid_client_metadata");
        }
    }

    #[test]
    fn errors_clip_client_values() {
        let long = format!("https://a.example/{}#f", "x".repeat(5000));
        let e = check_redirect_uri(&long).unwrap_err();
        assert!(e.len() < 300, "{}", e.len());
    }
}
