//! The todo routes: round trip, users kept apart, validation, the per-user cap.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{BOTH, Harness};

#[tokio::test]
async fn create_list_update_delete() {
    let h = Harness::start().await;
    let alice = h.a.token("alice", BOTH);
    assert!(h.list(&alice).await.is_empty());

    let milk = h.create(&alice, "  buy milk ").await;
    assert_eq!(milk["title"], "buy milk");
    assert_eq!(milk["completed"], false);
    assert_eq!(milk["created_at"], milk["updated_at"]);
    assert_eq!(milk["id"].as_str().unwrap().len(), 36);
    let bread = h.create(&alice, "buy bread").await;
    let listed = h.list(&alice).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&milk) && listed.contains(&bread));
    // Oldest first (two creates may share a millisecond).
    assert!(listed[0]["created_at"].as_str() <= listed[1]["created_at"].as_str());

    let path = format!("/todos/{}", milk["id"].as_str().unwrap());
    let done = h
        .call(Method::PATCH, &path, Some(&alice), Some(json!({"completed": true})))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["completed"], true);
    assert_eq!(done.body["title"], "buy milk");
    assert_eq!(done.body["created_at"], milk["created_at"]);
    assert!(done.body["updated_at"].as_str() >= milk["updated_at"].as_str());
    let renamed = h
        .call(
            Method::PATCH,
            &path,
            Some(&alice),
            Some(json!({"title": "buy oat milk"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
    assert_eq!(renamed.body["title"], "buy oat milk");
    assert_eq!(renamed.body["completed"], true, "a title change keeps completed");
    assert!(h.list(&alice).await.contains(&renamed.body));

    let deleted = h.call(Method::DELETE, &path, Some(&alice), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_null());
    assert_eq!(h.list(&alice).await, vec![bread]);
    let again = h.call(Method::DELETE, &path, Some(&alice), None).await;
    assert_eq!((again.status, again.error()), (StatusCode::NOT_FOUND, "not_found"));
    let gone = h
        .call(Method::PATCH, &path, Some(&alice), Some(json!({"completed": false})))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    h.finish().await;
}

#[tokio::test]
async fn users_cannot_see_or_touch_each_others_todos() {
    let h = Harness::start().await;
    let alice = h.a.token("alice", BOTH);
    let bob = h.a.token("bob", BOTH);
    // The same `sub` at another issuer is another user.
    let other_alice = h.b.token("alice", BOTH);
    let todo = h.create(&alice, "alice's secret").await;
    h.create(&bob, "bob's").await;
    let path = format!("/todos/{}", todo["id"].as_str().unwrap());

    for stranger in [&bob, &other_alice] {
        let theirs = h.list(stranger).await;
        assert!(theirs.iter().all(|t| t["id"] != todo["id"]), "{theirs:?}");
        let patch = h
            .call(Method::PATCH, &path, Some(stranger), Some(json!({"title": "mine now"})))
            .await;
        assert_eq!((patch.status, patch.error()), (StatusCode::NOT_FOUND, "not_found"));
        let delete = h.call(Method::DELETE, &path, Some(stranger), None).await;
        assert_eq!(delete.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(h.list(&bob).await.len(), 1);
    assert!(h.list(&other_alice).await.is_empty());
    assert_eq!(h.list(&alice).await, vec![todo], "untouched");
    h.finish().await;
}

#[tokio::test]
async fn bodies_and_titles_are_validated() {
    let h = Harness::start().await;
    let alice = h.a.token("alice", BOTH);
    let long = "x".repeat(501);
    for body in [
        json!({"title": ""}),
        json!({"title": "   "}),
        json!({"title": long}),
        json!({"title": 7}),
        json!({}),
        json!({"title": "ok", "owner": "bob"}),
        json!(["title"]),
    ] {
        let reply = h.call(Method::POST, "/todos", Some(&alice), Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error(), "invalid_request");
        assert!(reply.body["error_description"].is_string());
    }
    let exact = h.create(&alice, &format!(" {} ", "é".repeat(500))).await;
    assert_eq!(exact["title"].as_str().unwrap().chars().count(), 500);

    let path = format!("/todos/{}", exact["id"].as_str().unwrap());
    for body in [json!({}), json!({"completed": "yes"}), json!({"title": " "})] {
        let reply = h.call(Method::PATCH, &path, Some(&alice), Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let huge = json!({"title": "x".repeat(20 * 1024)});
    let reply = h.call(Method::POST, "/todos", Some(&alice), Some(huge)).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let reply = h.call(Method::DELETE, "/todos/not-a-uuid", Some(&alice), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(h.list(&alice).await.len(), 1);
    h.finish().await;
}

#[tokio::test]
async fn each_user_may_keep_at_most_the_cap() {
    let h = Harness::start_with(|c| c.max_per_user = 3).await;
    let alice = h.a.token("alice", BOTH);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(h.create(&alice, &format!("todo {i}")).await["id"].clone());
    }
    let full = h
        .call(Method::POST, "/todos", Some(&alice), Some(json!({"title": "one more"})))
        .await;
    assert_eq!((full.status, full.error()), (StatusCode::CONFLICT, "too_many_todos"));
    // The cap is per user.
    h.create(&h.a.token("bob", BOTH), "bob's first").await;
    // Room again after a delete.
    let path = format!("/todos/{}", ids[0].as_str().unwrap());
    assert_eq!(
        h.call(Method::DELETE, &path, Some(&alice), None).await.status,
        StatusCode::NO_CONTENT
    );
    h.create(&alice, "one more").await;
    assert_eq!(h.list(&alice).await.len(), 3);
    h.finish().await;
}

#[tokio::test]
async fn healthz_unknown_routes_and_methods() {
    let h = Harness::start().await;
    let health = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (health.status, health.body.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let alice = h.a.token("alice", BOTH);
    let unknown = h.call(Method::GET, "/nope", Some(&alice), None).await;
    assert_eq!((unknown.status, unknown.error()), (StatusCode::NOT_FOUND, "not_found"));
    let put = h.call(Method::PUT, "/todos", Some(&alice), Some(json!({}))).await;
    assert_eq!(
        (put.status, put.error()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    h.finish().await;
}
