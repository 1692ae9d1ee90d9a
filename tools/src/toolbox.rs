//! The tool interface for tool authors and the registry the server serves from.
//!
//! A tool is a type implementing [`McpTool`]: its definition (name, description,
//! input schema, annotations), what it needs ([`Access`]), and `call`. A
//! [`Toolbox`] holds the tools with their access after the operator's policy file
//! ([`crate::policy::PolicyFile`]) and decides, with [`crate::policy::decide`], on
//! every `tools/list` and again on every `tools/call`, always for the caller of the
//! request being served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proto::Principal;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, CreateTaskResult, ErrorCode, JsonObject, ProgressNotificationParam,
    ProgressToken, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::policy::{Access, Decision, PolicyError, PolicyFile, decide};
use crate::tasks::{Job, TaskHandle, TaskSupport, Tasks, extension_required, owner_of};
use crate::user::UserStore;
use crate::vault::TokenVault;

/// What [`McpTool::call`] returns.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<CallToolResult, ErrorData>> + Send + 'a>>;

/// A tool. Return tool errors (bad arguments, a downstream refusal) as
/// `CallToolResult::error`, which the model can read; `Err` is for protocol errors.
pub trait McpTool: Send + Sync + 'static {
    /// Name, description, input schema, annotations.
    fn definition(&self) -> Tool;

    /// What a caller needs to see and call it, before the operator's policy file.
    fn access(&self) -> Access {
        Access::anyone()
    }

    /// Whether it may run as an MCP task (the tasks extension) when the client
    /// allows: worth it for work that takes long. The runtime does the rest:
    /// `call` is the same either way, and [`ToolCx::progress`] becomes the task's
    /// status message.
    fn task_support(&self) -> TaskSupport {
        TaskSupport::Forbidden
    }

    /// Whether it keeps state in the session ([`ToolCx::session`]). A session runs
    /// such calls one at a time and saves the state together with each call's
    /// answer, so a call retried after a failover is answered, never run twice.
    fn uses_session_state(&self) -> bool {
        false
    }

    /// For a tool that keeps per-user state ([`crate::user`]): apply `op` (what
    /// its `call` sent to [`ToolCx::users`]) to its `state` (`None` at first);
    /// the new state and the answer. Runs on the user's owner, one at a time; an
    /// `Err` is shown to the caller and changes nothing. Keep it pure: it may run
    /// on any worker, and again on another after a failover.
    fn update_user_state(&self, _state: Option<&Value>, _op: &Value) -> Result<(Value, Value), String> {
        Err("this tool keeps no user state".into())
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a>;
}

/// One call of a tool: who calls, with what, and the means to report progress and
/// notice cancellation.
pub struct ToolCx<'a> {
    /// The principal of the token that came with this request.
    pub caller: &'a Principal,
    pub args: JsonObject,
    /// Where the caller's upstream (downstream API) token comes from.
    pub vault: Option<&'a dyn TokenVault>,
    /// Cancelled when the client sends `notifications/cancelled` (or the session
    /// ends), or for a task, `tasks/cancel`.
    pub cancel: CancellationToken,
    /// The session's state, in a session (none for stateless requests and tasks).
    pub session: Option<&'a crate::SessionState>,
    /// Where per-user state lives ([`crate::user`]), when the server keeps it.
    pub users: Option<&'a dyn UserStore>,
    progress: Progress,
    /// `notifications/message` for this request, at its threshold.
    logger: Option<(Peer<RoleServer>, rmcp::model::LoggingLevel)>,
}

/// Where [`ToolCx::progress`] goes.
enum Progress {
    None,
    /// `notifications/progress` to the client that sent this progress token.
    Notify(Peer<RoleServer>, ProgressToken),
    /// The status message of the task the call runs as.
    Task(TaskHandle),
}

impl<'a> ToolCx<'a> {
    pub(crate) fn new(
        caller: &'a Principal,
        args: JsonObject,
        vault: Option<&'a dyn TokenVault>,
        session: Option<&'a crate::SessionState>,
        users: Option<&'a dyn UserStore>,
        rcx: &RequestContext<RoleServer>,
    ) -> Self {
        Self {
            caller,
            args,
            vault,
            cancel: rcx.ct.clone(),
            session,
            users,
            progress: match rcx.meta.get_progress_token() {
                Some(token) => Progress::Notify(rcx.peer.clone(), token),
                None => Progress::None,
            },
            logger: session
                .and_then(|s| crate::logging::threshold(s, rcx))
                .map(|level| (rcx.peer.clone(), level)),
        }
    }

    /// Send `notifications/message` to the client, when the request's (or the
    /// session's) log level lets it through. Delivery failures are logged here.
    pub async fn log(&self, level: rmcp::model::LoggingLevel, data: Value) {
        if let Some((peer, threshold)) = &self.logger {
            crate::logging::send(peer, *threshold, level, data).await;
        }
    }

    /// A call running as the task of `handle`.
    pub(crate) fn for_task(
        caller: &'a Principal,
        args: JsonObject,
        vault: Option<&'a dyn TokenVault>,
        users: Option<&'a dyn UserStore>,
        handle: TaskHandle,
    ) -> Self {
        Self {
            caller,
            args,
            vault,
            cancel: handle.cancellation(),
            session: None,
            users,
            progress: Progress::Task(handle),
            logger: None,
        }
    }

    /// A call outside any MCP request (tests of a tool's own behaviour).
    #[cfg(test)]
    pub(crate) fn detached(caller: &'a Principal, args: Value, cancel: CancellationToken) -> Self {
        Self {
            caller,
            args: schema(args),
            vault: None,
            cancel,
            session: None,
            users: None,
            progress: Progress::None,
            logger: None,
        }
    }

    /// A string argument, trimmed; `None` when absent, not a string or empty.
    pub fn str_arg(&self, key: &str) -> Option<&str> {
        self.args
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    pub fn f64_arg(&self, key: &str) -> Option<f64> {
        self.args.get(key).and_then(Value::as_f64)
    }

    /// Whether the client asked for progress notifications (or the call runs as a
    /// task, whose status message shows the progress).
    pub fn wants_progress(&self) -> bool {
        !matches!(self.progress, Progress::None)
    }

    /// Send `notifications/progress` if the client asked for it (with a progress
    /// token), or set the task's status message; a lost notification is not an
    /// error.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: &str) {
        let (peer, token) = match &self.progress {
            Progress::None => return,
            Progress::Task(handle) => {
                let text = match total {
                    Some(total) if total > 0.0 => format!("{message} ({:.0}%)", 100.0 * progress / total),
                    _ => message.to_owned(),
                };
                handle.set_message(&text).await;
                return;
            }
            Progress::Notify(peer, token) => (peer, token),
        };
        let mut param = ProgressNotificationParam::new(token.clone(), progress).with_message(message);
        if let Some(total) = total {
            param = param.with_total(total);
        }
        if let Err(error) = peer.notify_progress(param).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}

/// A tool error result with one text block.
pub fn tool_error(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

/// A successful result with one text block.
pub fn tool_text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

/// A JSON object schema from a `json!` literal (anything else: an empty object).
pub fn schema(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

struct Entry {
    tool: Arc<dyn McpTool>,
    definition: Tool,
    access: Access,
    task_support: TaskSupport,
}

/// The tools a server offers, with their effective access, and the documents it
/// offers as resources.
#[derive(Clone, Default)]
pub struct Toolbox {
    entries: Arc<Vec<Entry>>,
    library: Option<crate::documents::Library>,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.definition.name.as_ref()))
            .finish()
    }
}

/// What a call may use besides its arguments: the token vault, the task runtime,
/// the session's state (none for a stateless request) and the users' state.
#[derive(Clone, Copy, Default)]
pub struct CallWith<'a> {
    pub vault: Option<&'a Arc<dyn TokenVault>>,
    pub tasks: Option<&'a Tasks>,
    pub session: Option<&'a crate::SessionState>,
    pub users: Option<&'a Arc<dyn UserStore>>,
}

impl Toolbox {
    /// `tools` with their own access, changed by `policy` (whose tool names must all
    /// be among `tools`).
    pub fn new(tools: Vec<Arc<dyn McpTool>>, policy: Option<(&PolicyFile, &str)>) -> Result<Self, PolicyError> {
        let mut entries: Vec<Entry> = tools
            .into_iter()
            .map(|tool| Entry {
                definition: tool.task_support().mark(tool.definition()),
                access: tool.access(),
                task_support: tool.task_support(),
                tool,
            })
            .collect();
        if let Some((file, path)) = policy {
            file.check_names(entries.iter().map(|e| e.definition.name.as_ref()), path)?;
            for entry in &mut entries {
                if let Some(change) = file.tools.get(entry.definition.name.as_ref()) {
                    change.apply(&mut entry.access);
                }
            }
        }
        Ok(Self {
            entries: Arc::new(entries),
            library: None,
        })
    }

    /// Also serve `library` as resources.
    pub fn with_library(mut self, library: crate::documents::Library) -> Self {
        self.library = Some(library).filter(|l| !l.is_empty());
        self
    }

    pub fn library(&self) -> Option<&crate::documents::Library> {
        self.library.as_ref()
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.definition.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    /// Whether running `name` twice does no harm: annotated read-only or idempotent.
    pub fn is_idempotent(&self, name: &str) -> bool {
        self.entry(name)
            .and_then(|e| e.definition.annotations.as_ref())
            .is_some_and(|a| a.read_only_hint == Some(true) || a.idempotent_hint == Some(true))
    }

    /// Apply a user-state operation with tool `name`'s
    /// [`McpTool::update_user_state`] (`Err` for no such tool).
    pub fn update_user_state(&self, name: &str, state: Option<&Value>, op: &Value) -> Result<(Value, Value), String> {
        match self.entry(name) {
            Some(entry) => entry.tool.update_user_state(state, op),
            None => Err(format!("no tool {name}")),
        }
    }

    /// Whether `name` keeps state in the session ([`McpTool::uses_session_state`]).
    pub fn uses_session_state(&self, name: &str) -> bool {
        self.entry(name).is_some_and(|e| e.tool.uses_session_state())
    }

    /// The effective access of a tool (after the policy file).
    pub fn access(&self, name: &str) -> Option<&Access> {
        self.entry(name).map(|e| &e.access)
    }

    /// The definitions `caller` may see: granted tools, including those that only
    /// lack a scope (the client can step up for them).
    pub fn listed(&self, caller: Option<&Principal>) -> Vec<Tool> {
        self.entries
            .iter()
            .filter(|e| decide(&e.access, caller).listed())
            .map(|e| e.definition.clone())
            .collect()
    }

    /// The names `caller` may see, in order (what a list-changed check compares).
    pub fn listed_names(&self, caller: Option<&Principal>) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| decide(&e.access, caller).listed())
            .map(|e| e.definition.name.to_string())
            .collect()
    }

    /// The definition of `name` if `caller` may see it.
    pub fn get(&self, name: &str, caller: Option<&Principal>) -> Option<Tool> {
        self.entry(name)
            .filter(|e| decide(&e.access, caller).listed())
            .map(|e| e.definition.clone())
    }

    /// Decide again for this request's caller, then run the tool: as a task when the
    /// tool supports it, `tasks` is given and the request declared the tasks
    /// extension. `None` when there is no such tool. A missing scope is the
    /// step-up error ([`insufficient_scope`]); any other refusal a tool error.
    pub async fn call(
        &self,
        name: &str,
        caller: Option<&Principal>,
        args: JsonObject,
        rcx: &RequestContext<RoleServer>,
        with: CallWith<'_>,
    ) -> Option<Result<CallToolResponse, ErrorData>> {
        let CallWith {
            vault,
            tasks,
            session,
            users,
        } = with;
        let entry = self.entry(name)?;
        let caller = match (decide(&entry.access, caller), caller) {
            (Decision::Allow, Some(caller)) => caller,
            (Decision::MissingScopes(missing), Some(caller)) => {
                tracing::info!(tool = name, sub = %caller.sub, missing = ?missing, "tool call needs more scopes");
                return Some(Err(insufficient_scope(caller, &missing)));
            }
            (Decision::Deny(denial), _) => {
                tracing::info!(tool = name, sub = caller.map(|c| c.sub.as_str()), reason = %denial, "tool call refused");
                return Some(Ok(tool_error(denial.to_string()).into()));
            }
            (_, None) => return Some(Ok(tool_error(crate::policy::Denial::Unauthenticated.to_string()).into())),
        };
        // Only a tool that can run as a task looks at the request's capabilities (not free).
        let runtime = match entry.task_support {
            TaskSupport::Forbidden => None,
            _ => tasks.filter(|_| crate::tasks::wants_task(rcx)),
        };
        match (entry.task_support, runtime) {
            (TaskSupport::Optional | TaskSupport::Required, Some(tasks)) => {
                let owner = owner_of(Some(caller));
                let (tool, caller, vault, users) = (entry.tool.clone(), caller.clone(), vault.cloned(), users.cloned());
                let job: Job = Box::new(move |handle| {
                    Box::pin(async move {
                        let cx = ToolCx::for_task(&caller, args, vault.as_deref(), users.as_deref(), handle);
                        tool.call(cx).await
                    })
                });
                Some(
                    tasks
                        .start(owner, job)
                        .await
                        .map(|task| CallToolResponse::Task(CreateTaskResult::new(task))),
                )
            }
            (TaskSupport::Required, _) => Some(Err(extension_required())),
            _ => Some(
                entry
                    .tool
                    .call(ToolCx::new(
                        caller,
                        args,
                        vault.map(|v| v.as_ref()),
                        session,
                        users.map(|u| u.as_ref()),
                        rcx,
                    ))
                    .await
                    .map(Into::into),
            ),
        }
    }
}

/// The JSON-RPC error of a call that needs scopes the token lacks. `data.scope` is
/// what the client should ask for: the scopes it has plus the missing ones (asking
/// for the missing ones alone would lose the others). The worker turns it into the
/// HTTP 403 step-up challenge where the transport allows ([`step_up_scopes`]).
pub fn insufficient_scope(caller: &Principal, missing: &[String]) -> ErrorData {
    let mut scope: Vec<&str> = caller.scopes.iter().map(String::as_str).collect();
    for m in missing {
        if !scope.contains(&m.as_str()) {
            scope.push(m);
        }
    }
    ErrorData::new(
        ErrorCode(proto::mcp::INSUFFICIENT_SCOPE as i32),
        format!("insufficient scope: this tool needs {}", missing.join(" ")),
        Some(json!({
            "code": "INSUFFICIENT_SCOPE",
            "error": "insufficient_scope",
            "scope": scope.join(" "),
            "missing": missing,
        })),
    )
}

/// The scopes of an [`insufficient_scope`] error message (empty for anything else).
pub fn step_up_scopes(message: &rmcp::model::ServerJsonRpcMessage) -> Vec<String> {
    match message {
        rmcp::model::ServerJsonRpcMessage::Error(e) if i64::from(e.error.code.0) == proto::mcp::INSUFFICIENT_SCOPE => e
            .error
            .data
            .as_ref()
            .and_then(|d| d.get("scope"))
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
