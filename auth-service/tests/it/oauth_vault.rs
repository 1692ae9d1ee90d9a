//! The token vault over real NATS: a worker's `auth.vault.token` request (rmp-serde,
//! named fields) for a grant made by the browser flow gets the upstream token only
//! for the right issuer and subject, and `revoked` once the grant is revoked.

use std::sync::Arc;
use std::time::Duration;

use auth_service::grants::Grants;
use auth_service::signing::SigningKeys;
use auth_service::upstream::UpstreamTokens;
use auth_service::vault::{Secrets, Vault};
use proto::auth::{VAULT_TOKEN, VaultReply, VaultRequest};

use crate::oauth_kit::{ALICE, OAuthServer, Tokens, bounded};

async fn ask(nc: &async_nats::Client, grant_id: &str, iss: &str, sub: &str) -> VaultReply {
    let req = VaultRequest {
        v: proto::auth::AUTH_WIRE_VERSION,
        grant_id: grant_id.into(),
        iss: iss.into(),
        sub: sub.into(),
        refresh: false,
    };
    let payload = rmp_serde::to_vec_named(&req).unwrap();
    let msg = testkit::eventually(50, Duration::from_millis(100), || {
        let (nc, payload) = (nc.clone(), payload.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(10), nc.request(VAULT_TOKEN, payload.into()))
                .await?
                .map_err(anyhow::Error::from)
        }
    })
    .await
    .unwrap();
    rmp_serde::from_slice(&msg.payload).unwrap()
}

/// Put a vault entry for `gid` (subject alice) holding upstream tokens valid until
/// `expires_at`, with the service's own sealer.
async fn store_upstream_tokens(srv: &OAuthServer, gid: &str, expires_at: u64) {
    let (_nc, stores) = srv.stores().await;
    let keys = SigningKeys::open(
        stores.keys.clone(),
        srv.cfg.sealer.clone(),
        srv.cfg.key_rotation,
        srv.cfg.key_publish_lead,
        srv.cfg.access_ttl,
        None,
    )
    .await
    .unwrap();
    let grants = Grants {
        stores: stores.clone(),
        keys,
        issuer: srv.issuer.clone(),
        access_ttl: srv.cfg.access_ttl,
        refresh_grace: srv.cfg.refresh_grace,
        code_ttl: srv.cfg.code_ttl,
    };
    let upstream = auth_service::upstream::UpstreamArgs {
        upstream: "static".into(),
        static_users_file: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/local/static-users.json"),
        ..Default::default()
    }
    .build(reqwest::Client::new())
    .unwrap();
    let vault = Vault::new(
        stores,
        srv.cfg.sealer.clone(),
        Arc::new(upstream),
        grants,
        srv.issuer.clone(),
    );
    vault
        .store(
            gid,
            "alice",
            &Secrets {
                tokens: Some(UpstreamTokens {
                    access_token: "upstream-access-token".into(),
                    token_type: "Bearer".into(),
                    refresh_token: Some("upstream-refresh-token".into()),
                    expires_at: Some(expires_at),
                }),
                claims: serde_json::json!({ "sub": "alice" }),
            },
        )
        .await
        .unwrap();
}

#[actix_web::test]
async fn vault_answers_the_grants_subject_only_until_revoked() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t = srv.tokens(&client, ALICE).await;
        let gid = t.gid();

        // Keep upstream tokens for the grant, as a remote provider's login would.
        let expires_at = auth_service::unix_now() + 30 * 24 * 3600;
        Box::pin(store_upstream_tokens(&srv, &gid, expires_at)).await;
        let (nc, _) = srv.stores().await;

        let reply = ask(&nc, &gid, &srv.issuer, "alice").await;
        let VaultReply::Token {
            access_token,
            token_type,
            expires_at: exp,
        } = reply
        else {
            panic!("expected a token, got {reply:?}");
        };
        assert_eq!(access_token, "upstream-access-token");
        assert_eq!(token_type, "Bearer");
        assert_eq!(exp, Some(expires_at));

        assert_eq!(
            ask(&nc, &gid, &srv.issuer, "bob").await,
            VaultReply::NotFound,
            "another subject"
        );
        assert_eq!(
            ask(&nc, &gid, "http://127.0.0.1:1", "alice").await,
            VaultReply::NotFound,
            "another issuer"
        );
        assert_eq!(
            ask(&nc, "no-such-grant", &srv.issuer, "alice").await,
            VaultReply::NotFound,
            "unknown grant"
        );

        // The user's client revokes: the vault says so.
        let r = srv
            .client_post("/revoke", &client, &[("token", t.refresh.as_deref().unwrap())])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ask(&nc, &gid, &srv.issuer, "alice").await, VaultReply::Revoked);
        // And the sealed entry is gone from the bucket.
        let (_nc, stores) = srv.stores().await;
        assert!(stores.vault.get::<serde_json::Value>(&gid).await.unwrap().is_none());
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn vault_has_nothing_for_a_static_users_grant() {
    // The static provider has no upstream tokens: a grant from it is NotFound.
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t: Tokens = srv.tokens(&client, ALICE).await;
        let (nc, _) = srv.stores().await;
        assert_eq!(ask(&nc, &t.gid(), &srv.issuer, "alice").await, VaultReply::NotFound);
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn static_users_get_downstream_tokens_the_vault_issues_for_api_identifier() {
    bounded(async {
        const API: &str = "http://127.0.0.1:8791/todos";
        let srv = OAuthServer::start_with(|a| a.downstream_audience = Some(API.into())).await;
        let client = srv.register_public().await;
        let t = srv.tokens(&client, ALICE).await;
        let gid = t.gid();
        let (nc, _) = srv.stores().await;
        let reply = ask(&nc, &gid, &srv.issuer, "alice").await;
        let VaultReply::Token {
            access_token,
            expires_at,
            ..
        } = reply
        else {
            panic!("expected a token, got {reply:?}");
        };
        let header = jsonwebtoken::decode_header(&access_token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let claims = crate::oauth_kit::jwt_claims(&access_token);
        assert_eq!(claims["iss"], srv.issuer.as_str());
        assert_eq!(claims["aud"], API);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "todo:read todo:write");
        assert!(claims.get("gid").is_none(), "not a token of the MCP resource: {claims}");
        assert_eq!(claims["exp"].as_u64(), expires_at);
        // Not for another subject, and not once the grant is revoked.
        assert_eq!(ask(&nc, &gid, &srv.issuer, "bob").await, VaultReply::NotFound);
        let r = srv
            .client_post("/revoke", &client, &[("token", t.refresh.as_deref().unwrap())])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ask(&nc, &gid, &srv.issuer, "alice").await, VaultReply::Revoked);
        srv.stop().await;
    })
    .await;
}
