//! The token vault: the upstream identity provider's tokens and claims for each
//! grant, sealed with [`crate::crypto::Sealer`] (context `auth_vault/<grant id>`, so
//! an entry cannot be moved to another grant), and a NATS service that gives a
//! worker the current upstream access token of the user behind a grant.
//!
//! Refreshing happens once cluster-wide: the replica that creates
//! `refresh.<grant id>` in the `auth_locks` bucket refreshes and rewrites the entry;
//! the others wait (bounded) for the entry to change. If the upstream answers
//! `invalid_grant`, the grant is revoked. Entries sealed with an older key are
//! resealed with the current one when read, so dropping an old key after a while is
//! safe. Tokens are never logged.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use proto::auth::{VaultReply, VaultRequest};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::crypto::Sealer;
use crate::grants::{Grant, Grants};
use crate::store::{Cas, StoreError, Stores};
use crate::upstream::{Upstream, UpstreamError, UpstreamTokens};

/// Refresh when the token expires within this.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// How long a replica waits for another one's refresh.
pub const WAIT_FOR_REFRESH: Duration = Duration::from_secs(10);
/// How often it looks while waiting.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// Concurrent vault requests one replica serves.
pub const MAX_CONCURRENT: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultEntry {
    pub sub: String,
    /// Sealed [`Secrets`].
    pub sealed: String,
    pub updated_at: u64,
}

/// What is sealed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub tokens: Option<UpstreamTokens>,
    pub claims: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vault entry cannot be opened: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("vault entry is not valid: {0}")]
    Corrupt(String),
}

fn context(gid: &str) -> String {
    format!("auth_vault/{gid}")
}

#[derive(Clone)]
pub struct Vault {
    stores: Stores,
    sealer: Sealer,
    upstream: Arc<Upstream>,
    grants: Grants,
    issuer: String,
    holder: String,
    metrics: Option<crate::metrics::Metrics>,
    downstream: Option<Downstream>,
}

/// With the static-users provider there is no upstream token: the vault issues one
/// itself, for the downstream API (`API_IDENTIFIER`, `AUTH_DOWNSTREAM_SCOPES`).
#[derive(Clone, Debug)]
pub struct Downstream {
    pub audience: String,
    pub scopes: Vec<String>,
}

impl Vault {
    pub fn new(stores: Stores, sealer: Sealer, upstream: Arc<Upstream>, grants: Grants, issuer: String) -> Self {
        Self {
            stores,
            sealer,
            upstream,
            grants,
            issuer,
            holder: uuid::Uuid::new_v4().to_string(),
            metrics: None,
            downstream: None,
        }
    }

    /// Issue downstream tokens for static users (see [`Downstream`]).
    pub fn with_downstream(mut self, downstream: Option<Downstream>) -> Self {
        self.downstream = downstream;
        self
    }

    /// Count the answers in `auth_vault_requests_total`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Keep the upstream tokens and claims of a new grant.
    pub async fn store(&self, gid: &str, sub: &str, secrets: &Secrets) -> Result<(), VaultError> {
        let plain = serde_json::to_vec(secrets).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let entry = VaultEntry {
            sub: sub.to_owned(),
            sealed: self.sealer.seal(&context(gid), &plain)?,
            updated_at: crate::unix_now(),
        };
        self.stores.vault.put(gid, &entry).await?;
        Ok(())
    }

    /// The entry of a grant, opened; resealed with the current key when stale.
    pub async fn load(&self, gid: &str) -> Result<Option<(VaultEntry, Secrets, u64)>, VaultError> {
        let Some((entry, rev)) = self.stores.vault.get::<VaultEntry>(gid).await? else {
            return Ok(None);
        };
        let plain = self.sealer.open(&context(gid), &entry.sealed)?;
        let secrets: Secrets = serde_json::from_slice(&plain).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        if self.sealer.is_stale(&entry.sealed) {
            let resealed = VaultEntry {
                sealed: self.sealer.seal(&context(gid), &plain)?,
                ..entry.clone()
            };
            if let Cas::Done(new_rev) = self.stores.vault.update(gid, &resealed, rev).await? {
                tracing::info!(grant = gid, "vault entry resealed with the current key");
                return Ok(Some((resealed, secrets, new_rev)));
            }
        }
        Ok(Some((entry, secrets, rev)))
    }

    /// Answer one vault request.
    pub async fn current_token(&self, req: &VaultRequest) -> VaultReply {
        let reply = match self.current_token_inner(req).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::error!(error = %e, grant = %req.grant_id, "vault request failed");
                VaultReply::Unavailable {
                    message: "vault unavailable".into(),
                }
            }
        };
        if let Some(m) = &self.metrics {
            m.vault(match &reply {
                VaultReply::Token { .. } => "token_ok",
                VaultReply::NotFound => "not_found",
                VaultReply::Revoked => "revoked",
                VaultReply::Unavailable { .. } => "unavailable",
            });
        }
        reply
    }

    async fn current_token_inner(&self, req: &VaultRequest) -> Result<VaultReply, VaultError> {
        if req.iss != self.issuer {
            return Ok(VaultReply::NotFound);
        }
        let grant = match self.stores.grants.get::<Grant>(&req.grant_id).await? {
            Some((g, _)) if g.revoked.is_some() => return Ok(VaultReply::Revoked),
            Some((g, _)) if g.identity.sub == req.sub => g,
            _ => return Ok(VaultReply::NotFound),
        };
        if let (Upstream::Static(_), Some(downstream)) = (self.upstream.as_ref(), &self.downstream) {
            let (access_token, expires_at) = self
                .grants
                .downstream_token(&grant, &downstream.audience, &downstream.scopes)
                .map_err(|e| VaultError::Corrupt(e.to_string()))?;
            return Ok(VaultReply::Token {
                access_token,
                token_type: "Bearer".into(),
                expires_at: Some(expires_at),
            });
        }
        let deadline = tokio::time::Instant::now() + WAIT_FOR_REFRESH;
        loop {
            let Some((entry, secrets, rev)) = self.load(&req.grant_id).await? else {
                // Gone: possibly because another replica's refresh was refused and
                // revoked the grant while we waited.
                return self.gone(&req.grant_id).await;
            };
            if entry.sub != req.sub {
                return Ok(VaultReply::NotFound);
            }
            let Some(tokens) = secrets.tokens.clone() else {
                return Ok(VaultReply::NotFound);
            };
            let fresh = !req.refresh
                && tokens
                    .expires_at
                    .is_none_or(|exp| exp > crate::unix_now() + REFRESH_AHEAD.as_secs());
            if fresh || tokens.refresh_token.is_none() {
                return Ok(reply(tokens));
            }
            let lock = format!("refresh.{}", req.grant_id);
            if let Cas::Done(_) = self.stores.locks.create(&lock, &self.holder).await? {
                // Another replica may have refreshed between our read and the lock:
                // refreshing again would spend a refresh token already used. Only
                // refresh what is still the stored entry.
                // Its result is the newest token the provider gave: answer with it.
                let unchanged = matches!(
                    self.stores.vault.get::<VaultEntry>(&req.grant_id).await,
                    Ok(Some((_, now_rev))) if now_rev == rev
                );
                if !unchanged {
                    let _ = self.stores.locks.delete(&lock).await;
                    return match self.load(&req.grant_id).await? {
                        Some((e, s, _)) if e.sub == req.sub => Ok(s.tokens.map(reply).unwrap_or(VaultReply::NotFound)),
                        _ => Ok(self.gone(&req.grant_id).await?),
                    };
                }
                let result = self.refresh_locked(&req.grant_id, &entry, secrets, rev).await;
                let _ = self.stores.locks.delete(&lock).await;
                return result;
            }
            // Another replica is refreshing: wait for the entry to change.
            if tokio::time::Instant::now() >= deadline {
                return Ok(VaultReply::Unavailable {
                    message: "refresh in progress elsewhere took too long".into(),
                });
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// The answer for a grant whose entry is missing: `Revoked` if the grant was.
    async fn gone(&self, gid: &str) -> Result<VaultReply, VaultError> {
        Ok(match self.stores.grants.get::<Grant>(gid).await? {
            Some((g, _)) if g.revoked.is_some() => VaultReply::Revoked,
            _ => VaultReply::NotFound,
        })
    }

    async fn refresh_locked(
        &self,
        gid: &str,
        entry: &VaultEntry,
        secrets: Secrets,
        rev: u64,
    ) -> Result<VaultReply, VaultError> {
        let Some(old) = secrets.tokens.clone() else {
            return Ok(VaultReply::NotFound);
        };
        let Some(refresh_token) = old.refresh_token.as_deref() else {
            return Ok(reply(old));
        };
        let outcome = self.upstream.refresh(refresh_token).await;
        if let Some(m) = &self.metrics {
            let label = match &outcome {
                Ok(_) => "ok",
                Err(UpstreamError::InvalidGrant) => "invalid_grant",
                Err(_) => "unavailable",
            };
            m.vault_refreshes.with_label_values(&[label]).inc();
        }
        match outcome {
            Ok(mut tokens) => {
                if tokens.refresh_token.is_none() {
                    tokens.refresh_token = old.refresh_token.clone();
                }
                let updated = Secrets {
                    tokens: Some(tokens.clone()),
                    claims: secrets.claims,
                };
                let plain = serde_json::to_vec(&updated).map_err(|e| VaultError::Corrupt(e.to_string()))?;
                let new_entry = VaultEntry {
                    sub: entry.sub.clone(),
                    sealed: self.sealer.seal(&context(gid), &plain)?,
                    updated_at: crate::unix_now(),
                };
                if self.stores.vault.update(gid, &new_entry, rev).await? == Cas::Conflict {
                    tracing::warn!(grant = gid, "vault entry changed during refresh");
                }
                tracing::info!(grant = gid, "upstream token refreshed");
                Ok(reply(tokens))
            }
            Err(UpstreamError::InvalidGrant) => {
                tracing::warn!(grant = gid, "upstream refused the refresh token; revoking the grant");
                if let Err(e) = self.grants.revoke_grant(gid, "upstream_invalid_grant").await {
                    tracing::error!(error = %e, grant = gid, "cannot revoke grant");
                }
                Ok(VaultReply::Revoked)
            }
            Err(e) => {
                tracing::warn!(grant = gid, error = %e, "upstream refresh failed");
                Ok(VaultReply::Unavailable { message: e.to_string() })
            }
        }
    }

    /// Serve [`proto::auth::VAULT_TOKEN`] in the [`proto::auth::VAULT_QUEUE`] group
    /// until `stop` fires.
    pub async fn serve(
        self,
        nats: async_nats::Client,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut sub = nats
            .queue_subscribe(proto::auth::VAULT_TOKEN, proto::auth::VAULT_QUEUE.to_owned())
            .await?;
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
        let mut stop = stop;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = stop.changed() => None,
            };
            let Some(msg) = msg else { break };
            let Some(reply_to) = msg.reply.clone() else { continue };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let nats = nats.clone();
            let span = serve_span(&msg);
            tasks.spawn(
                async move {
                    let _permit = permit;
                    let answer = match rmp_serde::from_slice::<VaultRequest>(&msg.payload) {
                        Ok(req) if req.v <= proto::auth::AUTH_WIRE_VERSION => this.current_token(&req).await,
                        Ok(req) => VaultReply::Unavailable {
                            message: format!("unsupported version {}", req.v),
                        },
                        Err(_) => VaultReply::Unavailable {
                            message: "malformed vault request".into(),
                        },
                    };
                    match rmp_serde::to_vec_named(&answer) {
                        Ok(bytes) => {
                            if let Err(e) = nats.publish(reply_to, bytes.into()).await {
                                tracing::warn!(error = %e, "cannot answer a vault request");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode a vault reply"),
                    }
                }
                .instrument(span),
            );
            while tasks.try_join_next().is_some() {}
        }
        let _ = sub.unsubscribe().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// The span of one vault request while traces are exported (none otherwise): the
/// child of the worker's request (W3C context in the NATS headers).
fn serve_span(msg: &async_nats::Message) -> tracing::Span {
    if !telemetry::otel::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "vault.serve",
        otel.name = "vault token",
        otel.kind = "server",
        messaging.system = "nats",
        messaging.destination.name = proto::auth::VAULT_TOKEN,
        trace_id = tracing::field::Empty,
    );
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if let Some(parent) = header(proto::trace::TRACEPARENT) {
        telemetry::otel::set_parent(&span, &parent, header(proto::trace::TRACESTATE).as_deref());
    }
    if let Some(id) = telemetry::otel::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

fn reply(tokens: UpstreamTokens) -> VaultReply {
    VaultReply::Token {
        access_token: tokens.access_token,
        token_type: tokens.token_type,
        expires_at: tokens.expires_at,
    }
}
