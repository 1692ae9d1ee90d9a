//! Server-rendered HTML: the consent page, the static-users login page and the error
//! page. No scripts, no external resources; every value is HTML-escaped. The ids in
//! the markup are a contract with the browser tests (README.md, "Pages").
//!
//! Every page is sent with a CSP that forbids framing (`frame-ancestors 'none'`, plus
//! `X-Frame-Options: DENY` for old browsers), scripts and foreign resources, and whose
//! `form-action` allows only where the form's answer may redirect to: this server
//! and, for the consent page, the client's redirect URI and the identity provider.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;

/// Escape text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1d1d1f}\
h1{font-size:1.4rem}.card{border:1px solid #ddd;border-radius:.75rem;padding:1.25rem 1.5rem}\
button{font-size:1rem;padding:.55rem 1.2rem;border-radius:.5rem;border:1px solid #888;margin-right:.5rem;cursor:pointer}\
#approve,#sign-in{background:#1f6feb;color:#fff;border-color:#1f6feb}label{display:block;margin:.75rem 0 .25rem}\
input[type=text],input[type=password]{width:100%;padding:.45rem;font-size:1rem;box-sizing:border-box}\
.error{color:#b42318}.muted{color:#666;font-size:.9rem}code{background:#f4f4f4;padding:0 .25rem}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{}</title><style>{STYLE}</style></head>\
<body>{body}</body></html>",
        esc(title)
    )
}

/// The origin (`scheme://host[:port]`) of a URL for CSP `form-action`, or for a
/// private-use scheme, `scheme:`. `None` when it cannot be expressed safely.
pub fn csp_source(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let source = match u.scheme() {
        "http" | "https" => u.origin().ascii_serialization(),
        s => format!("{s}:"),
    };
    source
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\'' | b'"'))
        .then_some(source)
}

/// An HTML response with the security headers. `form_targets` are extra
/// `form-action` sources.
pub fn html(status: StatusCode, body: String, form_targets: &[String]) -> HttpResponse {
    let mut form_action = String::from("'self'");
    for t in form_targets {
        form_action.push(' ');
        form_action.push_str(t);
    }
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; \
                 form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
            ),
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// What the consent page shows.
pub struct Consent<'a> {
    pub issuer: &'a str,
    pub tx: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub client_id: &'a str,
    pub client_uri: Option<&'a str>,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub resource: &'a str,
    /// The signed-in user, when consent is asked after the login.
    pub user: Option<&'a str>,
    /// Whether the client's identity was verified (metadata document at an https
    /// URL) or only self-asserted (dynamic registration).
    pub verified_client: bool,
}

pub fn consent(c: &Consent<'_>) -> String {
    let host = url::Url::parse(c.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| c.redirect_uri.to_owned());
    let scopes: String = c
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", esc(s)))
        .collect();
    let user = c
        .user
        .map(|u| format!("<p>Signed in as <strong id=\"user\">{}</strong>.</p>", esc(u)))
        .unwrap_or_default();
    let provenance = if c.verified_client {
        format!("Its identity is the document at <code>{}</code>.", esc(c.client_id))
    } else {
        "This name was chosen by the application itself when it registered; make sure you started this sign-in."
            .to_owned()
    };
    let client_uri = c
        .client_uri
        .map(|u| format!(" (<span id=\"client-uri\">{}</span>)", esc(u)))
        .unwrap_or_default();
    let body = format!(
        "<div class=\"card\"><h1><span id=\"client-name\">{name}</span>{client_uri} wants to access your MCP server</h1>\
{user}<p>It asks for:</p><ul id=\"scopes\">{scopes}</ul>\
<p>on <code id=\"resource\">{resource}</code>.</p>\
<p>After you decide, you will be sent back to <code id=\"redirect-host\">{host}</code>.</p>\
<p class=\"muted\">{provenance}</p>\
<form id=\"consent\" method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"tx\" value=\"{tx}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button id=\"approve\" type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
<button id=\"deny\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form></div>",
        name = esc(c.client_name),
        resource = esc(c.resource),
        host = esc(&host),
        action = esc(&format!("{}/consent", c.issuer.trim_end_matches('/'))),
        tx = esc(c.tx),
        csrf = esc(c.csrf),
    );
    document(&format!("Authorize {}", c.client_name), &body)
}

/// The static-users provider's sign-in form.
pub fn login(issuer: &str, tx: &str, csrf: &str, client_name: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<div class=\"card\"><h1>Sign in</h1><p>to continue to <strong id=\"client-name\">{name}</strong></p>{error}\
<form id=\"login\" method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"tx\" value=\"{tx}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"username\">Username</label><input id=\"username\" type=\"text\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input id=\"password\" type=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<p><button id=\"sign-in\" type=\"submit\">Sign in</button></p></form></div>",
        name = esc(client_name),
        action = esc(&format!("{}/login", issuer.trim_end_matches('/'))),
        tx = esc(tx),
        csrf = esc(csrf),
    );
    document("Sign in", &body)
}

/// An error that must be shown, not redirected.
pub fn error(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<div class=\"card\"><h1>{}</h1><p class=\"error\" id=\"error\">{}</p>\
<p class=\"muted\">You can close this page and start the sign-in again from your application.</p></div>",
        esc(title),
        esc(message)
    );
    html(status, document(title, &body), &[])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let scopes = vec!["mcp".to_owned(), "<script>".to_owned()];
        let page = consent(&Consent {
            issuer: "http://localhost:8788",
            tx: "t\"x",
            csrf: "c",
            client_name: "<img src=x onerror=alert(1)>",
            client_id: "id",
            client_uri: Some("javascript:alert(1)\"><b>"),
            redirect_uri: "http://127.0.0.1:33418/callback",
            scopes: &scopes,
            resource: "http://localhost:8788/mcp",
            user: None,
            verified_client: false,
        });
        assert!(!page.contains("<img src=x"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("value=\"t&quot;x\""));
        assert!(!page.contains("\"><b>"));
        assert!(page.contains("<code id=\"redirect-host\">127.0.0.1</code>"));
        assert!(page.contains("action=\"http://localhost:8788/consent\""));
    }

    #[test]
    fn csp_sources() {
        assert_eq!(
            csp_source("http://127.0.0.1:5000/cb?x=1").as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(csp_source("https://a.example/cb").as_deref(), Some("https://a.example"));
        assert_eq!(csp_source("com.example.app:/cb").as_deref(), Some("com.example.app:"));
        assert_eq!(csp_source("not a url"), None);
        let r = error(StatusCode::BAD_REQUEST, "t", "m");
        let csp = r
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(r.headers().get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
    }
}
