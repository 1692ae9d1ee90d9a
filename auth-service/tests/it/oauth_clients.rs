//! Confidential clients (secrets, `client_credentials`), `POST /introspect` and
//! `POST /revoke` over HTTP.

use crate::oauth_kit::{ALICE, OAuthServer, RESOURCE, Resp, Tokens, bounded, jwt_claims};

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
        let r = srv.client_post("/token", &wrong, &[("grant_type", "client_credentials")]).await;
        assert_error(&r, 401, "invalid_client");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic"), "{challenge:?}");
        // No secret at all is refused the same way.
        let mut none = client.clone();
        none.method = "none".into();
        let r = srv.client_post("/token", &none, &[("grant_type", "client_credentials")]).await;
        assert_error(&r, 401, "invalid_client");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn client_credentials_for_confidential_clients_only() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_confidential().await;
        let r = srv.client_post("/token", &client, &[("grant_type", "client_credentials"), ("scope", "mcp")]).await;
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let t = Tokens::from_resp(&r);
        assert!(t.refresh.is_none(), "no refresh token for client_credentials");
        let claims = t.claims();
        assert_eq!(claims["sub"], client.client_id);
        assert_eq!(claims["client_id"], client.client_id);
        assert_eq!(claims["aud"], RESOURCE);
        assert_eq!(claims["iss"], srv.issuer);
        assert!(claims.get("gid").is_none(), "{claims}");

        let public = srv.register_public().await;
        let r = srv.client_post("/token", &public, &[("grant_type", "client_credentials")]).await;
        assert_error(&r, 400, "unauthorized_client");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn introspection_reports_live_tokens_and_not_revoked_ones() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_confidential().await;
        let t = srv.tokens(&client, ALICE).await;
        let refresh = t.refresh.clone().unwrap();

        let r = srv.client_post("/introspect", &client, &[("token", &t.access)]).await;
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

        let r = srv.client_post("/introspect", &client, &[("token", &refresh)]).await;
        let a = r.json();
        assert_eq!(a["active"], true, "{a}");
        assert_eq!(a["token_type"], "refresh_token");
        assert_eq!(a["sub"], "alice");

        let r = srv.client_post("/introspect", &client, &[("token", "no-such-token")]).await;
        assert_eq!(r.json(), serde_json::json!({ "active": false }));

        // Revoke (the refresh token revokes the grant): both become inactive.
        let r = srv.client_post("/revoke", &client, &[("token", &refresh)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        for token in [&t.access, &refresh] {
            let r = srv.client_post("/introspect", &client, &[("token", token)]).await;
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
        let r = srv.client_post("/revoke", &client, &[("token", &refresh), ("token_type_hint", "refresh_token")]).await;
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

        let r = srv.client_post("/revoke", &client, &[("token", &t.access), ("token_type_hint", "access_token")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rev = srv.revocation(&key).await.expect("token.<jti> revocation written");
        let exp = t.claims()["exp"].as_u64().unwrap();
        assert!(rev.until >= exp, "{rev:?}");
        // Only that token: the grant itself lives on.
        assert!(srv.revocation(&proto::auth::revoked_grant_key(&t.gid())).await.is_none());
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
        let r = srv.client_post("/revoke", &client, &[("token", t.refresh.as_deref().unwrap())]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        Tokens::from_resp(&srv.refresh(&other, t.refresh.as_deref().unwrap()).await);
        srv.stop().await;
    })
    .await;
}
