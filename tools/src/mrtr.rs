//! Multi-round-trip requests (MRTR, SEP-2322): how the handler asks a
//! 2026-07-28 client for input without sending it a request.
//!
//! A handler that needs input answers with an `InputRequiredResult` naming what
//! it needs (`inputRequests`, keyed by names it chooses) and optionally an opaque
//! `requestState`; the client retries the same request with `inputResponses`
//! under the same keys and the echoed `requestState`. Nothing is remembered
//! between rounds, so any worker can serve any round.
//!
//! `requestState` is sealed with rmcp's [`RequestStateCodec`] (HMAC): the client
//! holds it, so it is untrusted input until it verifies. The key below only
//! protects the conformance fixtures' round counters; tools that put anything
//! worth forging in `requestState` must take a secret key from configuration.
#![allow(deprecated)] // sampling and roots are deprecated by SEP-2577 but still MRTR inputs

use rmcp::{
    ErrorData,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
        CreateMessageRequest, CreateMessageRequestParams, ElicitRequest, ElicitRequestParams, InputRequest,
        InputRequests, InputRequiredResult, InputResponses, ListRootsRequest, RequestStateCodec, SamplingMessage,
    },
};
use serde_json::{Map, Value, json};

/// Key for the fixtures' `requestState`. Shared by every worker so that any of
/// them can open what another sealed; see the module docs for its limits.
const FIXTURE_STATE_KEY: &[u8] = b"mcp-cluster conformance fixture request-state key v1";

fn codec() -> RequestStateCodec {
    RequestStateCodec::new_unchecked(FIXTURE_STATE_KEY)
}

/// An `elicitation/create` input request for a form.
pub(crate) fn elicit(message: &str, requested_schema: Value) -> Result<InputRequest, ErrorData> {
    Ok(InputRequest::Elicitation(ElicitRequest::new(form(
        message,
        requested_schema,
    )?)))
}

/// Form elicitation parameters from a JSON schema.
pub(crate) fn form(message: &str, requested_schema: Value) -> Result<ElicitRequestParams, ErrorData> {
    serde_json::from_value(json!({
        "mode": "form",
        "message": message,
        "requestedSchema": requested_schema,
    }))
    .map_err(|e| ErrorData::internal_error(format!("fixture elicitation schema: {e}"), None))
}

/// A `sampling/createMessage` input request with one user message.
pub(crate) fn sample(prompt: &str) -> InputRequest {
    InputRequest::CreateMessage(CreateMessageRequest::new(sampling_params(prompt)))
}

pub(crate) fn sampling_params(prompt: &str) -> CreateMessageRequestParams {
    CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100)
}

/// A `roots/list` input request.
pub(crate) fn list_roots() -> InputRequest {
    InputRequest::ListRoots(ListRootsRequest::default())
}

/// The client's answer under `key`, if it is a result object. Anything else
/// (missing, or a bare value) counts as missing, so the handler asks again
/// rather than failing (SEP-2322 recommends re-requesting).
pub(crate) fn response<'a>(responses: Option<&'a InputResponses>, key: &str) -> Option<&'a Map<String, Value>> {
    responses.and_then(|r| r.get(key)).and_then(Value::as_object)
}

/// `content.<field>` of an elicitation result, as text.
pub(crate) fn elicited<'a>(result: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    result.get("content").and_then(|c| c.get(field)).and_then(Value::as_str)
}

/// `content.text` of a sampling result.
pub(crate) fn sampled_text(result: &Map<String, Value>) -> Option<&str> {
    let content = result.get("content")?;
    match content {
        Value::Array(blocks) => blocks.iter().find_map(|b| b.get("text").and_then(Value::as_str)),
        other => other.get("text").and_then(Value::as_str),
    }
}

fn seal(state: &Value) -> Result<String, ErrorData> {
    codec()
        .seal_json(state)
        .map_err(|e| ErrorData::internal_error(format!("sealing requestState: {e}"), None))
}

fn open(sealed: &str) -> Result<Value, ErrorData> {
    codec()
        .open_json(sealed)
        .map_err(|_| ErrorData::invalid_params("requestState failed integrity verification", None))
}

fn one(key: &str, request: InputRequest) -> InputRequests {
    InputRequests::from([(key.to_owned(), request)])
}

fn done(text: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
}

/// Names of the SEP-2322 fixture tools; all take no arguments.
pub(crate) const TOOLS: &[(&str, &str)] = &[
    (
        "test_input_required_result_elicitation",
        "Asks for a name with an elicitation input request (SEP-2322)",
    ),
    (
        "test_input_required_result_sampling",
        "Asks for a sampling input request (SEP-2322)",
    ),
    (
        "test_input_required_result_list_roots",
        "Asks for the client's roots with a roots/list input request (SEP-2322)",
    ),
    (
        "test_input_required_result_request_state",
        "Round-trips an integrity-protected requestState (SEP-2322)",
    ),
    (
        "test_input_required_result_multiple_inputs",
        "Asks for elicitation, sampling and roots in one round (SEP-2322)",
    ),
    (
        "test_input_required_result_multi_round",
        "Takes two input rounds, carrying progress in requestState (SEP-2322)",
    ),
    (
        "test_input_required_result_tampered_state",
        "Rejects a requestState that fails verification (SEP-2322)",
    ),
    (
        "test_input_required_result_capabilities",
        "Asks only for inputs the client declared capabilities for (SEP-2322)",
    ),
];

fn name_request() -> Result<InputRequest, ErrorData> {
    elicit(
        "What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"]
        }),
    )
}

/// Serve one of [`TOOLS`]; `None` if `request` names none of them.
pub(crate) fn call_fixture(
    request: &CallToolRequestParams,
    capabilities: Option<ClientCapabilities>,
) -> Option<Result<CallToolResponse, ErrorData>> {
    let responses = request.input_responses.as_ref();
    let state = request.request_state.as_deref();
    let result = match request.name.as_ref() {
        "test_input_required_result_elicitation" => match response(responses, "user_name") {
            Some(answer) => done(format!("Hello, {}!", elicited(answer, "name").unwrap_or("friend"))),
            None => name_request().map(|r| InputRequiredResult::from_input_requests(one("user_name", r)).into()),
        },
        "test_input_required_result_sampling" => match response(responses, "capital_question") {
            Some(answer) => done(format!(
                "Sampling response: {}",
                sampled_text(answer).unwrap_or("(no text)")
            )),
            None => Ok(InputRequiredResult::from_input_requests(one(
                "capital_question",
                sample("What is the capital of France?"),
            ))
            .into()),
        },
        "test_input_required_result_list_roots" => match response(responses, "client_roots") {
            Some(answer) => {
                let uris: Vec<&str> = answer
                    .get("roots")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.get("uri").and_then(Value::as_str))
                    .collect();
                done(format!("Client roots: [{}]", uris.join(", ")))
            }
            None => Ok(InputRequiredResult::from_input_requests(one("client_roots", list_roots())).into()),
        },
        "test_input_required_result_request_state" | "test_input_required_result_tampered_state" => {
            request_state_round(state)
        }
        "test_input_required_result_multiple_inputs" => multiple_inputs(responses, state),
        "test_input_required_result_multi_round" => multi_round(state),
        "test_input_required_result_capabilities" => capability_aware(responses, capabilities),
        _ => return None,
    };
    Some(result)
}

fn request_state_round(state: Option<&str>) -> Result<CallToolResponse, ErrorData> {
    match state {
        None => {
            let confirm = elicit(
                "Please confirm",
                json!({
                    "type": "object",
                    "properties": { "ok": { "type": "boolean" } },
                    "required": ["ok"]
                }),
            )?;
            let sealed = seal(&json!({ "stage": "confirm" }))?;
            Ok(InputRequiredResult::new(Some(one("confirm", confirm)), Some(sealed)).into())
        }
        Some(sealed) => {
            open(sealed)?;
            done("Confirmed: state-ok")
        }
    }
}

fn multiple_inputs(responses: Option<&InputResponses>, state: Option<&str>) -> Result<CallToolResponse, ErrorData> {
    if let Some(sealed) = state {
        open(sealed)?;
    }
    let keys = ["user_name", "greeting", "client_roots"];
    if state.is_some() && keys.iter().all(|k| response(responses, k).is_some()) {
        return done("All inputs received");
    }
    let requests = InputRequests::from([
        ("user_name".to_owned(), name_request()?),
        ("greeting".to_owned(), sample("Generate a greeting")),
        ("client_roots".to_owned(), list_roots()),
    ]);
    let sealed = seal(&json!({ "stage": "gather" }))?;
    Ok(InputRequiredResult::new(Some(requests), Some(sealed)).into())
}

fn multi_round(state: Option<&str>) -> Result<CallToolResponse, ErrorData> {
    let round = match state {
        None => 0,
        Some(sealed) => open(sealed)?.get("round").and_then(Value::as_u64).unwrap_or(0),
    };
    let (key, message, field) = match round {
        0 => ("step1", "Step 1: What is your name?", "name"),
        1 => ("step2", "Step 2: What is your favorite color?", "color"),
        _ => return done("Multi-round flow complete"),
    };
    let request = elicit(
        message,
        json!({
            "type": "object",
            "properties": { field: { "type": "string" } },
            "required": [field]
        }),
    )?;
    let sealed = seal(&json!({ "round": round + 1 }))?;
    Ok(InputRequiredResult::new(Some(one(key, request)), Some(sealed)).into())
}

fn capability_aware(
    responses: Option<&InputResponses>,
    capabilities: Option<ClientCapabilities>,
) -> Result<CallToolResponse, ErrorData> {
    if responses.is_some() {
        return done("Capability-aware flow complete");
    }
    let capabilities = capabilities.unwrap_or_default();
    let mut requests = InputRequests::new();
    if capabilities.elicitation.is_some() {
        requests.insert("user_name".to_owned(), name_request()?);
    }
    if capabilities.sampling.is_some() {
        requests.insert("greeting".to_owned(), sample("Generate a greeting"));
    }
    if capabilities.roots.is_some() {
        requests.insert("client_roots".to_owned(), list_roots());
    }
    if requests.is_empty() {
        done("Client declared no capabilities that input requests need")
    } else {
        Ok(InputRequiredResult::from_input_requests(requests).into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_round_trips_and_tampering_is_rejected() {
        let sealed = seal(&json!({ "round": 1 })).unwrap();
        assert_eq!(open(&sealed).unwrap(), json!({ "round": 1 }));
        let mut tampered = sealed.clone();
        tampered.push('x');
        assert_eq!(
            open(&tampered).unwrap_err().code,
            rmcp::model::ErrorCode::INVALID_PARAMS
        );
    }
}
