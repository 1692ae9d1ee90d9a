//! The PingOne seed's todo tools: `listTodos`, `addTodo`, `completeTodo`,
//! `deleteTodo` call a downstream HTTP Todo API (`API_URL`, e.g.
//! `examples/todo-api`) with the user's upstream access token from the vault —
//! a token the MCP client never sees.
//!
//! A 401 from the API gets one refresh (the vault's forced refresh) and one retry.
//! Every failure is a tool error the user can act on: sign in again (revoked grant,
//! no token), a missing scope at the API (403), the API failing (5xx) or not
//! answering ([`TIMEOUT`]). Users only: a machine client has no user to act for.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rmcp::model::{CallToolResult, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::policy::Access;
use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error, tool_text};
use crate::vault::VaultError;

/// How long one call to the Todo API may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the Todo API.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Add,
    Complete,
    Delete,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::List, Op::Add, Op::Complete, Op::Delete];

    fn name(self) -> &'static str {
        match self {
            Op::List => "listTodos",
            Op::Add => "addTodo",
            Op::Complete => "completeTodo",
            Op::Delete => "deleteTodo",
        }
    }
}

/// One todo tool against the API at `base`.
pub struct TodoTool {
    op: Op,
    base: String,
    http: reqwest::Client,
}

impl TodoTool {
    pub fn new(op: Op, base: &str, http: reqwest::Client) -> Self {
        Self {
            op,
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    async fn run(&self, cx: &ToolCx<'_>) -> CallToolResult {
        let (method, path, body) = match self.op {
            Op::List => (Method::GET, "/todos".to_owned(), None),
            Op::Add => {
                let Some(title) = cx.str_arg("title") else {
                    return tool_error("addTodo needs a `title`");
                };
                (Method::POST, "/todos".to_owned(), Some(json!({ "title": title })))
            }
            Op::Complete | Op::Delete => {
                let Some(id) = cx.str_arg("id") else {
                    return tool_error(format!("{} needs the todo's `id`", self.op.name()));
                };
                if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || id.len() > 64 {
                    return tool_error("that is not a todo id");
                }
                match self.op {
                    Op::Complete => (
                        Method::PATCH,
                        format!("/todos/{id}"),
                        Some(json!({ "completed": true })),
                    ),
                    _ => (Method::DELETE, format!("/todos/{id}"), None),
                }
            }
        };
        let Some(vault) = cx.vault else {
            return tool_error("no token vault is configured for this server");
        };
        let token = match vault.upstream_token(cx.caller).await {
            Ok(t) => t,
            Err(e) => return vault_refusal(&e),
        };
        let mut answer = self.send(&method, &path, body.as_ref(), &token.access_token).await;
        if matches!(answer, Ok((StatusCode::UNAUTHORIZED, _))) {
            tracing::info!(tool = self.op.name(), sub = %cx.caller.sub, "Todo API refused the token; refreshing once");
            let token = match vault.refreshed_token(cx.caller).await {
                Ok(t) => t,
                Err(e) => return vault_refusal(&e),
            };
            answer = self.send(&method, &path, body.as_ref(), &token.access_token).await;
        }
        match answer {
            Ok((status, body)) => self.outcome(status, &body),
            Err(message) => tool_error(message),
        }
    }

    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(TIMEOUT);
        if let Some(body) = body {
            req = req.json(body);
        }
        let mut resp = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "Todo API unreachable");
            if e.is_timeout() {
                format!("the Todo API did not answer within {} s", TIMEOUT.as_secs())
            } else {
                "the Todo API cannot be reached".to_owned()
            }
        })?;
        let status = resp.status();
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err("the Todo API's answer is too large".into());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(format!("the Todo API did not answer within {} s", TIMEOUT.as_secs()));
                }
                Err(_) => return Err("the Todo API's answer was cut off".into()),
            }
        }
        Ok((status, bytes))
    }

    fn outcome(&self, status: StatusCode, body: &[u8]) -> CallToolResult {
        let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let described = |fallback: &str| {
            doc.get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| fallback.to_owned())
        };
        match status.as_u16() {
            200..=299 => match self.op {
                Op::List => tool_text(pretty(doc.get("todos").unwrap_or(&json!([])))),
                Op::Add => tool_text(format!("Added: {}", pretty(&doc))),
                Op::Complete => tool_text(format!("Completed: {}", pretty(&doc))),
                Op::Delete => tool_text("Deleted."),
            },
            401 => tool_error("the Todo API refused your sign-in even after a refresh: sign in again"),
            403 => tool_error(format!(
                "the Todo API says your sign-in lacks a permission: {}",
                described("insufficient scope")
            )),
            404 => tool_error("no such todo"),
            400 | 409 | 413 => tool_error(format!("the Todo API refused: {}", described("bad request"))),
            s if s >= 500 => {
                tracing::warn!(status = s, "Todo API failed");
                tool_error(format!("the Todo API is failing (HTTP {s}); try again later"))
            }
            s => tool_error(format!("the Todo API answered HTTP {s}")),
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// What a user can do when the vault gives no token.
fn vault_refusal(e: &VaultError) -> CallToolResult {
    tracing::info!(error = %e, "no downstream token for a todo tool");
    match e {
        VaultError::Revoked => tool_error(
            "your sign-in has ended (the identity provider refused to renew it): authorize this client again",
        ),
        VaultError::NoGrant | VaultError::NotFound => tool_error(
            "this server holds no Todo API token for your sign-in: sign in through this server's authorization",
        ),
        VaultError::Unavailable(_) | VaultError::TimedOut | VaultError::NoResponders => tool_error(format!(
            "the token vault is unavailable ({}); try again later",
            e.short()
        )),
    }
}

impl McpTool for TodoTool {
    fn definition(&self) -> Tool {
        let (description, input, annotations) = match self.op {
            Op::List => (
                "List your todos.",
                json!({ "type": "object", "properties": {} }),
                ToolAnnotations::new().read_only(true),
            ),
            Op::Add => (
                "Add a todo.",
                json!({
                    "type": "object",
                    "properties": { "title": { "type": "string", "maxLength": 500 } },
                    "required": ["title"]
                }),
                ToolAnnotations::new().read_only(false).destructive(false),
            ),
            Op::Complete => (
                "Mark one of your todos as completed.",
                json!({
                    "type": "object",
                    "properties": { "id": { "type": "string", "description": "The todo's id, as listed" } },
                    "required": ["id"]
                }),
                ToolAnnotations::new()
                    .read_only(false)
                    .idempotent(true)
                    .destructive(false),
            ),
            Op::Delete => (
                "Delete one of your todos.",
                json!({
                    "type": "object",
                    "properties": { "id": { "type": "string", "description": "The todo's id, as listed" } },
                    "required": ["id"]
                }),
                ToolAnnotations::new().read_only(false).destructive(true),
            ),
        };
        Tool::new(self.op.name(), description, schema(input)).with_annotations(annotations.open_world(true))
    }

    fn access(&self) -> Access {
        Access::users()
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move { Ok(self.run(&cx).await) })
    }
}
