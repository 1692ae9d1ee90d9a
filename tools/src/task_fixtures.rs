//! The fixtures of the conformance suite's tasks-extension scenarios (SEP-2663,
//! `@modelcontextprotocol/conformance` 0.2.0-alpha.12): a synchronous tool, an
//! optional-task tool that takes its time and can be cancelled, required-task
//! tools that end in a tool error, a protocol error, one input request, two at
//! once, and a multi-round-trip request that becomes a task once it has its input.

use std::time::Duration;

use rmcp::{
    ErrorData, RoleServer,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CreateTaskResult, InputRequests,
        InputRequiredResult, JsonObject, Tool,
    },
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::McpServer;
use crate::tasks::{TaskHandle, TaskSupport, extension_required, owner_of, wants_task};
use crate::{is_stateless_era, mrtr};

/// Longest `slow_compute` run.
const MAX_SECONDS: u64 = 600;

fn schema(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn text(t: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(t)])
}

pub(crate) fn tools() -> Vec<Tool> {
    let none = || schema(json!({ "type": "object", "properties": {} }));
    vec![
        Tool::new(
            "greet",
            "Greets `name` synchronously (never a task)",
            schema(json!({
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"]
            })),
        ),
        TaskSupport::Optional.mark(Tool::new(
            "slow_compute",
            "Works for `seconds`; a task when the client allows, cancellable",
            schema(json!({
                "type": "object",
                "properties": {
                    "seconds": { "type": "integer", "minimum": 0, "maximum": MAX_SECONDS },
                    "label": { "type": "string" }
                },
                "required": ["seconds"]
            })),
        )),
        TaskSupport::Required.mark(Tool::new(
            "failing_job",
            "A task that ends in a tool error (completed, isError)",
            none(),
        )),
        TaskSupport::Required.mark(Tool::new(
            "protocol_error_job",
            "A task that ends in a protocol error (failed)",
            none(),
        )),
        TaskSupport::Required.mark(Tool::new(
            "confirm_delete",
            "A task that asks the user to confirm deleting `filename`",
            schema(json!({
                "type": "object",
                "properties": { "filename": { "type": "string" } },
                "required": ["filename"]
            })),
        )),
        TaskSupport::Required.mark(Tool::new(
            "multi_input",
            "A task that asks for a name and a confirmation at once",
            none(),
        )),
        TaskSupport::Required.mark(Tool::new(
            "test_tool_with_task",
            "Asks for the user's name (multi-round-trip), then runs a task that greets them",
            none(),
        )),
    ]
}

/// Run as a task or not: a tool requiring tasks refuses a request that did not
/// declare the extension.
fn as_task(server: &McpServer, cx: &RequestContext<RoleServer>, support: TaskSupport) -> Result<bool, ErrorData> {
    let declared = wants_task(cx) && server.tasks.is_some();
    match support {
        TaskSupport::Required if !declared => Err(extension_required()),
        TaskSupport::Forbidden => Ok(false),
        _ => Ok(declared),
    }
}

async fn start<F>(
    server: &McpServer,
    cx: &RequestContext<RoleServer>,
    job: impl FnOnce(TaskHandle) -> F + Send + 'static,
) -> Result<CallToolResponse, ErrorData>
where
    F: std::future::Future<Output = Result<CallToolResult, ErrorData>> + Send + 'static,
{
    let tasks = server.tasks.as_ref().ok_or_else(extension_required)?;
    let task = tasks
        .start(
            owner_of(server.caller(cx)),
            Box::new(move |handle| Box::pin(job(handle))),
        )
        .await?;
    Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
}

fn confirm_request(message: &str) -> Result<rmcp::model::InputRequest, ErrorData> {
    mrtr::elicit(
        message,
        json!({
            "type": "object",
            "properties": { "confirm": { "type": "boolean" } },
            "required": ["confirm"]
        }),
    )
}

fn name_request() -> Result<rmcp::model::InputRequest, ErrorData> {
    mrtr::elicit(
        "What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"]
        }),
    )
}

/// `content.<field>` of an elicitation answer.
fn answered(answers: &rmcp::model::InputResponses, key: &str, field: &str) -> Option<Value> {
    answers.get(key)?.get("content")?.get(field).cloned()
}

async fn sleep_or_cancel(seconds: u64, cancel: tokio_util::sync::CancellationToken) -> Result<(), ErrorData> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => Ok(()),
        _ = cancel.cancelled() => Err(ErrorData::invalid_request("cancelled", None)),
    }
}

/// Serve a tasks fixture; `None` if `request` names none.
pub(crate) async fn call(
    server: &McpServer,
    request: &CallToolRequestParams,
    cx: &RequestContext<RoleServer>,
) -> Option<Result<CallToolResponse, ErrorData>> {
    let args = request.arguments.clone().unwrap_or_default();
    let result = match request.name.as_ref() {
        "greet" => {
            let name = args.get("name").and_then(Value::as_str).unwrap_or("World");
            Ok(text(format!("Hello, {name}!")).into())
        }
        "slow_compute" => slow_compute(server, cx, &args).await,
        "failing_job" => match as_task(server, cx, TaskSupport::Required) {
            Err(e) => Err(e),
            Ok(_) => {
                start(server, cx, |_| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(CallToolResult::error(vec![ContentBlock::text(
                        "failing_job failed, as it always does",
                    )]))
                })
                .await
            }
        },
        "protocol_error_job" => match as_task(server, cx, TaskSupport::Required) {
            Err(e) => Err(e),
            Ok(_) => {
                start(server, cx, |_| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(ErrorData::internal_error(
                        "protocol_error_job: a protocol-level failure, on purpose",
                        None,
                    ))
                })
                .await
            }
        },
        "confirm_delete" => match as_task(server, cx, TaskSupport::Required) {
            Err(e) => Err(e),
            Ok(_) => {
                let filename = args
                    .get("filename")
                    .and_then(Value::as_str)
                    .unwrap_or("the file")
                    .to_owned();
                start(server, cx, move |mut handle| async move {
                    let ask =
                        InputRequests::from([("confirm".to_owned(), confirm_request(&format!("Delete {filename}?"))?)]);
                    let answers = handle.ask(ask).await?;
                    Ok(match answered(&answers, "confirm", "confirm") {
                        Some(Value::Bool(true)) => text(format!("Deleted {filename}")),
                        _ => text(format!("Kept {filename}")),
                    })
                })
                .await
            }
        },
        "multi_input" => match as_task(server, cx, TaskSupport::Required) {
            Err(e) => Err(e),
            Ok(_) => {
                start(server, cx, |mut handle| async move {
                    let ask = InputRequests::from([
                        ("name".to_owned(), name_request()?),
                        ("confirm".to_owned(), confirm_request("Go ahead?")?),
                    ]);
                    let answers = handle.ask(ask).await?;
                    let name = answered(&answers, "name", "name");
                    let confirm = answered(&answers, "confirm", "confirm");
                    Ok(text(format!(
                        "Received name {} and confirmation {}",
                        name.as_ref().and_then(Value::as_str).unwrap_or("(none)"),
                        confirm.map(|c| c.to_string()).unwrap_or_else(|| "(none)".into()),
                    )))
                })
                .await
            }
        },
        "test_tool_with_task" => tool_with_task(server, request, cx).await,
        _ => return None,
    };
    Some(result)
}

async fn slow_compute(
    server: &McpServer,
    cx: &RequestContext<RoleServer>,
    args: &JsonObject,
) -> Result<CallToolResponse, ErrorData> {
    let seconds = args.get("seconds").and_then(Value::as_u64).unwrap_or(1);
    if seconds > MAX_SECONDS {
        return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
            "seconds must be at most {MAX_SECONDS}"
        ))])
        .into());
    }
    let label = args
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or("compute")
        .to_owned();
    if as_task(server, cx, TaskSupport::Optional)? {
        start(server, cx, move |handle| async move {
            handle.set_message(&format!("computing {label} for {seconds}s")).await;
            sleep_or_cancel(seconds, handle.cancellation()).await?;
            Ok(text(format!("{label}: computed in {seconds}s")))
        })
        .await
    } else {
        sleep_or_cancel(seconds, cx.ct.clone()).await?;
        Ok(text(format!("{label}: computed in {seconds}s")).into())
    }
}

/// Round one (2026-07-28) asks for the user's name as an `InputRequiredResult`;
/// the retry that carries it becomes a task. In a session the task asks itself.
async fn tool_with_task(
    server: &McpServer,
    request: &CallToolRequestParams,
    cx: &RequestContext<RoleServer>,
) -> Result<CallToolResponse, ErrorData> {
    as_task(server, cx, TaskSupport::Required)?;
    if is_stateless_era(cx) {
        let name = mrtr::response(request.input_responses.as_ref(), "user_name")
            .and_then(|answer| mrtr::elicited(answer, "name"))
            .map(str::to_owned);
        let Some(name) = name else {
            return Ok(InputRequiredResult::from_input_requests(InputRequests::from([(
                "user_name".to_owned(),
                name_request()?,
            )]))
            .into());
        };
        start(server, cx, move |_| async move {
            Ok(text(format!("Hello, {name}! This greeting ran as a task.")))
        })
        .await
    } else {
        start(server, cx, |mut handle| async move {
            let answers = handle
                .ask(InputRequests::from([("user_name".to_owned(), name_request()?)]))
                .await?;
            let name = answered(&answers, "user_name", "name");
            Ok(text(format!(
                "Hello, {}! This greeting ran as a task.",
                name.as_ref().and_then(Value::as_str).unwrap_or("friend")
            )))
        })
        .await
    }
}
