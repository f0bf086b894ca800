//! The `/v1` HTTP API as data: every type that crosses the wire between `ci-server` and `ci`
//! (job, user and key views, test reports, request bodies, query strings, the error body) and the limits
//! both sides must agree on. One definition for both ends, so that they cannot drift apart.
//!
//! Data only: no I/O, no HTTP client or server, no async runtime. JSON field names are a
//! stable contract (`ci list --json` prints [`JobView`]s as the server sent them).

mod admin;
mod error;
mod job;
mod limits;
mod python;
mod report;
mod version;

pub use admin::{
    CreatedKey, ImageView, ImportImage, KeyQuery, KeyView, NewKey, NewUser, Role, UserView,
};
pub use error::ErrorBody;
pub use job::{
    is_run_id, project_name_error, run_id_for, JobView, ListQuery, LogQuery, Phase, PullProgress,
    Shards, Status, SubmitQuery, UnknownStatus, MAX_PROJECT_NAME, MAX_SHARDS,
};
pub use limits::DEFAULT_MAX_UPLOAD_BYTES;
pub use python::{parse_python_list, python_name, ImageStatus, PythonView};
pub use report::{FailedTest, FailureKind, TestCounts, TestReport};
pub use version::{VersionView, API_VERSION};
