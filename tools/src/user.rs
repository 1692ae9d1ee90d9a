//! Per-user state: what a user's tools keep across sessions and across stateless
//! (2026-07-28) requests, which have no session to keep it in.
//!
//! A tool that keeps user state ([`McpTool::update_user_state`]) never holds it:
//! it sends an operation, plain JSON, to the user's store ([`UserStore`]), which
//! the worker implements as one actor per user (`user:<sub>`), owned like a
//! session by the worker leasing its shard. The owner applies the operation with
//! the tool's own [`McpTool::update_user_state`], one at a time, and saves the new
//! state before answering; an operation sent again with the same id is answered
//! from its record, never applied twice.
//!
//! [`McpTool::update_user_state`]: crate::toolbox::McpTool::update_user_state

use std::future::Future;
use std::pin::Pin;

use proto::Principal;
use serde_json::Value;

/// The future a [`UserStore`] returns.
pub type UserFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, UserError>> + Send + 'a>>;

/// Where tools reach the state of a user.
pub trait UserStore: Send + Sync {
    /// Apply `op` to the state tool `tool` keeps for `caller` (its `sub`); the answer of
    /// the tool's [`update_user_state`](crate::toolbox::McpTool::update_user_state).
    /// `op_id` names this operation: sent again (a retry) it is answered, not applied.
    fn apply<'a>(&'a self, caller: &'a Principal, tool: &'a str, op: Value, op_id: &'a str) -> UserFuture<'a>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The tool refused the operation (bad input, a limit): shown to the caller.
    #[error("{0}")]
    Refused(String),
    /// The user's state could not be reached or saved: try again later.
    #[error("the user's state is unavailable: {0}")]
    Unavailable(String),
}
