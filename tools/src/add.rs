//! `add`: the sum of two numbers, as in the Cloudflare remote-MCP template.

use rmcp::model::{CallToolResult, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error, tool_text};

pub(crate) const NAME: &str = "add";

/// Every authenticated caller may add.
pub struct Add;

impl McpTool for Add {
    fn definition(&self) -> Tool {
        tool()
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move { Ok(sum(&cx.args)) })
    }
}

pub(crate) fn tool() -> Tool {
    let input = schema(json!({
        "type": "object",
        "properties": {
            "a": { "type": "number", "description": "First addend" },
            "b": { "type": "number", "description": "Second addend" }
        },
        "required": ["a", "b"]
    }));
    Tool::new(NAME, "Add two numbers and return the sum.", input)
        .with_annotations(ToolAnnotations::new().read_only(true).idempotent(true))
}

/// Invalid arguments are a tool error the caller can read (`isError: true`),
/// not a protocol error.
pub(crate) fn sum(args: &rmcp::model::JsonObject) -> CallToolResult {
    let number = |key: &str| args.get(key).and_then(Value::as_f64);
    let (Some(a), Some(b)) = (number("a"), number("b")) else {
        return tool_error("add needs two numbers, `a` and `b`");
    };
    tool_text(format_number(a + b))
}

/// `3` rather than `3.0` for whole numbers, as JavaScript prints them.
fn format_number(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::format_number;

    #[test]
    fn whole_numbers_print_without_fraction() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(-2.0), "-2");
        assert_eq!(format_number(0.5), "0.5");
    }
}
