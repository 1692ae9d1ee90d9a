//! MCP tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663) on a cluster.
//!
//! A `tools/call` that the client lets run as a task answers at once with a
//! `CreateTaskResult`; the work goes on in the background and the client polls
//! `tasks/get`, answers input requests with `tasks/update` and may `tasks/cancel`.
//! Any of those may reach any worker (stateless 2026-07-28 requests go to a queue
//! group), so the task's state lives in a [`TaskStore`] every worker shares — the
//! worker implements it over a JetStream KV bucket — and never only in the memory
//! of the worker that runs it:
//!
//! - the record is written before the `CreateTaskResult` leaves (a `tasks/get`
//!   right after it finds the task, wherever it lands);
//! - every change is a compare-and-set on the record's revision, so the runner,
//!   an update and a cancel never overwrite each other, and a terminal status is
//!   final;
//! - `tasks/update` and `tasks/cancel` change the record themselves (the answered
//!   input requests are gone before the acknowledgement) and then signal the
//!   runner, which also re-reads the record every [`RELOAD_EVERY`] in case a
//!   signal was lost;
//! - the runner refreshes `alive_ms` every [`HEARTBEAT_EVERY`]; a task whose
//!   runner stopped (the worker died) reads as `failed` after [`STALE_AFTER`]
//!   instead of `working` forever;
//! - a record older than its TTL reads as unknown (and is deleted).
//!
//! Tasks belong to the principal that created them: anyone else's `tasks/get`
//! finds nothing, exactly as for an id that never existed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmcp::ErrorData;
use rmcp::model::{
    CallToolResult, ClientCapabilities, DetailedTask, GetTaskResult, InputRequests, InputResponses, JsonObject, Task,
    TaskPayload, TaskStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often a runner re-reads its task's record without a signal.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often a runner tells the store it is still at work.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A task not finished whose runner has not been heard of for this long failed.
pub const STALE_AFTER: Duration = Duration::from_secs(20);
/// Longest task id accepted from a client (ours are 32 hex digits).
const MAX_ID_LEN: usize = 64;
/// Compare-and-set attempts before a change gives up.
const CAS_ATTEMPTS: usize = 32;

/// Whether a tool can run as a task (the tool's `execution.taskSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskSupport {
    /// Always answers synchronously.
    #[default]
    Forbidden,
    /// Runs as a task when the request declares the tasks extension, else synchronously.
    Optional,
    /// Only runs as a task; without the extension the call is refused (-32021).
    Required,
}

impl TaskSupport {
    fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }

    /// Mark a tool definition with this support (`execution.taskSupport`, kept in
    /// `_meta` by rmcp's `Tool`, which has no `execution` field yet).
    pub fn mark(self, mut tool: rmcp::model::Tool) -> rmcp::model::Tool {
        if self != Self::Forbidden {
            let mut meta = tool.meta.take().unwrap_or_default();
            meta.0.insert(
                "io.modelcontextprotocol/tasks".into(),
                json!({ "taskSupport": self.as_str() }),
            );
            tool.meta = Some(meta);
        }
        tool
    }
}

/// The -32021 error of a call that can only run as a task, to a request that did
/// not declare the tasks extension.
pub fn extension_required() -> ErrorData {
    ErrorData::missing_required_client_capability(ClientCapabilities::builder().enable_tasks().build())
}

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// The record is larger than the store takes (a huge result).
    #[error("task record of {0} bytes is too large")]
    TooLarge(usize),
    /// `create` found a record under that id.
    #[error("task exists")]
    Exists,
}

/// What a [`TaskStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where task records live, shared by every worker. Revisions increase with
/// every write of a record.
pub trait TaskStore: Send + Sync {
    /// Store a new record; [`StoreError::Exists`] if the id is taken.
    fn create<'a>(&'a self, record: &'a TaskRecord) -> StoreFuture<'a, u64>;
    /// The record and its revision.
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(TaskRecord, u64)>>;
    /// Replace the record if it is still at `revision`: the new revision, or `None`
    /// if someone wrote it in between.
    fn replace<'a>(&'a self, record: &'a TaskRecord, revision: u64) -> StoreFuture<'a, Option<u64>>;
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Tell the runner of `id` (wherever it is) that its record changed.
    fn signal<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Signals for `id`, until the receiver is dropped.
    fn signals<'a>(&'a self, id: &'a str) -> StoreFuture<'a, mpsc::Receiver<()>>;
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    /// Who may see it: [`owner_of`] the creator.
    pub owner: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_ms: u64,
    /// When the runner last said it was at work.
    pub alive_ms: u64,
    pub ttl_ms: u64,
    pub poll_ms: u64,
    /// Input requests not answered yet.
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub pending: JsonObject,
    /// Answers the runner has not taken yet.
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub answers: JsonObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JsonObject>,
}

impl TaskRecord {
    fn touch(&mut self) {
        self.updated_at = timestamp();
    }

    /// The protocol's view of the record.
    pub fn task(&self) -> Task {
        let mut task = Task::new(
            self.id.clone(),
            self.status,
            self.created_at.clone(),
            self.updated_at.clone(),
        )
        .with_ttl_ms(self.ttl_ms)
        .with_poll_interval_ms(self.poll_ms);
        task.status_message = self.message.clone();
        task
    }

    pub fn detailed(&self) -> DetailedTask {
        let payload = match self.status {
            TaskStatus::InputRequired => TaskPayload::InputRequired {
                input_requests: serde_json::from_value(Value::Object(self.pending.clone())).unwrap_or_default(),
            },
            TaskStatus::Completed => TaskPayload::Completed {
                result: self.result.clone().unwrap_or_default(),
            },
            TaskStatus::Failed => TaskPayload::Failed {
                error: self
                    .error
                    .clone()
                    .unwrap_or_else(|| error_object(&internal("task failed"))),
            },
            TaskStatus::Cancelled => TaskPayload::Cancelled,
            _ => TaskPayload::Working,
        };
        DetailedTask::new(self.task(), payload)
    }

    fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.created_ms) > self.ttl_ms
    }

    fn stale(&self, now: u64) -> bool {
        !self.status.is_terminal() && now.saturating_sub(self.alive_ms) > STALE_AFTER.as_millis() as u64
    }
}

/// The owner string of a principal: tasks are only visible to the same issuer
/// and subject.
pub fn owner_of(principal: Option<&proto::Principal>) -> String {
    match principal {
        Some(p) => format!("{} {}", p.iss, p.sub),
        None => String::new(),
    }
}

/// The work of a task, given its handle.
pub type Job = Box<dyn FnOnce(TaskHandle) -> JobFuture + Send>;
pub type JobFuture = Pin<Box<dyn Future<Output = Result<CallToolResult, ErrorData>> + Send>>;

/// Settings of a [`Tasks`] runtime.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// How long a task's record is kept after its creation.
    pub ttl: Duration,
    /// The polling interval suggested to clients.
    pub poll_interval: Duration,
    /// Tasks this process runs at once, over all callers.
    pub max_running: usize,
    /// Tasks one caller may have running in this process at once.
    pub max_running_per_owner: usize,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(500),
            max_running: 256,
            max_running_per_owner: 16,
        }
    }
}

/// The tasks of one process: starts them and answers `tasks/*` from the store.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn TaskStore>,
    settings: TaskSettings,
    /// Tasks this process runs: id → (owner, cancellation).
    running: Mutex<HashMap<String, (String, CancellationToken)>>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("settings", &self.inner.settings)
            .field("running", &self.running())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn timestamp() -> String {
    rmcp::task_manager::current_timestamp()
}

fn internal(message: &str) -> ErrorData {
    ErrorData::internal_error(message.to_owned(), None)
}

fn error_object(error: &ErrorData) -> JsonObject {
    match serde_json::to_value(error) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::from_iter([
            ("code".to_owned(), json!(error.code.0)),
            ("message".to_owned(), json!(error.message)),
        ]),
    }
}

fn unknown_task(id: &str) -> ErrorData {
    ErrorData::invalid_params("unknown task", Some(json!({ "taskId": id })))
}

fn unavailable(e: StoreError) -> ErrorData {
    tracing::warn!(error = %e, "task store");
    internal("the task store is unavailable; try again")
}

/// Task ids are ours (hex) or anything a client made up: only plain tokens reach
/// the store (they become KV keys and NATS subject tokens).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Tasks {
    pub fn new(store: Arc<dyn TaskStore>, settings: TaskSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                running: Mutex::default(),
            }),
        }
    }

    /// Tasks kept in this process's memory (a single-process server, tests).
    pub fn in_memory(settings: TaskSettings) -> Self {
        Self::new(Arc::new(MemoryStore::default()), settings)
    }

    /// How many tasks this process runs now.
    pub fn running(&self) -> usize {
        self.inner.running.lock().map(|r| r.len()).unwrap_or_default()
    }

    fn store(&self) -> &dyn TaskStore {
        self.inner.store.as_ref()
    }

    /// Record a new task of `owner`, start `job`, and return the task as created.
    /// The record is in the store when this returns.
    pub async fn start(&self, owner: String, job: Job) -> Result<Task, ErrorData> {
        let settings = &self.inner.settings;
        {
            let running = self
                .inner
                .running
                .lock()
                .map_err(|_| internal("task registry poisoned"))?;
            if running.len() >= settings.max_running {
                return Err(internal("this server runs too many tasks; try again later"));
            }
            if running.values().filter(|(o, _)| *o == owner).count() >= settings.max_running_per_owner {
                return Err(ErrorData::invalid_request(
                    format!(
                        "too many running tasks: at most {} at once",
                        settings.max_running_per_owner
                    ),
                    None,
                ));
            }
        }
        let now = now_ms();
        let at = timestamp();
        let record = TaskRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            owner: owner.clone(),
            status: TaskStatus::Working,
            message: None,
            created_at: at.clone(),
            updated_at: at,
            created_ms: now,
            alive_ms: now,
            ttl_ms: settings.ttl.as_millis() as u64,
            poll_ms: settings.poll_interval.as_millis().max(1) as u64,
            pending: JsonObject::new(),
            answers: JsonObject::new(),
            result: None,
            error: None,
        };
        // Listen before the record exists, so no signal is missed.
        let signals = self.store().signals(&record.id).await.map_err(unavailable)?;
        self.store().create(&record).await.map_err(unavailable)?;
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(record.id.clone(), (owner, cancel.clone()));
        }
        let task = record.task();
        tokio::spawn(self.clone().drive(record, job, cancel, signals));
        tracing::info!(task = %task.task_id, "task started");
        Ok(task)
    }

    /// Run `job` until it ends or the record says it is over.
    async fn drive(self, record: TaskRecord, job: Job, cancel: CancellationToken, signals: mpsc::Receiver<()>) {
        let id = record.id.clone();
        let (seen_tx, seen) = watch::channel(record);
        let handle = TaskHandle {
            id: id.clone(),
            tasks: self.clone(),
            cancel: cancel.clone(),
            seen,
        };
        let mut work = tokio::spawn(job(handle));
        let mut signals = Some(signals);
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = now_ms();
        let outcome = loop {
            let signal = async {
                match signals.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = &mut work => break Some(done),
                s = signal => if s.is_none() { signals = None; },
                _ = reload.tick() => {}
            }
            match self.store().load(&id).await {
                Ok(Some((rec, _))) if rec.status.is_terminal() => break None,
                Ok(None) => break None,
                Ok(Some((rec, _))) => {
                    let _ = seen_tx.send(rec);
                }
                Err(e) => tracing::debug!(task = %id, error = %e, "cannot reload task"),
            }
            if now_ms().saturating_sub(last_beat) >= HEARTBEAT_EVERY.as_millis() as u64 {
                last_beat = now_ms();
                let _ = self
                    .change(&id, |r| {
                        r.alive_ms = now_ms();
                        true
                    })
                    .await;
            }
        };
        match outcome {
            // Cancelled or gone: stop the work.
            None => {
                cancel.cancel();
                work.abort();
                tracing::info!(task = %id, "task stopped: cancelled");
            }
            Some(done) => {
                let (status, result, error) = match done {
                    Ok(Ok(result)) => (TaskStatus::Completed, Some(result_object(result)), None),
                    Ok(Err(e)) => (TaskStatus::Failed, None, Some(error_object(&e))),
                    Err(join) => {
                        tracing::error!(task = %id, error = %join, "task work panicked");
                        (
                            TaskStatus::Failed,
                            None,
                            Some(error_object(&internal("the task's work failed"))),
                        )
                    }
                };
                self.finish(&id, status, result, error).await;
            }
        }
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(&id);
        }
    }

    /// Write the terminal state, unless the record already has one.
    async fn finish(&self, id: &str, status: TaskStatus, result: Option<JsonObject>, error: Option<JsonObject>) {
        let set = |r: &mut TaskRecord, result: Option<JsonObject>, error: Option<JsonObject>| {
            if r.status.is_terminal() {
                return false;
            }
            r.status = status;
            r.result = result;
            r.error = error;
            r.pending.clear();
            r.answers.clear();
            true
        };
        let outcome = self.change(id, |r| set(r, result.clone(), error.clone())).await;
        if let Err(StoreError::TooLarge(n)) = outcome {
            let e = internal(&format!("the task's result ({n} bytes) is too large to keep"));
            let _ = self
                .change(id, |r| {
                    if !set(r, None, Some(error_object(&e))) {
                        return false;
                    }
                    r.status = TaskStatus::Failed;
                    true
                })
                .await;
        } else if let Err(e) = outcome {
            tracing::warn!(task = %id, error = %e, "cannot record the task's end");
        }
        tracing::info!(task = %id, status = ?status, "task ended");
    }

    /// Compare-and-set `f` on the record: `Ok(None)` if there is none, `Ok(Some(r))`
    /// with the record after `f` (unchanged when `f` returned false).
    async fn change(
        &self,
        id: &str,
        mut f: impl FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.store().load(id).await? else {
                return Ok(None);
            };
            if !f(&mut record) {
                return Ok(Some(record));
            }
            record.touch();
            if self.store().replace(&record, revision).await?.is_some() {
                return Ok(Some(record));
            }
        }
        Err(StoreError::Unavailable("the task record kept changing".into()))
    }

    /// The caller's task, or the error for a task it cannot see (expired, someone
    /// else's, never existed: all the same to the caller).
    async fn visible(&self, owner: &str, id: &str) -> Result<TaskRecord, ErrorData> {
        if !valid_id(id) {
            return Err(unknown_task(id));
        }
        let Some((record, _)) = self.store().load(id).await.map_err(unavailable)? else {
            return Err(unknown_task(id));
        };
        if record.owner != owner {
            tracing::info!(task = %id, "tasks request for another principal's task");
            return Err(unknown_task(id));
        }
        let now = now_ms();
        if record.expired(now) {
            let _ = self.store().delete(id).await;
            return Err(unknown_task(id));
        }
        if record.stale(now) {
            let gone = internal("the worker running this task stopped");
            let changed = self
                .change(id, |r| {
                    if !r.stale(now_ms()) {
                        return false;
                    }
                    r.status = TaskStatus::Failed;
                    r.error = Some(error_object(&gone));
                    r.pending.clear();
                    true
                })
                .await
                .map_err(unavailable)?;
            return changed.ok_or_else(|| unknown_task(id));
        }
        Ok(record)
    }

    /// `tasks/get`.
    pub async fn get(&self, owner: &str, id: &str) -> Result<GetTaskResult, ErrorData> {
        Ok(GetTaskResult::new(self.visible(owner, id).await?.detailed()))
    }

    /// `tasks/update`: answers to pending input requests. Answers to keys not
    /// pending are ignored; the answered requests are gone when this returns.
    pub async fn update(&self, owner: &str, id: &str, responses: InputResponses) -> Result<(), ErrorData> {
        self.visible(owner, id).await?;
        let mut changed = false;
        self.change(id, |r| {
            changed = false;
            if r.status != TaskStatus::InputRequired {
                return false;
            }
            for (key, value) in &responses {
                if r.pending.remove(key).is_some() {
                    r.answers.insert(key.clone(), value.clone());
                    changed = true;
                }
            }
            if changed && r.pending.is_empty() {
                r.status = TaskStatus::Working;
            }
            changed
        })
        .await
        .map_err(unavailable)?;
        if changed {
            let _ = self.store().signal(id).await;
        }
        Ok(())
    }

    /// `tasks/cancel`: the task is `cancelled` when this returns (unless it had
    /// already ended, which is not an error); its runner stops the work.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<(), ErrorData> {
        self.visible(owner, id).await?;
        let changed = self
            .change(id, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                r.status = TaskStatus::Cancelled;
                r.pending.clear();
                r.answers.clear();
                true
            })
            .await
            .map_err(unavailable)?;
        if changed.is_some_and(|r| r.status == TaskStatus::Cancelled) {
            tracing::info!(task = %id, "task cancelled");
            if let Some(token) = self.local(id) {
                token.cancel();
            }
            let _ = self.store().signal(id).await;
        }
        Ok(())
    }

    fn local(&self, id: &str) -> Option<CancellationToken> {
        self.inner.running.lock().ok()?.get(id).map(|(_, t)| t.clone())
    }

    /// Stop every task this process runs, recording each as failed (the process is
    /// going away; the client sees why instead of waiting for [`STALE_AFTER`]).
    pub async fn shutdown(&self) {
        let running: Vec<(String, CancellationToken)> = match self.inner.running.lock() {
            Ok(mut r) => r.drain().map(|(id, (_, token))| (id, token)).collect(),
            Err(_) => return,
        };
        let gone = internal("the server running this task shut down");
        for (id, token) in running {
            token.cancel();
            let _ = self
                .change(&id, |r| {
                    if r.status.is_terminal() {
                        return false;
                    }
                    r.status = TaskStatus::Failed;
                    r.error = Some(error_object(&gone));
                    r.pending.clear();
                    true
                })
                .await;
        }
    }
}

/// A tool result as stored: never with the related-task `_meta` (SEP-2663: the
/// result inlined in `tasks/get` does not point back at its task).
fn result_object(result: CallToolResult) -> JsonObject {
    match serde_json::to_value(result) {
        Ok(Value::Object(mut map)) => {
            if let Some(Value::Object(meta)) = map.get_mut("_meta") {
                meta.remove("io.modelcontextprotocol/related-task");
                if meta.is_empty() {
                    map.remove("_meta");
                }
            }
            map
        }
        _ => JsonObject::new(),
    }
}

/// What the work of a task holds: its id, cancellation, and the means to ask the
/// client for input and to say how it is getting on.
#[derive(Clone)]
pub struct TaskHandle {
    id: String,
    tasks: Tasks,
    cancel: CancellationToken,
    seen: watch::Receiver<TaskRecord>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

fn cancelled() -> ErrorData {
    ErrorData::new(rmcp::model::ErrorCode::INVALID_REQUEST, "the task was cancelled", None)
}

impl TaskHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cancelled when the client cancels the task.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Set the task's `statusMessage` (what `tasks/get` shows while it works).
    pub async fn set_message(&self, message: &str) {
        let result = self
            .tasks
            .change(&self.id, |r| {
                if r.status.is_terminal() || r.message.as_deref() == Some(message) {
                    return false;
                }
                r.message = Some(message.to_owned());
                true
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(task = %self.id, error = %e, "cannot set the task's status message");
        }
    }

    /// Park the task in `input_required` with `requests` until the client has
    /// answered every one of them with `tasks/update`; the answers by key. Fails
    /// when the task is cancelled meanwhile.
    pub async fn ask(&mut self, requests: InputRequests) -> Result<InputResponses, ErrorData> {
        let Ok(Value::Object(pending)) = serde_json::to_value(&requests) else {
            return Err(internal("cannot encode input requests"));
        };
        let parked = self
            .tasks
            .change(&self.id, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                r.status = TaskStatus::InputRequired;
                r.pending = pending.clone();
                r.answers.clear();
                true
            })
            .await
            .map_err(unavailable)?;
        match parked {
            Some(r) if r.status == TaskStatus::InputRequired => {}
            _ => return Err(cancelled()),
        }
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(cancelled()),
                changed = self.seen.changed() => if changed.is_err() { return Err(cancelled()); },
            }
            let (done, terminal) = {
                let r = self.seen.borrow_and_update();
                (
                    r.status == TaskStatus::Working && r.pending.is_empty() && !r.answers.is_empty(),
                    r.status.is_terminal(),
                )
            };
            if terminal {
                return Err(cancelled());
            }
            if done {
                let mut taken = JsonObject::new();
                self.tasks
                    .change(&self.id, |r| {
                        taken = std::mem::take(&mut r.answers);
                        !taken.is_empty()
                    })
                    .await
                    .map_err(unavailable)?;
                return Ok(taken.into_iter().collect());
            }
        }
    }
}

/// A [`TaskStore`] in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<String, (TaskRecord, u64)>>,
    listeners: Mutex<HashMap<String, Vec<mpsc::Sender<()>>>>,
}

impl TaskStore for MemoryStore {
    fn create<'a>(&'a self, record: &'a TaskRecord) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut records = self
                .records
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
            if records.contains_key(&record.id) {
                return Err(StoreError::Exists);
            }
            records.insert(record.id.clone(), (record.clone(), 1));
            Ok(1)
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(TaskRecord, u64)>> {
        Box::pin(async move {
            let records = self
                .records
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
            Ok(records.get(id).cloned())
        })
    }

    fn replace<'a>(&'a self, record: &'a TaskRecord, revision: u64) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let mut records = self
                .records
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
            match records.get_mut(&record.id) {
                Some((stored, rev)) if *rev == revision => {
                    *stored = record.clone();
                    *rev += 1;
                    Ok(Some(*rev))
                }
                _ => Ok(None),
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(mut records) = self.records.lock() {
                records.remove(id);
            }
            Ok(())
        })
    }

    fn signal<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(mut listeners) = self.listeners.lock()
                && let Some(senders) = listeners.get_mut(id)
            {
                senders.retain(|s| !s.is_closed());
                for s in senders.iter() {
                    let _ = s.try_send(());
                }
            }
            Ok(())
        })
    }

    fn signals<'a>(&'a self, id: &'a str) -> StoreFuture<'a, mpsc::Receiver<()>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(4);
            if let Ok(mut listeners) = self.listeners.lock() {
                listeners.retain(|_, senders| {
                    senders.retain(|s| !s.is_closed());
                    !senders.is_empty()
                });
                listeners.entry(id.to_owned()).or_default().push(tx);
            }
            Ok(rx)
        })
    }
}

/// Whether the request declared the tasks extension: its own `_meta` client
/// capabilities on 2026-07-28 (never inferred from an earlier request), the
/// session's in a session.
pub fn wants_task(cx: &rmcp::service::RequestContext<rmcp::RoleServer>) -> bool {
    cx.client_capabilities().is_some_and(|c| c.supports_tasks())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rmcp::model::{ContentBlock, ErrorCode};

    fn settings() -> TaskSettings {
        TaskSettings {
            ttl: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            max_running: 8,
            max_running_per_owner: 3,
        }
    }

    fn job<F>(f: impl FnOnce(TaskHandle) -> F + Send + 'static) -> Job
    where
        F: Future<Output = Result<CallToolResult, ErrorData>> + Send + 'static,
    {
        Box::new(move |h| Box::pin(f(h)))
    }

    fn ok(text: &str) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    /// Poll until `pred` holds for the task's wire form (bounded).
    async fn until(tasks: &Tasks, owner: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let v = serde_json::to_value(tasks.get(owner, id).await.unwrap()).unwrap();
            if pred(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} never reached the expected state");
    }

    fn elicit(field: &str) -> rmcp::model::InputRequest {
        crate::mrtr::elicit(
            "?",
            json!({ "type": "object", "properties": { field: { "type": "string" } } }),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_task_is_stored_before_start_returns_and_completes_with_its_result() {
        let tasks = Tasks::in_memory(settings());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tasks
            .start(
                "iss alice".into(),
                job(|_| async move {
                    let _ = rx.await;
                    ok("done")
                }),
            )
            .await
            .unwrap();
        assert_eq!(task.status, TaskStatus::Working);
        assert_eq!(task.ttl_ms, Some(60_000));
        assert_eq!(task.poll_interval_ms, Some(100));
        let v = serde_json::to_value(tasks.get("iss alice", &task.task_id).await.unwrap()).unwrap();
        assert_eq!(v["status"], "working");
        assert_eq!(v["resultType"], "complete");
        assert!(v.get("result").is_none());
        tx.send(()).unwrap();
        let v = until(&tasks, "iss alice", &task.task_id, |v| v["status"] == "completed").await;
        assert_eq!(v["result"]["content"][0]["text"], "done");
        assert!(v.get("error").is_none());
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test]
    async fn another_principal_and_made_up_ids_find_nothing() {
        let tasks = Tasks::in_memory(settings());
        let task = tasks
            .start("iss alice".into(), job(|_| async { ok("x") }))
            .await
            .unwrap();
        for (owner, id) in [
            ("iss mallory", task.task_id.as_str()),
            ("iss alice", "no-such-task"),
            ("iss alice", "a.b.>"),
            ("iss alice", ""),
        ] {
            let e = tasks.get(owner, id).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{owner} {id}");
            assert_eq!(
                tasks.cancel(owner, id).await.unwrap_err().code,
                ErrorCode::INVALID_PARAMS
            );
            assert_eq!(
                tasks.update(owner, id, InputResponses::new()).await.unwrap_err().code,
                ErrorCode::INVALID_PARAMS
            );
        }
    }

    #[tokio::test]
    async fn cancel_is_immediate_stops_the_work_and_is_idempotent() {
        let tasks = Tasks::in_memory(settings());
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tasks
            .start(
                "o".into(),
                job(|h| async move {
                    h.cancellation().cancelled().await;
                    let _ = stopped_tx.send(());
                    ok("never stored")
                }),
            )
            .await
            .unwrap();
        tasks.cancel("o", &task.task_id).await.unwrap();
        let v = serde_json::to_value(tasks.get("o", &task.task_id).await.unwrap()).unwrap();
        assert_eq!(v["status"], "cancelled");
        // The work saw the cancellation or was dropped (its sender with it): stopped either way.
        let _ = tokio::time::timeout(Duration::from_secs(5), stopped_rx)
            .await
            .expect("the work goes on after tasks/cancel");
        // Its runner has let go of it (bounded wait): whatever the work did last is recorded.
        for _ in 0..500 {
            if tasks.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tasks.running(), 0, "the runner kept a cancelled task");
        // The work's own ending does not overwrite the terminal status.
        let v = serde_json::to_value(tasks.get("o", &task.task_id).await.unwrap()).unwrap();
        assert_eq!(v["status"], "cancelled");
        assert!(v.get("result").is_none());
        tasks.cancel("o", &task.task_id).await.unwrap();
    }

    #[tokio::test]
    async fn input_requests_are_answered_one_at_a_time_and_unknown_keys_are_ignored() {
        let tasks = Tasks::in_memory(settings());
        let task = tasks
            .start(
                "o".into(),
                job(|mut h| async move {
                    let answers = h
                        .ask(InputRequests::from([
                            ("a".to_owned(), elicit("x")),
                            ("b".to_owned(), elicit("y")),
                        ]))
                        .await?;
                    ok(&format!(
                        "{} {}",
                        answers["a"]["content"]["x"], answers["b"]["content"]["y"]
                    ))
                }),
            )
            .await
            .unwrap();
        let id = task.task_id.as_str();
        let v = until(&tasks, "o", id, |v| v["status"] == "input_required").await;
        assert_eq!(v["inputRequests"].as_object().unwrap().len(), 2);
        assert_eq!(v["inputRequests"]["a"]["method"], "elicitation/create");
        tasks
            .update(
                "o",
                id,
                InputResponses::from([("nope".to_owned(), json!({ "ignored": true }))]),
            )
            .await
            .unwrap();
        let answer = |k: &str, v: &str| json!({ "action": "accept", "content": { k: v } });
        tasks
            .update("o", id, InputResponses::from([("a".to_owned(), answer("x", "1"))]))
            .await
            .unwrap();
        // Gone before update returned: no waiting.
        let v = serde_json::to_value(tasks.get("o", id).await.unwrap()).unwrap();
        assert_eq!(v["status"], "input_required");
        assert!(v["inputRequests"].get("a").is_none());
        assert!(v["inputRequests"].get("b").is_some());
        tasks
            .update("o", id, InputResponses::from([("b".to_owned(), answer("y", "2"))]))
            .await
            .unwrap();
        let v = until(&tasks, "o", id, |v| v["status"] == "completed").await;
        assert_eq!(v["result"]["content"][0]["text"], r#""1" "2""#);
    }

    #[tokio::test]
    async fn errors_fail_the_task_and_tool_errors_complete_it() {
        let tasks = Tasks::in_memory(settings());
        let failed = tasks
            .start(
                "o".into(),
                job(|_| async { Err(ErrorData::internal_error("boom", None)) }),
            )
            .await
            .unwrap();
        let panicked = tasks
            .start(
                "o".into(),
                job(|_| async {
                    if true {
                        panic!("the work panics");
                    }
                    ok("")
                }),
            )
            .await
            .unwrap();
        let tool_error = tasks
            .start(
                "o".into(),
                job(|_| async { Ok(CallToolResult::error(vec![ContentBlock::text("no")])) }),
            )
            .await
            .unwrap();
        let v = until(&tasks, "o", &failed.task_id, |v| v["status"] == "failed").await;
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(v["error"]["message"], "boom");
        assert!(v.get("result").is_none());
        let v = until(&tasks, "o", &panicked.task_id, |v| v["status"] == "failed").await;
        assert_eq!(v["error"]["code"], -32603);
        let v = until(&tasks, "o", &tool_error.task_id, |v| v["status"] == "completed").await;
        assert_eq!(v["result"]["isError"], true);
    }

    #[tokio::test]
    async fn running_tasks_are_capped_per_owner() {
        let tasks = Tasks::in_memory(settings());
        let forever = || {
            job(|h| async move {
                h.cancellation().cancelled().await;
                ok("")
            })
        };
        for _ in 0..3 {
            tasks.start("o".into(), forever()).await.unwrap();
        }
        let e = tasks.start("o".into(), forever()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
        assert!(e.message.contains("too many running tasks"));
        tasks.start("other".into(), forever()).await.unwrap();
        tasks.shutdown().await;
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test]
    async fn shutdown_fails_running_tasks_with_a_reason() {
        let tasks = Tasks::in_memory(settings());
        let task = tasks
            .start(
                "o".into(),
                job(|h| async move {
                    h.cancellation().cancelled().await;
                    ok("")
                }),
            )
            .await
            .unwrap();
        tasks.shutdown().await;
        let v = serde_json::to_value(tasks.get("o", &task.task_id).await.unwrap()).unwrap();
        assert_eq!(v["status"], "failed");
        assert!(v["error"]["message"].as_str().unwrap().contains("shut down"));
    }

    fn record(id: &str, status: TaskStatus, created_ms: u64, alive_ms: u64, ttl_ms: u64) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            owner: "o".into(),
            status,
            message: None,
            created_at: timestamp(),
            updated_at: timestamp(),
            created_ms,
            alive_ms,
            ttl_ms,
            poll_ms: 100,
            pending: JsonObject::new(),
            answers: JsonObject::new(),
            result: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn a_task_whose_runner_went_silent_reads_as_failed_and_old_tasks_expire() {
        let store = Arc::new(MemoryStore::default());
        let tasks = Tasks::new(store.clone(), settings());
        let now = now_ms();
        let silent = now - STALE_AFTER.as_millis() as u64 - 1_000;
        store
            .create(&record("orphan", TaskStatus::Working, silent, silent, 600_000))
            .await
            .unwrap();
        store
            .create(&record("old", TaskStatus::Completed, now - 2_000, now - 2_000, 1_000))
            .await
            .unwrap();
        store
            .create(&record("fresh", TaskStatus::Working, now, now, 600_000))
            .await
            .unwrap();
        let v = serde_json::to_value(tasks.get("o", "orphan").await.unwrap()).unwrap();
        assert_eq!(v["status"], "failed");
        assert!(v["error"]["message"].as_str().unwrap().contains("stopped"));
        assert_eq!(tasks.get("o", "old").await.unwrap_err().code, ErrorCode::INVALID_PARAMS);
        assert!(
            store.load("old").await.unwrap().is_none(),
            "expired records are deleted"
        );
        let v = serde_json::to_value(tasks.get("o", "fresh").await.unwrap()).unwrap();
        assert_eq!(v["status"], "working");
    }

    /// A store that refuses records over a size, as the KV store does.
    struct Small(MemoryStore);

    impl TaskStore for Small {
        fn create<'a>(&'a self, r: &'a TaskRecord) -> StoreFuture<'a, u64> {
            self.0.create(r)
        }
        fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(TaskRecord, u64)>> {
            self.0.load(id)
        }
        fn replace<'a>(&'a self, r: &'a TaskRecord, rev: u64) -> StoreFuture<'a, Option<u64>> {
            let n = serde_json::to_vec(r).unwrap().len();
            if n > 2048 {
                return Box::pin(async move { Err(StoreError::TooLarge(n)) });
            }
            self.0.replace(r, rev)
        }
        fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
            self.0.delete(id)
        }
        fn signal<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
            self.0.signal(id)
        }
        fn signals<'a>(&'a self, id: &'a str) -> StoreFuture<'a, mpsc::Receiver<()>> {
            self.0.signals(id)
        }
    }

    #[tokio::test]
    async fn a_result_too_large_to_keep_fails_the_task() {
        let tasks = Tasks::new(Arc::new(Small(MemoryStore::default())), settings());
        let task = tasks
            .start("o".into(), job(|_| async { ok(&"x".repeat(10_000)) }))
            .await
            .unwrap();
        let v = until(&tasks, "o", &task.task_id, |v| v["status"] != "working").await;
        assert_eq!(v["status"], "failed");
        assert!(v["error"]["message"].as_str().unwrap().contains("too large"));
    }

    #[test]
    fn task_support_is_marked_on_the_definition() {
        let tool = rmcp::model::Tool::new("t", "d", JsonObject::new());
        let marked = TaskSupport::Optional.mark(tool.clone());
        let v = serde_json::to_value(&marked).unwrap();
        assert_eq!(v["_meta"]["io.modelcontextprotocol/tasks"]["taskSupport"], "optional");
        assert!(
            serde_json::to_value(TaskSupport::Forbidden.mark(tool))
                .unwrap()
                .get("_meta")
                .is_none()
        );
        let e = serde_json::to_value(extension_required()).unwrap();
        assert_eq!(e["code"], -32021);
        assert!(e["data"]["requiredCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object());
    }
}
