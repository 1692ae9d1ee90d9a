//! Request records: a request's final answer, kept in the JetStream KV bucket
//! [`proto::subjects::RESPONSE_BUCKET`] before it is published, so a request the
//! gateway retries after its worker died (the envelope's `retry` flag) is
//! answered from the record instead of running twice.
//!
//! Calls of tools that keep state in the session are saved with the session's
//! record instead, together with the state they changed (see the session actor).
//!
//! Only calls that may change something are recorded: `tools/call` of a tool not
//! annotated read-only or idempotent (every other method, and those tools, can
//! safely run again). The record is created with `create`, so of two executions
//! (a worker declared dead that was only stalled, and the new owner) the first
//! to finish wins and both answer with its result. Records live
//! `WORKER_RECORD_TTL`; `WORKER_REQUEST_RECORDS=false` turns them off, and then a
//! retried call that is neither read-only nor idempotent is refused rather than
//! run a second time.

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, RequestId};

use crate::actor::Shared;

/// The record key of request `id` of `session`.
pub fn key(session: &str, id: &RequestId) -> String {
    let id = serde_json::to_string(id).unwrap_or_default();
    format!("{}.{}", proto::subjects::token(session), proto::subjects::token(&id))
}

/// Whether running `message` again could change something: a `tools/call` of a
/// tool not annotated read-only or idempotent.
pub fn changes_state(shared: &Shared, message: &ClientJsonRpcMessage) -> bool {
    let ClientJsonRpcMessage::Request(request) = message else {
        return false;
    };
    let ClientRequest::CallToolRequest(call) = &request.request else {
        return false;
    };
    match shared.profile {
        tools::Profile::Default => !shared.toolbox.is_idempotent(&call.params.name),
        tools::Profile::Conformance => true,
    }
}

/// The record key for `message` when it must be recorded.
pub fn wanted(shared: &Shared, session: &str, message: &ClientJsonRpcMessage) -> Option<String> {
    let ClientJsonRpcMessage::Request(request) = message else {
        return None;
    };
    (shared.responses.is_some() && changes_state(shared, message)).then(|| key(session, &request.id))
}

/// The recorded answer of a retried request, if its first execution finished:
/// from the session's record (calls of tools with session state, saved with it)
/// or from the request records.
pub async fn lookup(shared: &Shared, session: &str, message: &ClientJsonRpcMessage) -> Option<Vec<u8>> {
    let ClientJsonRpcMessage::Request(request) = message else {
        return None;
    };
    match shared.sessions.get(proto::subjects::token(session)).await {
        Ok(Some(bytes)) => {
            let id = serde_json::to_string(&request.id).unwrap_or_default();
            if let Some(saved) = proto::SessionRecord::from_bytes(&bytes)
                .ok()
                .and_then(|r| r.answers.into_iter().find(|a| a.id == id))
            {
                return Some(saved.message);
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(session_id = session, error = %err, "cannot read session record"),
    }
    let kv = shared.responses.as_ref()?;
    match kv.get(key(session, &request.id)).await {
        Ok(found) => found.map(|b| b.to_vec()),
        Err(err) => {
            tracing::warn!(session_id = session, error = %err, "cannot read request record");
            None
        }
    }
}
