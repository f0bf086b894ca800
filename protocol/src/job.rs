//! Jobs on the wire: their status and phase, the view `GET /v1/jobs` answers with, and the
//! query strings of the job endpoints.

use serde::{Deserialize, Serialize};

use crate::report::TestCounts;

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

    /// Its name in JSON and in query strings (`timed_out`).
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

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Status, UnknownStatus> {
        Status::parse(s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// A name that is no [`Status`]; says which names are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl std::fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "unknown status {:?}: use one of {}",
            self.0,
            all.join(", ")
        )
    }
}

impl std::error::Error for UnknownStatus {}

/// What a running job is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PullingImage,
    Installing,
    Testing,
}

impl Phase {
    /// Its name in JSON (`pulling_image`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PullingImage => "pulling_image",
            Phase::Installing => "installing",
            Phase::Testing => "testing",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as clients see it. Field names are a stable contract (`ci list --json`); fields added
/// later have defaults, so that a client still reads an older server's answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: String,
    pub status: Status,
    /// Only while running.
    pub phase: Option<Phase>,
    /// RFC 3339, UTC.
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_secs: Option<f64>,
    /// Exit code of pytest, when it ran to the end.
    pub exit_code: Option<i32>,
    /// Why the job ended the way it did, in words, for anything but a plain pass or fail.
    pub reason: Option<String>,
    /// 1-based place in the queue while queued.
    pub queue_position: Option<usize>,
    #[serde(default)]
    pub timeout_secs: u64,
    /// Bytes in the log so far: `ci wait` without `--all` starts here.
    #[serde(default)]
    pub log_bytes: u64,
    /// The log was removed after the server's retention period; the record stays.
    #[serde(default)]
    pub expired: bool,
    /// How many tests passed, failed, ... once the job's tests ended and pytest's report was
    /// read; `null` before, and for a job whose tests did not run or left no usable report.
    #[serde(default)]
    pub tests: Option<TestCounts>,
    /// The interpreter the job runs on, by the name `GET /v1/pythons` gives it (`3.13`);
    /// `null` for jobs of a server older than several images.
    #[serde(default)]
    pub python: Option<String>,
    /// The run it belongs to when one submission asked for several Pythons: one job per
    /// version, all with this id (`ci wait <run id>`, `GET /v1/jobs?run=<run id>`).
    #[serde(default)]
    pub run_id: Option<String>,
    /// The name of the submitted project's directory, as `ci submit` sent it (`null` when it
    /// sent none, and for jobs of an older server).
    #[serde(default)]
    pub project: Option<String>,
    /// While the job waits for its image to be pulled: how far the pull is.
    #[serde(default)]
    pub pull: Option<PullProgress>,
}

/// How far the pull of a job's image is (`ci` shows it while the job waits for it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Bytes of the image's layers fetched so far.
    pub done_bytes: u64,
    /// Bytes of all its layers, once the manifest says.
    pub total_bytes: Option<u64>,
}

/// The longest project name a job keeps (`SubmitQuery::project`), in bytes.
pub const MAX_PROJECT_NAME: usize = 100;

/// Why `name` cannot be a job's project name, if it cannot: empty, longer than
/// [`MAX_PROJECT_NAME`] bytes, or holding a control character (it is shown in terminals).
pub fn project_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("the project name is empty".to_string())
    } else if name.len() > MAX_PROJECT_NAME {
        Some(format!(
            "the project name is longer than {MAX_PROJECT_NAME} bytes"
        ))
    } else if name.chars().any(char::is_control) {
        Some("the project name holds a control character".to_string())
    } else {
        None
    }
}

/// The id of the run of several Pythons whose first job is `first_job`: `r` and the job's id
/// (job ids are hex, so the two never meet).
pub fn run_id_for(first_job: &str) -> String {
    format!("r{first_job}")
}

/// Whether `id` names a run (see [`run_id_for`]) rather than a job.
pub fn is_run_id(id: &str) -> bool {
    id.len() > 1 && id.starts_with('r') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The query of `POST /v1/jobs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitQuery {
    /// Wall-clock limit in seconds; capped by the server's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Extra pytest arguments, as a JSON array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pytest_args: Option<String>,
    /// Run only the tests that failed or errored in this earlier job of the same user (their
    /// node ids, from its report, after the extra arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_from: Option<String>,
    /// Split the suite across this many test containers (`--shards`); wins over the
    /// project's `[tool.ci] shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Shards>,
    /// The Pythons to run on, by name, comma-separated (`3.11,3.13`): one job per version,
    /// grouped in a run. Wins over the project's `[tool.ci] python`; without either, the
    /// default image, or the newest whose Python the project's `requires-python` allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// The project's name, shown by `ci list` and the web page and filtered on with
    /// `--project`: `ci` sends the name of the directory it packed. Checked with
    /// [`project_name_error`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// How many test containers a job's suite is split across (`ci submit test --shards N|auto`,
/// `[tool.ci] shards`): each collects the whole suite as pytest would and keeps its share of
/// the test files, balanced by the durations of earlier runs of the project. `auto` takes as
/// many as there are free job slots; a count takes at most that many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Shards {
    Auto,
    Count(u32),
}

/// The most shards a job may ask for.
pub const MAX_SHARDS: u32 = 32;

impl std::str::FromStr for Shards {
    type Err = String;

    fn from_str(s: &str) -> Result<Shards, String> {
        if s == "auto" {
            return Ok(Shards::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(Shards::Count(n)),
            _ => Err(format!(
                "shards must be a number from 1 to {MAX_SHARDS} or \"auto\", not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shards::Auto => f.write_str("auto"),
            Shards::Count(n) => write!(f, "{n}"),
        }
    }
}

impl TryFrom<String> for Shards {
    type Error = String;

    fn try_from(s: String) -> Result<Shards, String> {
        s.parse()
    }
}

impl From<Shards> for String {
    fn from(s: Shards) -> String {
        s.to_string()
    }
}

impl SubmitQuery {
    /// The query for a timeout and extra pytest arguments (none: no `pytest_args`).
    pub fn new(timeout_secs: Option<u64>, pytest_args: &[String]) -> SubmitQuery {
        SubmitQuery {
            timeout_secs,
            pytest_args: (!pytest_args.is_empty())
                .then(|| serde_json::to_string(pytest_args).expect("strings serialize")),
            failed_from: None,
            shards: None,
            python: None,
            project: None,
        }
    }

    /// The extra pytest arguments; none when the query has none.
    pub fn pytest_args(&self) -> Result<Vec<String>, serde_json::Error> {
        match &self.pytest_args {
            None => Ok(Vec::new()),
            Some(raw) => serde_json::from_str(raw),
        }
    }
}

/// The query of `GET /v1/jobs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// At most this many jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only jobs with this status: a [`Status`]'s name, kept as text so that the server can
    /// answer an unknown one with the names it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only the jobs of this run (all of them, oldest first, whatever `limit` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Only the jobs of the project of this name (exactly as submitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl ListQuery {
    pub fn new(limit: Option<usize>, status: Option<Status>) -> ListQuery {
        ListQuery {
            limit,
            status: status.map(|s| s.as_str().to_string()),
            run: None,
            project: None,
        }
    }

    /// The jobs of one run.
    pub fn run(run_id: &str) -> ListQuery {
        ListQuery {
            run: Some(run_id.to_string()),
            ..ListQuery::default()
        }
    }

    /// The status asked for, if any.
    pub fn status(&self) -> Result<Option<Status>, UnknownStatus> {
        self.status.as_deref().map(str::parse).transpose()
    }
}

/// The query of `GET /v1/jobs/{id}/log`: the byte of the log to start at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    #[serde(default)]
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_by_name_and_count() {
        assert_eq!("auto".parse::<Shards>(), Ok(Shards::Auto));
        assert_eq!("2".parse::<Shards>(), Ok(Shards::Count(2)));
        for bad in ["0", "33", "-1", "two", ""] {
            let err = bad.parse::<Shards>().unwrap_err();
            assert!(err.contains("from 1 to 32"), "{err}");
        }
        assert_eq!(Shards::Count(4).to_string(), "4");
        assert_eq!(Shards::Auto.to_string(), "auto");
    }

    #[test]
    fn run_ids() {
        assert_eq!(run_id_for("0a1b2c3d4e5f"), "r0a1b2c3d4e5f");
        assert!(is_run_id("r0a1b2c3d4e5f"));
        assert!(!is_run_id("0a1b2c3d4e5f"));
        assert!(!is_run_id("r"));
        assert!(!is_run_id("run-x"));
    }

    #[test]
    fn statuses_by_name() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(Status::TimedOut.as_str(), "timed_out");
        assert_eq!(
            "done".parse::<Status>().unwrap_err().to_string(),
            "unknown status \"done\": use one of queued, running, passed, failed, error, \
             timed_out, cancelled, lost"
        );
        let terminal: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(terminal, [Status::Queued, Status::Running]);
    }

    #[test]
    fn phases_by_name() {
        for phase in [Phase::PullingImage, Phase::Installing, Phase::Testing] {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
        }
    }

    #[test]
    fn job_view_field_names_are_stable() {
        let view = JobView {
            id: "abc".into(),
            status: Status::TimedOut,
            phase: None,
            created: "2026-11-21T10:50:54Z".into(),
            started: None,
            finished: None,
            duration_secs: Some(1.5),
            exit_code: None,
            reason: Some("timed out after 1m".into()),
            queue_position: None,
            timeout_secs: 60,
            log_bytes: 3,
            expired: false,
            tests: None,
            python: Some("3.13".into()),
            run_id: None,
            project: Some("demo".into()),
            pull: None,
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"id":"abc","status":"timed_out","phase":null,"created":"2026-11-21T10:50:54Z","started":null,"finished":null,"duration_secs":1.5,"exit_code":null,"reason":"timed out after 1m","queue_position":null,"timeout_secs":60,"log_bytes":3,"expired":false,"tests":null,"python":"3.13","run_id":null,"project":"demo","pull":null}"#
        );
    }

    #[test]
    fn an_older_servers_job_still_reads() {
        let job: JobView = serde_json::from_str(
            r#"{"id":"j","status":"running","phase":"pulling_image","created":"t","started":null,"finished":null,"duration_secs":null,"exit_code":null,"reason":null,"queue_position":null}"#,
        )
        .unwrap();
        assert_eq!(job.phase, Some(Phase::PullingImage));
        assert_eq!(
            (job.timeout_secs, job.log_bytes, job.expired),
            (0, 0, false)
        );
        assert_eq!(job.tests, None);
        assert_eq!((job.python, job.run_id), (None, None));
        assert_eq!((job.project, job.pull), (None, None));
    }

    #[test]
    fn pytest_args_travel_as_json() {
        let args = vec!["-k".to_string(), "a and not b".to_string()];
        let query = SubmitQuery::new(Some(5), &args);
        assert_eq!(
            query.pytest_args.as_deref(),
            Some(r#"["-k","a and not b"]"#)
        );
        assert_eq!(query.pytest_args().unwrap(), args);
        let none = SubmitQuery::new(None, &[]);
        assert_eq!(none, SubmitQuery::default());
        assert!(none.pytest_args().unwrap().is_empty());
        let bad = SubmitQuery {
            pytest_args: Some("-x".into()),
            ..SubmitQuery::default()
        };
        assert!(bad.pytest_args().is_err());
    }

    #[test]
    fn project_names() {
        assert_eq!(project_name_error("my-lib"), None);
        assert_eq!(project_name_error("Ünïcode lib"), None);
        assert!(project_name_error("").is_some());
        assert!(project_name_error("a\x1b[31m").is_some());
        assert!(project_name_error(&"x".repeat(MAX_PROJECT_NAME + 1)).is_some());
        assert_eq!(project_name_error(&"x".repeat(MAX_PROJECT_NAME)), None);
    }

    #[test]
    fn list_query_status() {
        let q = ListQuery::new(Some(1), Some(Status::TimedOut));
        assert_eq!(q.status.as_deref(), Some("timed_out"));
        assert_eq!(q.status(), Ok(Some(Status::TimedOut)));
        assert_eq!(ListQuery::default().status(), Ok(None));
        let bad = ListQuery {
            status: Some("done".into()),
            ..ListQuery::default()
        };
        assert!(bad.status().is_err());
    }
}
