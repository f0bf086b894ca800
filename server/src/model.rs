//! Records the server keeps: jobs, users and API keys, and their JSON views for clients.

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Terminal statuses never change again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    TimedOut,
    Cancelled,
    Lost,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Running,
        Status::Passed,
        Status::Failed,
        Status::Error,
        Status::TimedOut,
        Status::Cancelled,
        Status::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a running job is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PullingImage,
    Installing,
    Testing,
}

/// One submitted job, as stored in sled.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Job {
    pub id: String,
    /// Id of the user who submitted it.
    pub owner: String,
    /// Increasing submission number: orders the queue and listings.
    pub seq: u64,
    pub status: Status,
    pub phase: Option<Phase>,
    /// Unix time in milliseconds.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Exit code of pytest, when it ran to the end.
    pub exit_code: Option<i32>,
    /// Why the job ended the way it did, in words, for anything but a plain pass or fail.
    pub reason: Option<String>,
    pub timeout_secs: u64,
    /// Extra arguments for pytest, after the server's own (`ci submit test -- ARGS`).
    #[serde(default)]
    pub pytest_args: Vec<String>,
    /// Bytes of the unpacked upload: what the job holds on disk while it waits.
    #[serde(default)]
    pub upload_bytes: u64,
    /// When the job's log was removed after `--job-retention`; its record stays.
    #[serde(default)]
    pub expired_ms: Option<i64>,
}

/// Role of a user.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: Role,
    pub active: bool,
    pub created_ms: i64,
}

/// An API key; the key itself is never stored, only its SHA-256.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ApiKey {
    /// Short public id, also the key's first characters after the prefix.
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked: bool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 in UTC, for JSON and tables.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A job as clients see it. Field names are a stable contract (`ci list --json`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct JobView {
    pub id: String,
    pub status: Status,
    pub phase: Option<Phase>,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_secs: Option<f64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// 1-based place in the queue while queued.
    pub queue_position: Option<usize>,
    pub timeout_secs: u64,
    /// Bytes in the log so far: `ci wait` without `--all` starts here.
    pub log_bytes: u64,
    /// The log was removed after the server's retention period.
    pub expired: bool,
}

impl JobView {
    pub fn new(job: &Job, queue_position: Option<usize>, log_bytes: u64) -> Self {
        let duration_secs = job.started_ms.map(|start| {
            let end = job.finished_ms.unwrap_or_else(now_ms);
            (end - start).max(0) as f64 / 1000.0
        });
        JobView {
            id: job.id.clone(),
            status: job.status,
            phase: if job.status == Status::Running {
                job.phase
            } else {
                None
            },
            created: rfc3339(job.created_ms),
            started: job.started_ms.map(rfc3339),
            finished: job.finished_ms.map(rfc3339),
            duration_secs,
            exit_code: job.exit_code,
            reason: job.reason.clone(),
            queue_position,
            timeout_secs: job.timeout_secs,
            log_bytes,
            expired: job.expired_ms.is_some(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: Role,
    pub active: bool,
    pub created: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            role: u.role,
            active: u.active,
            created: rfc3339(u.created_ms),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub user_email: String,
    pub created: String,
    pub last_used: Option<String>,
    pub revoked: bool,
}
