//! Per-session state the handler keeps: the `logging/setLevel` threshold and the
//! legacy `resources/subscribe` set. Both live inside [`crate::McpServer`], so a
//! session actor that owns the server owns them too.
#![allow(deprecated)] // logging is deprecated by SEP-2577 but every revision we serve has it

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard, PoisonError},
};

use rmcp::{
    RoleServer,
    model::{LoggingLevel, LoggingMessageNotificationParam},
    service::RequestContext,
};

/// Logger name in `notifications/message`.
pub(crate) const LOGGER: &str = "mcp-cluster";

#[derive(Default)]
pub(crate) struct SessionState {
    log_level: Mutex<Option<LoggingLevel>>,
    resource_subscriptions: Mutex<BTreeSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionState {
    pub(crate) fn set_log_level(&self, level: LoggingLevel) {
        *lock(&self.log_level) = Some(level);
    }

    fn log_level(&self) -> Option<LoggingLevel> {
        *lock(&self.log_level)
    }

    pub(crate) fn subscribe(&self, uri: String) {
        lock(&self.resource_subscriptions).insert(uri);
    }

    pub(crate) fn unsubscribe(&self, uri: &str) {
        lock(&self.resource_subscriptions).remove(uri);
    }

    #[cfg(test)]
    pub(crate) fn subscriptions(&self) -> Vec<String> {
        lock(&self.resource_subscriptions).iter().cloned().collect()
    }
}

fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// The threshold a request's log messages must reach, or `None` when the
/// request must get no log messages at all.
///
/// 2026-07-28 requests choose per request with `_meta` `logLevel`, and get none
/// without it. Sessions use the `logging/setLevel` threshold, and every message
/// until the client sets one.
fn threshold(session: &SessionState, cx: &RequestContext<RoleServer>) -> Option<LoggingLevel> {
    if let Some(level) = cx.meta.log_level() {
        return Some(level);
    }
    if crate::is_stateless_era(cx) {
        return None;
    }
    Some(session.log_level().unwrap_or(LoggingLevel::Debug))
}

/// Send `notifications/message` to the client if the request's threshold allows.
/// Delivery failures are not the tool's failures: they are traced and dropped.
pub(crate) async fn log(
    session: &SessionState,
    cx: &RequestContext<RoleServer>,
    level: LoggingLevel,
    data: serde_json::Value,
) {
    let Some(threshold) = threshold(session, cx) else {
        return;
    };
    if severity(level) < severity(threshold) {
        return;
    }
    let param = LoggingMessageNotificationParam::new(level, data).with_logger(LOGGER);
    if let Err(error) = cx.peer.notify_logging_message(param).await {
        tracing::debug!(%error, "log notification not delivered");
    }
}
