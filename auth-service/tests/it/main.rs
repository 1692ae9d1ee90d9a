//! auth-service integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod issuer;
mod oauth_authorize;
mod oauth_clients;
mod oauth_cookies;
mod oauth_flow;
mod oauth_keys;
mod oauth_kit;
mod oauth_token;
mod oauth_vault;
mod oauth_vault_refresh;
