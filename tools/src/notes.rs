//! `notes`: a list of short notes kept per user, to see (and test) what per-user
//! state guarantees. Unlike `count` (kept in a session) it works in every protocol
//! revision, stateless 2026-07-28 requests included: the list lives with the user
//! (see [`crate::user`]), so every session and every stateless request of the same
//! user sees the same list, it survives the loss of any worker, and an addition
//! sent again after a failover is made once.

use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error};
use crate::user::UserError;

pub(crate) const NAME: &str = "notes";
/// Most notes a user keeps; adding past it drops the oldest.
pub const MAX_NOTES: usize = 100;
/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

pub struct Notes;

/// What one call does to the list.
fn op_of(args: &serde_json::Map<String, Value>) -> Result<Value, String> {
    let clear = match args.get("clear") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err("`clear` must be a boolean".into()),
    };
    let add = match args.get("add") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => return Err("`add` must not be empty".into()),
        Some(Value::String(text)) if text.chars().count() > MAX_NOTE_CHARS => {
            return Err(format!("a note holds at most {MAX_NOTE_CHARS} characters"));
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err("`add` must be a string".into()),
    };
    Ok(json!({ "clear": clear, "add": add }))
}

impl McpTool for Notes {
    fn definition(&self) -> Tool {
        let input = schema(json!({
            "type": "object",
            "properties": {
                "add": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_NOTE_CHARS,
                    "description": "A note to add"
                },
                "clear": {
                    "type": "boolean",
                    "default": false,
                    "description": "Delete every note first"
                }
            }
        }));
        Tool::new(
            NAME,
            "Your notes: add one (`add`), delete all (`clear`), or with no argument list them. The \
             list is yours across sessions and protocol revisions, survives the loss of a server, \
             and an addition that is retried is made once.",
            input,
        )
        .with_raw_output_schema(std::sync::Arc::new(schema(json!({
            "type": "object",
            "properties": { "notes": { "type": "array", "items": { "type": "string" } } },
            "required": ["notes"]
        }))))
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .idempotent(false)
                .destructive(false),
        )
    }

    fn update_user_state(&self, state: Option<&Value>, op: &Value) -> Result<(Value, Value), String> {
        let mut notes: Vec<Value> = state.and_then(Value::as_array).cloned().unwrap_or_default();
        let Some(op) = op.as_object() else {
            return Err("a notes operation is an object".into());
        };
        let op = op_of(op)?;
        if op["clear"] == Value::Bool(true) {
            notes.clear();
        }
        if let Value::String(text) = &op["add"] {
            notes.push(Value::String(text.clone()));
            if notes.len() > MAX_NOTES {
                notes.drain(..notes.len() - MAX_NOTES);
            }
        }
        let answer = json!({ "notes": notes });
        Ok((Value::Array(notes), answer))
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            // Checked here to answer bad input at once; the owner checks again.
            let op = match op_of(&cx.args) {
                Ok(_) => Value::Object(cx.args.clone()),
                Err(message) => return Ok(tool_error(message)),
            };
            let Some(users) = cx.users else {
                return Ok(tool_error("notes are not available on this server"));
            };
            let op_id = uuid::Uuid::new_v4().simple().to_string();
            match users.apply(cx.caller, NAME, op, &op_id).await {
                Ok(answer) => {
                    let count = answer["notes"].as_array().map_or(0, Vec::len);
                    let text = match count {
                        0 => "no notes".to_owned(),
                        1 => "1 note".to_owned(),
                        n => format!("{n} notes"),
                    };
                    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                    result.structured_content = Some(answer);
                    Ok(result)
                }
                Err(UserError::Refused(message)) => Ok(tool_error(message)),
                Err(err @ UserError::Unavailable(_)) => {
                    tracing::warn!(error = %err, "notes: user state unavailable");
                    Ok(tool_error(err.to_string()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(state: Option<Value>, op: Value) -> Result<(Value, Value), String> {
        Notes.update_user_state(state.as_ref(), &op)
    }

    #[test]
    fn adds_lists_and_clears() {
        let (state, answer) = apply(None, json!({"add": "one"})).unwrap();
        assert_eq!(answer, json!({"notes": ["one"]}));
        let (state, answer) = apply(Some(state), json!({"add": "two"})).unwrap();
        assert_eq!(answer, json!({"notes": ["one", "two"]}));
        let (state, answer) = apply(Some(state), json!({})).unwrap();
        assert_eq!(answer, json!({"notes": ["one", "two"]}));
        let (state, answer) = apply(Some(state), json!({"clear": true, "add": "three"})).unwrap();
        assert_eq!(answer, json!({"notes": ["three"]}));
        let (_, answer) = apply(Some(state), json!({"add": null, "clear": null})).unwrap();
        assert_eq!(answer, json!({"notes": ["three"]}));
    }

    #[test]
    fn keeps_the_newest_when_full() {
        let mut state = None;
        for i in 0..MAX_NOTES + 5 {
            state = Some(apply(state, json!({"add": format!("n{i}")})).unwrap().0);
        }
        let notes = state.unwrap();
        let notes = notes.as_array().unwrap();
        assert_eq!(notes.len(), MAX_NOTES);
        assert_eq!(notes[0], json!("n5"));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(apply(None, json!({"add": ""})).is_err());
        assert!(apply(None, json!({"add": 3})).is_err());
        assert!(apply(None, json!({"clear": "yes"})).is_err());
        assert!(apply(None, json!({"add": "x".repeat(MAX_NOTE_CHARS + 1)})).is_err());
        assert!(apply(None, json!([1])).is_err());
    }
}
