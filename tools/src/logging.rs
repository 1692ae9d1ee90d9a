//! Per-session state the handler keeps: the `logging/setLevel` threshold, the
//! legacy `resources/subscribe` set and the tools' own session state. It lives
//! inside [`crate::McpServer`]; a session actor that owns the server saves it
//! with the session ([`SessionState::snapshot`]) whenever it changed
//! ([`SessionState::version`]), so a rehydrated session has it back.
#![allow(deprecated)] // logging is deprecated by SEP-2577 but every revision we serve has it

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rmcp::{
    RoleServer,
    model::{LoggingLevel, LoggingMessageNotificationParam},
    service::RequestContext,
};

/// Logger name in `notifications/message`.
pub(crate) const LOGGER: &str = "mcp-cluster";

/// What one session keeps between requests.
#[derive(Default)]
pub struct SessionState {
    log_level: Mutex<Option<LoggingLevel>>,
    resource_subscriptions: Mutex<BTreeSet<String>>,
    /// Tools' state, by tool name.
    values: Mutex<BTreeMap<String, Value>>,
    /// Bumped by every change.
    version: AtomicU64,
}

/// [`SessionState`] as it is stored (JSON).
#[derive(Serialize, Deserialize, Default)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_level: Option<LoggingLevel>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    subscriptions: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    values: BTreeMap<String, Value>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionState {
    /// The state saved by [`SessionState::snapshot`]; empty input is a new session.
    pub fn restore(stored: &[u8]) -> Result<Self, serde_json::Error> {
        if stored.is_empty() {
            return Ok(Self::default());
        }
        let stored: Stored = serde_json::from_slice(stored)?;
        Ok(Self {
            log_level: Mutex::new(stored.log_level),
            resource_subscriptions: Mutex::new(stored.subscriptions),
            values: Mutex::new(stored.values),
            version: AtomicU64::new(0),
        })
    }

    /// The state to store, and the [`SessionState::version`] it reflects.
    pub fn snapshot(&self) -> (Vec<u8>, u64) {
        let (log_level, subscriptions, values) = (
            lock(&self.log_level),
            lock(&self.resource_subscriptions),
            lock(&self.values),
        );
        let version = self.version();
        let stored = Stored {
            log_level: *log_level,
            subscriptions: subscriptions.clone(),
            values: values.clone(),
        };
        (serde_json::to_vec(&stored).unwrap_or_default(), version)
    }

    /// Changes so far (starts at 0).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Change the value tool `key` keeps in the session with `f`; returns the new one.
    pub fn update(&self, key: &str, f: impl FnOnce(Option<&Value>) -> Value) -> Value {
        let mut values = lock(&self.values);
        let new = f(values.get(key));
        values.insert(key.to_owned(), new.clone());
        self.changed();
        new
    }

    /// The value tool `key` keeps in the session.
    pub fn value(&self, key: &str) -> Option<Value> {
        lock(&self.values).get(key).cloned()
    }

    pub(crate) fn set_log_level(&self, level: LoggingLevel) {
        *lock(&self.log_level) = Some(level);
        self.changed();
    }

    fn log_level(&self) -> Option<LoggingLevel> {
        *lock(&self.log_level)
    }

    pub(crate) fn subscribe(&self, uri: String) {
        if lock(&self.resource_subscriptions).insert(uri) {
            self.changed();
        }
    }

    pub(crate) fn unsubscribe(&self, uri: &str) {
        if lock(&self.resource_subscriptions).remove(uri) {
            self.changed();
        }
    }

    pub fn subscriptions(&self) -> Vec<String> {
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
pub(crate) fn threshold(session: &SessionState, cx: &RequestContext<RoleServer>) -> Option<LoggingLevel> {
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
    if let Some(threshold) = threshold(session, cx) {
        send(&cx.peer, threshold, level, data).await;
    }
}

/// Send `notifications/message` on `peer` if `level` reaches `threshold`.
pub(crate) async fn send(
    peer: &rmcp::service::Peer<RoleServer>,
    threshold: LoggingLevel,
    level: LoggingLevel,
    data: serde_json::Value,
) {
    if severity(level) < severity(threshold) {
        return;
    }
    let param = LoggingMessageNotificationParam::new(level, data).with_logger(LOGGER);
    if let Err(error) = peer.notify_logging_message(param).await {
        tracing::debug!(%error, "log notification not delivered");
    }
}
