//! The browser side of the OAuth server over HTTP: /authorize refusals (shown or
//! redirected), the consent form's checks, the static-users login page and the
//! remembered approval cookie.

use serde_json::json;

use crate::oauth_kit::{ALICE, BOB, Browser, OAuthServer, Pkce, Resp, TestClient, bounded, hidden, set, unset};

const STATE: &str = "s-42";

/// GET /authorize for `client` with the normal parameters edited by `edit`.
async fn authorize(
    srv: &OAuthServer,
    browser: &mut Browser,
    client: &TestClient,
    edit: impl FnOnce(&mut Vec<(String, String)>),
) -> Resp {
    let mut params = srv.auth_params(client, &Pkce::new(), STATE);
    edit(&mut params);
    browser.get(&srv.authorize_url(&params)).await
}

// --- /authorize: errors shown, never redirected -------------------------------------

#[actix_web::test]
async fn authorize_unknown_client_is_shown_not_redirected() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let r = authorize(&srv, &mut b, &client, |p| {
            set(p, "client_id", "c_00000000000000000000000000000000")
        })
        .await;
        r.assert_shown(400);
        let r = authorize(&srv, &mut b, &client, |p| set(p, "client_id", "nobody")).await;
        r.assert_shown(400);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn authorize_unregistered_redirect_uri_is_shown_not_redirected() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        for evil in [
            "https://evil.example/callback",
            "http://127.0.0.1:33418/other",
            "http://127.0.0.1:33418/callback#x",
        ] {
            let r = authorize(&srv, &mut b, &client, |p| set(p, "redirect_uri", evil)).await;
            r.assert_shown(400);
            assert!(!r.body.contains("evil.example"), "{}", r.body);
        }
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn authorize_duplicate_parameter_is_shown_not_redirected() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let r = authorize(&srv, &mut b, &client, |p| p.push(("state".into(), "second".into()))).await;
        r.assert_shown(400);
        let r = authorize(&srv, &mut b, &client, |p| {
            p.push(("redirect_uri".into(), "https://evil.example/cb".into()))
        })
        .await;
        r.assert_shown(400);
        srv.stop().await;
    })
    .await;
}

// --- /authorize: loopback redirect URIs ----------------------------------------------

#[actix_web::test]
async fn authorize_loopback_redirect_with_another_port_is_accepted() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let pkce = Pkce::new();
        let other = "http://127.0.0.1:45555/callback";
        let mut params = srv.auth_params(&client, &pkce, STATE);
        set(&mut params, "redirect_uri", other);
        let page = b.get(&srv.authorize_url(&params)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("http://127.0.0.1:45555"), "{csp}");
        let to_login = srv.consent(&mut b, &page, "approve").await;
        let done = srv.login(&mut b, &to_login, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(
            done.location().unwrap().starts_with(&format!("{other}?")),
            "{:?}",
            done.location()
        );
        // The code is bound to the redirect URI actually used.
        let code = done.redirect_params()["code"].clone();
        let r = srv
            .client_post(
                "/token",
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("code_verifier", &pkce.verifier),
                    ("redirect_uri", other),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        srv.stop().await;
    })
    .await;
}

// --- /authorize: errors redirected to the client --------------------------------------

async fn redirected(edit: impl FnOnce(&mut Vec<(String, String)>), error: &str) {
    let srv = OAuthServer::start().await;
    let client = srv.register_public().await;
    let mut b = Browser::new();
    let r = authorize(&srv, &mut b, &client, edit).await;
    r.assert_redirect_error(&client.redirect_uri, error, STATE, &srv.issuer);
    srv.stop().await;
}

#[actix_web::test]
async fn authorize_without_code_challenge_redirects_invalid_request() {
    bounded(redirected(|p| unset(p, "code_challenge"), "invalid_request")).await;
}

#[actix_web::test]
async fn authorize_with_plain_pkce_redirects_invalid_request() {
    bounded(redirected(
        |p| set(p, "code_challenge_method", "plain"),
        "invalid_request",
    ))
    .await;
}

#[actix_web::test]
async fn authorize_with_another_resource_redirects_invalid_target() {
    bounded(redirected(
        |p| set(p, "resource", "http://localhost:8788/other"),
        "invalid_target",
    ))
    .await;
}

#[actix_web::test]
async fn authorize_with_unknown_scope_redirects_invalid_scope() {
    bounded(redirected(|p| set(p, "scope", "mcp admin"), "invalid_scope")).await;
}

#[actix_web::test]
async fn a_registered_client_may_authorize_again_for_a_supported_scope_it_did_not_register() {
    // The MCP step-up: the client registered "mcp", a tool's 403 names "mcp extra".
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.scopes = "mcp extra".into()).await;
        let client = srv
            .register_client(json!({
                "client_name": "IT step-up client",
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "scope": "mcp",
            }))
            .await;
        let mut b = Browser::new();
        let r = authorize(&srv, &mut b, &client, |p| set(p, "scope", "mcp extra")).await;
        assert!(r.location().is_none_or(|l| !l.contains("error=")), "{:?}", r.location());
        // A scope the server does not support is still refused.
        let mut b = Browser::new();
        let r = authorize(&srv, &mut b, &client, |p| set(p, "scope", "mcp admin")).await;
        r.assert_redirect_error(&client.redirect_uri, "invalid_scope", STATE, &srv.issuer);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn authorize_implicit_flow_redirects_unsupported_response_type() {
    bounded(redirected(
        |p| set(p, "response_type", "token"),
        "unsupported_response_type",
    ))
    .await;
}

// --- POST /consent --------------------------------------------------------------------

/// A browser sitting on the consent page, and that page's tx and csrf.
async fn at_consent(srv: &OAuthServer, client: &TestClient) -> (Browser, String, String) {
    let mut b = Browser::new();
    let page = authorize(srv, &mut b, client, |_| {}).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let tx = hidden(&page.body, "tx");
    let csrf = hidden(&page.body, "csrf");
    (b, tx, csrf)
}

#[actix_web::test]
async fn consent_without_csrf_is_forbidden() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, tx, _) = at_consent(&srv, &client).await;
        let r = b
            .post_form(&srv.url("/consent"), &[("tx", &tx), ("action", "approve")])
            .await;
        r.assert_shown(403);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn consent_with_wrong_csrf_is_forbidden() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, tx, csrf) = at_consent(&srv, &client).await;
        let wrong = "W".repeat(csrf.len());
        let r = b
            .post_form(
                &srv.url("/consent"),
                &[("tx", &tx), ("csrf", &wrong), ("action", "approve")],
            )
            .await;
        r.assert_shown(403);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn consent_from_another_browser_is_forbidden() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (_, tx, csrf) = at_consent(&srv, &client).await;
        let form = [("tx", tx.as_str()), ("csrf", csrf.as_str()), ("action", "approve")];
        // No cookie at all.
        let r = Browser::new().post_form(&srv.url("/consent"), &form).await;
        r.assert_shown(403);
        // A browser with its own (valid-looking) cookie from another authorization.
        let (mut other, _, _) = at_consent(&srv, &client).await;
        assert!(other.cookie("mcp_browser").is_some());
        let r = other.post_form(&srv.url("/consent"), &form).await;
        r.assert_shown(403);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn consent_for_an_unknown_login_is_a_bad_request() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, _, csrf) = at_consent(&srv, &client).await;
        let unknown = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let r = b
            .post_form(
                &srv.url("/consent"),
                &[("tx", unknown), ("csrf", &csrf), ("action", "approve")],
            )
            .await;
        r.assert_shown(400);
        let r = b
            .post_form(&srv.url("/consent"), &[("csrf", &csrf), ("action", "approve")])
            .await;
        r.assert_shown(400);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn consent_deny_redirects_access_denied() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, tx, csrf) = at_consent(&srv, &client).await;
        let r = b
            .post_form(
                &srv.url("/consent"),
                &[("tx", &tx), ("csrf", &csrf), ("action", "deny")],
            )
            .await;
        r.assert_redirect_error(&client.redirect_uri, "access_denied", STATE, &srv.issuer);
        // The login is over: approving it afterwards does not work.
        let r = b
            .post_form(
                &srv.url("/consent"),
                &[("tx", &tx), ("csrf", &csrf), ("action", "approve")],
            )
            .await;
        r.assert_shown(400);
        srv.stop().await;
    })
    .await;
}

// --- static-users login ---------------------------------------------------------------

/// A browser on the login page (consent approved).
async fn at_login(srv: &OAuthServer, client: &TestClient) -> (Browser, Resp) {
    let mut b = Browser::new();
    let page = authorize(srv, &mut b, client, |_| {}).await;
    let to_login = srv.consent(&mut b, &page, "approve").await;
    assert_eq!(to_login.status, 302, "{}", to_login.body);
    let login_page = b.get(to_login.location().unwrap()).await;
    assert_eq!(login_page.status, 200, "{}", login_page.body);
    assert!(login_page.body.contains("id=\"login\""));
    assert_eq!(login_page.header("x-frame-options"), Some("DENY"));
    (b, login_page)
}

#[actix_web::test]
async fn login_with_a_wrong_password_shows_the_form_again() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, page) = at_login(&srv, &client).await;
        let r = srv.submit_login(&mut b, &page, ("alice", "wrong")).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.location().is_none());
        assert!(r.body.contains("id=\"error\""), "{}", r.body);
        assert!(r.body.contains("id=\"login\""), "the form is shown again");
        assert!(!r.body.contains("code="), "{}", r.body);
        // Unknown users look the same.
        let r = srv.submit_login(&mut b, &r, ("mallory", "alice-dev-password")).await;
        assert_eq!(r.status, 401, "{}", r.body);
        // And the right password still works afterwards.
        let r = srv.submit_login(&mut b, &r, ALICE).await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert!(r.redirect_params().contains_key("code"));
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn login_is_abandoned_after_five_wrong_passwords() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (mut b, page) = at_login(&srv, &client).await;
        let mut last = page;
        for attempt in 1..=4 {
            let r = srv.submit_login(&mut b, &last, ("alice", "wrong")).await;
            assert_eq!(r.status, 401, "attempt {attempt}: {}", r.body);
            last = r;
        }
        let r = srv.submit_login(&mut b, &last, ("alice", "wrong")).await;
        r.assert_shown(403);
        // Even the right password no longer completes this login.
        let r = srv.submit_login(&mut b, &last, ALICE).await;
        assert_ne!(r.status, 302, "{}", r.body);
        r.assert_shown(400);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn concurrent_wrong_passwords_still_count_towards_the_limit() {
    // The failure counter must not be lost when attempts race (read-modify-write
    // without compare-and-swap would let an attacker try many passwords at once).
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let (b, page) = at_login(&srv, &client).await;
        let tx = hidden(&page.body, "tx");
        let csrf = hidden(&page.body, "csrf");
        let cookie = b.cookie("mcp_browser").unwrap().to_owned();
        let attempts = 10;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..attempts {
            let (url, tx, csrf, cookie) = (srv.url("/login"), tx.clone(), csrf.clone(), cookie.clone());
            set.spawn(async move {
                let mut b = Browser::new();
                b.set_cookie("mcp_browser", &cookie);
                let pw = format!("wrong-{i}");
                b.post_form(
                    &url,
                    &[("tx", &tx), ("csrf", &csrf), ("username", "alice"), ("password", &pw)],
                )
                .await
                .status
            });
        }
        let mut statuses = Vec::new();
        while let Some(s) = set.join_next().await {
            statuses.push(s.unwrap());
        }
        let accepted_tries = statuses.iter().filter(|s| **s == 401).count();
        assert!(
            accepted_tries < 5,
            "{accepted_tries} of {attempts} concurrent wrong passwords were checked and answered 401 \
             (at most 4 may be, then the login must be abandoned): {statuses:?}"
        );
        srv.stop().await;
    })
    .await;
}

// --- remembered approvals -------------------------------------------------------------

#[actix_web::test]
async fn an_approved_client_skips_the_consent_page() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let done = srv.browser_flow(&mut b, &client, &Pkce::new(), STATE, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(b.cookie("mcp_approved").is_some());

        let r = authorize(&srv, &mut b, &client, |_| {}).await;
        assert_eq!(r.status, 302, "consent is skipped: {}", r.body);
        assert!(
            r.location().unwrap().starts_with(&srv.url("/login?tx=")),
            "{:?}",
            r.location()
        );
        let done = srv.login(&mut b, &r, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(done.redirect_params().contains_key("code"));

        // Another client is not covered by the approval.
        let other = srv.register_public().await;
        let r = authorize(&srv, &mut b, &other, |_| {}).await;
        assert_eq!(r.status, 200, "consent asked for another client: {:?}", r.location());
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn an_approval_covers_only_the_scopes_approved_so_a_step_up_asks_again() {
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.scopes = "mcp extra".into()).await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let done = srv.browser_flow(&mut b, &client, &Pkce::new(), STATE, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);

        // More scopes than approved (a tool's step-up): the consent page again.
        let r = authorize(&srv, &mut b, &client, |p| set(p, "scope", "mcp extra")).await;
        assert_eq!(r.status, 200, "consent asked for the added scope: {:?}", r.location());
        assert!(r.body.contains("extra"), "the page names the scope: {}", r.body);
        // What was approved is still remembered.
        let r = authorize(&srv, &mut b, &client, |_| {}).await;
        assert_eq!(r.status, 302, "consent is skipped: {}", r.body);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn an_approval_remembered_for_another_user_asks_again_after_login() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut b = Browser::new();
        let done = srv.browser_flow(&mut b, &client, &Pkce::new(), STATE, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);

        // Alice's approval skips the consent page, but Bob signs in.
        let pkce = Pkce::new();
        let r = b.get(&srv.authorize_url(&srv.auth_params(&client, &pkce, STATE))).await;
        assert_eq!(r.status, 302, "{}", r.body);
        let page = srv.login(&mut b, &r, BOB).await;
        assert_eq!(page.status, 200, "Bob is asked himself: {:?}", page.location());
        assert!(page.body.contains("id=\"consent\""), "{}", page.body);
        assert!(
            page.body.contains("<strong id=\"user\">bob@example.com</strong>"),
            "{}",
            page.body
        );
        let done = srv.consent(&mut b, &page, "approve").await;
        assert_eq!(done.status, 302, "{}", done.body);
        let p = done.redirect_params();
        assert_eq!(p["state"], STATE);
        assert_eq!(p["iss"], srv.issuer);
        let r = srv
            .client_post(
                "/token",
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &p["code"]),
                    ("code_verifier", &pkce.verifier),
                ],
            )
            .await;
        let claims = crate::oauth_kit::Tokens::from_resp(&r).claims();
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["email"], "bob@example.com");
        assert!(claims.get("permissions").is_none(), "Bob has no permissions: {claims}");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn a_forged_approval_cookie_is_ignored() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let approved = srv.register_public().await;
        let target = srv.register_public().await;
        let mut b = Browser::new();
        let done = srv.browser_flow(&mut b, &approved, &Pkce::new(), STATE, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        let cookie = b.cookie("mcp_approved").unwrap().to_owned();
        let (body, sig) = cookie.rsplit_once('.').unwrap();

        // A payload naming another client, with the old signature.
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let mut payload: serde_json::Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        payload["clients"] = serde_json::json!([approved.client_id, target.client_id]);
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&payload).unwrap()));
        b.set_cookie("mcp_approved", &forged);
        let r = authorize(&srv, &mut b, &target, |_| {}).await;
        assert_eq!(
            r.status,
            200,
            "forged approval must not skip consent: {:?}",
            r.location()
        );
        assert!(r.body.contains("id=\"consent\""));

        // A flipped signature character on the real cookie.
        let mut chars: Vec<char> = cookie.chars().collect();
        let last = chars.len() - 2;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        b.set_cookie("mcp_approved", &chars.into_iter().collect::<String>());
        let r = authorize(&srv, &mut b, &approved, |_| {}).await;
        assert_eq!(
            r.status,
            200,
            "modified approval must not skip consent: {:?}",
            r.location()
        );
        srv.stop().await;
    })
    .await;
}
