//! Fan-out of list-changed notifications to open `subscriptions/listen` streams
//! (2026-07-28, SEP-2575).

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

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    sinks: Mutex<HashMap<u64, SubscriptionSink>>,
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
#[derive(Debug, Clone, Copy)]
pub(crate) enum ListChanged {
    Tools,
    Prompts,
}

impl ListenHub {
    pub(crate) fn register(&self, sink: SubscriptionSink) -> Registration {
        let key = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.sinks().insert(key, sink);
        Registration {
            hub: self.clone(),
            key,
        }
    }

    /// Number of open listen streams.
    pub fn len(&self) -> usize {
        self.inner.sinks().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tell every open stream whose filter accepts it. Streams that did not ask
    /// for this kind of notification are skipped by rmcp's filter check.
    pub(crate) async fn notify(&self, what: ListChanged) {
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
