//! Fan-out of list-changed notifications to open `subscriptions/listen` streams
//! (2026-07-28, SEP-2575).
//!
//! Within one process a hub reaches every stream registered in it. Across
//! processes the owner installs a [`Broadcast`] (the session worker publishes on
//! NATS) and feeds what arrives from other processes, and its own, to
//! [`ListenHub::deliver`].

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::service::SubscriptionSink;

/// The listen streams a set of handlers can reach. Clones share the registry.
#[derive(Clone, Default)]
pub struct ListenHub {
    inner: Arc<Inner>,
}

/// Sends a change to every process (including this one) instead of delivering locally.
pub type Broadcast = Arc<dyn Fn(ListChanged) + Send + Sync>;

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    sinks: Mutex<HashMap<u64, SubscriptionSink>>,
    broadcast: Mutex<Option<Broadcast>>,
}

impl Inner {
    fn sinks(&self) -> MutexGuard<'_, HashMap<u64, SubscriptionSink>> {
        self.sinks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes its sink from the hub when dropped, so a stream that ends (or a
/// handler future that is cancelled) never leaves a stale entry behind.
pub(crate) struct Registration {
    hub: ListenHub,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.inner.sinks().remove(&self.key);
    }
}

/// Which list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChanged {
    Tools,
    Prompts,
}

impl ListChanged {
    pub fn as_str(self) -> &'static str {
        match self {
            ListChanged::Tools => "tools",
            ListChanged::Prompts => "prompts",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tools" => Some(ListChanged::Tools),
            "prompts" => Some(ListChanged::Prompts),
            _ => None,
        }
    }
}

impl ListenHub {
    pub(crate) fn register(&self, sink: SubscriptionSink) -> Registration {
        let key = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.sinks().insert(key, sink);
        Registration { hub: self.clone(), key }
    }

    /// Number of open listen streams.
    pub fn len(&self) -> usize {
        self.inner.sinks().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Send changes through `broadcast` from now on (it must come back to
    /// [`ListenHub::deliver`] in every process, this one included).
    pub fn set_broadcast(&self, broadcast: Broadcast) {
        *self.inner.broadcast.lock().unwrap_or_else(PoisonError::into_inner) = Some(broadcast);
    }

    /// A list changed: broadcast it when a broadcast is installed, else deliver here.
    pub(crate) async fn notify(&self, what: ListChanged) {
        let broadcast = self
            .inner
            .broadcast
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match broadcast {
            Some(broadcast) => broadcast(what),
            None => self.deliver(what).await,
        }
    }

    /// Tell every open stream of this process whose filter accepts it. Streams
    /// that did not ask for this kind of notification are skipped by rmcp's filter check.
    pub async fn deliver(&self, what: ListChanged) {
        let sinks: Vec<SubscriptionSink> = self.inner.sinks().values().cloned().collect();
        for sink in sinks {
            let sent = match what {
                ListChanged::Tools => sink.notify_tool_list_changed().await,
                ListChanged::Prompts => sink.notify_prompt_list_changed().await,
            };
            if let Err(error) = sent {
                tracing::debug!(%error, ?what, "list-changed not delivered to a listen stream");
            }
        }
    }
}
