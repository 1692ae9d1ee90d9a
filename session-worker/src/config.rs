//! Worker configuration: one struct, built in `main`, passed down.

use std::net::SocketAddr;
use std::time::Duration;

pub const ENV_NATS_URL: &str = "NATS_URL";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const ENV_ADMIN_LISTEN: &str = "WORKER_ADMIN_LISTEN";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9790";
pub const ENV_WORKER_ID: &str = "WORKER_ID";
pub const ENV_IDLE_TIMEOUT: &str = "WORKER_IDLE_TIMEOUT";
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
pub const ENV_SESSION_TTL: &str = "WORKER_SESSION_TTL";
pub const DEFAULT_SESSION_TTL_SECS: u64 = 86_400;
pub const ENV_TOOL_PROFILE: &str = "WORKER_TOOL_PROFILE";
pub const DEFAULT_TOOL_PROFILE: &str = "default";
pub const ENV_LEASE_TTL: &str = "WORKER_LEASE_TTL";
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;
pub const ENV_ARBITERS: &str = "WORKER_ARBITERS";
pub const DEFAULT_ARBITERS: usize = 0;
pub const ENV_DRAIN_TIMEOUT: &str = "WORKER_DRAIN_TIMEOUT";
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
pub const ENV_STATELESS_TIMEOUT: &str = "WORKER_STATELESS_TIMEOUT";
pub const DEFAULT_STATELESS_TIMEOUT_SECS: u64 = 300;
pub const ENV_MAX_SESSIONS_PER_PRINCIPAL: &str = "WORKER_MAX_SESSIONS_PER_PRINCIPAL";
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 100;
pub const ENV_MAX_RECORD_BYTES: &str = "WORKER_MAX_RECORD_BYTES";
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;
pub const ENV_ALLOWED_EMAILS: &str = "ALLOWED_EMAILS";
pub const ENV_TOOL_POLICY_FILE: &str = "TOOL_POLICY_FILE";
pub const ENV_SESSIONS_MAX_BYTES: &str = "WORKER_SESSIONS_MAX_BYTES";
pub const DEFAULT_SESSIONS_MAX_BYTES: i64 = 1024 * 1024 * 1024;
pub const ENV_HEARTBEAT_MS: &str = "WORKER_HEARTBEAT_MS";
pub const DEFAULT_HEARTBEAT_MS: u64 = 200;
pub const ENV_DEAD_AFTER_MS: &str = "WORKER_DEAD_AFTER_MS";
pub const DEFAULT_DEAD_AFTER_MS: u64 = 1000;
pub const ENV_REQUEST_RECORDS: &str = "WORKER_REQUEST_RECORDS";
pub const ENV_RECORD_TTL: &str = "WORKER_RECORD_TTL";
pub const DEFAULT_RECORD_TTL_SECS: u64 = 600;
pub const ENV_RECORDS_MAX_BYTES: &str = "WORKER_RECORDS_MAX_BYTES";
pub const DEFAULT_RECORDS_MAX_BYTES: i64 = 64 * 1024 * 1024;
pub const ENV_EVENTS_MAX_AGE: &str = "WORKER_EVENTS_MAX_AGE";
pub const DEFAULT_EVENTS_MAX_AGE_SECS: u64 = 600;
pub const ENV_EVENTS_MAX_PER_SESSION: &str = "WORKER_EVENTS_MAX_PER_SESSION";
pub const DEFAULT_EVENTS_MAX_PER_SESSION: i64 = 1000;
pub const ENV_EVENTS_MAX_BYTES: &str = "WORKER_EVENTS_MAX_BYTES";
pub const DEFAULT_EVENTS_MAX_BYTES: i64 = 256 * 1024 * 1024;
pub const ENV_TASK_TTL: &str = "WORKER_TASK_TTL";
pub const DEFAULT_TASK_TTL_SECS: u64 = 3600;
pub const ENV_TASK_POLL_INTERVAL_MS: &str = "WORKER_TASK_POLL_INTERVAL_MS";
pub const DEFAULT_TASK_POLL_INTERVAL_MS: u64 = 500;
pub const ENV_MAX_STATELESS_INFLIGHT: &str = "WORKER_MAX_STATELESS_INFLIGHT";
pub const DEFAULT_MAX_STATELESS_INFLIGHT: usize = 1024;
pub const ENV_TASKS_MAX_RUNNING: &str = "WORKER_TASKS_MAX_RUNNING";
pub const DEFAULT_TASKS_MAX_RUNNING: usize = 256;
pub const ENV_TASKS_MAX_RUNNING_PER_PRINCIPAL: &str = "WORKER_TASKS_MAX_RUNNING_PER_PRINCIPAL";
pub const DEFAULT_TASKS_MAX_RUNNING_PER_PRINCIPAL: usize = 16;
pub const ENV_TASKS_MAX_BYTES: &str = "WORKER_TASKS_MAX_BYTES";
pub const DEFAULT_TASKS_MAX_BYTES: i64 = 256 * 1024 * 1024;
pub const ENV_TASK_MAX_RECORD_BYTES: &str = "WORKER_TASK_MAX_RECORD_BYTES";
pub const DEFAULT_TASK_MAX_RECORD_BYTES: usize = 768 * 1024;

/// session-worker settings (`--help` lists every default).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "session-worker", version, about = "mcp-cluster session worker")]
pub struct Config {
    /// NATS server URL, or a comma-separated list of a cluster's servers.
    #[arg(long, env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// Servers of a JetStream cluster holding each bucket and stream this worker
    /// creates (3 on a three-node cluster).
    #[arg(long, env = proto::nats::ENV_NATS_REPLICAS, default_value_t = proto::nats::DEFAULT_NATS_REPLICAS)]
    pub nats_replicas: usize,
    /// Address of the admin server (/healthz, /readyz, /metrics). Port 0 picks one.
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Identity of this worker in shard leases (default: a random id).
    #[arg(long, env = ENV_WORKER_ID)]
    pub worker_id: Option<String>,
    /// Seconds without traffic after which a session actor stops (its state stays in KV).
    #[arg(long, env = ENV_IDLE_TIMEOUT, default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// Seconds a session record lives in KV after its last write.
    #[arg(long, env = ENV_SESSION_TTL, default_value_t = DEFAULT_SESSION_TTL_SECS)]
    pub session_ttl_secs: u64,
    /// Tools served: `default` (add, whoAmI) or `conformance` (add + conformance fixtures).
    #[arg(long, env = ENV_TOOL_PROFILE, default_value = DEFAULT_TOOL_PROFILE)]
    pub tool_profile: String,
    /// Seconds a shard lease lives without renewal; renewed every third of it.
    #[arg(long, env = ENV_LEASE_TTL, default_value_t = DEFAULT_LEASE_TTL_SECS)]
    pub lease_ttl_secs: u64,
    /// Actor threads (actix arbiters); 0 means one per CPU.
    #[arg(long, env = ENV_ARBITERS, default_value_t = DEFAULT_ARBITERS)]
    pub arbiters: usize,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[arg(long, env = ENV_DRAIN_TIMEOUT, default_value_t = DEFAULT_DRAIN_TIMEOUT_SECS)]
    pub drain_timeout_secs: u64,
    /// Upper bound in seconds for one stateless request.
    #[arg(long, env = ENV_STATELESS_TIMEOUT, default_value_t = DEFAULT_STATELESS_TIMEOUT_SECS)]
    pub stateless_timeout_secs: u64,
    /// Live sessions one principal (issuer, subject, client) may hold, across the
    /// cluster; 0: no limit (nothing counted).
    #[arg(long, env = ENV_MAX_SESSIONS_PER_PRINCIPAL, default_value_t = DEFAULT_MAX_SESSIONS_PER_PRINCIPAL)]
    pub max_sessions_per_principal: usize,
    /// Largest session record kept in KV (its `initialize` request included), bytes.
    #[arg(long, env = ENV_MAX_RECORD_BYTES, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Most bytes the session bucket (and the per-principal index) may hold; at the
    /// limit new sessions are refused rather than the store growing without bound.
    #[arg(long, env = ENV_SESSIONS_MAX_BYTES, default_value_t = DEFAULT_SESSIONS_MAX_BYTES)]
    pub sessions_max_bytes: i64,
    /// Milliseconds between this worker's heartbeats (see `liveness`).
    #[arg(long, env = ENV_HEARTBEAT_MS, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a worker is dead and its shards
    /// are taken over; a worker stops serving 0.6 of it after its last good heartbeat.
    #[arg(long, env = ENV_DEAD_AFTER_MS, default_value_t = DEFAULT_DEAD_AFTER_MS)]
    pub dead_after_ms: u64,
    /// Record the answers of state-changing tool calls so a retry after a worker
    /// died is answered, not run twice (see `records`).
    #[arg(long, env = ENV_REQUEST_RECORDS, default_value_t = true, action = clap::ArgAction::Set)]
    pub request_records: bool,
    /// Seconds a request record is kept.
    #[arg(long, env = ENV_RECORD_TTL, default_value_t = DEFAULT_RECORD_TTL_SECS)]
    pub record_ttl_secs: u64,
    /// Most bytes the request-record bucket may hold.
    #[arg(long, env = ENV_RECORDS_MAX_BYTES, default_value_t = DEFAULT_RECORDS_MAX_BYTES)]
    pub records_max_bytes: i64,
    /// Seconds a session's server→client event is kept for streams that resume
    /// with `Last-Event-ID` (the `MCP_EVENTS` stream's max age).
    #[arg(long, env = ENV_EVENTS_MAX_AGE, default_value_t = DEFAULT_EVENTS_MAX_AGE_SECS)]
    pub events_max_age_secs: u64,
    /// Events kept per session; older ones are dropped first.
    #[arg(long, env = ENV_EVENTS_MAX_PER_SESSION, default_value_t = DEFAULT_EVENTS_MAX_PER_SESSION)]
    pub events_max_per_session: i64,
    /// Most bytes the event stream may hold (all sessions); the oldest go first.
    #[arg(long, env = ENV_EVENTS_MAX_BYTES, default_value_t = DEFAULT_EVENTS_MAX_BYTES)]
    pub events_max_bytes: i64,
    /// Seconds an MCP task (the tasks extension) and its result are kept after it
    /// was created (`ttlMs`).
    #[arg(long, env = ENV_TASK_TTL, default_value_t = DEFAULT_TASK_TTL_SECS)]
    pub task_ttl_secs: u64,
    /// Polling interval suggested to clients for `tasks/get` (`pollIntervalMs`).
    #[arg(long, env = ENV_TASK_POLL_INTERVAL_MS, default_value_t = DEFAULT_TASK_POLL_INTERVAL_MS)]
    pub task_poll_interval_ms: u64,
    /// Stateless (2026-07-28) requests one worker serves at once; beyond it they
    /// are shed (the gateway answers 503 with Retry-After, another try may land
    /// on a less busy worker).
    #[arg(long, env = ENV_MAX_STATELESS_INFLIGHT, default_value_t = DEFAULT_MAX_STATELESS_INFLIGHT)]
    pub max_stateless_inflight: usize,
    /// Tasks one worker runs at once; beyond it new tasks are refused (-32603).
    #[arg(long, env = ENV_TASKS_MAX_RUNNING, default_value_t = DEFAULT_TASKS_MAX_RUNNING)]
    pub tasks_max_running: usize,
    /// Tasks one principal may have running on one worker at once (-32600 beyond).
    #[arg(long, env = ENV_TASKS_MAX_RUNNING_PER_PRINCIPAL, default_value_t = DEFAULT_TASKS_MAX_RUNNING_PER_PRINCIPAL)]
    pub tasks_max_running_per_principal: usize,
    /// Most bytes the task bucket may hold.
    #[arg(long, env = ENV_TASKS_MAX_BYTES, default_value_t = DEFAULT_TASKS_MAX_BYTES)]
    pub tasks_max_bytes: i64,
    /// Largest task record (its result included), bytes; a larger result ends the
    /// task as failed.
    #[arg(long, env = ENV_TASK_MAX_RECORD_BYTES, default_value_t = DEFAULT_TASK_MAX_RECORD_BYTES)]
    pub task_max_record_bytes: usize,
    #[command(flatten)]
    pub tools: ToolArgs,
}

/// The settings of the shipped tools (the seeds' variable names).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ToolArgs {
    /// Addresses (or `@domain`) allowed to use `generateImage` besides holders of
    /// the `image_generation` permission; comma-separated.
    #[arg(long, env = ENV_ALLOWED_EMAILS, default_value = "", value_delimiter = ',')]
    pub allowed_emails: Vec<String>,
    /// TOML file changing the tools' access (see `tools::policy`).
    #[arg(long, env = ENV_TOOL_POLICY_FILE)]
    pub tool_policy_file: Option<std::path::PathBuf>,
    /// An OpenAI-compatible API base URL (`…/v1`) for `generateImage`; unset: the
    /// built-in renderer draws the prompt.
    #[arg(long, env = "IMAGE_API_URL")]
    pub image_api_url: Option<String>,
    #[arg(long, env = "IMAGE_API_KEY", hide_env_values = true)]
    pub image_api_key: Option<String>,
    #[arg(long, env = "IMAGE_MODEL", default_value = "gpt-image-1")]
    pub image_model: String,
    /// Seconds a picture may take.
    #[arg(long, env = "IMAGE_TIMEOUT", default_value_t = 60)]
    pub image_timeout_secs: u64,
    /// Directory of Markdown checklists (`list_checklists`, `get_checklist`).
    #[arg(long, env = "CHECKLIST_DIR")]
    pub checklist_dir: Option<std::path::PathBuf>,
    /// Directory of Markdown processes (`list_processes`, `get_process`, `search_processes`).
    #[arg(long, env = "PROCESS_DIR")]
    pub process_dir: Option<std::path::PathBuf>,
    /// Base URL of the downstream Todo API the todo tools call with the user's token.
    #[arg(long, env = "API_URL")]
    pub api_url: Option<String>,
}

impl ToolArgs {
    /// What the shipped tools are configured with.
    pub fn settings(&self) -> tools::shipped::Settings {
        tools::shipped::Settings {
            allowed_emails: self
                .allowed_emails
                .iter()
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
            policy_file: self.tool_policy_file.clone().filter(|p| !p.as_os_str().is_empty()),
            image_api: self.image_api_url.clone().filter(|u| !u.trim().is_empty()).map(|url| {
                tools::shipped::ImageApi {
                    url,
                    key: self.image_api_key.clone().filter(|k| !k.is_empty()),
                    model: self.image_model.clone(),
                }
            }),
            image_timeout: std::time::Duration::from_secs(self.image_timeout_secs.max(1)),
            checklist_dir: self.checklist_dir.clone().filter(|p| !p.as_os_str().is_empty()),
            process_dir: self.process_dir.clone().filter(|p| !p.as_os_str().is_empty()),
            api_url: self.api_url.clone().filter(|u| !u.trim().is_empty()),
        }
    }
}

/// A setting is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl Config {
    /// Heartbeat and death-detection timing.
    pub fn liveness(&self) -> crate::liveness::Timing {
        crate::liveness::Timing {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            dead_after: Duration::from_millis(self.dead_after_ms),
        }
    }

    /// The settings of the worker's tasks runtime.
    pub fn task_settings(&self) -> tools::tasks::TaskSettings {
        tools::tasks::TaskSettings {
            ttl: Duration::from_secs(self.task_ttl_secs),
            poll_interval: Duration::from_millis(self.task_poll_interval_ms),
            max_running: self.tasks_max_running,
            max_running_per_owner: self.tasks_max_running_per_principal,
        }
    }

    /// Check what clap cannot.
    pub fn validate(&self) -> Result<tools::Profile, ConfigError> {
        if self.idle_timeout_secs == 0 {
            return Err(ConfigError {
                setting: ENV_IDLE_TIMEOUT,
                reason: "must be at least 1 second".into(),
            });
        }
        if self.max_record_bytes < 4096 {
            return Err(ConfigError {
                setting: ENV_MAX_RECORD_BYTES,
                reason: "must be at least 4096".into(),
            });
        }
        if self.sessions_max_bytes < 1024 * 1024 {
            return Err(ConfigError {
                setting: ENV_SESSIONS_MAX_BYTES,
                reason: "must be at least 1048576".into(),
            });
        }
        for (ok, setting, reason) in [
            (self.heartbeat_ms >= 10, ENV_HEARTBEAT_MS, "must be at least 10"),
            (
                self.dead_after_ms >= 3 * self.heartbeat_ms,
                ENV_DEAD_AFTER_MS,
                "must be at least three heartbeats",
            ),
            (
                self.dead_after_ms < self.lease_ttl_secs.saturating_mul(1000),
                ENV_DEAD_AFTER_MS,
                "must be shorter than WORKER_LEASE_TTL",
            ),
            (self.task_ttl_secs >= 1, ENV_TASK_TTL, "must be at least 1 second"),
            (
                self.task_poll_interval_ms >= 1,
                ENV_TASK_POLL_INTERVAL_MS,
                "must be at least 1",
            ),
            (self.tasks_max_running >= 1, ENV_TASKS_MAX_RUNNING, "must be at least 1"),
            (
                self.max_stateless_inflight >= 1,
                ENV_MAX_STATELESS_INFLIGHT,
                "must be at least 1",
            ),
            (
                self.tasks_max_running_per_principal >= 1,
                ENV_TASKS_MAX_RUNNING_PER_PRINCIPAL,
                "must be at least 1",
            ),
            (
                self.tasks_max_bytes >= 1024 * 1024,
                ENV_TASKS_MAX_BYTES,
                "must be at least 1048576",
            ),
            (
                self.task_max_record_bytes >= 4096,
                ENV_TASK_MAX_RECORD_BYTES,
                "must be at least 4096",
            ),
        ] {
            if !ok {
                return Err(ConfigError {
                    setting,
                    reason: reason.into(),
                });
            }
        }
        if self.lease_ttl_secs < 3 {
            return Err(ConfigError {
                setting: ENV_LEASE_TTL,
                reason: "must be at least 3 seconds".into(),
            });
        }
        if let Err(reason) = proto::nats::check_url(&self.nats_url) {
            return Err(ConfigError {
                setting: ENV_NATS_URL,
                reason,
            });
        }
        if let Err(reason) = proto::nats::check_replicas(self.nats_replicas) {
            return Err(ConfigError {
                setting: proto::nats::ENV_NATS_REPLICAS,
                reason,
            });
        }
        self.tool_profile.parse().map_err(|_| ConfigError {
            setting: ENV_TOOL_PROFILE,
            reason: format!("{:?} is not one of default, conformance", self.tool_profile),
        })
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
}
