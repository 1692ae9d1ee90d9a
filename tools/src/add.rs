//! `add`: the sum of two numbers, as in the Cloudflare remote-MCP template.

use rmcp::{
    ErrorData,
    model::{CallToolRequestParams, CallToolResult, ContentBlock, JsonObject, Tool},
};
use serde_json::{Value, json};

pub(crate) const NAME: &str = "add";

pub(crate) fn tool() -> Tool {
    Tool::new(NAME, "Add two numbers and return the sum.", input_schema())
}

fn input_schema() -> JsonObject {
    let schema = json!({
        "type": "object",
        "properties": {
            "a": { "type": "number", "description": "First addend" },
            "b": { "type": "number", "description": "Second addend" }
        },
        "required": ["a", "b"]
    });
    match schema {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

/// Invalid arguments are a tool error the caller can read (`isError: true`),
/// not a protocol error.
pub(crate) fn call(request: &CallToolRequestParams) -> Result<CallToolResult, ErrorData> {
    let args = request.arguments.as_ref();
    let number = |key: &str| args.and_then(|a| a.get(key)).and_then(Value::as_f64);
    let (Some(a), Some(b)) = (number("a"), number("b")) else {
        return Ok(CallToolResult::error(vec![ContentBlock::text(
            "add needs two numbers, `a` and `b`",
        )]));
    };
    Ok(CallToolResult::success(vec![ContentBlock::text(format_number(a + b))]))
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
