//! The OAuth server end to end over HTTP: metadata, the browser flow from
//! registration to a verified access token, and remembered approvals.

use std::time::Duration;

use gateway::auth::{AuthConfig, Validator};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::oauth_kit::{ALICE, Browser, OAuthServer, Pkce, RESOURCE, Tokens, bounded};

#[actix_web::test]
async fn metadata_is_rfc8414_at_both_well_known_paths() {
    bounded(async {
        let srv = OAuthServer::start().await;
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let r = srv.get(path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            let m = r.json();
            assert_eq!(m["issuer"], srv.issuer.as_str(), "{path}: issuer is exact");
            assert_eq!(m["authorization_endpoint"], srv.url("/authorize"));
            assert_eq!(m["token_endpoint"], srv.url("/token"));
            assert_eq!(m["registration_endpoint"], srv.url("/register"));
            assert_eq!(m["revocation_endpoint"], srv.url("/revoke"));
            assert_eq!(m["introspection_endpoint"], srv.url("/introspect"));
            assert_eq!(m["jwks_uri"], srv.url("/jwks.json"));
            assert_eq!(m["code_challenge_methods_supported"], serde_json::json!(["S256"]));
            assert_eq!(m["response_types_supported"], serde_json::json!(["code"]));
            assert_eq!(m["client_id_metadata_document_supported"], true);
            assert_eq!(m["authorization_response_iss_parameter_supported"], true);
            assert_eq!(m["scopes_supported"], serde_json::json!(["mcp"]));
            let grants = m["grant_types_supported"].as_array().unwrap();
            for g in ["authorization_code", "refresh_token", "client_credentials"] {
                assert!(grants.iter().any(|x| x == g), "{g}");
            }
        }
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn happy_path_public_client_gets_a_verifiable_access_token() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        assert_eq!(client.method, "none");
        assert!(client.secret.is_none(), "a public client gets no secret");
        assert!(client.client_id.starts_with("c_"));

        let mut browser = Browser::new();
        let pkce = Pkce::new();
        let state = "st-123";

        // /authorize → consent page.
        let page = browser
            .get(&srv.authorize_url(&srv.auth_params(&client, &pkce, state)))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let form_action = csp
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("form-action"))
            .unwrap();
        assert!(form_action.contains("'self'"), "{form_action}");
        assert!(
            form_action.contains("http://127.0.0.1:33418"),
            "redirect origin allowed: {form_action}"
        );
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert!(page.body.contains("id=\"consent\""));
        assert!(page.body.contains("<span id=\"client-name\">IT public client</span>"));
        assert!(page.body.contains("<li><code>mcp</code></li>"));
        assert!(page.body.contains("<code id=\"redirect-host\">127.0.0.1</code>"));
        assert!(
            browser.cookie("mcp_browser").is_some(),
            "the pending login is bound to this browser"
        );

        // Approve → our login page.
        let to_login = srv.consent(&mut browser, &page, "approve").await;
        assert_eq!(to_login.status, 302, "{}", to_login.body);
        assert!(to_login.location().unwrap().starts_with(&srv.url("/login?tx=")));

        // Sign in → back to the client with code, state and iss.
        let done = srv.login(&mut browser, &to_login, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(done.location().unwrap().starts_with("http://127.0.0.1:33418/callback?"));
        let p = done.redirect_params();
        assert_eq!(p["state"], state);
        assert_eq!(p["iss"], srv.issuer);
        let code = p["code"].clone();
        assert!(browser.cookie("mcp_approved").is_some(), "approval remembered");

        // Code → tokens.
        let r = srv
            .client_post(
                "/token",
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("code_verifier", &pkce.verifier),
                    ("redirect_uri", &client.redirect_uri),
                    ("resource", RESOURCE),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let tokens = Tokens::from_resp(&r);
        assert_eq!(tokens.body["token_type"], "Bearer");
        assert_eq!(tokens.body["scope"], "mcp");
        assert!(tokens.body["expires_in"].as_u64().unwrap() > 0);
        assert!(tokens.refresh.is_some());

        // The access token: EdDSA, at+jwt, a kid the JWKS serves.
        let header = jsonwebtoken::decode_header(&tokens.access).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let kid = header.kid.clone().unwrap();
        let jwks: JwkSet = serde_json::from_value(srv.jwks().await).unwrap();
        let jwk = jwks.find(&kid).expect("kid is published");
        for k in &jwks.keys {
            let v = serde_json::to_value(k).unwrap();
            assert!(v.get("d").is_none(), "no private key material in the JWKS");
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[RESOURCE]);
        v.set_issuer(&[&srv.issuer]);
        let claims =
            jsonwebtoken::decode::<serde_json::Value>(&tokens.access, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .unwrap()
                .claims;
        assert_eq!(claims["iss"], srv.issuer);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], RESOURCE);
        assert_eq!(claims["client_id"], client.client_id);
        assert_eq!(claims["scope"], "mcp");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["permissions"], serde_json::json!(["image_generation"]));
        assert!(claims["gid"].as_str().is_some_and(|g| !g.is_empty()));
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

        // The gateway's validator accepts it, by discovery and JWKS over HTTP.
        let validator = Validator::new(
            AuthConfig {
                allowed_issuers: vec![srv.issuer.clone()],
                resource: RESOURCE.into(),
                resource_metadata_url: "http://localhost:8788/.well-known/oauth-protected-resource/mcp".into(),
                jwks_cache_ttl: Duration::from_secs(60),
                required_scopes: vec!["mcp".into()],
                authorization_servers: vec![],
                issuers_without_typ: vec![],
            },
            reqwest::Client::new(),
        );
        let principal = validator
            .validate(Some(&format!("Bearer {}", tokens.access)))
            .await
            .unwrap();
        assert_eq!(principal.iss, srv.issuer);
        assert_eq!(principal.sub, "alice");
        assert_eq!(principal.email.as_deref(), Some("alice@example.com"));
        assert_eq!(principal.scopes, vec!["mcp"]);
        assert_eq!(principal.permissions, vec!["image_generation"]);
        assert_eq!(principal.client_id.as_deref(), Some(client.client_id.as_str()));
        assert_eq!(principal.grant_id.as_deref(), claims["gid"].as_str());

        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn password_checks_over_the_cap_are_refused_at_once_and_not_counted() {
    // Issue 8, defect 7: argon2 work in flight is capped (AUTH_MAX_PASSWORD_CHECKS).
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.max_password_checks = 1).await;
        let client = srv.register_public().await;
        let pkce = Pkce::new();
        // Ten browsers at the login page.
        let mut sessions = Vec::new();
        for i in 0..10 {
            let mut browser = Browser::new();
            let page = browser
                .get(&srv.authorize_url(&srv.auth_params(&client, &pkce, &format!("s{i}"))))
                .await;
            let to_login = srv.consent(&mut browser, &page, "approve").await;
            let loc = to_login.location().unwrap().to_owned();
            let login_page = browser.get(&loc).await;
            assert_eq!(login_page.status, 200, "{}", login_page.body);
            sessions.push((browser, login_page));
        }
        // All submit a wrong password at once: one check runs, the others are refused.
        let answers = futures::future::join_all(
            sessions
                .iter_mut()
                .map(|(browser, page)| srv.submit_login(browser, page, ("alice", "wrong"))),
        )
        .await;
        let busy: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == 503)
            .map(|(i, _)| i)
            .collect();
        for r in &answers {
            assert!(r.status == 401 || r.status == 503, "{} {}", r.status, r.body);
            if r.status == 503 {
                assert_eq!(r.header("retry-after"), Some("1"));
            }
        }
        assert!(
            !busy.is_empty(),
            "ten parallel argon2 checks with a cap of one: none refused"
        );
        // A refused attempt was not counted: that browser can still sign in (up to
        // MAX_LOGIN_FAILURES wrong passwords are allowed, so count none of them here).
        let (browser, page) = &mut sessions[busy[0]];
        let done = srv.submit_login(browser, page, ALICE).await;
        assert_eq!(done.status, 302, "{}", done.body);
        srv.stop().await;
    })
    .await;
}
