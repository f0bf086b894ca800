//! HTTP handlers of the `/v1` API. See the README for the contract.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::model::{now_ms, Job, JobView, Role, Status, User};
use crate::upload;
use crate::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Any other path: a JSON 404 like every other error.
pub async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("endpoint {method} {}", uri.path()))
}

/// A known path with the wrong method: 405, in the same JSON shape as every other error.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

#[derive(Deserialize)]
pub struct SubmitQuery {
    /// Wall-clock limit in seconds; capped by the server's own.
    timeout_secs: Option<u64>,
    /// Extra pytest arguments, as a JSON array of strings.
    pytest_args: Option<String>,
}

/// Most extra pytest arguments a job may have, and the longest one.
const MAX_PYTEST_ARGS: usize = 64;
const MAX_PYTEST_ARG_LEN: usize = 4096;

fn parse_pytest_args(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let args: Vec<String> = serde_json::from_str(raw)
        .map_err(|_| ApiError::BadRequest("pytest_args must be a JSON array of strings".into()))?;
    if args.len() > MAX_PYTEST_ARGS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PYTEST_ARGS} pytest arguments"
        )));
    }
    if let Some(bad) = args
        .iter()
        .find(|a| a.len() > MAX_PYTEST_ARG_LEN || a.contains('\0'))
    {
        let shown: String = bad.chars().take(40).collect();
        return Err(ApiError::BadRequest(format!(
            "pytest argument {shown:?} is too long or has a NUL byte (at most {MAX_PYTEST_ARG_LEN} bytes)"
        )));
    }
    Ok(args)
}

/// `POST /v1/jobs`: the body is the project as tar.gz.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SubmitQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    // A user over a per-user cap is told before sending the upload.
    state.jobs.admits(&caller.0.id)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
            "the upload is over the server's {} limit",
            crate::config::format_size(state.upload_limits.max_compressed_bytes)
        )),
        _ => ApiError::BadRequest(format!("cannot read the upload: {e}")),
    })?;
    let pytest_args = parse_pytest_args(q.pytest_args.as_deref())?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "empty upload: send the project as a tar.gz body".into(),
        ));
    }
    let id = new_job_id(&state)?;
    let dir = state.run.job_dir(&id);
    let project = dir.join("project");
    fs_err::create_dir_all(&project)?;
    let limits = state.upload_limits;
    let unpacked = {
        let project = project.clone();
        tokio::task::spawn_blocking(move || upload::unpack(&body[..], &project, limits))
            .await
            .map_err(ApiError::internal)?
    };
    if let Err(e) = unpacked {
        state.run.remove_job_dir(&id);
        return Err(if e.is_client_error() {
            ApiError::BadRequest(e.to_string())
        } else {
            ApiError::internal(e)
        });
    }
    // The project's own configuration is checked now, so that a mistake in it is one line
    // back at once instead of a job that fails later; it also sets pytest arguments and
    // the timeout.
    let checked = {
        let (project, installer) = (project.clone(), state.run.installer);
        tokio::task::spawn_blocking(move || {
            let config = ci_project::read_config(&project)?;
            ci_project::plan(&project, &config, installer)?;
            Ok::<_, ci_project::Error>(config)
        })
        .await
        .map_err(ApiError::internal)?
    };
    let config = match checked {
        Ok(config) => config,
        Err(e) => {
            state.run.remove_job_dir(&id);
            return Err(ApiError::BadRequest(e.to_string()));
        }
    };
    let mut all_args = config.pytest_args.clone();
    all_args.extend(pytest_args);
    let requested = match (q.timeout_secs, config.timeout) {
        (Some(asked), Some(configured)) => Some(asked.min(configured.as_secs().max(1))),
        (asked, configured) => asked.or(configured.map(|t| t.as_secs().max(1))),
    };
    let job = Job {
        id: id.clone(),
        owner: caller.0.id.clone(),
        seq: state.db.next_seq()?,
        status: Status::Queued,
        phase: None,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        exit_code: None,
        reason: None,
        timeout_secs: state.jobs.timeout_for(requested),
        pytest_args: all_args,
        upload_bytes: 0,
        expired_ms: None,
    };
    let position = match state.jobs.submit(job.clone()).await {
        Ok(p) => p,
        Err(e) => {
            state.run.remove_job_dir(&id);
            return Err(e);
        }
    };
    tracing::info!(job = %id, user = %caller.0.email, "job submitted");
    Ok((
        StatusCode::CREATED,
        Json(JobView::new(&job, Some(position), 0)),
    )
        .into_response())
}

fn new_job_id(state: &AppState) -> Result<String, ApiError> {
    loop {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        if state.db.job(&id)?.is_none() && !state.run.job_dir(&id).exists() {
            return Ok(id);
        }
    }
}

/// A job of the caller's, or 404 exactly as for a job that does not exist.
fn own_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    match state.db.job(id)? {
        Some(job) if job.owner == caller.0.id => Ok(job),
        _ => Err(ApiError::NotFound(format!("job {id}"))),
    }
}

fn view(state: &AppState, job: &Job) -> JobView {
    let position = if job.status == Status::Queued {
        state.jobs.queue_position(&job.id)
    } else {
        None
    };
    JobView::new(
        job,
        position,
        crate::logs::stored_len(&state.logs.path(&job.id)),
    )
}

pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = own_job(&state, &caller, &id)?;
    Ok(Json(view(&state, &job)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    status: Option<String>,
}

/// `GET /v1/jobs`: the caller's jobs, newest first.
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown status {s:?}: use one of {}",
                all.join(", ")
            ))
        })?),
    };
    let jobs = state.db.jobs()?;
    let views = jobs
        .iter()
        .rev()
        .filter(|j| j.owner == caller.0.id)
        .filter(|j| status.is_none_or(|s| j.status == s))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|j| view(&state, j))
        .collect();
    Ok(Json(views))
}

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// `GET /v1/jobs/{id}/log?offset=N`: the log from byte N, live until the job ends. The
/// response header `X-Log-Offset` repeats where it starts, so a client that counts the bytes it
/// got can resume exactly where it stopped.
pub async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let job = own_job(&state, &caller, &id)?;
    if job.expired_ms.is_some() {
        return Err(ApiError::Gone(format!(
            "the log of job {id} was removed after the server's retention period ({})",
            crate::retention::describe(state.job_retention)
        )));
    }
    let stream = state.logs.stream(&id, q.offset);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-log-offset", HeaderValue::from(q.offset));
    Ok(response)
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = own_job(&state, &caller, &id)?;
    let job = state.jobs.cancel(job).await?;
    tracing::info!(job = %id, user = %caller.0.email, "cancel requested");
    Ok(Json(view(&state, &job)))
}

pub async fn whoami(caller: Caller) -> Json<crate::model::UserView> {
    Json((&caller.0).into())
}

/// Creates the first admin and its key when the database has no user yet.
pub fn bootstrap_admin(state: &AppState, key_file: &std::path::Path) -> anyhow::Result<()> {
    if !state.db.users()?.is_empty() {
        return Ok(());
    }
    let user = User {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: "admin".into(),
        email: "admin@localhost".into(),
        role: Role::Admin,
        active: true,
        created_ms: now_ms(),
    };
    let (key, record) = crate::auth::new_key(&user.id, "bootstrap", |_| false);
    write_secret(key_file, &format!("{key}\n"))?;
    state.db.put_user(&user)?;
    state.db.put_key(&record)?;
    tracing::info!(path = %key_file.display(), "created the admin user; its API key is in the key file");
    Ok(())
}

/// Writes a file only its owner can read, created with that mode (never briefly wider).
fn write_secret(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}
