//! The worker's client of the auth-service token vault: a NATS request to
//! [`proto::auth::VAULT_TOKEN`] for the upstream access token of the user behind
//! a grant. It implements [`tools::vault::TokenVault`], which is how the tools
//! (which never touch NATS) reach it.
//!
//! The request carries what the gateway verified (`iss`, `sub` and the `gid`
//! claim of the principal); the vault answers only when they match the grant.
//! Tokens are never logged: replies are logged by kind only.

use std::time::Duration;

use proto::Principal;
use proto::auth::{AUTH_WIRE_VERSION, VAULT_TOKEN, VaultReply, VaultRequest};
use tools::vault::{TokenVault, UpstreamToken, VaultError, VaultFuture};
use tracing::{Instrument, debug};

/// How long a vault request may take. Longer than the auth-service's own bounds
/// (an upstream refresh request, 10 s; waiting for another replica's refresh,
/// 10 s), so a slow refresh answers rather than times out here.
pub const VAULT_TIMEOUT: Duration = Duration::from_secs(12);

/// Asks the token vault over NATS. Cheap to clone.
#[derive(Clone)]
pub struct VaultClient {
    nats: async_nats::Client,
    timeout: Duration,
}

impl VaultClient {
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            timeout: VAULT_TIMEOUT,
        }
    }

    /// Use another request timeout (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The current upstream access token of `principal`'s grant; with `refresh`, a
    /// refreshed one (the current one was refused downstream).
    pub async fn upstream_token(&self, principal: &Principal, refresh: bool) -> Result<UpstreamToken, VaultError> {
        let Some(grant_id) = principal.grant_id.as_deref() else {
            return Err(VaultError::NoGrant);
        };
        let request = VaultRequest {
            v: AUTH_WIRE_VERSION,
            grant_id: grant_id.to_owned(),
            iss: principal.iss.clone(),
            sub: principal.sub.clone(),
            refresh,
        };
        let payload = rmp_serde::to_vec_named(&request)
            .map_err(|e| VaultError::Unavailable(format!("cannot encode vault request: {e}")))?;
        let mut request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        // While traces are exported: the request is a span of its own, and the vault's
        // handling its child (W3C context in the NATS headers).
        let span = if telemetry::otel::enabled() {
            tracing::info_span!(
                "vault.request",
                otel.name = "vault token",
                otel.kind = "client",
                messaging.system = "nats",
                messaging.destination.name = VAULT_TOKEN,
                refresh,
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        if let Some((parent, state)) = telemetry::otel::context_of(&span) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(proto::trace::TRACEPARENT, parent.as_str());
            if let Some(state) = state {
                headers.insert(proto::trace::TRACESTATE, state.as_str());
            }
            request = request.headers(headers);
        }
        let answer = match self
            .nats
            .send_request(VAULT_TOKEN, request)
            .instrument(span.clone())
            .await
        {
            Ok(msg) => match rmp_serde::from_slice::<VaultReply>(&msg.payload) {
                Ok(reply) => tools::vault::from_reply(reply),
                Err(_) => Err(VaultError::Unavailable("malformed vault reply".into())),
            },
            Err(e) => Err(request_error(e)),
        };
        if answer.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        match &answer {
            Ok(_) => debug!(grant = grant_id, "vault gave an upstream token"),
            Err(e) => debug!(grant = grant_id, error = %e, "vault gave no upstream token"),
        }
        answer
    }
}

fn request_error(e: async_nats::RequestError) -> VaultError {
    use async_nats::RequestErrorKind;
    match e.kind() {
        RequestErrorKind::TimedOut => VaultError::TimedOut,
        RequestErrorKind::NoResponders => VaultError::NoResponders,
        _ => VaultError::Unavailable(e.to_string()),
    }
}

impl TokenVault for VaultClient {
    fn upstream_token<'a>(&'a self, principal: &'a Principal) -> VaultFuture<'a> {
        Box::pin(VaultClient::upstream_token(self, principal, false))
    }

    fn refreshed_token<'a>(&'a self, principal: &'a Principal) -> VaultFuture<'a> {
        Box::pin(VaultClient::upstream_token(self, principal, true))
    }
}
