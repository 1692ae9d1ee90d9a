//! Bearer tokens: missing, refused, scopes, and the token forms accepted.

use jsonwebtoken::EncodingKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{BOTH, FORGER_PEM, Harness, now, sign_with};

#[tokio::test]
async fn a_missing_token_is_401_without_an_error_code() {
    let h = Harness::start().await;
    for (method, path) in [(Method::GET, "/todos"), (Method::POST, "/todos")] {
        let reply = h.call(method, path, None, Some(json!({"title": "x"}))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.challenge(), Some("Bearer"));
        assert_eq!(reply.error(), "missing_token");
    }
    // Other schemes offer no bearer token either.
    let basic = h
        .http
        .get(format!("http://{}/todos", h.api.addr))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(basic.headers()["www-authenticate"], "Bearer");
    h.finish().await;
}

#[tokio::test]
async fn refused_tokens_are_401_invalid_token() {
    let h = Harness::start().await;
    let good = h.a.claims("alice", BOTH);
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let forger = EncodingKey::from_ed_pem(FORGER_PEM).unwrap();
    let cases = [
        (
            "wrong audience",
            h.a.sign(&with(json!({"aud": "http://localhost:8788/mcp"}))),
        ),
        (
            "issuer not allowed",
            h.a.sign(&with(json!({"iss": "http://127.0.0.1:1"}))),
        ),
        (
            "issuer B's claim, issuer A's key",
            h.a.sign(&with(json!({"iss": h.b.url}))),
        ),
        ("expired", h.a.sign(&with(json!({"exp": now() - 3600})))),
        ("bad signature", sign_with(&forger, Some("at+jwt"), &good)),
        ("an id token", sign_with(&h.a.key, Some("id_token+jwt"), &good)),
        ("not a jwt", "not.a.jwt".to_owned()),
    ];
    for (case, token) in cases {
        let reply = h
            .call(Method::POST, "/todos", Some(&token), Some(json!({"title": case})))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}: {}", reply.body);
        assert_eq!(reply.error(), "invalid_token", "{case}");
        let challenge = reply.challenge().unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{case}: {challenge}"
        );
    }
    assert!(
        h.list(&h.a.token("alice", BOTH)).await.is_empty(),
        "nothing was written"
    );
    h.finish().await;
}

#[tokio::test]
async fn scopes_decide_reading_and_writing() {
    let h = Harness::start().await;
    let reader = h.a.token("alice", "openid todo:read");
    assert!(h.list(&reader).await.is_empty());
    let write = h
        .call(Method::POST, "/todos", Some(&reader), Some(json!({"title": "x"})))
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(write.error(), "insufficient_scope");
    assert_eq!(
        write.challenge(),
        Some("Bearer error=\"insufficient_scope\", scope=\"todo:write\"")
    );
    let delete = h
        .call(
            Method::DELETE,
            "/todos/00000000-0000-4000-8000-000000000000",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);

    let writer = h.a.token("alice", "todo:write");
    let todo = h.create(&writer, "written").await;
    let read = h.call(Method::GET, "/todos", Some(&writer), None).await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    assert_eq!(
        read.challenge(),
        Some("Bearer error=\"insufficient_scope\", scope=\"todo:read\"")
    );
    assert_eq!(h.list(&reader).await, vec![todo], "one user whatever the scopes");
    h.finish().await;
}

#[tokio::test]
async fn entra_style_scp_and_plain_jwt_typ_are_accepted() {
    let h = Harness::start().await;
    let mut claims = h.a.claims("alice", "");
    claims.as_object_mut().unwrap().remove("scope");
    claims["scp"] = json!(["todo:read", "todo:write"]);
    claims["aud"] = json!(["https://other.example", crate::AUDIENCE]);
    for typ in [Some("JWT"), None] {
        let token = sign_with(&h.a.key, typ, &claims);
        h.create(&token, &format!("typ {typ:?}")).await;
    }
    assert_eq!(h.list(&h.a.token("alice", BOTH)).await.len(), 2);
    h.finish().await;
}
