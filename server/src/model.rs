//! Records the server keeps: jobs, users and API keys, and how they become the views clients
//! get (the views themselves, like the statuses, are `ci_protocol`'s: one definition for the
//! server and `ci`).

use serde::{Deserialize, Serialize};

use ci_protocol::{JobView, KeyView, TestCounts, UserView};
pub use ci_protocol::{Phase, Role, Status};

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
    /// The counts of its test report, once its tests ended and the report was read.
    #[serde(default)]
    pub tests: Option<TestCounts>,
    /// Test containers asked for (`--shards`, `[tool.ci] shards`); `None`: one.
    #[serde(default)]
    pub shards: Option<ci_protocol::Shards>,
    /// The Python it runs on, by name (`3.13`); `None`: the server's default image, whatever
    /// Python that turns out to have (it was not ready when the job was submitted).
    #[serde(default)]
    pub python: Option<String>,
    /// The run of several Pythons it belongs to ([`ci_protocol::run_id_for`]).
    #[serde(default)]
    pub run_id: Option<String>,
    /// Why the server chose its Python, when it was not the plain default (the first line
    /// of its log after the image's).
    #[serde(default)]
    pub python_note: Option<String>,
    /// The submitted project's name (`SubmitQuery::project`), checked by
    /// [`ci_protocol::project_name_error`]; every job of a run carries it.
    #[serde(default)]
    pub project: Option<String>,
    /// How many times it was claimed: more than once only in a cluster, where a job whose
    /// worker was lost runs again. Its containers are named apart by it.
    #[serde(default)]
    pub attempt: u32,
}

impl Job {
    /// A job just submitted: queued, nothing run, no arguments, no upload counted.
    pub fn queued(id: &str, owner: &str, seq: u64, created_ms: i64, timeout_secs: u64) -> Job {
        Job {
            id: id.to_string(),
            owner: owner.to_string(),
            seq,
            status: Status::Queued,
            phase: None,
            created_ms,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            reason: None,
            timeout_secs,
            pytest_args: Vec::new(),
            upload_bytes: 0,
            expired_ms: None,
            tests: None,
            shards: None,
            python: None,
            run_id: None,
            python_note: None,
            project: None,
            attempt: 0,
        }
    }
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

/// A job as clients see it, with its place in the queue and the bytes its log holds.
pub fn job_view(job: &Job, queue_position: Option<usize>, log_bytes: u64) -> JobView {
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
        tests: job.tests,
        python: job.python.clone(),
        run_id: job.run_id.clone(),
        project: job.project.clone(),
        pull: None,
    }
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

/// A key as clients see it, with its owner's email: never the key itself.
pub fn key_view(key: &ApiKey, user_email: &str) -> KeyView {
    KeyView {
        id: key.id.clone(),
        name: key.name.clone(),
        user_email: user_email.to_string(),
        created: rfc3339(key.created_ms),
        last_used: key.last_used_ms.map(rfc3339),
        revoked: key.revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_an_older_server_loads_without_a_project() {
        let old = r#"{"id":"j1","owner":"u1","seq":3,"status":"passed","phase":null,"created_ms":1,"started_ms":2,"finished_ms":3,"exit_code":0,"reason":null,"timeout_secs":60}"#;
        let job: Job = serde_json::from_str(old).unwrap();
        assert_eq!(job.project, None);
        let view = job_view(&job, None, 0);
        assert_eq!((view.project, view.pull), (None, None));
        let named = Job {
            project: Some("my-lib".into()),
            ..job
        };
        let again: Job = serde_json::from_str(&serde_json::to_string(&named).unwrap()).unwrap();
        assert_eq!(job_view(&again, None, 0).project.as_deref(), Some("my-lib"));
    }
}
