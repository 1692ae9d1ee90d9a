//! `POST /token` over HTTP: code redemption refusals, single-use codes (a replay
//! revokes the grant), refresh-token rotation with and without a grace window.

use std::time::Duration;

use crate::oauth_kit::{ALICE, OAuthServer, RESOURCE, Resp, Tokens, bounded};

fn assert_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.error(), error, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

/// Wait until the wall clock is early in a fresh second (token timestamps are whole
/// seconds), so what follows happens within one second.
async fn start_of_a_second() {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let into = now.subsec_millis();
        if into < 50 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - into) + 5)).await;
    }
}

/// Wait until the wall clock's second is past the current one.
async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - now.subsec_millis()) + 50)).await;
}

// --- authorization_code ---------------------------------------------------------------

#[actix_web::test]
async fn code_with_a_wrong_verifier_is_invalid_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let mut issued = srv.issue_code(&client, ALICE).await;
        let right = issued.pkce.verifier.clone();
        issued.pkce.verifier = crate::oauth_kit::Pkce::new().verifier;
        assert_error(&srv.redeem(&client, &issued).await, 400, "invalid_grant");
        // The failed attempt consumed the code.
        issued.pkce.verifier = right;
        assert_error(&srv.redeem(&client, &issued).await, 400, "invalid_grant");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn replayed_code_revokes_its_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let issued = srv.issue_code(&client, ALICE).await;
        let first = Tokens::from_resp(&srv.redeem(&client, &issued).await);
        let gid = first.gid();
        assert!(srv.revocation(&proto::auth::revoked_grant_key(&gid)).await.is_none());

        assert_error(&srv.redeem(&client, &issued).await, 400, "invalid_grant");

        // The grant is gone: the first redemption's refresh token no longer works …
        let r = srv.refresh(&client, first.refresh.as_deref().unwrap()).await;
        assert_error(&r, 400, "invalid_grant");
        // … and the gateways are told.
        let rev = srv
            .revocation(&proto::auth::revoked_grant_key(&gid))
            .await
            .expect("grant.<gid> revocation written");
        assert_eq!(rev.v, proto::auth::AUTH_WIRE_VERSION);
        assert_eq!(rev.reason, "code_replay");
        let exp = first.claims()["exp"].as_u64().unwrap();
        assert!(rev.until >= exp, "revoked at least until the access token expires");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn code_redeemed_by_another_client_is_invalid_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let thief = srv.register_public().await;
        let issued = srv.issue_code(&client, ALICE).await;
        assert_error(&srv.redeem(&thief, &issued).await, 400, "invalid_grant");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn code_with_another_redirect_uri_is_invalid_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let issued = srv.issue_code(&client, ALICE).await;
        let r = srv
            .client_post(
                "/token",
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &issued.code),
                    ("code_verifier", &issued.pkce.verifier),
                    ("redirect_uri", "http://127.0.0.1:33418/elsewhere"),
                ],
            )
            .await;
        assert_error(&r, 400, "invalid_grant");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn code_for_another_resource_is_invalid_target() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let issued = srv.issue_code(&client, ALICE).await;
        let r = srv
            .client_post(
                "/token",
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &issued.code),
                    ("code_verifier", &issued.pkce.verifier),
                    ("resource", "http://localhost:8788/other"),
                ],
            )
            .await;
        assert_error(&r, 400, "invalid_target");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn unsupported_grant_type_is_unsupported_grant_type() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        for grant_type in ["password", "urn:ietf:params:oauth:grant-type:device_code"] {
            let r = srv
                .client_post(
                    "/token",
                    &client,
                    &[("grant_type", grant_type), ("username", "alice"), ("password", "x")],
                )
                .await;
            assert_error(&r, 400, "unsupported_grant_type");
        }
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn token_request_that_is_not_a_form_is_invalid_request() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let issued = srv.issue_code(&client, ALICE).await;
        let r = srv
            .http
            .post(srv.url("/token"))
            .json(&serde_json::json!({
                "grant_type": "authorization_code",
                "client_id": client.client_id,
                "code": issued.code,
                "code_verifier": issued.pkce.verifier,
            }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request");
        // The code was not consumed by the refused request.
        Tokens::from_resp(&srv.redeem(&client, &issued).await);
        srv.stop().await;
    })
    .await;
}

// --- refresh_token --------------------------------------------------------------------

#[actix_web::test]
async fn refresh_rotates_and_the_previous_token_works_within_the_grace_window() {
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.refresh_grace = 2).await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();

        let t1 = Tokens::from_resp(&srv.refresh(&client, &r0).await);
        let r1 = t1.refresh.clone().unwrap();
        assert_ne!(r1, r0, "rotated");
        assert_eq!(t1.gid(), t0.gid(), "same grant");
        assert_ne!(t1.access, t0.access);
        assert_eq!(t1.claims()["sub"], "alice");
        assert_eq!(t1.claims()["aud"], RESOURCE);

        // The answer to that refresh was "lost": the previous token still works.
        let t2 = Tokens::from_resp(&srv.refresh(&client, &r0).await);
        let r2 = t2.refresh.clone().unwrap();
        assert_ne!(r2, r0);
        assert_ne!(r2, r1);
        // And the chain continues from the newest token.
        let t3 = Tokens::from_resp(&srv.refresh(&client, &r2).await);
        assert_eq!(t3.gid(), t0.gid());
        assert!(
            srv.revocation(&proto::auth::revoked_grant_key(&t0.gid()))
                .await
                .is_none()
        );
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn refresh_reuse_after_the_grace_window_revokes_the_grant() {
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.refresh_grace = 0).await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();
        let t1 = Tokens::from_resp(&srv.refresh(&client, &r0).await);
        let r1 = t1.refresh.clone().unwrap();

        next_second().await;
        assert_error(&srv.refresh(&client, &r0).await, 400, "invalid_grant");
        // The reuse revoked the whole grant: the current token fails too.
        assert_error(&srv.refresh(&client, &r1).await, 400, "invalid_grant");
        let rev = srv
            .revocation(&proto::auth::revoked_grant_key(&t0.gid()))
            .await
            .expect("grant.<gid> revocation written");
        assert_eq!(rev.reason, "refresh_reuse");
        // Counted for the RefreshTokenReuse alert: the reuse once, not the refusal after it.
        let metrics = srv
            .http
            .get(format!("{}/metrics", srv.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("auth_refresh_reuse_total 1\n"), "{metrics}");
        assert!(metrics.contains("mcp_nats_connected 1\n"), "{metrics}");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn refresh_reuse_with_no_grace_window_is_refused_at_once() {
    // AUTH_REFRESH_GRACE=0: a rotated refresh token must not work at all, not even
    // in the same wall-clock second as its rotation.
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.refresh_grace = 0).await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();
        start_of_a_second().await;
        Tokens::from_resp(&srv.refresh(&client, &r0).await);
        let r = srv.refresh(&client, &r0).await;
        assert_error(&r, 400, "invalid_grant");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn refresh_by_another_client_is_invalid_grant() {
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let other = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r = srv.refresh(&other, t0.refresh.as_deref().unwrap()).await;
        assert_error(&r, 400, "invalid_grant");
        // Still valid for its own client.
        Tokens::from_resp(&srv.refresh(&client, t0.refresh.as_deref().unwrap()).await);
        srv.stop().await;
    })
    .await;
}

// --- forged refresh tokens (issue 8, defect 4) ------------------------------------------

#[actix_web::test]
async fn forged_refresh_secret_is_invalid_grant_and_revokes_nothing() {
    // An attacker who knows a grant's address (the part of the refresh token before
    // the dot) but not a secret that was ever issued must not be able to revoke it.
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.refresh_grace = 0).await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();
        let (address, _) = r0.split_once('.').unwrap();
        let forged = format!("{address}.never-issued-secret");
        assert_error(&srv.refresh(&client, &forged).await, 400, "invalid_grant");
        // Nothing changed: no revocation, and the real token still rotates.
        assert!(
            srv.revocation(&proto::auth::revoked_grant_key(&t0.gid()))
                .await
                .is_none()
        );
        let t1 = Tokens::from_resp(&srv.refresh(&client, &r0).await);
        // A really rotated-out secret is still detected as reuse.
        next_second().await;
        assert_error(&srv.refresh(&client, &r0).await, 400, "invalid_grant");
        assert_error(
            &srv.refresh(&client, t1.refresh.as_deref().unwrap()).await,
            400,
            "invalid_grant",
        );
        let rev = srv
            .revocation(&proto::auth::revoked_grant_key(&t0.gid()))
            .await
            .expect("reuse of a rotated secret revokes");
        assert_eq!(rev.reason, "refresh_reuse");
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn reuse_of_an_older_rotated_secret_is_detected() {
    // Not only the previous secret: any of the last few rotated ones.
    bounded(async {
        let srv = OAuthServer::start_with(|a| a.refresh_grace = 0).await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();
        let t1 = Tokens::from_resp(&srv.refresh(&client, &r0).await);
        let t2 = Tokens::from_resp(&srv.refresh(&client, t1.refresh.as_deref().unwrap()).await);
        let t3 = Tokens::from_resp(&srv.refresh(&client, t2.refresh.as_deref().unwrap()).await);
        next_second().await;
        assert_error(&srv.refresh(&client, &r0).await, 400, "invalid_grant");
        assert_error(
            &srv.refresh(&client, t3.refresh.as_deref().unwrap()).await,
            400,
            "invalid_grant",
        );
        assert!(
            srv.revocation(&proto::auth::revoked_grant_key(&t0.gid()))
                .await
                .is_some()
        );
        srv.stop().await;
    })
    .await;
}

#[actix_web::test]
async fn access_tokens_do_not_carry_the_refresh_token_address() {
    // The `gid` claim is readable by anyone holding (or logging) an access token; it
    // must not be the handle /token looks refresh tokens up by.
    bounded(async {
        let srv = OAuthServer::start().await;
        let client = srv.register_public().await;
        let t0 = srv.tokens(&client, ALICE).await;
        let r0 = t0.refresh.clone().unwrap();
        let (address, _) = r0.split_once('.').unwrap();
        assert_ne!(t0.gid(), address);
        assert!(!t0.access.contains(address));
        srv.stop().await;
    })
    .await;
}
