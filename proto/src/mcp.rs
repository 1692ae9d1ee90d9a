//! MCP wire constants shared by the gateway and the workers: protocol revisions,
//! HTTP header names, `_meta` keys and the JSON-RPC error codes the cluster uses.

/// `Mcp-Session-Id`: the session of a sessionful (2025) request.
pub const HEADER_SESSION_ID: &str = "Mcp-Session-Id";
/// `MCP-Protocol-Version`.
pub const HEADER_PROTOCOL_VERSION: &str = "MCP-Protocol-Version";
/// `Mcp-Method` (2026-07-28): the JSON-RPC method, for routing without the body.
pub const HEADER_METHOD: &str = "Mcp-Method";
/// `Mcp-Name` (2026-07-28): the tool, prompt or resource a request names.
pub const HEADER_NAME: &str = "Mcp-Name";
/// `_meta` key of a stateless request's protocol revision.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of a stateless request's client capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// The stateless revision (no session; every request stands alone).
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Every revision the cluster serves, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];

/// JSON-RPC 2.0 codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server errors (-32000 to -32099).
pub const SERVER_ERROR: i64 = -32000;
/// The session does not exist (or is someone else's).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// A standard header disagrees with the body (2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;
/// The principal already holds the most live sessions it may (the gateway answers 429).
pub const SESSION_LIMIT: i64 = -32029;
/// An answer larger than the message bus carries.
pub const RESPONSE_TOO_LARGE: i64 = -32030;
/// The server is at capacity and sheds the request without running it: try again
/// after a moment (the gateway answers 503 with `Retry-After`).
pub const OVERLOADED: i64 = -32031;
/// A tool call needs OAuth scopes the token lacks; `data.scope` lists what to ask
/// for. Over Streamable HTTP the gateway answers it as the HTTP 403
/// `insufficient_scope` step-up challenge instead.
pub const INSUFFICIENT_SCOPE: i64 = -32040;
