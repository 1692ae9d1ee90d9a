//! Revocations: the auth-service's entries in the revocation bucket make the
//! gateway refuse tokens it had already accepted (and remembered), and a fresh
//! gateway honours the entries made before it started.

use std::time::Duration;

use proto::auth::{AUTH_WIRE_VERSION, Revocation, revoked_grant_key, revoked_token_key};
use serde_json::{Value, json};
use testkit::{NatsServer, eventually};

use super::{Cluster, add, issuer};

/// Write a revocation as the auth-service does (JSON value, proto key).
async fn revoke(nats_url: &str, key: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let store = gateway::revocations::open_bucket(&js, 1).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let revocation = Revocation {
        v: AUTH_WIRE_VERSION,
        until: now + 300,
        reason: "revoked".into(),
    };
    store.put(key, serde_json::to_vec(&revocation)?.into()).await?;
    Ok(())
}

/// Assert `resp` is the 401 of a revoked token.
async fn assert_revoked(resp: reqwest::Response) -> anyhow::Result<()> {
    anyhow::ensure!(resp.status() == 401, "status {}", resp.status());
    let challenge = resp.headers()["www-authenticate"].to_str()?.to_owned();
    anyhow::ensure!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    anyhow::ensure!(
        challenge.contains(r#"error_description="token revoked""#),
        "{challenge}"
    );
    let body: Value = resp.json().await?;
    anyhow::ensure!(body["error_code"] == "INVALID_TOKEN", "{body}");
    anyhow::ensure!(body["error_description"] == "token revoked", "{body}");
    Ok(())
}

/// The gateway's readiness probe.
async fn ready(c: &Cluster) -> anyhow::Result<bool> {
    let url = format!("http://{}/readyz", c.gateway()?.admin_addr);
    Ok(c.http.get(url).send().await?.status().is_success())
}

#[actix_rt::test]
async fn revoked_grant_refuses_a_remembered_token() -> anyhow::Result<()> {
    let c = Cluster::start(true).await?;
    let grant = format!("g-{}", uuid::Uuid::new_v4().simple());
    let alice = c.issuer.token_with("alice", json!({ "gid": grant }))?;
    let bob = c.issuer.token_with("bob", json!({ "gid": "another-grant" }))?;
    // Accepted, verified once and remembered.
    let session = c.open(&alice).await?;
    let resp = c.post(&alice, Some(&session), &add(1)).send().await?;
    assert_eq!(resp.status(), 200);
    let bob_session = c.open(&bob).await?;

    revoke(&c.nats.url, &revoked_grant_key(&grant)).await?;
    eventually(50, Duration::from_millis(100), || async {
        assert_revoked(c.post(&alice, Some(&session), &add(2)).send().await?).await
    })
    .await?;
    // Other grants are not affected.
    let resp = c.post(&bob, Some(&bob_session), &add(3)).send().await?;
    assert_eq!(resp.status(), 200);

    let metrics = c.metrics().await?;
    assert!(metrics.contains("mcp_gateway_revocations_held 1"), "{metrics}");
    assert!(
        metrics.contains(r#"mcp_gateway_auth_failures_total{code="INVALID_TOKEN"}"#),
        "{metrics}"
    );
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn revoked_jti_refuses_that_token_only() -> anyhow::Result<()> {
    let c = Cluster::start(true).await?;
    let jti = uuid::Uuid::new_v4().to_string();
    let first = c.issuer.token_with("alice", json!({ "gid": "g-shared", "jti": jti }))?;
    let second = c.issuer.token_with("alice", json!({ "gid": "g-shared" }))?;
    let session = c.open(&first).await?;

    revoke(&c.nats.url, &revoked_token_key(&jti)).await?;
    eventually(50, Duration::from_millis(100), || async {
        assert_revoked(c.post(&first, Some(&session), &add(1)).send().await?).await
    })
    .await?;
    // The same grant's other token still works, on the same session.
    let resp = c.post(&second, Some(&session), &add(2)).send().await?;
    assert_eq!(resp.status(), 200);
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn revocation_made_before_start_is_honoured_at_once() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let issuer = issuer(&nats).await?;
    // Revoked before any gateway runs; the gateway later opens the same bucket.
    revoke(&nats.url, &revoked_grant_key("g-early")).await?;
    let early = issuer.token_with("alice", json!({ "gid": "g-early" }))?;
    let other = issuer.token_with("alice", json!({ "gid": "g-later" }))?;
    let c = Cluster::start_on(nats, issuer, false, |_| {}).await?;

    // Not ready until the existing revocations are loaded; then the very first
    // request with the revoked grant is refused.
    eventually(100, Duration::from_millis(50), || async {
        anyhow::ensure!(ready(&c).await?, "not ready");
        Ok(())
    })
    .await?;
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
    assert_revoked(c.post(&early, None, &init).send().await?).await?;
    // An unrevoked token passes the token check (no worker here: 503, not 401).
    let resp = c.post(&other, None, &init).send().await?;
    assert_eq!(resp.status(), 503);
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn empty_bucket_is_ready_and_gateway_creates_it() -> anyhow::Result<()> {
    let c = Cluster::start(false).await?;
    eventually(100, Duration::from_millis(50), || async {
        anyhow::ensure!(ready(&c).await?, "not ready");
        Ok(())
    })
    .await?;
    // The gateway created the bucket with the auth-service's configuration.
    let client = async_nats::connect(&c.nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let store = js.get_key_value(proto::auth::REVOCATION_BUCKET).await?;
    let status = store.status().await?;
    assert_eq!(status.history(), 1);
    assert_eq!(
        status.max_age(),
        Duration::from_secs(proto::auth::REVOCATION_MAX_AGE_SECS)
    );
    assert_eq!(
        status.info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn watch_is_set_up_again_after_it_breaks() -> anyhow::Result<()> {
    let c = Cluster::start(false).await?;
    eventually(100, Duration::from_millis(50), || async {
        anyhow::ensure!(ready(&c).await?, "not ready");
        Ok(())
    })
    .await?;
    // Pull the bucket from under the watch: the watch notices by its missed idle
    // heartbeats (~10 s), and the gateway opens the bucket and watches again.
    let client = async_nats::connect(&c.nats.url).await?;
    let js = async_nats::jetstream::new(client);
    js.delete_key_value(proto::auth::REVOCATION_BUCKET).await?;
    let token = c.issuer.token_with("alice", json!({ "gid": "g-after" }))?;
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
    eventually(150, Duration::from_millis(200), || async {
        // Written into whichever bucket exists now; the re-established watch replays it.
        revoke(&c.nats.url, &revoked_grant_key("g-after")).await?;
        assert_revoked(c.post(&token, None, &init).send().await?).await
    })
    .await?;
    c.stop().await;
    Ok(())
}
