//! The MCP server handler that session workers run through the official Rust SDK
//! `rmcp`: the tools we ship and the fixture profile that the official MCP
//! conformance suite expects.
//!
//! What it owns: answering MCP requests once the transport has parsed them
//! (tools, resources, prompts, completion, logging, progress, sampling,
//! elicitation, `server/discover`, multi-round-trip requests).
//!
//! What it must never do: touch HTTP, NATS or storage, or keep state outside the
//! [`McpServer`] value itself. A worker builds one `McpServer` per session (the
//! session actor owns it) and one per stateless request; everything a handler
//! needs to carry between rounds of a stateless exchange travels in the
//! integrity-protected `requestState` instead. What lives elsewhere reaches the
//! tools through small traits the worker implements: the token vault is a
//! [`vault::TokenVault`], per-user state a [`user::UserStore`].
//!
//! # Protocol revisions
//! `2024-11-05` through `2026-07-28` (see [`SUPPORTED_PROTOCOL_VERSIONS`]).
//! On `2026-07-28` the server never sends server→client requests: fixtures that
//! would call `sampling/createMessage` or `elicitation/create` answer with an
//! `InputRequiredResult` (MRTR, SEP-2322) and finish when the client retries with
//! `inputResponses`. On earlier revisions they ask the client over the session.
//! Unknown methods get JSON-RPC `-32601` (rmcp's dispatch does this for us).
#![forbid(unsafe_code)]
// Logging, sampling and roots are deprecated by SEP-2577, yet still part of every
// revision we serve.
#![allow(deprecated)]

mod add;
mod conformance;
pub mod count;
mod docs;
pub mod documents;
pub mod image;
mod listen;
mod logging;
mod mrtr;
pub mod notes;
pub mod policy;
mod render;
pub mod shipped;
mod task_fixtures;
pub mod tasks;
pub mod todo;
pub mod toolbox;
pub mod user;
pub mod vault;
mod whoami;

use std::{borrow::Cow, str::FromStr, sync::Arc};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CacheScope, CallToolRequestParams, CallToolResponse, CancelTaskParams, CompleteRequestParams, CompleteResult,
        GetPromptRequestParams, GetPromptResponse, GetTaskParams, GetTaskResult, Implementation,
        InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        ServerCapabilities, ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool,
        UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext},
};

pub use add::Add;
pub use count::Count;
pub use listen::{Broadcast, ListChanged, ListenHub};
pub use logging::SessionState;
pub use policy::{Access, Decision, Denial, PolicyFile};
pub use toolbox::{McpTool, ToolCx, ToolFuture, Toolbox, step_up_scopes};
pub use whoami::WhoAmI;

/// Protocol revisions this handler speaks, oldest first. Pinned rather than
/// taken from rmcp so that an rmcp upgrade never advertises a revision we have
/// not tested.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2024_11_05,
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];

/// Cache lifetime hint (SEP-2549) on list and read results. Lists are marked
/// `private`: which tools a caller sees will depend on the caller's grants.
pub const LIST_TTL_MS: u64 = 60_000;

/// Name reported in `serverInfo`.
pub const SERVER_NAME: &str = "mcp-cluster";

/// Which set of tools, resources and prompts a server exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// The shipped tools (`add`, `whoAmI`).
    #[default]
    Default,
    /// `add` plus every fixture the official MCP conformance suite's server
    /// scenarios expect.
    Conformance,
}

/// A profile name that is neither `default` nor `conformance`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {0:?}: expected \"default\" or \"conformance\"")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "conformance" => Ok(Self::Conformance),
            other => Err(UnknownProfile(other.to_owned())),
        }
    }
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Conformance => "conformance",
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of one request, put into the request's extensions by the transport
/// (the session worker: the principal of the token that came with *this* request).
/// Tools decide on it, not on whoever opened the session, so a session never keeps
/// rights its current token does not carry.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<proto::Principal>);

/// The span a request is handled under (a request extension the session worker
/// sets while traces are exported): tool calls are traced as its children, so one
/// trace goes on from the worker into the tool and what the tool calls (the vault).
#[derive(Debug, Clone)]
pub struct TraceSpan(pub tracing::Span);

/// The `tools/call` span of a request, child of its [`TraceSpan`]; none without one.
fn tool_span(cx: &RequestContext<RoleServer>, name: &str) -> tracing::Span {
    match cx.extensions.get::<TraceSpan>() {
        Some(TraceSpan(parent)) if !parent.is_none() => tracing::info_span!(
            parent: parent,
            "tool.call",
            otel.name = %format!("tools/call {name}"),
            otel.kind = "internal",
            gen_ai.tool.name = %name,
            otel.status_code = tracing::field::Empty,
        ),
        _ => tracing::Span::none(),
    }
}

/// The MCP server handler. Cheap to clone: clones share the same session state.
#[derive(Clone)]
pub struct McpServer {
    profile: Profile,
    principal: Option<Arc<proto::Principal>>,
    session: Arc<logging::SessionState>,
    listen: ListenHub,
    vault: Option<Arc<dyn vault::TokenVault>>,
    users: Option<Arc<dyn user::UserStore>>,
    toolbox: Toolbox,
    tasks: Option<tasks::Tasks>,
}

impl McpServer {
    /// A handler for one session (or one stateless request) of `principal`.
    pub fn new(profile: Profile, principal: Option<proto::Principal>) -> Self {
        Self {
            profile,
            principal: principal.map(Arc::new),
            session: Arc::default(),
            listen: ListenHub::default(),
            vault: None,
            users: None,
            toolbox: basic_toolbox(),
            tasks: None,
        }
    }

    /// Keep the session's state in `state` (restored from the session's record),
    /// so its owner can save it when it changes.
    pub fn with_session_state(mut self, state: Arc<SessionState>) -> Self {
        self.session = state;
        self
    }

    /// Serve the tasks extension (`io.modelcontextprotocol/tasks`) from `tasks`:
    /// tools that support it run as tasks when a request declares the extension.
    pub fn with_tasks(mut self, tasks: tasks::Tasks) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// The tools of the default profile (without it: `add` and `whoAmI`). The
    /// conformance profile keeps its fixtures.
    pub fn with_toolbox(mut self, toolbox: Toolbox) -> Self {
        self.toolbox = toolbox;
        self
    }

    /// Where tools get the caller's upstream token. Without one, `whoAmI` reports
    /// no downstream token.
    pub fn with_vault(mut self, vault: Arc<dyn vault::TokenVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Where tools keep per-user state (`notes`). Without one, such tools say
    /// they are unavailable.
    pub fn with_users(mut self, users: Arc<dyn user::UserStore>) -> Self {
        self.users = Some(users);
        self
    }

    /// Deliver list-changed notifications to the `subscriptions/listen` streams
    /// registered in `hub`. Handlers built for separate stateless requests of one
    /// process share a hub so that a change made by one request reaches a listen
    /// stream held by another; without it each handler only reaches its own.
    pub fn with_listen_hub(mut self, hub: ListenHub) -> Self {
        self.listen = hub;
        self
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The principal the handler was built for (the session's opener, or the caller
    /// of a stateless request).
    pub fn principal(&self) -> Option<&proto::Principal> {
        self.principal.as_deref()
    }

    /// The caller of the request `cx` belongs to: the [`Caller`] the transport put in
    /// its extensions, else the principal the handler was built for.
    pub fn caller<'a>(&'a self, cx: &'a RequestContext<RoleServer>) -> Option<&'a proto::Principal> {
        cx.extensions
            .get::<Caller>()
            .map(|c| c.0.as_ref())
            .or_else(|| self.principal())
    }

    /// The tools `caller` may see.
    fn tools(&self, caller: Option<&proto::Principal>) -> Vec<Tool> {
        match self.profile {
            Profile::Default => self.toolbox.listed(caller),
            Profile::Conformance => {
                let mut tools = vec![add::tool()];
                tools.extend(conformance::tools());
                tools
            }
        }
    }
}

/// `add` and `whoAmI`, open to every authenticated caller.
pub fn basic_toolbox() -> Toolbox {
    Toolbox::new(vec![Arc::new(Add), Arc::new(WhoAmI)], None).unwrap_or_default()
}

/// The protocol revision a request runs under: its own `_meta` on 2026-07-28,
/// the negotiated one in a session.
pub(crate) fn is_stateless_era(cx: &RequestContext<RoleServer>) -> bool {
    cx.protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

fn capabilities(profile: Profile, resources: bool, tasks: bool) -> ServerCapabilities {
    let mut caps = base_capabilities(profile, resources);
    if tasks {
        caps.extensions.get_or_insert_with(Default::default).insert(
            rmcp::model::TASKS_EXTENSION_ID.to_owned(),
            rmcp::model::JsonObject::new(),
        );
    }
    caps
}

fn base_capabilities(profile: Profile, resources: bool) -> ServerCapabilities {
    match profile {
        // Logging: the `count` tool reports each change as a log message, and a
        // client may set the level (kept with the session).
        Profile::Default if resources => ServerCapabilities::builder()
            .enable_logging()
            .enable_resources()
            .enable_tools()
            .enable_tool_list_changed()
            .build(),
        Profile::Default => ServerCapabilities::builder()
            .enable_logging()
            .enable_tools()
            .enable_tool_list_changed()
            .build(),
        Profile::Conformance => ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_tools()
            .enable_tool_list_changed()
            .build(),
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let info = ServerConfig::new(self.capabilities())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")));
        match self.profile {
            Profile::Default => info,
            Profile::Conformance => info.with_instructions("Fixture server for the MCP conformance suite."),
        }
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(SUPPORTED_PROTOCOL_VERSIONS)
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        match self.profile {
            Profile::Default => self.toolbox.get(name, self.principal()),
            Profile::Conformance => self.tools(None).into_iter().find(|t| t.name == name),
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.tools(self.caller(&cx));
        if is_stateless_era(&cx) {
            // Tools that keep state in the session cannot run without one.
            tools.retain(|t| !self.toolbox.uses_session_state(&t.name));
        }
        Ok(ListToolsResult::with_all_items(tools)
            .with_ttl_ms(LIST_TTL_MS)
            .with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let span = tool_span(&cx, &request.name);
        let outcome = tracing::Instrument::instrument(self.call_tool_inner(request, cx), span.clone()).await;
        if !span.is_none() && outcome.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        outcome
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        if let (Profile::Default, Some(library)) = (self.profile, self.toolbox.library()) {
            return Ok(
                ListResourcesResult::with_all_items(library.list(self.caller(&cx)).await)
                    .with_ttl_ms(LIST_TTL_MS)
                    .with_cache_scope(CacheScope::Private),
            );
        }
        self.require_conformance::<rmcp::model::ListResourcesRequestMethod>()?;
        Ok(conformance::list_resources())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        if let (Profile::Default, Some(library)) = (self.profile, self.toolbox.library()) {
            return Ok(ListResourceTemplatesResult::with_all_items(library.templates())
                .with_ttl_ms(LIST_TTL_MS)
                .with_cache_scope(CacheScope::Public));
        }
        self.require_conformance::<rmcp::model::ListResourceTemplatesRequestMethod>()?;
        Ok(conformance::list_resource_templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if let (Profile::Default, Some(library)) = (self.profile, self.toolbox.library()) {
            let uri = request.uri.to_string();
            return match library.read(&uri, self.caller(&cx)).await {
                Some(contents) => Ok(rmcp::model::ReadResourceResult::new(vec![contents?])
                    .with_cache_scope(CacheScope::Private)
                    .into()),
                None => Err(ErrorData::resource_not_found(
                    "Resource not found",
                    Some(serde_json::json!({ "uri": uri })),
                )),
            };
        }
        self.require_conformance::<rmcp::model::ReadResourceRequestMethod>()?;
        conformance::read_resource(&request.uri)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.require_conformance::<rmcp::model::SubscribeRequestMethod>()?;
        self.session.subscribe(request.uri.to_string());
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.require_conformance::<rmcp::model::UnsubscribeRequestMethod>()?;
        self.session.unsubscribe(request.uri.as_str());
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        (self.profile == Profile::Conformance).then(|| requested.supported_by(&self.capabilities()))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let _registration = self.listen.register(context.sink().clone());
        context.cancelled().await;
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.require_conformance::<rmcp::model::ListPromptsRequestMethod>()?;
        Ok(conformance::list_prompts())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.require_conformance::<rmcp::model::GetPromptRequestMethod>()?;
        conformance::get_prompt(request)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.require_conformance::<rmcp::model::CompleteRequestMethod>()?;
        conformance::complete(&request)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.session.set_log_level(request.level);
        Ok(())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let (tasks, owner) = self.tasks_for::<rmcp::model::GetTaskMethod>(&cx)?;
        tasks.get(&owner, &request.task_id).await
    }

    async fn update_task(&self, request: UpdateTaskParams, cx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let (tasks, owner) = self.tasks_for::<rmcp::model::UpdateTaskMethod>(&cx)?;
        tasks.update(&owner, &request.task_id, request.input_responses).await
    }

    async fn cancel_task(&self, request: CancelTaskParams, cx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let (tasks, owner) = self.tasks_for::<rmcp::model::CancelTaskMethod>(&cx)?;
        tasks.cancel(&owner, &request.task_id).await
    }
}

impl McpServer {
    async fn call_tool_inner(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        match self.profile {
            Profile::Conformance if request.name == add::NAME => {
                Ok(add::sum(&request.arguments.unwrap_or_default()).into())
            }
            Profile::Conformance => conformance::call_tool(self, request, cx).await,
            Profile::Default => {
                let args = request.arguments.unwrap_or_default();
                match self
                    .toolbox
                    .call(
                        &request.name,
                        self.caller(&cx),
                        args,
                        &cx,
                        toolbox::CallWith {
                            vault: self.vault.as_ref(),
                            tasks: self.tasks.as_ref(),
                            // Stateless requests have no session to keep state in.
                            session: (!is_stateless_era(&cx)).then_some(self.session.as_ref()),
                            users: self.users.as_ref(),
                        },
                    )
                    .await
                {
                    Some(result) => result,
                    None => Err(unknown_tool(&request.name)),
                }
            }
        }
    }

    fn capabilities(&self) -> ServerCapabilities {
        capabilities(self.profile, self.toolbox.library().is_some(), self.tasks.is_some())
    }

    /// The tasks runtime and the owner string of the request's caller; `-32601`
    /// without a runtime (the extension is then not advertised either).
    fn tasks_for<'a, M: rmcp::model::ConstString>(
        &'a self,
        cx: &RequestContext<RoleServer>,
    ) -> Result<(&'a tasks::Tasks, String), ErrorData> {
        let tasks = self.tasks.as_ref().ok_or_else(ErrorData::method_not_found::<M>)?;
        Ok((tasks, tasks::owner_of(self.caller(cx))))
    }

    /// Methods whose capability only the conformance profile advertises answer
    /// `-32601` elsewhere, so capabilities and handlers always agree.
    fn require_conformance<M: rmcp::model::ConstString>(&self) -> Result<(), ErrorData> {
        match self.profile {
            Profile::Conformance => Ok(()),
            Profile::Default => Err(ErrorData::method_not_found::<M>()),
        }
    }
}

pub(crate) fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown tool: {name}"),
        Some(serde_json::json!({ "name": name })),
    )
}

#[cfg(test)]
mod tests;

/// The Rust blocks of the README ("Writing a tool") compile and run as doc-tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
