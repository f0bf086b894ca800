//! HTTP handlers of the `/v1` API. See the README for the contract.

use axum::body::{Body, BodyDataStream};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ci_protocol::{JobView, ListQuery, LogQuery, SubmitQuery, UserView};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::layout::JobDir;
use crate::model::{job_view, now_ms, Job, Role, Status, User};
use crate::results::{Kept, ResultStore};
use crate::upload::{self, BodyReader, Chunk, Fault, UploadError};
use crate::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /v1/version`: what this server is, for `ci --version --verbose` (no key needed).
pub async fn version() -> Json<ci_protocol::VersionView> {
    Json(ci_protocol::VersionView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api_version: ci_protocol::API_VERSION,
    })
}

/// Any other path: a JSON 404 like every other error.
pub async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("endpoint {method} {}", uri.path()))
}

/// A known path with the wrong method: 405, in the same JSON shape as every other error.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// Most extra pytest arguments a job may have, and the longest one.
const MAX_PYTEST_ARGS: usize = 64;
const MAX_PYTEST_ARG_LEN: usize = 4096;

fn parse_pytest_args(q: &SubmitQuery) -> Result<Vec<String>, ApiError> {
    let args = q
        .pytest_args()
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

/// The node ids of the tests that failed or errored in the caller's job `earlier`, for
/// `failed_from`: refused when there are none to rerun, or when one could be taken for an
/// option or is unfit for an argument.
async fn failed_tests(
    state: &AppState,
    caller: &Caller,
    earlier: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let job = own_job(state, caller, earlier).await?;
    let report = read_report(state, &job).await.map_err(|e| match e {
        ApiError::Absent(why) | ApiError::Gone(why) => {
            ApiError::BadRequest(format!("cannot rerun the failed tests: {why}"))
        }
        e => e,
    })?;
    if report.counts.not_passed() == 0 {
        return Err(ApiError::BadRequest(format!(
            "job {earlier} has no failed or errored tests to rerun"
        )));
    }
    if report.unlisted > 0 {
        return Err(ApiError::BadRequest(format!(
            "job {earlier} has {} failed or errored tests, more than the {} its report lists: \
             rerun the whole suite",
            report.counts.not_passed(),
            ci_protocol::TestReport::MAX_LISTED
        )));
    }
    if report.failed.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "job {earlier} has {} failed or errored tests but its report does not say which",
            report.counts.not_passed()
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(report.failed.len());
    for test in report.failed {
        let id = test.node_id;
        if id.is_empty()
            || id.starts_with('-')
            || id.contains('\0')
            || id.len() > MAX_PYTEST_ARG_LEN
        {
            let shown: String = id.chars().take(40).collect();
            return Err(ApiError::BadRequest(format!(
                "cannot rerun the failed tests of job {earlier}: the test id {shown:?} cannot \
                 be passed to pytest"
            )));
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok((ids, job.python))
}

/// `POST /v1/jobs`: the body is the project as tar.gz, unpacked while it arrives.
///
/// In order: the query, the declared size (413), a free upload slot (503), free disk (507),
/// all before a byte of the body is read; then the body streams through a bounded channel to
/// the unpacker on a blocking thread, under the compressed cap (413) and the upload deadline
/// (408). Whatever fails, the job's directory is gone before the answer.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut body = body.into_data_stream();
    let answer = accept(&state, caller, q, &headers, &mut body).await;
    if answer.is_err() {
        linger(body, state.upload_limits.max_compressed_bytes);
    }
    answer
}

/// How long a refused upload's remaining body is read (and dropped) after the answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// After an early answer, reads and drops what the client still sends, for a few seconds and
/// at most the upload cap, so that a client that writes its whole body before it reads gets
/// the answer rather than a reset connection (nginx's "lingering close"). Nothing is kept.
fn linger(mut body: BodyDataStream, max_bytes: u64) {
    tokio::spawn(async move {
        let drain = async {
            let mut seen: u64 = 0;
            while let Some(Ok(chunk)) = body.next().await {
                seen += chunk.len() as u64;
                if seen > max_bytes {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

async fn accept(
    state: &AppState,
    caller: Caller,
    q: SubmitQuery,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
) -> Result<Response, ApiError> {
    // A user over a per-user cap is told before sending the upload.
    state.jobs.admits(&caller.0.id)?;
    let pytest_args = parse_pytest_args(&q)?;
    if let Some(error) = q
        .project
        .as_deref()
        .and_then(ci_protocol::project_name_error)
    {
        return Err(ApiError::BadRequest(error));
    }
    // Asked-for Pythons are checked before the upload is read, and the user's room for a
    // job per Python.
    let (rerun, rerun_python) = match &q.failed_from {
        Some(earlier) => failed_tests(state, &caller, earlier).await?,
        None => (Vec::new(), None),
    };
    // A rerun runs on the Python of the job it reruns, unless asked otherwise.
    let asked = match q.python.as_deref() {
        Some(list) => ci_protocol::parse_python_list(list),
        None => rerun_python.into_iter().collect(),
    };
    if asked.len() > MAX_PYTHONS {
        return Err(ApiError::BadRequest(format!(
            "{} Pythons asked for: at most {MAX_PYTHONS} per submission",
            asked.len()
        )));
    }
    let pythons = if asked.is_empty() {
        None
    } else {
        let views = state.jobs.executor().pythons(PYTHONS_SETTLE).await;
        let available = ci_project::python::available(&views);
        ci_project::python::choose(&asked, None, &available)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        state.jobs.admits_many(&caller.0.id, asked.len())?;
        Some(ci_project::python::Choice {
            names: asked,
            note: None,
        })
    };
    let limits = state.upload_limits;
    match declared_length(headers) {
        Some(0) => return Err(ApiError::BadRequest(UploadError::Empty.to_string())),
        Some(n) if n > limits.max_compressed_bytes => return Err(too_large(limits)),
        _ => {}
    }
    let slot = state.uploads.slot().ok_or_else(|| ApiError::Busy {
        message: format!(
            "the server is receiving {} uploads already; try again shortly",
            state.uploads.max_concurrent
        ),
        retry_after_secs: BUSY_RETRY_AFTER_SECS,
    })?;
    enough_disk(state).await?;
    let id = new_job_id(state).await?;
    let receive = crate::timing::step(&id, "upload: receive and unpack");
    let deadline = tokio::time::Instant::now() + state.uploads.timeout;
    let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_CHANNEL_CHUNKS);
    let dir = state.jobs.layout().new_job_dir(&id);
    let project = dir.path().join("project");
    // The blocking side owns the slot and the directory until it is done, so that a client
    // that goes away (which drops this future) frees neither before the unpacker stops.
    let unpacking = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        match receive_project(BodyReader::new(rx), &project, limits) {
            Ok(bytes) => Ok((dir, bytes)),
            Err(e) => {
                dir.remove_now();
                Err(e)
            }
        }
    });
    // A cluster's api node keeps the upload as it came, for the worker that runs the job:
    // in a file beside the job directories (never whole in memory), removed when the
    // submission is answered.
    let mut kept = match state.jobs.cluster() {
        Some(_) => Some(kept_upload(state, &id).await?),
        None => None,
    };
    let receiving = tokio::time::timeout_at(
        deadline,
        send_body(body, tx, limits, kept.as_mut().map(|(_, file)| file)),
    );
    let (dir, upload_bytes) = match join_upload(receiving, unpacking).await? {
        Joined::Unpacked(Ok(unpacked)) => unpacked,
        Joined::Unpacked(Err(e)) => return Err(upload_error(&id, e)),
        Joined::BodyFailed(failure) => return Err(failure.into_api_error(state)),
    };
    drop(receive);
    let check = crate::timing::step(&id, "upload: check and record");
    // The project's own configuration is checked now, so that a mistake in it is one line
    // back at once instead of a job that fails later; it also sets pytest arguments and
    // the timeout.
    let checked = {
        let (project, installer) = (dir.path().join("project"), state.installer);
        tokio::task::spawn_blocking(move || {
            let config = ci_project::read_config(&project)?;
            ci_project::plan(&project, &config, installer)?;
            let requires = ci_project::python::requires_python(&project)?;
            Ok::<_, ci_project::Error>((config, requires))
        })
        .await
    };
    // Whatever fails from here on, the directory is gone before the answer.
    let (config, requires) = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err(e)) => {
            dir.remove().await;
            return Err(ApiError::BadRequest(e.to_string()));
        }
        Err(e) => {
            dir.remove().await;
            return Err(ApiError::internal(e));
        }
    };
    let choice = match pythons {
        Some(choice) => Ok(choice),
        None => choose_python(state, &caller.0.id, &config, requires.as_ref()).await,
    };
    let choice = match choice {
        Ok(choice) => choice,
        Err(e) => {
            dir.remove().await;
            return Err(e);
        }
    };
    let mut all_args = config.pytest_args.clone();
    all_args.extend(pytest_args);
    all_args.extend(rerun);
    let requested = match (q.timeout_secs, config.timeout) {
        (Some(asked), Some(configured)) => Some(asked.min(configured.as_secs().max(1))),
        (asked, configured) => asked.or(configured.map(|t| t.as_secs().max(1))),
    };
    let template = Job {
        pytest_args: all_args,
        upload_bytes,
        shards: q.shards.or(config.shards),
        python_note: choice.note.clone(),
        run_id: (choice.names.len() > 1).then(|| ci_protocol::run_id_for(&id)),
        project: q.project.clone(),
        ..Job::queued(
            &id,
            &caller.0.id,
            0,
            now_ms(),
            state.jobs.timeout_for(requested),
        )
    };
    let mut names = choice.names.into_iter().map(Some).collect::<Vec<_>>();
    if names.is_empty() {
        names.push(None);
    }
    // Everything written to the file is on disk before a worker may read it back.
    if let Some((_, file)) = kept.as_mut() {
        use tokio::io::AsyncWriteExt;
        file.flush().await.map_err(ApiError::internal)?;
    }
    let upload = kept.as_ref().map(|(temp, _)| temp.path());
    let first = queue_run(state, &template, names, dir, upload).await?;
    drop(check);
    let (job, position) = first;
    tracing::info!(job = %job.id, run = ?job.run_id, python = ?job.python, user = %caller.0.email, upload_bytes, "job submitted");
    Ok((StatusCode::CREATED, Json(job_view(&job, Some(position), 0))).into_response())
}

/// A file for a cluster's upload as it arrives, in the jobs' directory (the same disk the
/// free-space check looked at), removed when dropped; and its open handle.
async fn kept_upload(
    state: &AppState,
    id: &str,
) -> Result<(tempfile::NamedTempFile, tokio::fs::File), ApiError> {
    let (dir, prefix) = (state.jobs.layout().jobs(), format!(".{id}-upload-"));
    tokio::task::spawn_blocking(move || {
        let temp = tempfile::Builder::new().prefix(&prefix).tempfile_in(dir)?;
        let file = temp.reopen()?;
        Ok::<_, std::io::Error>((temp, tokio::fs::File::from_std(file)))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// Most Pythons one submission may ask for.
const MAX_PYTHONS: usize = 16;

/// Longest a submission (or `GET /v1/pythons`) waits for the server's images to be ready
/// before it decides with those that are.
const PYTHONS_SETTLE: std::time::Duration = std::time::Duration::from_secs(300);

/// The Pythons of a submission that asked for none: the project's `[tool.ci] python`, else
/// the default unless its `requires-python` excludes it. Waits for the images only when a
/// choice needs their versions.
async fn choose_python(
    state: &AppState,
    owner: &str,
    config: &ci_project::Config,
    requires: Option<&(String, String)>,
) -> Result<ci_project::python::Choice, ApiError> {
    let asked = config.python.clone().unwrap_or_default();
    let wait = if asked.is_empty() && requires.is_none() {
        std::time::Duration::ZERO
    } else {
        PYTHONS_SETTLE
    };
    let views = state.jobs.executor().pythons(wait).await;
    let available = ci_project::python::available(&views);
    let choice = ci_project::python::choose(&asked, requires, &available)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if choice.names.len() > MAX_PYTHONS {
        return Err(ApiError::BadRequest(format!(
            "[tool.ci] python asks for {} Pythons: at most {MAX_PYTHONS} per submission",
            choice.names.len()
        )));
    }
    if choice.names.len() > 1 {
        // The upload is in; the room for the run is checked again, with its real size.
        state.jobs.admits_many(owner, choice.names.len())?;
    }
    Ok(choice)
}

/// Queues one job per Python from `template` (whose id and directory are the first's; each
/// other job gets a new id and a copy of the project made of hard links, which nothing
/// writes). Either all are queued or none: a refused one withdraws those queued before it.
/// Returns the first job and its place in the queue.
async fn queue_run(
    state: &AppState,
    template: &Job,
    pythons: Vec<Option<String>>,
    dir: crate::layout::JobDir,
    upload: Option<&std::path::Path>,
) -> Result<(Job, usize), ApiError> {
    let mut dirs = vec![dir];
    let mut jobs = Vec::new();
    for (i, python) in pythons.into_iter().enumerate() {
        let id = if i == 0 {
            template.id.clone()
        } else {
            let id = match new_job_id(state).await {
                Ok(id) => id,
                Err(e) => {
                    remove_all(dirs).await;
                    return Err(e);
                }
            };
            let copy = state.jobs.layout().new_job_dir(&id);
            let (from, to) = (dirs[0].path().join("project"), copy.path().join("project"));
            let linked = tokio::task::spawn_blocking(move || upload::link_tree(&from, &to)).await;
            dirs.push(copy);
            if let Err(e) = linked
                .map_err(ApiError::internal)
                .and_then(|r| r.map_err(ApiError::internal))
            {
                remove_all(dirs).await;
                return Err(e);
            }
            id
        };
        jobs.push(Job {
            id,
            python,
            ..template.clone()
        });
    }
    let mut queued: Vec<(Job, usize)> = Vec::new();
    for (mut job, dir) in jobs.into_iter().zip(dirs) {
        let submitted = match state.store.next_seq().await {
            Ok(seq) => {
                job.seq = seq;
                state
                    .jobs
                    .submit(job.clone(), dir, upload)
                    .await
                    .map_err(ApiError::from)
            }
            Err(e) => {
                dir.remove().await;
                Err(e.into())
            }
        };
        match submitted {
            Ok(position) => queued.push((job, position)),
            Err(e) => {
                for (earlier, _) in queued {
                    let _ = state.jobs.cancel(earlier).await;
                }
                return Err(e);
            }
        }
    }
    Ok(queued.into_iter().next().expect("at least one Python"))
}

async fn remove_all(dirs: Vec<crate::layout::JobDir>) {
    for dir in dirs {
        dir.remove().await;
    }
}

/// Body chunks the receiving side may hold for the unpacker before it waits for it: with
/// hyper's chunks of at most its read buffer (about 400 KiB), under a MiB per upload.
const UPLOAD_CHANNEL_CHUNKS: usize = 2;
/// What a busy server suggests to wait before submitting again.
const BUSY_RETRY_AFTER_SECS: u64 = 10;
/// Largest JSON request body (the admin endpoints'); uploads are streamed and capped apart.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limits: upload::Limits) -> ApiError {
    ApiError::TooLarge(format!(
        "the upload is over the server's {} limit",
        crate::config::format_size(limits.max_compressed_bytes)
    ))
}

/// Refuses a submission while the jobs' file system has less free space than the server keeps.
async fn enough_disk(state: &AppState) -> Result<(), ApiError> {
    let (dir, min) = (state.jobs.layout().jobs(), state.uploads.min_free_disk);
    if min == 0 {
        return Ok(());
    }
    let free = tokio::task::spawn_blocking(move || upload::free_bytes(&dir))
        .await
        .map_err(ApiError::internal)??;
    if free < min {
        return Err(ApiError::InsufficientStorage(format!(
            "the server's disk is too full for new jobs: {} free, and it keeps at least {} free; try again later",
            crate::config::approx_size(free),
            crate::config::approx_size(min)
        )));
    }
    Ok(())
}

/// Unpacks the project from the body, then reads what follows the archive; blocking.
fn receive_project(
    mut body: BodyReader,
    project: &std::path::Path,
    limits: upload::Limits,
) -> Result<u64, UploadError> {
    fs_err::create_dir_all(project).map_err(|source| UploadError::Io {
        path: ".".into(),
        source,
    })?;
    let unpacked = upload::unpack(&mut body, project, limits).and_then(|bytes| {
        body.finish()?;
        Ok(bytes)
    });
    if body.received() == 0 {
        return Err(UploadError::Empty);
    }
    unpacked
}

/// Why receiving a body stopped before its end.
#[derive(Debug)]
enum BodyFailure {
    TooLarge,
    TimedOut,
    Read(axum::Error),
    /// The upload could not be kept for a cluster's worker.
    Keep(std::io::Error),
}

impl BodyFailure {
    fn into_api_error(self, state: &AppState) -> ApiError {
        match self {
            BodyFailure::TooLarge => too_large(state.upload_limits),
            BodyFailure::TimedOut => ApiError::RequestTimeout(format!(
                "the upload took longer than the server's {} limit",
                humantime::format_duration(state.uploads.timeout)
            )),
            BodyFailure::Read(e) => ApiError::BadRequest(format!("cannot read the upload: {e}")),
            BodyFailure::Keep(e) => ApiError::internal(e),
        }
    }
}

/// Sends the body to the unpacker chunk by chunk, counting it against the compressed cap
/// (also when no Content-Length was declared). Stops quietly when the unpacker stops early:
/// its result says why.
async fn send_body(
    body: &mut BodyDataStream,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    limits: upload::Limits,
    mut keep: Option<&mut tokio::fs::File>,
) -> Result<(), BodyFailure> {
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(BodyFailure::Read)?;
        received += chunk.len() as u64;
        if received > limits.max_compressed_bytes {
            return Err(BodyFailure::TooLarge);
        }
        if let Some(keep) = keep.as_deref_mut() {
            use tokio::io::AsyncWriteExt;
            keep.write_all(&chunk).await.map_err(BodyFailure::Keep)?;
        }
        if tx.send(Chunk::Data(chunk)).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Chunk::End).await;
    Ok(())
}

/// What an unpack gives: the job's directory with the project in it, and the project's size.
type Unpacked = Result<(JobDir, u64), UploadError>;

enum Joined {
    Unpacked(Unpacked),
    BodyFailed(BodyFailure),
}

/// Runs the receiving and the unpacking side together until the unpacker is done. A failed
/// body ends the channel, so the unpacker stops at once; an unpacker that fails stops the
/// receiving side without waiting for more of the body.
async fn join_upload(
    receiving: impl std::future::Future<
        Output = Result<Result<(), BodyFailure>, tokio::time::error::Elapsed>,
    >,
    unpacking: tokio::task::JoinHandle<Unpacked>,
) -> Result<Joined, ApiError> {
    let mut receiving = Box::pin(receiving);
    tokio::pin!(unpacking);
    let received = tokio::select! {
        done = &mut unpacking => {
            return Ok(Joined::Unpacked(done.map_err(ApiError::internal)?));
        }
        received = &mut receiving => received,
    };
    // The receiving side is done; dropping it closes the channel (a deadline leaves the sender
    // inside it), so the unpacker ends: wait for it (and, if it failed, for the directory to be
    // removed) before answering.
    drop(receiving);
    let unpacked = unpacking.await.map_err(ApiError::internal)?;
    match received {
        Err(_) => Ok(Joined::BodyFailed(BodyFailure::TimedOut)),
        Ok(Err(failure)) => Ok(Joined::BodyFailed(failure)),
        Ok(Ok(())) => Ok(Joined::Unpacked(unpacked)),
    }
}

/// The answer to a failed unpack: the archive's fault (400), a full disk (507), or ours.
fn upload_error(id: &str, e: UploadError) -> ApiError {
    match e.fault() {
        Fault::Client => ApiError::BadRequest(e.to_string()),
        Fault::NoSpace => {
            tracing::warn!(job = %id, error = %e, "upload refused: the disk is full");
            ApiError::InsufficientStorage(format!(
                "the server's disk filled up while unpacking the project: {e}"
            ))
        }
        Fault::Server => ApiError::internal(format!("job {id}: {e}")),
    }
}

/// `Query`, with a bad query string answered like every other error: 400 and one line of JSON.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `Path`, with a bad path parameter answered like every other error.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) if e.status() == StatusCode::BAD_REQUEST => {
                Err(ApiError::BadRequest(e.body_text()))
            }
            Err(e) => Err(ApiError::internal(e.body_text())),
        }
    }
}

async fn new_job_id(state: &AppState) -> Result<String, ApiError> {
    loop {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        if state.store.get(&id).await?.is_none() && !state.jobs.dir_exists(&id).await {
            return Ok(id);
        }
    }
}

/// A job of the caller's, or 404 exactly as for a job that does not exist.
async fn own_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    match state.store.get(id).await? {
        Some(job) if job.owner == caller.0.id => Ok(job),
        _ => Err(ApiError::NotFound(format!("job {id}"))),
    }
}

/// A job as the API shows it, with the length of its log (`log_bytes`).
async fn view(state: &AppState, job: &Job, log_bytes: u64) -> JobView {
    let position = if job.status == Status::Queued {
        state.jobs.queue_position(&job.id).await
    } else {
        None
    };
    let mut view = job_view(job, position, log_bytes);
    if job.status == Status::Running && job.phase == Some(crate::model::Phase::PullingImage) {
        view.pull = state.jobs.executor().pull_progress(job.python.as_deref());
    }
    view
}

/// The length of a job's log; 0 when it cannot be told (the log's own endpoint says why).
async fn log_len(state: &AppState, id: &str) -> u64 {
    state.logs.len(id).await.unwrap_or(0)
}

pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    let log_bytes = log_len(&state, &id).await;
    Ok(Json(view(&state, &job, log_bytes).await))
}

/// `GET /v1/pythons`: the server's Pythons, the default first, once its images are ready
/// (or have failed, or a while has passed).
pub async fn pythons(
    State(state): State<AppState>,
    _caller: Caller,
) -> Json<Vec<ci_protocol::PythonView>> {
    Json(state.jobs.executor().pythons(PYTHONS_SETTLE).await)
}

/// `GET /v1/jobs`: the caller's jobs, newest first; with `run`, that run's, oldest first.
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let status = q
        .status()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(run) = &q.run {
        // A run's jobs, oldest first (in the order of their Pythons), all of them.
        let jobs: Vec<Job> = state
            .store
            .list()
            .await?
            .into_iter()
            .filter(|j| j.owner == caller.0.id && j.run_id.as_deref() == Some(run.as_str()))
            .filter(|j| status.is_none_or(|s| j.status == s))
            .filter(|j| of_project(j, q.project.as_deref()))
            .collect();
        if jobs.is_empty() && status.is_none() {
            return Err(ApiError::NotFound(format!("run {run}")));
        }
        return Ok(Json(views_of(&state, &jobs).await));
    }
    let jobs: Vec<Job> = state
        .store
        .list()
        .await?
        .into_iter()
        .rev()
        .filter(|j| j.owner == caller.0.id)
        .filter(|j| status.is_none_or(|s| j.status == s))
        .filter(|j| of_project(j, q.project.as_deref()))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(Json(views_of(&state, &jobs).await))
}

/// Whether `job` is of the project `name` asks for (exactly as submitted); any when `None`.
fn of_project(job: &Job, name: Option<&str>) -> bool {
    name.is_none_or(|name| job.project.as_deref() == Some(name))
}

/// The views of `jobs`, with the bytes each one's log holds.
async fn views_of(state: &AppState, jobs: &[Job]) -> Vec<JobView> {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let lens = state.logs.lens(&ids).await;
    let mut views = Vec::with_capacity(jobs.len());
    for (job, len) in jobs.iter().zip(lens) {
        views.push(view(state, job, len.unwrap_or(0)).await);
    }
    views
}

/// `GET /v1/jobs/{id}/log?offset=N`: the log from byte N, live until the job ends. The
/// response header `X-Log-Offset` repeats where it starts, so a client that counts the bytes it
/// got can resume exactly where it stopped.
pub async fn log(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    expired(&state, &job, "log")?;
    // Past the end is an error (as GitLab answers); at the end, a live log waits for more.
    let length = log_len(&state, &id).await;
    if q.offset > length {
        return Err(ApiError::RangeNotSatisfiable {
            message: format!(
                "offset {} is past the end of the log of job {id} ({length} bytes)",
                q.offset
            ),
            length,
        });
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

/// Where `job` kept its results: 410 when the job expired (`what` names it in the answer).
fn kept(
    state: &AppState,
    job: &Job,
    what: &str,
) -> Result<std::sync::Arc<dyn ResultStore>, ApiError> {
    expired(state, job, what)?;
    Ok(state.jobs.results())
}

/// The report of `job`: 410 when it expired, 404 (said in full) when it has none.
async fn read_report(state: &AppState, job: &Job) -> Result<ci_protocol::TestReport, ApiError> {
    let report = kept(state, job, "test report")?.report(&job.id).await?;
    report.ok_or_else(|| no_report(job))
}

fn no_report(job: &Job) -> ApiError {
    let id = &job.id;
    ApiError::Absent(if job.status.is_terminal() {
        format!("job {id} has no test report: its tests did not run to the end, or wrote none")
    } else {
        format!("no test report of job {id} yet: its tests have not ended")
    })
}

/// 410 for what an expired job kept (`what`: "log", "test report", "artifacts").
fn expired(state: &AppState, job: &Job, what: &str) -> Result<(), ApiError> {
    if job.expired_ms.is_some() {
        return Err(ApiError::Gone(format!(
            "the {what} of job {} was removed after the server's retention period ({})",
            job.id,
            crate::retention::describe(state.job_retention)
        )));
    }
    Ok(())
}

/// `GET /v1/jobs/{id}/report`: the job's test report (counts and the failed tests).
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ci_protocol::TestReport>, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    Ok(Json(read_report(&state, &job).await?))
}

/// `GET /v1/jobs/{id}/junit.xml`: pytest's JUnit report as it wrote it.
pub async fn junit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    let file = kept(&state, &job, "test report")?.junit(&id).await?;
    let file = file.ok_or_else(|| no_report(&job))?;
    Ok(file_response(file, "application/xml", None))
}

/// `GET /v1/jobs/{id}/artifacts`: what the job's tests wrote to `/artifacts`, as a tar.gz.
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    let file = kept(&state, &job, "artifacts")?.artifacts(&id).await?;
    let file = file.ok_or_else(|| {
        ApiError::Absent(if job.status.is_terminal() {
            format!("job {id} kept no artifacts: its tests wrote nothing to /artifacts")
        } else {
            format!("no artifacts of job {id} yet: its tests have not ended")
        })
    })?;
    let name = format!("attachment; filename=\"ci-artifacts-{id}.tar.gz\"");
    Ok(file_response(file, "application/gzip", Some(name)))
}

/// A kept file as a streamed body of its length.
fn file_response(file: Kept, content_type: &'static str, disposition: Option<String>) -> Response {
    let len = file.len();
    let mut response = Body::from_stream(file.into_stream()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(value) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = own_job(&state, &caller, &id).await?;
    let job = state.jobs.cancel(job).await?;
    tracing::info!(job = %id, user = %caller.0.email, "cancel requested");
    let log_bytes = log_len(&state, &id).await;
    Ok(Json(view(&state, &job, log_bytes).await))
}

/// Any request but health and version, on a cluster's worker-only node.
pub async fn worker_only() -> ApiError {
    ApiError::Absent(
        "not served by this node: it runs jobs only (--role worker); ask an api node".into(),
    )
}

pub async fn whoami(caller: Caller) -> Json<UserView> {
    Json((&caller.0).into())
}

/// Creates the first admin and its key when the database has no user yet.
pub async fn bootstrap_admin(state: &AppState, key_file: &std::path::Path) -> anyhow::Result<()> {
    if !state.db.users().await?.is_empty() {
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
    // No user, so no key either: the id is free.
    let (key, record) = crate::auth::new_key(&user.id, "bootstrap");
    let (path, content) = (key_file.to_path_buf(), format!("{key}\n"));
    tokio::task::spawn_blocking(move || write_secret(&path, &content)).await??;
    state.db.put_user(&user).await?;
    state.db.put_key(&record).await?;
    tracing::info!(path = %key_file.display(), "created the admin user; its API key is in the key file");
    Ok(())
}

/// Writes a file only its owner can read, created with that mode (never briefly wider).
/// Blocking.
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
