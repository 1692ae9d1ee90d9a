//! SEP-2243 `Mcp-Param-*` headers: a tool may mark arguments with
//! `x-mcp-header: <Name>` in its input schema; a 2026-07-28 client then repeats
//! the argument in an `Mcp-Param-<Name>` header (Base64-wrapped as
//! `=?base64?…?=` when needed) so intermediaries can route on it. The
//! gateway forwards those headers; this module checks them against the body,
//! because only the worker knows the tool's schema.

use base64::Engine as _;
use serde_json::Value;

const PARAM_PREFIX: &str = "mcp-param-";
const B64_PREFIX: &str = "=?base64?";
const B64_SUFFIX: &str = "?=";

/// A header disagrees with the body: answered as JSON-RPC -32020.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderMismatch(pub String);

/// `(path, header name)` of every `x-mcp-header` annotation reached through `properties`.
fn annotations(schema: &serde_json::Map<String, Value>) -> Vec<(Vec<String>, String)> {
    fn walk(props: Option<&Value>, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let Some(Value::Object(props)) = props else { return };
        for (name, sub) in props {
            path.push(name.clone());
            if let Some(Value::String(h)) = sub.get("x-mcp-header")
                && !h.is_empty()
            {
                out.push((path.clone(), h.to_ascii_lowercase()));
            }
            walk(sub.get("properties"), path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema.get("properties"), &mut Vec::new(), &mut out);
    out
}

/// Undo the `=?base64?…?=` wrapping; plain values are taken literally.
pub fn decode(value: &str) -> Option<String> {
    match value.strip_prefix(B64_PREFIX).and_then(|v| v.strip_suffix(B64_SUFFIX)) {
        Some(inner) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(inner).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(value.to_owned()),
    }
}

fn primitive(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Check the `Mcp-Param-*` headers of a `tools/call` against its arguments.
pub fn check_params(
    schema: &serde_json::Map<String, Value>,
    arguments: Option<&Value>,
    headers: &[(String, String)],
) -> Result<(), HeaderMismatch> {
    for (path, name) in annotations(schema) {
        let full = format!("{PARAM_PREFIX}{name}");
        let mut values = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(&full));
        let header = values.next().map(|(_, v)| v.trim());
        if values.next().is_some() {
            return Err(HeaderMismatch(format!("duplicate {full} header")));
        }
        let body = arguments
            .and_then(|a| path.iter().try_fold(a, |v, k| v.get(k)))
            .filter(|v| !v.is_null())
            .and_then(primitive);
        let prop = path.join(".");
        match (header, body) {
            (None, None) => {}
            (Some(_), None) => return Err(HeaderMismatch(format!("unexpected {full} header for absent `{prop}`"))),
            (None, Some(_)) => return Err(HeaderMismatch(format!("missing {full} header for `{prop}`"))),
            (Some(raw), Some(expected)) => {
                let decoded =
                    decode(raw).ok_or_else(|| HeaderMismatch(format!("{full} header is not valid Base64")))?;
                if decoded != expected {
                    return Err(HeaderMismatch(format!(
                        "{full} header does not match the body value of `{prop}`"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> serde_json::Map<String, Value> {
        match json!({"type":"object","properties":{
            "region":{"type":"string","x-mcp-header":"Region"},
            "nested":{"type":"object","properties":{"n":{"type":"integer","x-mcp-header":"N"}}},
            "free":{"type":"string"}}})
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matching_headers_pass() {
        let args = json!({"region":"eu-west","nested":{"n":3}});
        assert!(
            check_params(
                &schema(),
                Some(&args),
                &h(&[("mcp-param-region", "eu-west"), ("mcp-param-n", "3")])
            )
            .is_ok()
        );
        // Base64-wrapped values are decoded; whitespace around values is not significant.
        let args = json!({"region":" spaced "});
        assert!(
            check_params(
                &schema(),
                Some(&args),
                &h(&[("mcp-param-region", "=?base64?IHNwYWNlZCA=?=")])
            )
            .is_ok()
        );
        // No annotated argument, no header: fine.
        assert!(check_params(&schema(), Some(&json!({"free":"x"})), &[]).is_ok());
    }

    #[test]
    fn every_disagreement_is_refused() {
        let args = json!({"region":"eu"});
        assert!(check_params(&schema(), Some(&args), &[]).is_err(), "missing header");
        assert!(
            check_params(&schema(), Some(&args), &h(&[("mcp-param-region", "us")])).is_err(),
            "wrong value"
        );
        assert!(
            check_params(&schema(), Some(&args), &h(&[("mcp-param-region", "=?base64?ZXU?=")])).is_err(),
            "bad padding"
        );
        assert!(
            check_params(&schema(), Some(&args), &h(&[("mcp-param-region", "=?base64?e*u=?=")])).is_err(),
            "bad chars"
        );
        assert!(
            check_params(&schema(), Some(&json!({})), &h(&[("mcp-param-region", "eu")])).is_err(),
            "no argument"
        );
        assert!(
            check_params(
                &schema(),
                Some(&args),
                &h(&[("mcp-param-region", "eu"), ("Mcp-Param-Region", "eu")])
            )
            .is_err(),
            "duplicate"
        );
    }

    #[test]
    fn literal_values_without_the_full_wrapper() {
        let args = json!({"region":"=?base64?abc"});
        assert!(check_params(&schema(), Some(&args), &h(&[("mcp-param-region", "=?base64?abc")])).is_ok());
    }
}
