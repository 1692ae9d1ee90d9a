//! `count`: a counter kept in the session, to see (and test) what a session
//! guarantees. Its value survives the loss of the worker serving the session,
//! and a call retried after such a loss is answered once, never counted twice:
//! the session saves the counter together with the call's answer (see
//! [`McpTool::uses_session_state`]). Each change is also logged on the session's
//! own stream (`notifications/message`, GET /mcp or legacy `/sse`), which a
//! client that reconnects with `Last-Event-ID` gets without a gap.

use rmcp::model::{CallToolResult, ContentBlock, LoggingLevel, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error};

pub(crate) const NAME: &str = "count";
/// Largest step of one call.
const MAX_STEP: u64 = 1_000_000;

pub struct Count;

impl McpTool for Count {
    fn definition(&self) -> Tool {
        let input = schema(json!({
            "type": "object",
            "properties": {
                "by": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_STEP,
                    "default": 1,
                    "description": "How much to add"
                }
            }
        }));
        Tool::new(
            NAME,
            "Add `by` (default 1) to this session's counter and return the new value. The counter \
             lives with the session: it survives the loss of a server, and a retried call is never \
             counted twice. Needs a session (protocol 2025-11-25 or older).",
            input,
        )
        .with_raw_output_schema(std::sync::Arc::new(schema(json!({
            "type": "object",
            "properties": { "count": { "type": "integer" } },
            "required": ["count"]
        }))))
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .idempotent(false)
                .destructive(false),
        )
    }

    fn uses_session_state(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let Some(session) = cx.session else {
                return Ok(tool_error(
                    "count keeps its counter in a session: open one (protocol 2025-11-25 or older)",
                ));
            };
            let by = match cx.args.get("by") {
                None => 1,
                Some(v) => match v.as_u64().filter(|n| (1..=MAX_STEP).contains(n)) {
                    Some(n) => n,
                    None => return Ok(tool_error(format!("`by` must be an integer from 1 to {MAX_STEP}"))),
                },
            };
            let count = session
                .update(NAME, |old| {
                    Value::from(old.and_then(Value::as_u64).unwrap_or(0).saturating_add(by))
                })
                .as_u64()
                .unwrap_or(0);
            cx.log(LoggingLevel::Info, json!({ "count": count })).await;
            let mut result = CallToolResult::success(vec![ContentBlock::text(count.to_string())]);
            result.structured_content = Some(json!({ "count": count }));
            Ok(result)
        })
    }
}
