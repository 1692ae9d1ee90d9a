//! The handler driven through rmcp in-process: an rmcp client and server over a
//! tokio duplex pipe, sessionful (`initialize`) and 2026-07-28 stateless.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use rmcp::{
    ClientHandler, ErrorData, ServiceExt,
    model::*,
    service::{
        NotificationContext, RequestContext, RoleClient, RoleServer, RunningService, ServiceError, serve_directly,
    },
};
use serde_json::{Value, json};

use crate::{McpServer, Profile, vault};

/// A client that answers sampling, elicitation and roots, and records the log
/// messages it receives.
#[derive(Clone, Default)]
struct FixtureClient {
    logs: Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    protocol: Option<ProtocolVersion>,
}

impl ClientHandler for FixtureClient {
    fn get_info(&self) -> ClientInfo {
        ClientInfo::new(
            ClientCapabilities::builder()
                .enable_roots()
                .enable_sampling()
                .enable_elicitation()
                .build(),
            Implementation::new("tools-tests", "0"),
        )
        .with_protocol_version(self.protocol.clone().unwrap_or(ProtocolVersion::V_2025_11_25))
    }

    async fn create_message(
        &self,
        _request: CreateMessageRequestParams,
        _cx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        Ok(
            CreateMessageResult::new(SamplingMessage::assistant_text("Paris."), "test-model".into())
                .with_stop_reason(CreateMessageResult::STOP_REASON_END_TURN),
        )
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Ok(ElicitResult::new(ElicitationAction::Accept)
            .with_content(json!({ "name": "Ferris", "color": "orange", "ok": true })))
    }

    async fn list_roots(&self, _cx: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![Root::new("file:///workspace")]))
    }

    async fn on_logging_message(&self, params: LoggingMessageNotificationParam, _cx: NotificationContext<RoleClient>) {
        self.logs.lock().unwrap().push(params);
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _cx: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(params);
    }
}

type Client = RunningService<RoleClient, FixtureClient>;

/// A sessionful pair: the client sends `initialize` at 2025-11-25.
async fn session(profile: Profile, client: FixtureClient) -> Client {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(running) = McpServer::new(profile, Some(user())).serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    client.serve(client_io).await.expect("initialize")
}

/// The caller of the sessions of [`session`].
fn user() -> proto::Principal {
    proto::Principal {
        iss: "https://issuer.test".into(),
        sub: "tester".into(),
        scopes: vec!["mcp".into()],
        ..Default::default()
    }
}

/// A sessionful pair around a handler built by the test.
async fn session_with(server: McpServer) -> Client {
    session_with_client(server, FixtureClient::default()).await
}

async fn session_with_client(server: McpServer, client: FixtureClient) -> Client {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    client.serve(client_io).await.expect("initialize")
}

/// A 2026-07-28 pair with no handshake, as a stateless HTTP request is served.
async fn stateless(profile: Profile) -> Client {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let client = FixtureClient {
        protocol: Some(ProtocolVersion::V_2026_07_28),
        ..FixtureClient::default()
    };
    let server_peer_info = client.get_info();
    let mut client_peer_info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build());
    client_peer_info.protocol_version = ProtocolVersion::V_2026_07_28;
    tokio::spawn(async move {
        let running =
            serve_directly::<RoleServer, _, _, _, _>(McpServer::new(profile, None), server_io, Some(server_peer_info));
        let _ = running.waiting().await;
    });
    serve_directly::<RoleClient, _, _, _, _>(client, client_io, Some(client_peer_info.into()))
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(name.to_owned()).with_arguments(args)
}

fn only_text(result: &CallToolResult) -> &str {
    assert_eq!(result.content.len(), 1, "{result:?}");
    &result.content[0].as_text().expect("text content").text
}

fn error_code(e: ServiceError) -> ErrorCode {
    match e {
        ServiceError::McpError(e) => e.code,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

#[test]
fn profile_parses_both_names_and_rejects_others() {
    assert_eq!("default".parse::<Profile>().unwrap(), Profile::Default);
    assert_eq!("conformance".parse::<Profile>().unwrap(), Profile::Conformance);
    assert!("Conformance".parse::<Profile>().is_err());
    assert_eq!(Profile::Conformance.to_string(), "conformance");
}

#[tokio::test]
async fn add_returns_the_sum_as_text() {
    let client = session(Profile::Default, FixtureClient::default()).await;
    let result = client.call_tool(call("add", json!({ "a": 2, "b": 3 }))).await.unwrap();
    assert_eq!(only_text(&result), "5");
    assert_ne!(result.is_error, Some(true));
    let result = client
        .call_tool(call("add", json!({ "a": 0.5, "b": -2 })))
        .await
        .unwrap();
    assert_eq!(only_text(&result), "-1.5");
}

#[tokio::test]
async fn add_with_a_missing_operand_is_a_tool_error() {
    let client = session(Profile::Default, FixtureClient::default()).await;
    let result = client.call_tool(call("add", json!({ "a": 2 }))).await.unwrap();
    assert_eq!(result.is_error, Some(true));
}

#[tokio::test]
async fn default_profile_lists_add_and_who_am_i_and_refuses_fixture_methods() {
    let client = session(Profile::Default, FixtureClient::default()).await;
    let info = client.peer_info().expect("server info");
    assert!(info.capabilities.tools.is_some());
    assert!(info.capabilities.resources.is_none());
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["add", "whoAmI"]);
    let e = client.call_tool(call("test_simple_text", json!({}))).await.unwrap_err();
    assert_eq!(error_code(e), ErrorCode::INVALID_PARAMS);
    let e = client.list_resources(None).await.unwrap_err();
    assert_eq!(error_code(e), ErrorCode::METHOD_NOT_FOUND);
}

#[tokio::test]
async fn unknown_methods_get_method_not_found() {
    for profile in [Profile::Default, Profile::Conformance] {
        let client = session(profile, FixtureClient::default()).await;
        let e = client
            .send_request(ClientRequest::CustomRequest(CustomRequest::new("no/such-method", None)))
            .await
            .unwrap_err();
        assert_eq!(error_code(e), ErrorCode::METHOD_NOT_FOUND);
    }
}

#[tokio::test]
async fn conformance_tools_are_listed_with_valid_names_and_schemas() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let tools = client.list_all_tools().await.unwrap();
    for expected in [
        "add",
        "test_simple_text",
        "test_image_content",
        "test_audio_content",
        "test_embedded_resource",
        "test_multiple_content_types",
        "test_tool_with_logging",
        "test_error_handling",
        "test_tool_with_progress",
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
        "json_schema_2020_12_tool",
        "test_reconnection",
        "test_custom_header",
        "test_missing_capability",
        "test_input_required_result_elicitation",
    ] {
        assert!(tools.iter().any(|t| t.name == expected), "{expected} missing");
    }
    for tool in &tools {
        assert!(tool.name.len() <= 128);
        assert!(
            tool.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "{}",
            tool.name
        );
        assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
        assert!(tool.description.is_some());
    }
    let schema = &tools
        .iter()
        .find(|t| t.name == "json_schema_2020_12_tool")
        .unwrap()
        .input_schema;
    for keyword in [
        "$schema",
        "$defs",
        "allOf",
        "if",
        "then",
        "else",
        "additionalProperties",
    ] {
        assert!(schema.contains_key(keyword), "{keyword} stripped");
    }
}

#[tokio::test]
async fn content_fixtures_return_the_documented_content() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let r = client.call_tool(call("test_simple_text", json!({}))).await.unwrap();
    assert_eq!(only_text(&r), "This is a simple text response for testing.");

    let r = client.call_tool(call("test_image_content", json!({}))).await.unwrap();
    let v = serde_json::to_value(&r.content[0]).unwrap();
    assert_eq!(v["type"], "image");
    assert_eq!(v["mimeType"], "image/png");

    let r = client.call_tool(call("test_audio_content", json!({}))).await.unwrap();
    let v = serde_json::to_value(&r.content[0]).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["mimeType"].as_str()),
        (Some("audio"), Some("audio/wav"))
    );

    let r = client
        .call_tool(call("test_embedded_resource", json!({})))
        .await
        .unwrap();
    let v = serde_json::to_value(&r.content[0]).unwrap();
    assert_eq!(v["resource"]["uri"], "test://embedded-resource");
    assert_eq!(v["resource"]["text"], "This is an embedded resource content.");

    let r = client
        .call_tool(call("test_multiple_content_types", json!({})))
        .await
        .unwrap();
    let kinds: Vec<_> = r
        .content
        .iter()
        .map(|c| serde_json::to_value(c).unwrap()["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("text"), json!("image"), json!("resource")]);

    let r = client.call_tool(call("test_error_handling", json!({}))).await.unwrap();
    assert_eq!(r.is_error, Some(true));

    let r = client
        .call_tool(call("json_schema_2020_12_tool", json!({ "name": "Ada" })))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "Hello, Ada!");

    let r = client
        .call_tool(call("test_custom_header", json!({ "value": "Hello" })))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "Hello");
}

#[tokio::test]
async fn resources_and_template_read_back() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let listed = client.list_resources(None).await.unwrap();
    assert!(listed.resources.iter().any(|r| r.uri == "test://static-text"));
    let templates = client.list_resource_templates(None).await.unwrap();
    assert_eq!(
        templates.resource_templates[0].uri_template,
        "test://template/{id}/data"
    );

    let read = |uri: &str| client.read_resource(ReadResourceRequestParams::new(uri));
    let text = serde_json::to_value(read("test://static-text").await.unwrap()).unwrap();
    assert_eq!(
        text["contents"][0]["text"],
        "This is the content of the static text resource."
    );
    let blob = serde_json::to_value(read("test://static-binary").await.unwrap()).unwrap();
    assert_eq!(blob["contents"][0]["mimeType"], "image/png");
    assert!(blob["contents"][0]["blob"].is_string());
    let templated = serde_json::to_value(read("test://template/123/data").await.unwrap()).unwrap();
    let data: Value = serde_json::from_str(templated["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        data,
        json!({ "id": "123", "templateTest": true, "data": "Data for ID: 123" })
    );
    // Legacy revisions keep -32002; rmcp maps it to -32602 for 2026-07-28 peers.
    let e = read("test://nope").await.unwrap_err();
    assert_eq!(error_code(e), ErrorCode::RESOURCE_NOT_FOUND);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_track_uris() {
    let server = McpServer::new(Profile::Conformance, None);
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let handler = server.clone();
    tokio::spawn(async move {
        if let Ok(running) = handler.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = FixtureClient::default().serve(client_io).await.unwrap();
    client
        .subscribe(SubscribeRequestParams::new("test://watched-resource"))
        .await
        .unwrap();
    assert_eq!(server.session.subscriptions(), ["test://watched-resource"]);
    client
        .unsubscribe(UnsubscribeRequestParams::new("test://watched-resource"))
        .await
        .unwrap();
    assert!(server.session.subscriptions().is_empty());
}

#[tokio::test]
async fn prompts_render_their_arguments() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let prompts = client.list_all_prompts().await.unwrap();
    assert!(prompts.iter().any(|p| p.name == "test_prompt_with_arguments"));
    let args = json!({ "arg1": "hello", "arg2": "world" });
    let Value::Object(args) = args else { unreachable!() };
    let got = client
        .get_prompt(GetPromptRequestParams::new("test_prompt_with_arguments").with_arguments(args))
        .await
        .unwrap();
    let v = serde_json::to_value(&got.messages[0]).unwrap();
    assert_eq!(
        v["content"]["text"],
        "Prompt with arguments: arg1='hello', arg2='world'"
    );
    let got = client
        .get_prompt(GetPromptRequestParams::new("test_prompt_with_image"))
        .await
        .unwrap();
    let v = serde_json::to_value(&got.messages[0]).unwrap();
    assert_eq!(v["content"]["type"], "image");
}

#[tokio::test]
async fn completion_filters_by_prefix() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let values = client
        .complete_prompt_simple("test_prompt_with_arguments", "arg1", "par")
        .await
        .unwrap();
    assert_eq!(values, ["paris", "park", "party"]);
}

#[tokio::test]
async fn logging_fixture_sends_three_messages_and_honours_set_level() {
    let client = FixtureClient::default();
    let logs = client.logs.clone();
    let client = session(Profile::Conformance, client).await;
    client
        .call_tool(call("test_tool_with_logging", json!({})))
        .await
        .unwrap();
    // Notifications are sent before the response on the same pipe.
    let texts: Vec<Value> = logs.lock().unwrap().iter().map(|l| l.data.clone()).collect();
    assert_eq!(
        texts,
        [
            json!("Tool execution started"),
            json!("Tool processing data"),
            json!("Tool execution completed")
        ]
    );
    logs.lock().unwrap().clear();
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .unwrap();
    client
        .call_tool(call("test_tool_with_logging", json!({})))
        .await
        .unwrap();
    assert!(logs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn sampling_and_elicitation_ask_the_client_over_the_session() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let r = client
        .call_tool(call("test_sampling", json!({ "prompt": "Capital of France?" })))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "LLM response: Paris.");
    let r = client
        .call_tool(call("test_elicitation", json!({ "message": "Who are you?" })))
        .await
        .unwrap();
    assert!(only_text(&r).starts_with("User response: action=accept"), "{r:?}");
}

#[tokio::test]
async fn stateless_discover_reports_every_supported_revision() {
    let client = stateless(Profile::Default).await;
    let discovered = client
        .send_request(ClientRequest::DiscoverRequest(DiscoverRequest::default()))
        .await;
    // The client attaches the per-request _meta itself.
    let ServerResult::DiscoverResult(result) = discovered.unwrap() else {
        panic!("expected a discover result")
    };
    assert_eq!(result.supported_versions, crate::SUPPORTED_PROTOCOL_VERSIONS);
}

#[tokio::test]
async fn stateless_add_and_mrtr_fixtures_complete_through_input_rounds() {
    let client = stateless(Profile::Conformance).await;
    let r = client.call_tool(call("add", json!({ "a": 40, "b": 2 }))).await.unwrap();
    assert_eq!(only_text(&r), "42");

    // rmcp's client fulfils each input_required round through FixtureClient.
    let r = client
        .call_tool(call("test_input_required_result_multi_round", json!({})))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "Multi-round flow complete");
    let r = client
        .call_tool(call("test_input_required_result_elicitation", json!({})))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "Hello, Ferris!");
    // Server→client requests become MRTR rounds on 2026-07-28.
    let r = client
        .call_tool(call("test_sampling", json!({ "prompt": "Capital of France?" })))
        .await
        .unwrap();
    assert_eq!(only_text(&r), "LLM response: Paris.");
}

#[tokio::test]
async fn stateless_first_round_is_input_required() {
    let client = stateless(Profile::Conformance).await;
    let first = client
        .call_tool_once(call("test_input_required_result_request_state", json!({})))
        .await
        .unwrap();
    let CallToolResponse::InputRequired(first) = first else {
        panic!("expected input_required, got {first:?}")
    };
    assert!(first.input_requests.as_ref().unwrap().contains_key("confirm"));
    let mut retry = call("test_input_required_result_request_state", json!({}));
    retry.request_state = Some(format!("{}x", first.request_state.unwrap()));
    let e = client.call_tool_once(retry).await.unwrap_err();
    assert_eq!(error_code(e), ErrorCode::INVALID_PARAMS);
}

/// A vault that answers every caller with one fixed reply.
struct FakeVault(Result<vault::UpstreamToken, vault::VaultError>);

impl vault::TokenVault for FakeVault {
    fn upstream_token<'a>(&'a self, _principal: &'a proto::Principal) -> vault::VaultFuture<'a> {
        let answer = self.0.clone();
        Box::pin(async move { answer })
    }
}

/// A JWT-shaped upstream token whose signature part is easy to spot.
const FAKE_SIGNATURE: &str = "FAKEUPSTREAMSIGNATURE0xC0FFEE";

fn fake_jwt() -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
    let payload = URL_SAFE_NO_PAD.encode(br#"{"aud":"https://api.github.test","login":"octo-secret"}"#);
    format!("{header}.{payload}.{FAKE_SIGNATURE}")
}

fn caller() -> proto::Principal {
    proto::Principal {
        iss: "https://auth.test".into(),
        sub: "alice".into(),
        email: Some("alice@example.test".into()),
        scopes: vec!["mcp".into()],
        expires_at: 1_800_000_000,
        grant_id: Some("g1".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn who_am_i_shows_identity_and_downstream_audience_never_the_token() {
    let token = fake_jwt();
    let server =
        McpServer::new(Profile::Default, Some(caller())).with_vault(Arc::new(FakeVault(Ok(vault::UpstreamToken {
            access_token: token.clone(),
            token_type: "Bearer".into(),
            expires_at: Some(1_900_000_000),
        }))));
    let client = session_with(server).await;
    let result = client.call_tool(call("whoAmI", json!({}))).await.unwrap();
    assert_ne!(result.is_error, Some(true));
    let text = only_text(&result);
    assert!(!text.contains(FAKE_SIGNATURE), "{text}");
    assert!(!text.contains(&token), "{text}");
    assert!(!text.contains("octo-secret"), "{text}");
    let report: Value = serde_json::from_str(text).unwrap();
    assert_eq!(report["iss"], "https://auth.test");
    assert_eq!(report["sub"], "alice");
    assert_eq!(report["email"], "alice@example.test");
    assert_eq!(report["scopes"], json!(["mcp"]));
    assert_eq!(report["expires_at"], 1_800_000_000);
    assert_eq!(
        report["downstream"],
        json!({
            "available": true,
            "expires_at": 1_900_000_000,
            "audience": "https://api.github.test",
            "error": null,
        })
    );
}

#[tokio::test]
async fn who_am_i_reports_vault_errors_and_a_missing_vault() {
    let revoked = McpServer::new(Profile::Default, Some(caller()))
        .with_vault(Arc::new(FakeVault(Err(vault::VaultError::Revoked))));
    let client = session_with(revoked).await;
    let result = client.call_tool(call("whoAmI", json!({}))).await.unwrap();
    let report: Value = serde_json::from_str(only_text(&result)).unwrap();
    assert_eq!(report["downstream"]["available"], false);
    assert_eq!(report["downstream"]["error"], "revoked");

    let client = session_with(McpServer::new(Profile::Default, Some(caller()))).await;
    let result = client.call_tool(call("whoAmI", json!({}))).await.unwrap();
    let report: Value = serde_json::from_str(only_text(&result)).unwrap();
    assert_eq!(
        report["downstream"],
        json!({ "available": false, "expires_at": null, "audience": null, "error": "no upstream token" })
    );

    // No authenticated caller: a tool error, not a protocol error.
    let client = session_with(McpServer::new(Profile::Default, None)).await;
    let result = client.call_tool(call("whoAmI", json!({}))).await.unwrap();
    assert_eq!(result.is_error, Some(true));
}

#[tokio::test]
async fn conformance_profile_does_not_serve_who_am_i() {
    let client = session(Profile::Conformance, FixtureClient::default()).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().all(|t| t.name != "whoAmI"));
    let e = client.call_tool(call("whoAmI", json!({}))).await.unwrap_err();
    assert_eq!(error_code(e), ErrorCode::INVALID_PARAMS);
}

/// A tool only holders of `x.use` may see, needing the `x.scope` scope.
struct Gated;

impl crate::McpTool for Gated {
    fn definition(&self) -> Tool {
        Tool::new(
            "gated",
            "needs x.use and x.scope",
            crate::toolbox::schema(json!({"type": "object"})),
        )
    }

    fn access(&self) -> crate::Access {
        crate::Access::users().permission("x.use").scope("x.scope")
    }

    fn call<'a>(&'a self, cx: crate::ToolCx<'a>) -> crate::ToolFuture<'a> {
        Box::pin(async move { Ok(crate::toolbox::tool_text(format!("hello {}", cx.caller.sub))) })
    }
}

fn gated_server(principal: proto::Principal) -> McpServer {
    let toolbox = crate::Toolbox::new(vec![Arc::new(crate::Add), Arc::new(Gated)], None).unwrap();
    McpServer::new(Profile::Default, Some(principal)).with_toolbox(toolbox)
}

#[tokio::test]
async fn an_unauthenticated_handler_lists_and_runs_nothing() {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(running) = McpServer::new(Profile::Default, None).serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = FixtureClient::default().serve(client_io).await.unwrap();
    assert!(client.list_all_tools().await.unwrap().is_empty());
    let result = client.call_tool(call("add", json!({ "a": 1, "b": 2 }))).await.unwrap();
    assert_eq!(result.is_error, Some(true));
}

#[tokio::test]
async fn gated_tools_are_listed_and_run_only_for_entitled_callers() {
    // Not entitled: not listed, and a call is a readable tool error.
    let client = session_with(gated_server(user())).await;
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["add"]);
    let result = client.call_tool(call("gated", json!({}))).await.unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(only_text(&result).contains("x.use"), "{}", only_text(&result));

    // Entitled but without the scope: listed, and a call is the step-up error whose
    // scope keeps what the token has.
    let permitted = proto::Principal {
        permissions: vec!["x.use".into()],
        ..user()
    };
    let client = session_with(gated_server(permitted.clone())).await;
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["add", "gated"]);
    let e = client.call_tool(call("gated", json!({}))).await.unwrap_err();
    let ServiceError::McpError(data) = e else {
        panic!("{e:?}")
    };
    assert_eq!(i64::from(data.code.0), proto::mcp::INSUFFICIENT_SCOPE);
    let data = data.data.unwrap();
    assert_eq!(data["scope"], "mcp x.scope");
    assert_eq!(data["code"], "INSUFFICIENT_SCOPE");
    let message = ServerJsonRpcMessage::error(
        ErrorData::new(ErrorCode(proto::mcp::INSUFFICIENT_SCOPE as i32), "x", Some(data)),
        None,
    );
    assert_eq!(crate::step_up_scopes(&message), ["mcp", "x.scope"]);

    // With both: it runs.
    let full = proto::Principal {
        scopes: vec!["mcp".into(), "x.scope".into()],
        ..permitted
    };
    let client = session_with(gated_server(full)).await;
    let result = client.call_tool(call("gated", json!({}))).await.unwrap();
    assert_eq!(only_text(&result), "hello tester");

    // Machines are refused (users only) even with the permission and scope.
    let robot = proto::Principal {
        kind: proto::SubjectKind::Machine,
        permissions: vec!["x.use".into()],
        scopes: vec!["x.scope".into()],
        ..user()
    };
    let client = session_with(gated_server(robot)).await;
    let result = client.call_tool(call("gated", json!({}))).await.unwrap();
    assert_eq!(result.is_error, Some(true));
}

#[test]
fn a_policy_file_naming_an_unknown_tool_is_refused() {
    let file = crate::PolicyFile::parse("[tools.gatd]\ndisabled = true\n", "p.toml").unwrap();
    let e = crate::Toolbox::new(vec![Arc::new(Gated)], Some((&file, "p.toml"))).unwrap_err();
    assert!(e.to_string().contains("gatd"), "{e}");
    let file = crate::PolicyFile::parse("[tools.gated]\npermissions = []\nscopes = []\n", "p.toml").unwrap();
    let toolbox = crate::Toolbox::new(vec![Arc::new(Gated)], Some((&file, "p.toml"))).unwrap();
    assert_eq!(toolbox.listed_names(Some(&user())), ["gated"]);
}

fn shipped_server(principal: proto::Principal) -> McpServer {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local");
    let settings = crate::shipped::Settings {
        allowed_emails: vec!["boss@example.com".into()],
        checklist_dir: Some(root.join("checklists")),
        process_dir: Some(root.join("processes")),
        ..Default::default()
    };
    McpServer::new(Profile::Default, Some(principal)).with_toolbox(crate::shipped::toolbox(&settings).unwrap())
}

async fn listed(client: &Client) -> Vec<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect()
}

fn png_of(result: &CallToolResult) -> (u32, u32, Vec<u8>) {
    use base64::Engine as _;
    let image = result
        .content
        .iter()
        .find_map(|c| c.as_image())
        .unwrap_or_else(|| panic!("no image in {result:?}"));
    assert_eq!(image.mime_type, "image/png");
    let bytes = base64::engine::general_purpose::STANDARD.decode(&image.data).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[tokio::test]
async fn generate_image_is_for_the_permission_or_the_allow_list_and_draws_the_prompt() {
    // Neither the permission nor an allow-listed address: not listed, refused.
    let client = session_with(shipped_server(user())).await;
    assert!(!listed(&client).await.contains(&"generateImage".to_owned()));
    let result = client
        .call_tool(call("generateImage", json!({ "prompt": "a fox" })))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));

    // The allow-listed address, any case.
    let boss = proto::Principal {
        email: Some("Boss@Example.com".into()),
        ..user()
    };
    let client = session_with(shipped_server(boss)).await;
    assert!(listed(&client).await.contains(&"generateImage".to_owned()));

    // The permission: a real PNG of the asked size that depends on the prompt.
    let artist = proto::Principal {
        permissions: vec!["image_generation".into()],
        ..user()
    };
    let client = session_with(shipped_server(artist)).await;
    let fox = client
        .call_tool(call(
            "generateImage",
            json!({ "prompt": "a red fox", "size": "256x256" }),
        ))
        .await
        .unwrap();
    assert_ne!(fox.is_error, Some(true), "{fox:?}");
    let (w, h, fox_pixels) = png_of(&fox);
    assert_eq!((w, h), (256, 256));
    let owl = client
        .call_tool(call(
            "generateImage",
            json!({ "prompt": "a grey owl", "size": "256x256" }),
        ))
        .await
        .unwrap();
    assert_ne!(png_of(&owl).2, fox_pixels);
    let (w, _, _) = png_of(
        &client
            .call_tool(call("generateImage", json!({ "prompt": "x" })))
            .await
            .unwrap(),
    );
    assert_eq!(w, 512, "default size");

    // Limits are tool errors.
    for args in [
        json!({ "prompt": "x".repeat(crate::image::MAX_PROMPT_CHARS + 1) }),
        json!({ "prompt": "x", "size": "4096x4096" }),
        json!({ "prompt": "   " }),
    ] {
        let result = client.call_tool(call("generateImage", args)).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{result:?}");
    }
}

#[tokio::test]
async fn document_tools_need_their_scopes_and_read_the_directories_safely() {
    // Without the scopes: listed (the client can step up), refused with the step-up error.
    let client = session_with(shipped_server(user())).await;
    let names = listed(&client).await;
    for tool in [
        "list_checklists",
        "get_checklist",
        "list_processes",
        "get_process",
        "search_processes",
    ] {
        assert!(names.contains(&tool.to_owned()), "{tool} in {names:?}");
    }
    let e = client
        .call_tool(call("get_checklist", json!({ "name": "release" })))
        .await
        .unwrap_err();
    let ServiceError::McpError(data) = e else {
        panic!("{e:?}")
    };
    assert_eq!(data.data.unwrap()["scope"], "mcp checklist.read");

    let reader = proto::Principal {
        scopes: [
            "mcp",
            "checklist.list",
            "checklist.read",
            "process.read",
            "process.search",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..user()
    };
    let client = session_with(shipped_server(reader)).await;
    let list: Value = serde_json::from_str(only_text(
        &client.call_tool(call("list_checklists", json!({}))).await.unwrap(),
    ))
    .unwrap();
    assert!(list["count"].as_u64().unwrap() >= 3, "{list}");
    let release = client
        .call_tool(call("get_checklist", json!({ "name": "release" })))
        .await
        .unwrap();
    assert!(only_text(&release).starts_with("# "), "{}", only_text(&release));
    let hits: Value = serde_json::from_str(only_text(
        &client
            .call_tool(call("search_processes", json!({ "query": "review" })))
            .await
            .unwrap(),
    ))
    .unwrap();
    assert!(hits["count"].as_u64().unwrap() >= 1, "{hits}");
    for bad in ["../static-users.json", "../../Cargo", "/etc/passwd", ".hidden", "nope"] {
        let result = client
            .call_tool(call("get_process", json!({ "name": bad })))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{bad}");
        assert!(
            !only_text(&result).contains("/work"),
            "no server paths: {}",
            only_text(&result)
        );
    }
}

#[tokio::test]
async fn documents_are_resources_read_with_their_scope() {
    let reader = proto::Principal {
        scopes: vec!["mcp".into(), "checklist.read".into()],
        ..user()
    };
    let client = session_with(shipped_server(reader)).await;
    assert!(client.peer_info().unwrap().capabilities.resources.is_some());
    let templates = client.list_resource_templates(None).await.unwrap().resource_templates;
    let uris: Vec<_> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(uris, ["checklist://{name}", "process://{name}"]);
    // Only the checklists are listed: process.read is missing.
    let listed = client.list_resources(None).await.unwrap().resources;
    assert!(!listed.is_empty());
    assert!(listed.iter().all(|r| r.uri.starts_with("checklist://")), "{listed:?}");
    let read = client
        .read_resource(ReadResourceRequestParams::new("checklist://release"))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("{read:?}")
    };
    assert!(text.starts_with("# "));
    // Without the scope: the step-up error; a bad name: not found.
    let e = client
        .read_resource(ReadResourceRequestParams::new("process://deploy"))
        .await
        .unwrap_err();
    let ServiceError::McpError(data) = e else {
        panic!("{e:?}")
    };
    assert_eq!(i64::from(data.code.0), proto::mcp::INSUFFICIENT_SCOPE);
    for uri in ["checklist://../static-users", "checklist://nope", "other://x"] {
        assert!(
            client.read_resource(ReadResourceRequestParams::new(uri)).await.is_err(),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn generate_image_reports_progress_while_it_draws() {
    let artist = proto::Principal {
        permissions: vec!["image_generation".into()],
        ..user()
    };
    let fixture = FixtureClient::default();
    let progress = fixture.progress.clone();
    let client = session_with_client(shipped_server(artist), fixture).await;
    let token = ProgressToken(NumberOrString::Number(7));
    let mut params = call(
        "generateImage",
        json!({ "prompt": "progress please", "size": "256x256" }),
    );
    params.meta = Some(RequestMetaObject::with_progress_token(token.clone()));
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    // Notifications may trail the response by a moment on the pipe.
    for _ in 0..100 {
        if progress.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let seen = progress.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    // rmcp's client puts its own token on the request: all carry that one.
    let token = seen[0].progress_token.clone();
    assert!(
        seen.iter().all(|p| p.progress_token == token && p.total == Some(256.0)),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap().progress, 256.0);
    assert!(seen.windows(2).all(|w| w[0].progress <= w[1].progress), "{seen:?}");
}

/// A one-shot HTTP server on loopback answering every request with `status` and `body`;
/// returns its base URL and what it was asked.
async fn images_api(status: u16, body: String) -> (String, Arc<Mutex<Vec<String>>>) {
    scripted_api(vec![(status, body)]).await
}

/// A loopback HTTP server answering its requests with `script` in order (the last answer
/// repeats); returns its base URL (`…/v1`) and the requests it got.
async fn scripted_api(script: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by Content-Length.
            loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let (status, body) = {
                let mut log = log.lock().unwrap();
                log.push(String::from_utf8_lossy(&buf).to_string());
                script[(log.len() - 1).min(script.len() - 1)].clone()
            };
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    (url, seen)
}

fn api_server(url: &str) -> McpServer {
    let settings = crate::shipped::Settings {
        image_api: Some(crate::shipped::ImageApi {
            url: url.to_owned(),
            key: Some("sk-test-key".into()),
            model: "test-model".into(),
        }),
        ..Default::default()
    };
    let artist = proto::Principal {
        permissions: vec!["image_generation".into()],
        ..user()
    };
    McpServer::new(Profile::Default, Some(artist)).with_toolbox(crate::shipped::toolbox(&settings).unwrap())
}

#[tokio::test]
async fn generate_image_uses_an_openai_compatible_api_when_configured() {
    use base64::Engine as _;
    let png = crate::render::render_png("from the api", 64, 64, &|| false, &mut |_, _| {}).unwrap();
    let body = json!({ "data": [{ "b64_json": base64::engine::general_purpose::STANDARD.encode(&png) }] });
    let (url, seen) = images_api(200, body.to_string()).await;
    let client = session_with(api_server(&url)).await;
    let result = client
        .call_tool(call("generateImage", json!({ "prompt": "a cat" })))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let (w, h, _) = png_of(&result);
    assert_eq!((w, h), (64, 64));
    let request = seen.lock().unwrap()[0].clone();
    assert!(request.starts_with("POST /v1/images/generations "), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer sk-test-key"),
        "{request}"
    );
    assert!(
        request.contains("\"model\":\"test-model\"") && request.contains("\"prompt\":\"a cat\""),
        "{request}"
    );

    // Failures are tool errors that never echo the key.
    for (status, body) in [
        (500, "{}".to_owned()),
        (200, json!({ "data": [{ "b64_json": "bm90IGEgcG5n" }] }).to_string()),
        (200, "not json".to_owned()),
    ] {
        let (url, _) = images_api(status, body).await;
        let client = session_with(api_server(&url)).await;
        let result = client
            .call_tool(call("generateImage", json!({ "prompt": "a cat" })))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{result:?}");
        assert!(!only_text(&result).contains("sk-test-key"));
    }
}

/// A vault whose tokens are numbered: `upstream_token` gives the current one,
/// `refreshed_token` the next (or `refresh` when set).
struct CountingVault {
    current: Mutex<u32>,
    refresh: Option<vault::VaultError>,
}

impl CountingVault {
    fn token(n: u32) -> vault::UpstreamToken {
        vault::UpstreamToken {
            access_token: format!("downstream-token-{n}"),
            token_type: "Bearer".into(),
            expires_at: None,
        }
    }
}

impl vault::TokenVault for CountingVault {
    fn upstream_token<'a>(&'a self, _principal: &'a proto::Principal) -> vault::VaultFuture<'a> {
        let n = *self.current.lock().unwrap();
        Box::pin(async move { Ok(Self::token(n)) })
    }

    fn refreshed_token<'a>(&'a self, _principal: &'a proto::Principal) -> vault::VaultFuture<'a> {
        let answer = match &self.refresh {
            Some(e) => Err(e.clone()),
            None => {
                let mut n = self.current.lock().unwrap();
                *n += 1;
                Ok(Self::token(*n))
            }
        };
        Box::pin(async move { answer })
    }
}

fn todo_server(api: &str, vault: Arc<dyn vault::TokenVault>) -> McpServer {
    let settings = crate::shipped::Settings {
        api_url: Some(api.trim_end_matches("/v1").to_owned()),
        ..Default::default()
    };
    McpServer::new(Profile::Default, Some(user()))
        .with_toolbox(crate::shipped::toolbox(&settings).unwrap())
        .with_vault(vault)
}

#[tokio::test]
async fn todo_tools_refresh_once_on_a_401_and_retry() {
    let todos = json!({ "todos": [{ "id": "a1", "title": "t", "completed": false }] }).to_string();
    let (api, seen) = scripted_api(vec![(401, "{}".into()), (200, todos)]).await;
    let vault = Arc::new(CountingVault {
        current: Mutex::new(0),
        refresh: None,
    });
    let client = session_with(todo_server(&api, vault)).await;
    let result = client.call_tool(call("listTodos", json!({}))).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert!(only_text(&result).contains("\"a1\""), "{}", only_text(&result));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one retry");
    assert!(
        seen[0].starts_with("GET /todos ") && seen[0].contains("Bearer downstream-token-0"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("Bearer downstream-token-1"),
        "the retry carries the refreshed token"
    );
    // No token of any kind in the answer.
    assert!(!only_text(&result).contains("downstream-token"));
}

#[tokio::test]
async fn todo_tools_turn_every_failure_into_a_readable_tool_error() {
    let error = |e: &str| json!({ "error": e, "error_description": format!("{e} said the api") }).to_string();
    /// The API's answers, the vault's answer to a refresh, the tool, its arguments, the text.
    type Case<'a> = (Vec<(u16, String)>, Option<vault::VaultError>, &'a str, Value, &'a str);
    let cases: Vec<Case> = vec![
        (vec![(401, "{}".into())], None, "listTodos", json!({}), "sign in again"),
        (
            vec![(401, "{}".into())],
            Some(vault::VaultError::Revoked),
            "listTodos",
            json!({}),
            "authorize this client again",
        ),
        (
            vec![(403, error("insufficient_scope"))],
            None,
            "addTodo",
            json!({ "title": "x" }),
            "lacks a permission",
        ),
        (
            vec![(404, error("not_found"))],
            None,
            "completeTodo",
            json!({ "id": "abc" }),
            "no such todo",
        ),
        (
            vec![(409, error("too_many_todos"))],
            None,
            "addTodo",
            json!({ "title": "x" }),
            "too_many_todos said the api",
        ),
        (
            vec![(503, "{}".into())],
            None,
            "deleteTodo",
            json!({ "id": "abc" }),
            "HTTP 503",
        ),
        (vec![(200, "{}".into())], None, "addTodo", json!({}), "needs a `title`"),
        (
            vec![(200, "{}".into())],
            None,
            "deleteTodo",
            json!({ "id": "../admin" }),
            "not a todo id",
        ),
    ];
    for (script, refresh, tool, args, expect) in cases {
        let (api, _) = scripted_api(script).await;
        let vault = Arc::new(CountingVault {
            current: Mutex::new(0),
            refresh,
        });
        let client = session_with(todo_server(&api, vault)).await;
        let result = client.call_tool(call(tool, args)).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{tool}: {result:?}");
        assert!(
            only_text(&result).contains(expect),
            "{tool}: {} lacks {expect:?}",
            only_text(&result)
        );
    }
    // No vault answer for this caller, and an API that is not there.
    let client = session_with(todo_server(
        "http://127.0.0.1:1",
        Arc::new(FakeVault(Err(vault::VaultError::NotFound))),
    ))
    .await;
    let result = client.call_tool(call("listTodos", json!({}))).await.unwrap();
    assert!(
        only_text(&result).contains("sign in through this server"),
        "{}",
        only_text(&result)
    );
    let vault = Arc::new(CountingVault {
        current: Mutex::new(0),
        refresh: None,
    });
    let client = session_with(todo_server("http://127.0.0.1:1", vault)).await;
    let result = client.call_tool(call("listTodos", json!({}))).await.unwrap();
    assert!(
        only_text(&result).contains("cannot be reached"),
        "{}",
        only_text(&result)
    );
}
