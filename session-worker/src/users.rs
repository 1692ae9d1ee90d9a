//! Per-user actors (`user:<sub>`): the state tools keep for a user ([`tools::user`]),
//! reached from any session and from stateless (2026-07-28) requests.
//!
//! The same machinery as sessions: the key `user:<sub>` hashes to a shard, the
//! worker leasing that shard owns the actor, and requests reach it on the shard's
//! subject ([`proto::subjects::actor`]) as [`Body::User`] envelopes. The actor is a
//! task with a mailbox: it applies one operation at a time with the tool's own
//! `update_user_state`, writes the user's record to [`USER_BUCKET`] with
//! compare-and-set at the revision it read, and only then answers. A write refused
//! by revision (another worker owned the user meanwhile) makes it read the record
//! again and start over, so a stale owner never overwrites a newer state. The
//! record keeps the last operations' ids with their answers: an operation sent
//! again (a retry after a timeout or a failover) is answered, never applied twice.
//! Idle actors stop; the record stays.
//!
//! [`USER_BUCKET`]: proto::subjects::USER_BUCKET

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use proto::{Ack, Body, ENVELOPE_VERSION, Envelope, Principal, USER_REFUSED, subjects};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tools::user::{UserError, UserFuture, UserStore};
use tracing::{debug, warn};

use crate::actor::Shared;

/// Operations remembered per user, with their answers, for retries.
pub const OP_WINDOW: usize = 16;
/// Largest record of one user; past it the oldest remembered answers go first.
pub const MAX_USER_RECORD: usize = 256 * 1024;
/// How long an operation may wait in a busy actor's mailbox.
const MAILBOX: usize = 64;
/// How long the client keeps trying to reach the user's owner (shards move).
pub const USER_DEADLINE: Duration = Duration::from_secs(10);
/// One attempt's wait for the owner's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before trying again when no worker owns the user's shard yet.
const NO_OWNER_PAUSE: Duration = Duration::from_millis(100);

/// A user's record in [`subjects::USER_BUCKET`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Each tool's state, by tool name.
    #[serde(default)]
    pub tools: serde_json::Map<String, Value>,
    /// The last operations: (operation id, answer), oldest first.
    #[serde(default)]
    pub ops: VecDeque<(String, Value)>,
}

impl UserRecord {
    fn answer_of(&self, op_id: &str) -> Option<&Value> {
        self.ops.iter().find(|(id, _)| id == op_id).map(|(_, a)| a)
    }

    /// Remember an operation's answer, within [`OP_WINDOW`] and [`MAX_USER_RECORD`].
    fn remember(&mut self, op_id: String, answer: Value) -> Result<Vec<u8>, String> {
        self.ops.push_back((op_id, answer));
        while self.ops.len() > OP_WINDOW {
            self.ops.pop_front();
        }
        loop {
            let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
            if bytes.len() <= MAX_USER_RECORD {
                return Ok(bytes);
            }
            if self.ops.len() <= 1 {
                return Err(format!("the user's state would exceed {MAX_USER_RECORD} bytes"));
            }
            self.ops.pop_front();
        }
    }
}

/// One operation for an actor, and where to acknowledge it.
struct Op {
    tool: String,
    op: Value,
    op_id: String,
    reply: async_nats::Subject,
}

/// This worker's user actors, by key.
#[derive(Clone, Default)]
pub struct UserActors {
    inner: Arc<Mutex<HashMap<String, mpsc::Sender<Op>>>>,
}

impl UserActors {
    /// Hand a [`Body::User`] envelope to its actor (started if need be); the actor
    /// acknowledges. `Some` ack: refused here.
    pub fn dispatch(&self, shared: &Arc<Shared>, env: Envelope, reply: async_nats::Subject) -> Option<Ack> {
        let Body::User { tool, op, op_id } = env.body else {
            return Some(refused(-32600, "not a user-state operation"));
        };
        if env.key != subjects::user_key(&env.principal.sub) {
            warn!(key = %env.key, "user-state operation for another user refused");
            return Some(Ack::NotFound);
        }
        let op = match serde_json::from_slice::<Value>(&op) {
            Ok(op) => op,
            Err(err) => return Some(refused(USER_REFUSED, &format!("the operation is not JSON: {err}"))),
        };
        let mut op = Op { tool, op, op_id, reply };
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..2 {
            let sender = map
                .entry(env.key.clone())
                .or_insert_with(|| self.spawn(shared.clone(), env.key.clone()))
                .clone();
            match sender.try_send(op) {
                Ok(()) => return None,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Some(refused(-32603, "too many operations for this user at once"));
                }
                // The actor stopped (idle): start another.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    map.remove(&env.key);
                    op = back;
                }
            }
        }
        Some(refused(-32603, "the user's actor cannot start"))
    }

    fn spawn(&self, shared: Arc<Shared>, key: String) -> mpsc::Sender<Op> {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let actors = self.clone();
        let me = tx.clone();
        tokio::spawn(async move {
            run(&shared, &key, rx).await;
            let mut map = actors.inner.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|s| s.same_channel(&me)) {
                map.remove(&key);
            }
        });
        tx
    }

    /// How many user actors run here.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refused(code: i64, message: &str) -> Ack {
    Ack::Rejected {
        code,
        message: message.to_owned(),
    }
}

/// The actor: operations one at a time until idle.
async fn run(shared: &Shared, key: &str, mut rx: mpsc::Receiver<Op>) {
    let store = &shared.users;
    let kv_key = subjects::token(key);
    // (record, revision); `None` until read (and again after a refused write).
    let mut cached: Option<(UserRecord, Option<u64>)> = None;
    loop {
        let op = match tokio::time::timeout(shared.idle_timeout, rx.recv()).await {
            Ok(Some(op)) => op,
            Ok(None) | Err(_) => break,
        };
        let reply = op.reply.clone();
        let ack = apply(shared, store, &kv_key, &mut cached, op).await;
        crate::router::respond(shared, reply, &ack).await;
    }
    debug!(user = %key, "user actor idle: stopped");
}

async fn read(store: &kv::Store, kv_key: &str) -> Result<(UserRecord, Option<u64>), String> {
    match store.entry(kv_key).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            let record = serde_json::from_slice(&entry.value).map_err(|e| format!("unreadable user record: {e}"))?;
            Ok((record, Some(entry.revision)))
        }
        // Deleted or purged: the next write must not take it for absent by revision.
        Ok(Some(entry)) => Ok((UserRecord::default(), Some(entry.revision))),
        Ok(None) => Ok((UserRecord::default(), None)),
        Err(e) => Err(e.to_string()),
    }
}

async fn apply(
    shared: &Shared,
    store: &kv::Store,
    kv_key: &str,
    cached: &mut Option<(UserRecord, Option<u64>)>,
    op: Op,
) -> Ack {
    // A write refused by revision means someone else wrote: read and try again.
    for _ in 0..3 {
        let (record, revision) = match cached.take() {
            Some(c) => c,
            None => match read(store, kv_key).await {
                Ok(c) => c,
                Err(err) => {
                    warn!(error = %err, "cannot read a user's record");
                    return refused(-32603, "the user's state cannot be read now");
                }
            },
        };
        if let Some(answer) = record.answer_of(&op.op_id) {
            let ack = answer_ack(answer);
            *cached = Some((record, revision));
            return ack;
        }
        let (state, answer) = match shared
            .toolbox
            .update_user_state(&op.tool, record.tools.get(&op.tool), &op.op)
        {
            Ok(x) => x,
            Err(message) => {
                *cached = Some((record, revision));
                return refused(USER_REFUSED, &message);
            }
        };
        let mut next = record.clone();
        next.tools.insert(op.tool.clone(), state);
        let bytes = match next.remember(op.op_id.clone(), answer.clone()) {
            Ok(b) => b,
            Err(message) => {
                *cached = Some((record, revision));
                return refused(USER_REFUSED, &message);
            }
        };
        let written = match revision {
            Some(rev) => store
                .update(kv_key, bytes.into(), rev)
                .await
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
            None => store
                .create(kv_key, bytes.into())
                .await
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
        };
        match written {
            Ok(rev) => {
                *cached = Some((next, Some(rev)));
                return answer_ack(&answer);
            }
            Err((true, err)) => {
                debug!(error = %err, "user record changed elsewhere: reading it again");
            }
            Err((false, err)) => {
                warn!(error = %err, "cannot save a user's record");
                return refused(-32603, "the user's state cannot be saved now");
            }
        }
    }
    refused(-32603, "the user's state keeps changing elsewhere")
}

fn answer_ack(answer: &Value) -> Ack {
    match serde_json::to_vec(answer) {
        Ok(bytes) => Ack::Answer(bytes),
        Err(e) => refused(-32603, &e.to_string()),
    }
}

/// How tools on this worker reach user actors: a request on the user's shard
/// subject, tried again (same operation id) while the shard has no owner or its
/// owner does not answer, until [`USER_DEADLINE`].
#[derive(Clone)]
pub struct UserClient {
    nats: async_nats::Client,
    deadline: Duration,
}

impl UserClient {
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            deadline: USER_DEADLINE,
        }
    }

    async fn send(&self, caller: &Principal, tool: &str, op: Value, op_id: &str) -> Result<Value, UserError> {
        let key = subjects::user_key(&caller.sub);
        let env = Envelope {
            v: ENVELOPE_VERSION,
            trace: None,
            principal: caller.clone(),
            key: key.clone(),
            body: Body::User {
                tool: tool.to_owned(),
                op: serde_json::to_vec(&op).map_err(|e| UserError::Refused(e.to_string()))?,
                op_id: op_id.to_owned(),
            },
            headers: Vec::new(),
            retry: false,
        };
        let payload: bytes::Bytes = env
            .to_bytes()
            .map_err(|e| UserError::Unavailable(e.to_string()))?
            .into();
        let subject = subjects::actor(&key);
        let give_up = tokio::time::Instant::now() + self.deadline;
        loop {
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(ATTEMPT_TIMEOUT));
            let last = match self.nats.send_request(subject.clone(), request).await {
                Ok(msg) => match Ack::from_bytes(&msg.payload) {
                    Ok(Ack::Answer(bytes)) => {
                        return serde_json::from_slice(&bytes).map_err(|e| UserError::Unavailable(e.to_string()));
                    }
                    Ok(Ack::Rejected { code, message }) if code == USER_REFUSED => {
                        return Err(UserError::Refused(message));
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(e) => return Err(UserError::Unavailable(e.to_string())),
                },
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + NO_OWNER_PAUSE >= give_up {
                return Err(UserError::Unavailable(last));
            }
            debug!(user = %key, error = %last, "user's owner did not answer: trying again");
            tokio::time::sleep(NO_OWNER_PAUSE).await;
        }
    }
}

impl UserStore for UserClient {
    fn apply<'a>(&'a self, caller: &'a Principal, tool: &'a str, op: Value, op_id: &'a str) -> UserFuture<'a> {
        Box::pin(self.send(caller, tool, op, op_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_remembers_a_bounded_window_of_answers() {
        let mut record = UserRecord::default();
        for i in 0..OP_WINDOW + 3 {
            record.remember(format!("op{i}"), json!(i)).unwrap();
        }
        assert_eq!(record.ops.len(), OP_WINDOW);
        assert_eq!(record.answer_of("op2"), None);
        assert_eq!(
            record.answer_of(&format!("op{}", OP_WINDOW + 2)),
            Some(&json!(OP_WINDOW + 2))
        );
    }

    #[test]
    fn a_record_drops_old_answers_before_growing_past_its_bound() {
        let mut record = UserRecord::default();
        let big = "x".repeat(MAX_USER_RECORD / 4);
        for i in 0..8 {
            let bytes = record.remember(format!("op{i}"), json!(big)).unwrap();
            assert!(bytes.len() <= MAX_USER_RECORD);
        }
        assert!(record.ops.len() < 4);
        assert_eq!(record.answer_of("op7"), Some(&json!(big)));
        let mut huge = UserRecord::default();
        assert!(huge.remember("op".into(), json!("x".repeat(MAX_USER_RECORD))).is_err());
    }
}
