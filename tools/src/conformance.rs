//! The fixture profile: the tools, resources, resource template, prompts and
//! completions that the official MCP conformance suite's server scenarios call
//! (`@modelcontextprotocol/conformance` 0.1.16 and 0.2.0-alpha.12). Names,
//! texts and shapes follow each scenario's "Server Implementation Requirements".
#![allow(deprecated)] // sampling/logging are deprecated by SEP-2577 but still exercised

use rmcp::{
    ErrorData, RoleServer,
    model::{
        AudioContent, CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities,
        CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock, ElicitationAction, GetPromptRequestParams,
        GetPromptResponse, GetPromptResult, ImageContent, InputRequests, InputRequiredResult, JsonObject,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, LoggingLevel, ProgressNotificationParam,
        Prompt, PromptArgument, PromptMessage, ReadResourceResponse, ReadResourceResult, Reference, Resource,
        ResourceContents, ResourceTemplate, Role, Tool,
    },
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::{LIST_TTL_MS, McpServer, is_stateless_era, listen::ListChanged, logging, mrtr};

/// A 1×1 red PNG.
pub(crate) const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with no samples.
pub(crate) const WAV_SILENCE: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEARKwAAIhYAQACABAAZGF0YQAAAAA=";

/// Delay between the notifications of the logging and progress fixtures; the
/// scenarios check that a client can receive several during one call.
const STEP_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn no_args() -> JsonObject {
    object(json!({ "type": "object", "properties": {} }))
}

fn text(t: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(t)])
}

/// The SEP-1613/SEP-2106 schema the `json-schema-2020-12` scenario compares.
fn json_schema_2020_12() -> JsonObject {
    object(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {
                    "street": { "type": "string" },
                    "city": { "type": "string" }
                }
            }
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": {
            "properties": { "contactMethod": { "const": "phone" } },
            "required": ["contactMethod"]
        },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    }))
}

pub(crate) fn tools() -> Vec<Tool> {
    let plain = [
        ("test_simple_text", "Returns simple text content"),
        ("test_image_content", "Returns image content"),
        ("test_audio_content", "Returns audio content"),
        ("test_embedded_resource", "Returns embedded resource content"),
        (
            "test_multiple_content_types",
            "Returns text, image and resource content",
        ),
        ("test_tool_with_logging", "Sends three log notifications while it runs"),
        ("test_error_handling", "Always returns a tool error"),
        ("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100"),
        (
            "test_elicitation_sep1034_defaults",
            "Elicits a form whose fields all have defaults (SEP-1034)",
        ),
        (
            "test_elicitation_sep1330_enums",
            "Elicits a form with every enum variant (SEP-1330)",
        ),
        (
            "test_reconnection",
            "Closes its SSE stream mid-call and answers after the client reconnects (SEP-1699)",
        ),
        (
            "test_trigger_tool_change",
            "Sends notifications/tools/list_changed to listen streams",
        ),
        (
            "test_trigger_prompt_change",
            "Sends notifications/prompts/list_changed to listen streams",
        ),
        (
            "test_missing_capability",
            "Needs the sampling client capability; fails with -32021 without it",
        ),
        (
            "test_streaming_elicitation",
            "Answers with an input_required result holding an elicitation request",
        ),
        ("test_logging_tool", "Logs only when the request asked for a log level"),
    ];
    let mut tools: Vec<Tool> = plain
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, no_args()))
        .collect();
    tools.push(Tool::new(
        "test_sampling",
        "Asks the client to sample an LLM with the given prompt",
        object(json!({
            "type": "object",
            "properties": { "prompt": { "type": "string", "description": "The prompt to send" } },
            "required": ["prompt"]
        })),
    ));
    tools.push(Tool::new(
        "test_elicitation",
        "Asks the user for a username and e-mail address",
        object(json!({
            "type": "object",
            "properties": { "message": { "type": "string", "description": "The message to show" } },
            "required": ["message"]
        })),
    ));
    tools.push(Tool::new(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        json_schema_2020_12(),
    ));
    tools.push(Tool::new(
        "test_custom_header",
        "Echoes `value`, which the client mirrors into the Mcp-Param-Value header (SEP-2243)",
        object(json!({
            "type": "object",
            "properties": { "value": { "type": "string", "x-mcp-header": "Value" } },
            "required": ["value"]
        })),
    ));
    tools.extend(crate::task_fixtures::tools());
    tools.extend(
        mrtr::TOOLS
            .iter()
            .map(|(name, description)| Tool::new(*name, *description, no_args())),
    );
    tools
}

pub(crate) async fn call_tool(
    server: &McpServer,
    request: CallToolRequestParams,
    cx: RequestContext<RoleServer>,
) -> Result<CallToolResponse, ErrorData> {
    if let Some(result) = mrtr::call_fixture(&request, cx.client_capabilities()) {
        return result;
    }
    if let Some(result) = crate::task_fixtures::call(server, &request, &cx).await {
        return result;
    }
    let args = request.arguments.clone().unwrap_or_default();
    let arg = |key: &str| args.get(key).and_then(Value::as_str);
    let result = match request.name.as_ref() {
        "test_simple_text" => text("This is a simple text response for testing."),
        "test_image_content" => CallToolResult::success(vec![ContentBlock::image(PNG_1X1, "image/png")]),
        "test_audio_content" => {
            CallToolResult::success(vec![ContentBlock::Audio(AudioContent::new(WAV_SILENCE, "audio/wav"))])
        }
        "test_embedded_resource" => CallToolResult::success(vec![ContentBlock::resource(text_contents(
            "test://embedded-resource",
            "text/plain",
            "This is an embedded resource content.",
        ))]),
        "test_multiple_content_types" => CallToolResult::success(vec![
            ContentBlock::text("Multiple content types test:"),
            ContentBlock::image(PNG_1X1, "image/png"),
            ContentBlock::resource(text_contents(
                "test://mixed-content-resource",
                "application/json",
                r#"{"test":"data","value":123}"#,
            )),
        ]),
        "test_tool_with_logging" => {
            for (i, message) in [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(STEP_DELAY).await;
                }
                logging::log(&server.session, &cx, LoggingLevel::Info, json!(message)).await;
            }
            text("Logging test completed")
        }
        "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
            "This tool intentionally returns an error for testing",
        )]),
        "test_tool_with_progress" => {
            let token = cx.meta.get_progress_token();
            for (i, (progress, message)) in [(0.0, "Starting"), (50.0, "Halfway"), (100.0, "Complete")]
                .into_iter()
                .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(STEP_DELAY).await;
                }
                if let Some(token) = &token {
                    let param = ProgressNotificationParam::new(token.clone(), progress)
                        .with_total(100.0)
                        .with_message(message);
                    if let Err(error) = cx.peer.notify_progress(param).await {
                        tracing::debug!(%error, "progress notification not delivered");
                    }
                }
            }
            text("Progress test completed")
        }
        "test_sampling" => return sampling(&request, &cx, arg("prompt").unwrap_or("Hello")).await,
        "test_elicitation" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" }
                },
                "required": ["username", "email"]
            });
            let message = arg("message").unwrap_or("Please provide your information");
            return elicitation(&request, &cx, message, schema, "User response").await;
        }
        "test_elicitation_sep1034_defaults" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "name": { "type": "string", "description": "User's name", "default": "John Doe" },
                    "age": { "type": "integer", "description": "User's age", "default": 30 },
                    "score": { "type": "number", "description": "User's score", "default": 95.5 },
                    "status": {
                        "type": "string",
                        "description": "User's status",
                        "enum": ["active", "inactive", "pending"],
                        "default": "active"
                    },
                    "verified": { "type": "boolean", "description": "Whether user is verified", "default": true }
                }
            });
            let message = "Please review and update the form fields with defaults";
            return elicitation(&request, &cx, message, schema, "Elicitation completed").await;
        }
        "test_elicitation_sep1330_enums" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                    "titledSingle": {
                        "type": "string",
                        "oneOf": [
                            { "const": "value1", "title": "First Option" },
                            { "const": "value2", "title": "Second Option" },
                            { "const": "value3", "title": "Third Option" }
                        ]
                    },
                    "legacyEnum": {
                        "type": "string",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"]
                    },
                    "untitledMulti": {
                        "type": "array",
                        "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                    },
                    "titledMulti": {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                { "const": "value1", "title": "First Choice" },
                                { "const": "value2", "title": "Second Choice" },
                                { "const": "value3", "title": "Third Choice" }
                            ]
                        }
                    }
                }
            });
            let message = "Choose from every kind of enum field";
            return elicitation(&request, &cx, message, schema, "Elicitation completed").await;
        }
        "json_schema_2020_12_tool" => text(format!("Hello, {}!", arg("name").unwrap_or("world"))),
        "test_reconnection" => {
            // The transport closes the SSE stream before this answer (SEP-1699
            // polling); the delay gives it time to, and the client resumes with
            // Last-Event-ID to collect the result.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            text("Reconnection test completed")
        }
        "test_custom_header" => match arg("value") {
            Some(value) => text(value),
            None => return Err(ErrorData::invalid_params("`value` must be a string", None)),
        },
        "test_trigger_tool_change" => {
            server.listen.notify(ListChanged::Tools).await;
            text("Tool list change triggered")
        }
        "test_trigger_prompt_change" => {
            server.listen.notify(ListChanged::Prompts).await;
            text("Prompt list change triggered")
        }
        "test_missing_capability" => {
            if cx.client_capabilities().and_then(|c| c.sampling).is_none() {
                return Err(ErrorData::missing_required_client_capability(
                    ClientCapabilities::builder().enable_sampling().build(),
                ));
            }
            text("Required capability declared")
        }
        "test_streaming_elicitation" => {
            let request = mrtr::elicit(
                "Provide a value",
                json!({
                    "type": "object",
                    "properties": { "value": { "type": "string" } },
                    "required": ["value"]
                }),
            )?;
            return Ok(InputRequiredResult::from_input_requests(InputRequests::from([(
                "streaming_elicitation".to_owned(),
                request,
            )]))
            .into());
        }
        "test_logging_tool" => {
            let level = cx.meta.log_level().unwrap_or(LoggingLevel::Info);
            logging::log(&server.session, &cx, level, json!("logLevel was requested")).await;
            text("Logging tool completed")
        }
        other => return Err(crate::unknown_tool(other)),
    };
    Ok(result.into())
}

/// Ask the client to sample: a `sampling/createMessage` request over the session
/// on legacy revisions, an MRTR round on 2026-07-28.
async fn sampling(
    request: &CallToolRequestParams,
    cx: &RequestContext<RoleServer>,
    prompt: &str,
) -> Result<CallToolResponse, ErrorData> {
    const KEY: &str = "sampling";
    if is_stateless_era(cx) {
        return Ok(match mrtr::response(request.input_responses.as_ref(), KEY) {
            Some(answer) => text(format!(
                "LLM response: {}",
                mrtr::sampled_text(answer).unwrap_or("(no text)")
            ))
            .into(),
            None => {
                InputRequiredResult::from_input_requests(InputRequests::from([(KEY.to_owned(), mrtr::sample(prompt))]))
                    .into()
            }
        });
    }
    if cx.client_capabilities().and_then(|c| c.sampling).is_none() {
        return Err(ErrorData::missing_required_client_capability(
            ClientCapabilities::builder().enable_sampling().build(),
        ));
    }
    let result = match cx.peer.create_message(mrtr::sampling_params(prompt)).await {
        Ok(result) => {
            let reply = result
                .message
                .content
                .first()
                .and_then(|c| c.as_text())
                .map(|t| t.text.clone())
                .unwrap_or_else(|| "(no text)".to_owned());
            text(format!("LLM response: {reply}"))
        }
        Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("Sampling error: {e}"))]),
    };
    Ok(result.into())
}

fn action_name(action: &ElicitationAction) -> &'static str {
    match action {
        ElicitationAction::Accept => "accept",
        ElicitationAction::Decline => "decline",
        ElicitationAction::Cancel => "cancel",
        _ => "unknown",
    }
}

/// Ask the user to fill in a form: `elicitation/create` over the session on
/// legacy revisions, an MRTR round on 2026-07-28.
async fn elicitation(
    request: &CallToolRequestParams,
    cx: &RequestContext<RoleServer>,
    message: &str,
    schema: Value,
    label: &str,
) -> Result<CallToolResponse, ErrorData> {
    const KEY: &str = "elicitation";
    if is_stateless_era(cx) {
        return Ok(match mrtr::response(request.input_responses.as_ref(), KEY) {
            Some(answer) => {
                let action = answer.get("action").and_then(Value::as_str).unwrap_or("cancel");
                let content = answer.get("content").cloned().unwrap_or(Value::Null);
                text(format!("{label}: action={action}, content={content}")).into()
            }
            None => InputRequiredResult::from_input_requests(InputRequests::from([(
                KEY.to_owned(),
                mrtr::elicit(message, schema)?,
            )]))
            .into(),
        });
    }
    if cx.client_capabilities().and_then(|c| c.elicitation).is_none() {
        return Err(ErrorData::missing_required_client_capability(
            ClientCapabilities::builder().enable_elicitation().build(),
        ));
    }
    let params = mrtr::form(message, schema)?;
    let result = match cx.peer.create_elicitation(params).await {
        Ok(answer) => {
            let content = answer
                .content
                .map(|c| serde_json::to_string(&c).unwrap_or_default())
                .unwrap_or_else(|| "null".to_owned());
            text(format!(
                "{label}: action={}, content={content}",
                action_name(&answer.action)
            ))
        }
        Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("Elicitation error: {e}"))]),
    };
    Ok(result.into())
}

fn text_contents(uri: &str, mime_type: &str, text: &str) -> ResourceContents {
    ResourceContents::TextResourceContents {
        uri: uri.into(),
        mime_type: Some(mime_type.into()),
        text: text.into(),
        meta: None,
    }
}

pub(crate) fn list_resources() -> ListResourcesResult {
    ListResourcesResult::with_all_items(vec![
        Resource::new("test://static-text", "Static Text Resource")
            .with_description("A static text resource for testing")
            .with_mime_type("text/plain"),
        Resource::new("test://static-binary", "Static Binary Resource")
            .with_description("A static binary resource (a PNG) for testing")
            .with_mime_type("image/png"),
        Resource::new("test://watched-resource", "Watched Resource")
            .with_description("A resource clients may subscribe to")
            .with_mime_type("text/plain"),
    ])
    .with_ttl_ms(LIST_TTL_MS)
    .with_cache_scope(CacheScope::Public)
}

pub(crate) fn list_resource_templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("test://template/{id}/data", "Dynamic Resource")
            .with_description("A dynamic resource with parameter substitution")
            .with_mime_type("application/json"),
    ])
    .with_ttl_ms(LIST_TTL_MS)
    .with_cache_scope(CacheScope::Public)
}

pub(crate) fn read_resource(uri: &str) -> Result<ReadResourceResponse, ErrorData> {
    let contents = match uri {
        "test://static-text" => text_contents(uri, "text/plain", "This is the content of the static text resource."),
        "test://watched-resource" => text_contents(uri, "text/plain", "Watched resource content."),
        "test://static-binary" => ResourceContents::BlobResourceContents {
            uri: uri.into(),
            mime_type: Some("image/png".into()),
            blob: PNG_1X1.into(),
            meta: None,
        },
        _ => match uri
            .strip_prefix("test://template/")
            .and_then(|rest| rest.strip_suffix("/data"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
        {
            Some(id) => text_contents(
                uri,
                "application/json",
                &json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string(),
            ),
            // rmcp turns this into -32602 for 2026-07-28 peers (SEP-2164).
            None => {
                return Err(ErrorData::resource_not_found(
                    "Resource not found",
                    Some(json!({ "uri": uri })),
                ));
            }
        },
    };
    Ok(ReadResourceResult::new(vec![contents])
        .with_ttl_ms(LIST_TTL_MS)
        .with_cache_scope(CacheScope::Public)
        .into())
}

pub(crate) fn list_prompts() -> ListPromptsResult {
    let arg = |name: &str, description: &str| {
        PromptArgument::new(name)
            .with_description(description)
            .with_required(true)
    };
    ListPromptsResult::with_all_items(vec![
        Prompt::new("test_simple_prompt", Some("A simple prompt without arguments"), None),
        Prompt::new(
            "test_prompt_with_arguments",
            Some("A prompt with two arguments"),
            Some(vec![
                arg("arg1", "First test argument"),
                arg("arg2", "Second test argument"),
            ]),
        ),
        Prompt::new(
            "test_prompt_with_embedded_resource",
            Some("A prompt that embeds a resource"),
            Some(vec![arg("resourceUri", "URI of the resource to embed")]),
        ),
        Prompt::new("test_prompt_with_image", Some("A prompt that includes an image"), None),
        Prompt::new(
            "test_input_required_result_prompt",
            Some("A prompt that first elicits its context (SEP-2322)"),
            None,
        ),
    ])
    .with_ttl_ms(LIST_TTL_MS)
    .with_cache_scope(CacheScope::Public)
}

pub(crate) fn get_prompt(request: GetPromptRequestParams) -> Result<GetPromptResponse, ErrorData> {
    let args = request.arguments.unwrap_or_default();
    let arg = |key: &str| args.get(key).and_then(Value::as_str).unwrap_or_default();
    let result = match request.name.as_str() {
        "test_simple_prompt" => GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            "This is a simple prompt for testing.",
        )]),
        "test_prompt_with_arguments" => GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1"), arg("arg2")),
        )]),
        "test_prompt_with_embedded_resource" => {
            let uri = match arg("resourceUri") {
                "" => "test://static-text",
                uri => uri,
            };
            GetPromptResult::new(vec![
                PromptMessage::new_resource(
                    Role::User,
                    uri.to_owned(),
                    Some("text/plain".to_owned()),
                    Some("Embedded resource content for testing.".to_owned()),
                    None,
                    None,
                    None,
                ),
                PromptMessage::new_text(Role::User, "Please process the embedded resource above."),
            ])
        }
        "test_prompt_with_image" => GetPromptResult::new(vec![
            PromptMessage::new(Role::User, ContentBlock::Image(ImageContent::new(PNG_1X1, "image/png"))),
            PromptMessage::new_text(Role::User, "Please analyze the image above."),
        ]),
        "test_input_required_result_prompt" => {
            return match mrtr::response(request.input_responses.as_ref(), "user_context") {
                Some(answer) => Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                    Role::User,
                    format!(
                        "Prompt with elicited context: {}",
                        mrtr::elicited(answer, "context").unwrap_or("(none)")
                    ),
                )])
                .into()),
                None => Ok(InputRequiredResult::from_input_requests(InputRequests::from([(
                    "user_context".to_owned(),
                    mrtr::elicit(
                        "What context should the prompt use?",
                        json!({
                            "type": "object",
                            "properties": { "context": { "type": "string" } },
                            "required": ["context"]
                        }),
                    )?,
                )]))
                .into()),
            };
        }
        other => {
            return Err(ErrorData::invalid_params(
                format!("unknown prompt: {other}"),
                Some(json!({ "name": other })),
            ));
        }
    };
    Ok(result.into())
}

/// Completion candidates filtered by the typed prefix.
pub(crate) fn complete(request: &CompleteRequestParams) -> Result<CompleteResult, ErrorData> {
    let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
        (Reference::Resource(_), "id") => &["1", "2", "3", "123"],
        (Reference::Prompt(_), "arg1" | "arg2") => &["paris", "park", "party", "hello", "world"],
        (Reference::Prompt(_), "resourceUri") => &["test://static-text", "test://static-binary"],
        _ => &[],
    };
    let typed = request.argument.value.as_str();
    let values: Vec<String> = candidates
        .iter()
        .filter(|c| c.starts_with(typed))
        .map(|c| (*c).to_owned())
        .collect();
    let info = CompletionInfo::new(values).map_err(|e| ErrorData::internal_error(e, None))?;
    Ok(CompleteResult::new(info))
}
