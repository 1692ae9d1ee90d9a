//! The SSO seed's checklist and process tools over directories of Markdown files
//! (`CHECKLIST_DIR`, `PROCESS_DIR`), each gated by its scope:
//!
//! | tool | scope |
//! |---|---|
//! | `list_checklists` | `checklist.list` |
//! | `get_checklist` | `checklist.read` |
//! | `list_processes` | `process.read` |
//! | `get_process` | `process.read` |
//! | `search_processes` | `process.search` |
//!
//! The files are read safely by [`crate::docs::DocDir`] (names, symlinks out of the
//! directory, size, UTF-8) on a blocking thread.

use std::sync::Arc;

use rmcp::model::{CallToolResult, Tool, ToolAnnotations};
use serde_json::json;

use crate::docs::{DocDir, DocError};
use crate::policy::Access;
use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error, tool_text};

/// Most hits `search_processes` returns.
pub const MAX_SEARCH_HITS: usize = 20;

/// Which kind of documents a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checklist,
    Process,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Checklist => "checklist",
            Kind::Process => "process",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    List,
    Get,
    Search,
}

/// One of the five tools over one directory.
pub struct DocTool {
    kind: Kind,
    op: Op,
    dir: DocDir,
}

impl DocTool {
    /// The tools of `kind` over `dir`: list and get, and for processes search.
    pub fn all(kind: Kind, dir: &std::path::Path) -> Result<Vec<Arc<dyn McpTool>>, String> {
        let dir = DocDir::open(dir).map_err(|e| format!("{} directory: {e}", kind.noun()))?;
        let mut ops = vec![Op::List, Op::Get];
        if kind == Kind::Process {
            ops.push(Op::Search);
        }
        Ok(ops
            .into_iter()
            .map(|op| {
                Arc::new(DocTool {
                    kind,
                    op,
                    dir: dir.clone(),
                }) as Arc<dyn McpTool>
            })
            .collect())
    }

    fn name(&self) -> &'static str {
        match (self.kind, self.op) {
            (Kind::Checklist, Op::List) => "list_checklists",
            (Kind::Checklist, Op::Get) => "get_checklist",
            (Kind::Checklist, Op::Search) => "search_checklists",
            (Kind::Process, Op::List) => "list_processes",
            (Kind::Process, Op::Get) => "get_process",
            (Kind::Process, Op::Search) => "search_processes",
        }
    }

    fn scope(&self) -> &'static str {
        match (self.kind, self.op) {
            (Kind::Checklist, Op::List) => "checklist.list",
            (Kind::Checklist, _) => "checklist.read",
            (Kind::Process, Op::Search) => "process.search",
            (Kind::Process, _) => "process.read",
        }
    }

    async fn run(&self, cx: &ToolCx<'_>) -> CallToolResult {
        let noun = self.kind.noun();
        let dir = self.dir.clone();
        let op = self.op;
        let name = cx.str_arg("name").map(str::to_owned);
        let query = cx.str_arg("query").map(str::to_owned);
        let answer = tokio::task::spawn_blocking(move || -> Result<String, DocError> {
            match op {
                Op::List => {
                    let docs = dir.list()?;
                    let items: Vec<_> = docs
                        .iter()
                        .map(|d| json!({ "name": d.name, "title": d.title, "size": d.size }))
                        .collect();
                    Ok(pretty(&json!({ "count": items.len(), "items": items })))
                }
                Op::Get => {
                    let Some(name) = name else {
                        return Err(DocError::InvalidName);
                    };
                    Ok(dir.get(&name)?.text)
                }
                Op::Search => {
                    let hits = dir.search(query.as_deref().unwrap_or(""), MAX_SEARCH_HITS)?;
                    let items: Vec<_> = hits
                        .iter()
                        .map(|h| json!({ "name": h.name, "title": h.title, "snippet": h.snippet, "line": h.line }))
                        .collect();
                    Ok(pretty(&json!({ "count": items.len(), "hits": items })))
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(text)) => tool_text(text),
            Ok(Err(e)) => {
                tracing::info!(tool = self.name(), error = %e, "document request refused");
                tool_error(format!("{noun}: {e}"))
            }
            Err(e) => tool_error(format!("{noun}: reading failed ({e})")),
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

impl McpTool for DocTool {
    fn definition(&self) -> Tool {
        let noun = self.kind.noun();
        let plural = match self.kind {
            Kind::Checklist => "checklists",
            Kind::Process => "processes",
        };
        let (description, input) = match self.op {
            Op::List => (
                format!("List the {plural}: name, title and size of each."),
                json!({ "type": "object", "properties": {} }),
            ),
            Op::Get => (
                format!("Read one {noun} (Markdown) by name."),
                json!({
                    "type": "object",
                    "properties": { "name": { "type": "string", "description": format!("The {noun}'s name, as listed") } },
                    "required": ["name"]
                }),
            ),
            Op::Search => (
                format!("Search the {plural}' titles and text (case-insensitive)."),
                json!({
                    "type": "object",
                    "properties": { "query": { "type": "string", "maxLength": crate::docs::MAX_QUERY_CHARS } },
                    "required": ["query"]
                }),
            ),
        };
        Tool::new(self.name(), description, schema(input))
            .with_annotations(ToolAnnotations::new().read_only(true).idempotent(true))
    }

    fn access(&self) -> Access {
        Access::anyone().scope(self.scope())
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move { Ok(self.run(&cx).await) })
    }
}

/// The same documents as MCP resources: `checklist://{name}` and `process://{name}`,
/// readable with the scope that reads them through the tools.
#[derive(Clone, Default)]
pub struct Library {
    dirs: Vec<(Kind, DocDir)>,
}

impl Library {
    pub fn new(checklists: Option<&std::path::Path>, processes: Option<&std::path::Path>) -> Result<Self, String> {
        let mut dirs = Vec::new();
        for (kind, dir) in [(Kind::Checklist, checklists), (Kind::Process, processes)] {
            if let Some(dir) = dir {
                dirs.push((
                    kind,
                    DocDir::open(dir).map_err(|e| format!("{} directory: {e}", kind.noun()))?,
                ));
            }
        }
        Ok(Self { dirs })
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn scope(kind: Kind) -> &'static str {
        match kind {
            Kind::Checklist => "checklist.read",
            Kind::Process => "process.read",
        }
    }

    fn access(kind: Kind) -> Access {
        Access::anyone().scope(Self::scope(kind))
    }

    /// The URI templates, one per directory.
    pub fn templates(&self) -> Vec<rmcp::model::ResourceTemplate> {
        self.dirs
            .iter()
            .map(|(kind, _)| {
                rmcp::model::ResourceTemplate::new(
                    format!("{}://{{name}}", kind.noun()),
                    format!("{} by name", kind.noun()),
                )
                .with_description(format!(
                    "A {} (Markdown); needs the {} scope",
                    kind.noun(),
                    Self::scope(*kind)
                ))
                .with_mime_type("text/markdown")
            })
            .collect()
    }

    /// Every document `caller` may read (a missing scope hides its directory).
    pub async fn list(&self, caller: Option<&proto::Principal>) -> Vec<rmcp::model::Resource> {
        let mut out = Vec::new();
        for (kind, dir) in &self.dirs {
            if crate::policy::decide(&Self::access(*kind), caller) != crate::policy::Decision::Allow {
                continue;
            }
            let dir = dir.clone();
            let docs = tokio::task::spawn_blocking(move || dir.list()).await;
            if let Ok(Ok(docs)) = docs {
                out.extend(docs.into_iter().map(|d| {
                    rmcp::model::Resource::new(format!("{}://{}", kind.noun(), d.name), d.title)
                        .with_mime_type("text/markdown")
                }));
            }
        }
        out
    }

    /// Read `uri`; `None` when no directory serves its scheme. A missing scope is the
    /// step-up error, a refused name "resource not found".
    pub async fn read(
        &self,
        uri: &str,
        caller: Option<&proto::Principal>,
    ) -> Option<Result<rmcp::model::ResourceContents, rmcp::ErrorData>> {
        let (scheme, name) = uri.split_once("://")?;
        let (kind, dir) = self.dirs.iter().find(|(k, _)| k.noun() == scheme)?;
        match (crate::policy::decide(&Self::access(*kind), caller), caller) {
            (crate::policy::Decision::Allow, _) => {}
            (crate::policy::Decision::MissingScopes(missing), Some(caller)) => {
                return Some(Err(crate::toolbox::insufficient_scope(caller, &missing)));
            }
            (crate::policy::Decision::Deny(denial), _) => {
                return Some(Err(rmcp::ErrorData::invalid_request(denial.to_string(), None)));
            }
            (crate::policy::Decision::MissingScopes(_), None) => {
                return Some(Err(rmcp::ErrorData::invalid_request(
                    crate::policy::Denial::Unauthenticated.to_string(),
                    None,
                )));
            }
        }
        let dir = dir.clone();
        let name = name.to_owned();
        let read = tokio::task::spawn_blocking(move || dir.get(&name)).await;
        Some(match read {
            Ok(Ok(doc)) => Ok(rmcp::model::ResourceContents::TextResourceContents {
                uri: uri.into(),
                mime_type: Some("text/markdown".into()),
                text: doc.text,
                meta: None,
            }),
            Ok(Err(e)) => Err(rmcp::ErrorData::resource_not_found(
                format!("{}: {e}", kind.noun()),
                Some(json!({ "uri": uri })),
            )),
            Err(e) => Err(rmcp::ErrorData::internal_error(format!("reading failed: {e}"), None)),
        })
    }
}
