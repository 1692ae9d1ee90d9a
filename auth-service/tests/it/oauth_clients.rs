//! Confidential clients (secrets, `client_credentials`), `POST /introspect` and
//! `POST /revoke` over HTTP.

use crate::oauth_kit::{ALICE, OAuthServer, RESOURCE, Resp, Tokens, bounded, jwt_claims, machine_clients};

fn assert_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.error(), error, "{}", r.body);
}

#[actix_web::test]
async fn confidential_client_gets_a_secret_and_a_wrong_one_is_refused() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let r = srv
            .register(&serde_json::json!({
                "client_name": "secretive",
                "redirect_uris": ["https://app.example.com/cb"],
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let body = r.json();
        assert!(body["client_secret"].as_str().is_some_and(|s| s.len() >= 32), "{body}");
        assert_eq!(body["client_secret_expires_at"], 0);
        assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");

        let client = srv.register_confidential().await;
        let wrong = client.with_secret("not-the-secret");
        let r = srv
            .client_post("/token", &wrong, &[("grant_type", "client_credentials")])
            .await;
        assert_error(&r, 401, "invalid_client");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic"), "{challenge:?}");
        // No secret at all is refused the same way.
        let mut none = client.clone();
        none.method = "none".into();
        let r = srv
            .client_post("/token", &none, &[("grant_type", "client_credentials")])
            .await;
        assert_error(&r, 401, "invalid_client");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn registered_clients_never_get_client_credentials_tokens() {
    // Issue 8, defect 1: anonymous registration must not lead to a token that nobody
    // logged in for.
    bounded(async {
        let srv = OAuthServer::start().await;
        for method in ["client_secret_basic", "client_secret_post", "none"] {
            let r = srv
                .register(&serde_json::json!({
                    "client_name": "anonymous machine",
                    "grant_types": ["client_credentials"],
                    "token_endpoint_auth_method": method,
                }))
                .await;
            assert_error(&r, 400, "invalid_client_metadata");
        }
        // A registered confidential client asking for the grant anyway.
        let client = srv.register_confidential().await;
        let r = srv
            .client_post(
                "/token",
                &client,
                &[("grant_type", "client_credentials"), ("scope", "mcp")],
            )
            .await;
        assert_error(&r, 400, "unauthorized_client");
        assert!(!r.body.contains("access_token"), "{}", r.body);
        let public = srv.register_public().await;
        let r = srv
            .client_post("/token", &public, &[("grant_type", "client_credentials")])
            .await;
        assert_error(&r, 400, "unauthorized_client");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn operator_machine_clients_get_machine_tokens() {
    bounded(async {
        let (file, machines) = machine_clients(&[("m_nightly", false)]);
        let srv = OAuthServer::start_with(|a| a.machine_clients_file = Some(file)).await;
        let client = &machines[0];
        let r = srv
            .client_post(
                "/token",
                client,
                &[("grant_type", "client_credentials"), ("scope", "mcp")],
            )
            .await;
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let t = Tokens::from_resp(&r);
        assert!(t.refresh.is_none(), "no refresh token for client_credentials");
        let claims = t.claims();
        assert_eq!(claims["sub"], client.client_id);
        assert_eq!(claims["client_id"], client.client_id);
        assert_eq!(claims["aud"], RESOURCE);
        assert_eq!(claims["iss"], srv.issuer);
        assert_eq!(
            claims[proto::auth::SUBJECT_KIND_CLAIM],
            proto::auth::SUBJECT_KIND_MACHINE
        );
        assert!(claims.get("gid").is_none(), "{claims}");
        // A wrong secret is invalid_client.
        let r = srv
            .client_post(
                "/token",
                &client.with_secret("nope"),
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_error(&r, 401, "invalid_client");
        // Users' tokens say they are users'.
        let user = srv.register_public().await;
        let t = srv.tokens(&user, ALICE).await;
        assert_eq!(
            t.claims()[proto::auth::SUBJECT_KIND_CLAIM],
            proto::auth::SUBJECT_KIND_USER
        );
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn introspection_is_only_for_configured_resource_servers() {
    // Issue 8, defect 9: a self-registered confidential client must not learn whose a
    // token is; neither may a machine client the operator did not mark `introspect`.
    bounded(async {
        let (file, machines) = machine_clients(&[("m_rs", true), ("m_plain", false)]);
        let srv = OAuthServer::start_with(|a| a.machine_clients_file = Some(file)).await;
        let user = srv.register_public().await;
        let t = srv.tokens(&user, ALICE).await;
        let registered = srv.register_confidential().await;
        for refused in [&registered, &machines[1]] {
            let r = srv.client_post("/introspect", refused, &[("token", &t.access)]).await;
            assert_error(&r, 401, "invalid_client");
            assert!(
                !r.body.contains("alice") && !r.body.contains("\"active\""),
                "{}",
                r.body
            );
        }
        let r = srv
            .client_post("/introspect", &machines[0], &[("token", &t.access)])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["active"], true);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn introspection_reports_live_tokens_and_not_revoked_ones() {
    bounded(async {
        let (file, machines) = machine_clients(&[("m_rs", true)]);
        let srv = OAuthServer::start_with(|a| a.machine_clients_file = Some(file)).await;
        let rs = &machines[0];
        let client = srv.register_confidential().await;
        let t = srv.tokens(&client, ALICE).await;
        let refresh = t.refresh.clone().unwrap();

        let r = srv.client_post("/introspect", rs, &[("token", &t.access)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let a = r.json();
        assert_eq!(a["active"], true, "{a}");
        assert_eq!(a["sub"], "alice");
        assert_eq!(a["client_id"], client.client_id);
        assert_eq!(a["aud"], RESOURCE);
        assert_eq!(a["iss"], srv.issuer);
        assert_eq!(a["scope"], "mcp");
        assert_eq!(a["jti"], t.claims()["jti"]);

        let r = srv.client_post("/introspect", rs, &[("token", &refresh)]).await;
        let a = r.json();
        assert_eq!(a["active"], true, "{a}");
        assert_eq!(a["token_type"], "refresh_token");
        assert_eq!(a["sub"], "alice");

        let r = srv.client_post("/introspect", rs, &[("token", "no-such-token")]).await;
        assert_eq!(r.json(), serde_json::json!({ "active": false }));

        // Revoke (the refresh token revokes the grant): both become inactive.
        let r = srv.client_post("/revoke", &client, &[("token", &refresh)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        for token in [&t.access, &refresh] {
            let r = srv.client_post("/introspect", rs, &[("token", token)]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json(), serde_json::json!({ "active": false }));
        }
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn introspection_refuses_public_clients() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t = srv.tokens(&client, ALICE).await;
        let r = srv.client_post("/introspect", &client, &[("token", &t.access)]).await;
        assert_error(&r, 401, "invalid_client");
        assert!(!r.body.contains("\"active\""), "{}", r.body);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn revoking_the_refresh_token_revokes_the_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t = srv.tokens(&client, ALICE).await;
        let refresh = t.refresh.clone().unwrap();
        let r = srv
            .client_post(
                "/revoke",
                &client,
                &[("token", &refresh), ("token_type_hint", "refresh_token")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));

        let r = srv.refresh(&client, &refresh).await;
        assert_error(&r, 400, "invalid_grant");
        let rev = srv
            .revocation(&proto::auth::revoked_grant_key(&t.gid()))
            .await
            .expect("grant.<gid> revocation written");
        assert_eq!(rev.reason, "revoked");
        // Revoking again is still fine.
        let r = srv.client_post("/revoke", &client, &[("token", &refresh)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn revoking_an_access_token_writes_its_jti() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t = srv.tokens(&client, ALICE).await;
        let jti = jwt_claims(&t.access)["jti"].as_str().unwrap().to_owned();
        let key = proto::auth::revoked_token_key(&jti);
        assert!(srv.revocation(&key).await.is_none());

        let r = srv
            .client_post(
                "/revoke",
                &client,
                &[("token", &t.access), ("token_type_hint", "access_token")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rev = srv.revocation(&key).await.expect("token.<jti> revocation written");
        let exp = t.claims()["exp"].as_u64().unwrap();
        assert!(rev.until >= exp, "{rev:?}");
        // Only that token: the grant itself lives on.
        assert!(
            srv.revocation(&proto::auth::revoked_grant_key(&t.gid()))
                .await
                .is_none()
        );
        Tokens::from_resp(&srv.refresh(&client, t.refresh.as_deref().unwrap()).await);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn revoking_an_unknown_token_is_ok() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        for token in ["unknown", "nogrant.nosecret", "a.b.c"] {
            let r = srv.client_post("/revoke", &client, &[("token", token)]).await;
            assert_eq!(r.status, 200, "{token}: {}", r.body);
        }
        // Another client's token is not revoked (and the answer does not say so).
        let other = srv.register_public().await;
        let t = srv.tokens(&other, ALICE).await;
        let r = srv
            .client_post("/revoke", &client, &[("token", t.refresh.as_deref().unwrap())])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        Tokens::from_resp(&srv.refresh(&other, t.refresh.as_deref().unwrap()).await);
        srv.stop().await;
    })
    .await;
}
