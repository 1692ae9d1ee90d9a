//! Cookies under an https issuer (as behind a TLS ingress): `__Host-` names with
//! `Secure; Path=/`, no `Domain`, `HttpOnly`, `SameSite=Lax` — and the flow works with
//! them. (A plain-http issuer gets the same cookies without prefix and `Secure`: the
//! browser test and the e2e suite run that way.)

use crate::oauth_kit::{ALICE, Browser, OAuthServer, Pkce, bounded};

fn set_cookies(r: &crate::oauth_kit::Resp) -> Vec<String> {
    r.headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

fn assert_host_cookie(cookies: &[String], name: &str) {
    let c = cookies
        .iter()
        .find(|c| c.starts_with(&format!("__Host-{name}=")))
        .unwrap_or_else(|| panic!("no __Host-{name} cookie in {cookies:?}"));
    let lower = c.to_ascii_lowercase();
    for attr in ["secure", "httponly", "path=/", "samesite=lax"] {
        assert!(
            lower.split(';').any(|a| a.trim() == attr),
            "{name}: {attr} missing in {c}"
        );
    }
    assert!(
        !lower.contains("domain="),
        "{name}: a __Host- cookie has no Domain: {c}"
    );
}

#[actix_web::test]
async fn https_issuer_uses_host_prefixed_secure_cookies() {
    bounded(async {
        let srv = OAuthServer::start_https_issuer().await;
        assert!(srv.issuer.starts_with("https://"));
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let pkce = Pkce::new();
        let page = b.get(&srv.authorize_url(&srv.auth_params(&client, &pkce, "s"))).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_host_cookie(&set_cookies(&page), "mcp_browser");
        assert!(b.cookie("mcp_browser").is_none());

        // The browser sends the cookie back under its prefixed name: the login goes on
        // (the forms and redirects name the https issuer; requests go to the listener).
        let to_login = srv.consent(&mut b, &page, "approve").await;
        assert_eq!(to_login.status, 302, "{}", to_login.body);
        let loc = to_login.location().unwrap().to_owned();
        assert!(loc.starts_with(&format!("{}/login?tx=", srv.issuer)), "{loc}");
        let login_page = b.get(&loc.replacen(&srv.issuer, &srv.base, 1)).await;
        assert_eq!(login_page.status, 200, "{}", login_page.body);
        let done = srv.submit_login(&mut b, &login_page, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(
            done.location().unwrap().starts_with(&client.redirect_uri),
            "{:?}",
            done.location()
        );
        assert_host_cookie(&set_cookies(&done), "mcp_approved");

        // Without the prefixed cookie (say a plain-named one) the login is not this browser's.
        let mut other = Browser::new();
        let page = other
            .get(&srv.authorize_url(&srv.auth_params(&client, &Pkce::new(), "s")))
            .await;
        let value = other.cookie("__Host-mcp_browser").unwrap().to_owned();
        let mut plain = Browser::new();
        plain.set_cookie("mcp_browser", &value);
        let r = srv.consent(&mut plain, &page, "approve").await;
        r.assert_shown(403);
        srv.stop().await;
    })
    .await;
}
