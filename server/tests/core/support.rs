//! The server in-process: a data directory in a tempdir, the real router and job manager,
//! and a [`FakeExecutor`] in place of containers. Requests go through
//! `tower::ServiceExt::oneshot`, so no socket is opened and nothing needs root.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use ci_protocol::{CreatedKey, ErrorBody, JobView, NewKey, NewUser};
use ci_server::executor::{Control, Executor, JobEvents, StopReason};
use ci_server::layout::JobPaths;
use ci_server::lifecycle::Verdict;
use ci_server::model::{Job, Phase};
use ci_server::store::JobStore;
use ci_server::{AppState, ServeArgs};
use clap::Parser;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;

/// How long any one wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it gives `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// The fake executor

/// How the test ends a job the fake holds.
#[derive(Clone, Debug)]
pub struct Release {
    /// Written to the job's log before it ends.
    pub output: Vec<u8>,
    pub verdict: Verdict,
    /// A JUnit report the job's "pytest" wrote, read and kept as the real executor does.
    pub report: Option<String>,
}

/// pytest's report (xunit1) of one passing and two failing tests, as the seed's failing
/// project gets it.
pub const FAKE_JUNIT: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="2" skipped="0" tests="3" time="0.021"><testcase classname="tests.test_math_ops" name="test_add" file="tests/test_math_ops.py" line="3" time="0.001" /><testcase classname="tests.test_math_ops" name="test_divide" file="tests/test_math_ops.py" line="7" time="0.001"><failure message="assert 3.5 == 3&#10; +  where 3.5 = divide(7, 2)">def test_divide():
&gt;       assert divide(7, 2) == 3
E       assert 3.5 == 3

tests/test_math_ops.py:9: AssertionError</failure></testcase><testcase classname="tests.test_math_ops" name="test_divide_by_zero" file="tests/test_math_ops.py" line="11" time="0.001"><failure message="ZeroDivisionError: division by zero">tests/test_math_ops.py:13: ZeroDivisionError</failure></testcase></testsuite></testsuites>"#;

/// What the fake writes to every held job's log before it waits: two phases around a line of
/// output. [`FAKE_LOG_START`] is how that reads in the log.
pub const FAKE_OUTPUT: &[u8] = b"collected 1 item\n";
pub const FAKE_LOG_START: &str = "==> installing (fake)\ncollected 1 item\n==> testing (fake)\n";

#[derive(Default)]
struct FakeState {
    /// Ids in the order their runs began.
    started: Vec<String>,
    /// Runs per job id.
    runs: HashMap<String, usize>,
    /// Whether the job's project was in its directory when the run began.
    had_project: HashMap<String, bool>,
    /// Gates of held jobs: the test sends the release.
    gates: HashMap<String, watch::Sender<Option<Release>>>,
    /// The stop reason each stopped job saw.
    stops: HashMap<String, StopReason>,
    /// Verdicts returned, by job.
    verdicts: HashMap<String, Verdict>,
    /// The pytest arguments each job ran with.
    args: HashMap<String, Vec<String>>,
    /// Jobs the test saw cancelled before they ran: running one is a bug.
    forbidden: HashSet<String>,
    violations: Vec<String>,
}

/// An [`Executor`] the test scripts: it records the order jobs start in, writes phases and
/// output through [`JobEvents`], and holds each job until the test releases it with the
/// verdict it chose, or until the job manager asks it to stop (then it returns
/// `reason.verdict()`). In `auto` mode it ends every job at once with a verdict instead.
pub struct FakeExecutor {
    state: Mutex<FakeState>,
    changed: watch::Sender<u64>,
    auto: Option<Verdict>,
    /// What `GET /v1/pythons` says; `None`: the executor's default (one, 3.12).
    pythons: Option<Vec<ci_protocol::PythonView>>,
}

impl FakeExecutor {
    /// A fake that holds every job until released.
    pub fn holding() -> Arc<FakeExecutor> {
        Arc::new(FakeExecutor {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            auto: None,
            pythons: None,
        })
    }

    /// A fake that holds every job, with these CPython versions (the first the default).
    pub fn holding_with_pythons(versions: &[&str]) -> Arc<FakeExecutor> {
        Arc::new(FakeExecutor {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            auto: None,
            pythons: Some(
                versions
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ci_server::executor::fake_python(v, i == 0))
                    .collect(),
            ),
        })
    }

    /// A fake that ends every job with `verdict` after a few yields (unless stopped first).
    pub fn auto(verdict: Verdict) -> Arc<FakeExecutor> {
        Arc::new(FakeExecutor {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            auto: Some(verdict),
            pythons: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake lock")
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn gate(&self, id: &str) -> watch::Sender<Option<Release>> {
        self.lock()
            .gates
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Ends held job `id` (now, or as soon as it runs) with `output` and `verdict`.
    pub fn release(&self, id: &str, output: &[u8], verdict: Verdict) {
        self.gate(id).send_replace(Some(Release {
            output: output.to_vec(),
            verdict,
            report: None,
        }));
    }

    /// [`FakeExecutor::release`] after the job's tests wrote the JUnit report `junit`.
    pub fn release_with_report(&self, id: &str, junit: &str, verdict: Verdict) {
        self.gate(id).send_replace(Some(Release {
            output: b"(tests ran)\n".to_vec(),
            verdict,
            report: Some(junit.to_string()),
        }));
    }

    /// The pytest arguments job `id` was run with.
    pub fn args_of(&self, id: &str) -> Option<Vec<String>> {
        self.lock().args.get(id).cloned()
    }

    /// Tells the fake the test saw `id` cancelled before it ran: running it later is a bug.
    pub fn forbid(&self, id: &str) {
        self.lock().forbidden.insert(id.to_string());
    }

    pub fn started(&self) -> Vec<String> {
        self.lock().started.clone()
    }

    pub fn runs(&self, id: &str) -> usize {
        self.lock().runs.get(id).copied().unwrap_or(0)
    }

    pub fn had_project(&self, id: &str) -> Option<bool> {
        self.lock().had_project.get(id).copied()
    }

    pub fn stop_seen(&self, id: &str) -> Option<StopReason> {
        self.lock().stops.get(id).copied()
    }

    pub fn verdict_of(&self, id: &str) -> Option<Verdict> {
        self.lock().verdicts.get(id).cloned()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Waits until `check` holds for the fake's state.
    async fn until(&self, what: &str, check: impl Fn(&FakeState) -> bool) {
        let mut rx = self.changed.subscribe();
        within(what, async {
            loop {
                if check(&self.lock()) {
                    return;
                }
                rx.changed().await.expect("the fake outlives its tests");
            }
        })
        .await
    }

    /// Waits until job `id` has started.
    pub async fn wait_started(&self, id: &str) {
        self.until(&format!("job {id} to start"), |s| s.runs.contains_key(id))
            .await
    }
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn pythons(&self, _wait: std::time::Duration) -> Vec<ci_protocol::PythonView> {
        match &self.pythons {
            Some(pythons) => pythons.clone(),
            None => vec![ci_server::executor::fake_python("3.12.0", true)],
        }
    }

    async fn run(
        &self,
        job: &Job,
        paths: &JobPaths,
        events: &JobEvents,
        stop: &Control,
    ) -> Verdict {
        let id = job.id.clone();
        let forbidden = {
            let mut s = self.lock();
            s.started.push(id.clone());
            *s.runs.entry(id.clone()).or_default() += 1;
            s.had_project.insert(id.clone(), paths.project().is_dir());
            s.args.insert(id.clone(), job.pytest_args.clone());
            let forbidden = s.forbidden.contains(&id);
            if forbidden {
                s.violations
                    .push(format!("job {id} ran after the test saw it cancelled"));
            }
            forbidden
        };
        self.bump();
        let verdict = if forbidden {
            Verdict::error("the fake ran a job that was already cancelled")
        } else if let Some(auto) = &self.auto {
            let work = async {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            };
            tokio::select! {
                reason = stop.stopped() => {
                    self.lock().stops.insert(id.clone(), reason);
                    reason.verdict()
                }
                () = work => auto.clone(),
            }
        } else {
            events.phase(Phase::Installing, "installing (fake)").await;
            events.log().append(FAKE_OUTPUT).expect("append");
            events.phase(Phase::Testing, "testing (fake)").await;
            let mut gate = self.gate(&id).subscribe();
            let released = tokio::select! {
                reason = stop.stopped() => {
                    self.lock().stops.insert(id.clone(), reason);
                    Err(reason.verdict())
                }
                released = gate.wait_for(Option::is_some) => {
                    Ok(released.expect("gate open").clone().expect("released"))
                }
            };
            match released {
                Err(stopped) => stopped,
                Ok(release) => {
                    events.log().append(&release.output).expect("append");
                    if let Some(junit) = &release.report {
                        // As the real executor: the file the tests wrote, read when they end.
                        std::fs::create_dir_all(paths.report()).expect("report dir");
                        std::fs::write(paths.junit(), junit).expect("write report");
                        match ci_server::report::read(&paths.junit()) {
                            Ok(Some(report)) => events.report(report, paths.junit()).await,
                            Ok(None) => {}
                            Err(e) => events.note(&format!("no test report: {e}")),
                        }
                    }
                    release.verdict
                }
            }
        };
        self.lock().verdicts.insert(id, verdict.clone());
        self.bump();
        verdict
    }
}

// ---------------------------------------------------------------------------------------
// The application

type WrapStore<'a> = Box<dyn FnOnce(ci_server::db::Db) -> Arc<dyn JobStore> + 'a>;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: not the JSON expected: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The message of an error answer.
    pub fn error(&self) -> String {
        self.json::<ErrorBody>().error
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Answer {
        assert_eq!(self.status, status, "{}", self.text());
        self
    }
}

/// The server in-process on a data directory of its own.
pub struct TestApp {
    pub state: AppState,
    pub app: Router,
    pub fake: Arc<FakeExecutor>,
    pub admin_key: String,
    dispatcher: Option<JoinHandle<()>>,
    /// Held so the data directory lives as long as the app (and moves on at a restart).
    dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// A server on a fresh data directory with `flags` (`ci-server serve` options).
    pub async fn start(fake: Arc<FakeExecutor>, flags: &[&str]) -> TestApp {
        TestApp::open(tempfile::tempdir().expect("tempdir"), fake, flags).await
    }

    /// A server on `dir`, as `ci-server serve` opens one: the first admin is made if there
    /// is none, what a previous server left is settled (`Jobs::recover`), and the dispatcher
    /// runs.
    pub async fn open(dir: tempfile::TempDir, fake: Arc<FakeExecutor>, flags: &[&str]) -> TestApp {
        TestApp::build(dir, fake, flags, None).await
    }

    /// [`TestApp::open`] with the job records in the store `wrap` makes of the database,
    /// the rest built as `AppState::new` does.
    pub async fn open_with_store(
        dir: tempfile::TempDir,
        fake: Arc<FakeExecutor>,
        flags: &[&str],
        wrap: impl FnOnce(ci_server::db::Db) -> Arc<dyn JobStore>,
    ) -> TestApp {
        TestApp::build(dir, fake, flags, Some(Box::new(wrap))).await
    }

    async fn build(
        dir: tempfile::TempDir,
        fake: Arc<FakeExecutor>,
        flags: &[&str],
        wrap: Option<WrapStore<'_>>,
    ) -> TestApp {
        let root = dir.path().to_str().expect("utf-8 tempdir").to_string();
        let mut argv = vec!["ci-server", "--data-dir", &root, "--min-free-disk", "0"];
        argv.extend_from_slice(flags);
        let args = Cli::try_parse_from(argv).expect("flags parse").serve;
        let layout = ci_server::layout::DataLayout::new(dir.path().to_path_buf());
        let (db, logs) = {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || {
                let db = ci_server::db::Db::open(&layout.db()).expect("open db");
                let logs: Arc<dyn ci_server::logs::LogStore> =
                    Arc::new(ci_server::logs::FileLogs::new(layout.logs()).expect("open logs"));
                layout.create().expect("create data dirs");
                (db, logs)
            })
            .await
            .expect("open task")
        };
        let executor: Arc<dyn Executor> = fake.clone();
        let installer = ci_project::Installer::Pip;
        let state = match wrap {
            None => AppState::new(db, logs, layout.clone(), executor, installer, &args),
            Some(wrap) => {
                let store = wrap(db.clone());
                AppState::with_store(
                    std::sync::Arc::new(db),
                    store,
                    logs,
                    layout.clone(),
                    executor,
                    installer,
                    &args,
                )
            }
        };
        ci_server::api::bootstrap_admin(&state, &layout.admin_key())
            .await
            .expect("bootstrap admin");
        let admin_key = std::fs::read_to_string(layout.admin_key())
            .expect("admin key")
            .trim()
            .to_string();
        state.jobs.recover().await.expect("recover");
        let dispatcher = tokio::spawn(state.jobs.clone().dispatch());
        let app = ci_server::router(state.clone(), Duration::from_secs(30));
        TestApp {
            state,
            app,
            fake,
            admin_key,
            dispatcher: Some(dispatcher),
            dir: Some(dir),
        }
    }

    /// Stops the job manager (`Jobs::shutdown` with `grace`) and lets go of everything that
    /// holds the data directory, which is handed back for the next server.
    pub async fn stop(self, grace: Duration) -> tempfile::TempDir {
        within(
            "the job manager to shut down",
            self.state.jobs.shutdown(grace),
        )
        .await;
        self.close().await
    }

    /// Lets go of a server whose job manager was shut down; hands back its data directory.
    pub async fn close(mut self) -> tempfile::TempDir {
        if let Some(dispatcher) = self.dispatcher.take() {
            within("the dispatcher to end", dispatcher)
                .await
                .expect("dispatcher");
        }
        self.dir.take().expect("data dir")
    }

    /// Whether the dispatcher task has returned.
    pub fn dispatcher_done(&self) -> bool {
        self.dispatcher.as_ref().is_none_or(JoinHandle::is_finished)
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = within("an answer", self.app.clone().oneshot(request))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = within(
            "the body of an answer",
            axum::body::to_bytes(response.into_body(), usize::MAX),
        )
        .await
        .expect("body")
        .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, uri: &str, key: Option<&str>, body: Body) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        self.send(request.body(body).expect("request")).await
    }

    pub async fn get(&self, uri: &str, key: &str) -> Answer {
        self.call(Method::GET, uri, Some(key), Body::empty()).await
    }

    pub async fn post_json(&self, uri: &str, key: &str, value: &impl serde::Serialize) -> Answer {
        let body = Body::from(serde_json::to_vec(value).expect("json"));
        self.call(Method::POST, uri, Some(key), body).await
    }

    /// A user with a key of its own, made through the admin API; returns the key.
    pub async fn user(&self, email: &str) -> String {
        let new = NewUser {
            name: email.split('@').next().expect("name").to_string(),
            email: email.to_string(),
            role: None,
        };
        self.post_json("/v1/admin/users", &self.admin_key.clone(), &new)
            .await
            .expect(StatusCode::CREATED);
        let key = NewKey {
            email: email.to_string(),
            name: "test".into(),
        };
        let created: CreatedKey = self
            .post_json("/v1/admin/keys", &self.admin_key.clone(), &key)
            .await
            .expect(StatusCode::CREATED)
            .json();
        created.key
    }

    /// `POST /v1/jobs` with `tarball`.
    pub async fn submit_raw(&self, key: &str, tarball: Vec<u8>) -> Answer {
        self.submit_to("/v1/jobs", key, tarball).await
    }

    /// `POST uri` (`/v1/jobs?QUERY`) with `tarball`.
    pub async fn submit_to(&self, uri: &str, key: &str, tarball: Vec<u8>) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/gzip")
            .header(header::CONTENT_LENGTH, tarball.len())
            .body(Body::from(tarball))
            .expect("request");
        self.send(request).await
    }

    /// Submits the tiny project; asserts 201.
    pub async fn submit(&self, key: &str) -> JobView {
        self.submit_raw(key, project_tarball())
            .await
            .expect(StatusCode::CREATED)
            .json()
    }

    pub async fn job(&self, key: &str, id: &str) -> JobView {
        self.get(&format!("/v1/jobs/{id}"), key)
            .await
            .expect(StatusCode::OK)
            .json()
    }

    /// Polls the job until `check` holds.
    pub async fn wait_job(
        &self,
        key: &str,
        id: &str,
        what: &str,
        check: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let check = &check;
        eventually(&format!("job {id} to be {what}"), || async move {
            let job = self.job(key, id).await;
            check(&job).then_some(job)
        })
        .await
    }

    /// Polls the job until it has ended.
    pub async fn wait_ended(&self, key: &str, id: &str) -> JobView {
        self.wait_job(key, id, "ended", |j| j.status.is_terminal())
            .await
    }

    pub async fn log(&self, key: &str, id: &str, offset: Option<u64>) -> Answer {
        let uri = match offset {
            Some(n) => format!("/v1/jobs/{id}/log?offset={n}"),
            None => format!("/v1/jobs/{id}/log"),
        };
        self.get(&uri, key).await
    }

    /// The first `len` bytes of job `id`'s log, read from its stream while the job may still
    /// be waiting or running (the stream of a live log does not end).
    pub async fn log_head(&self, key: &str, id: &str, len: usize) -> String {
        use futures_util::StreamExt;
        let request = Request::builder()
            .uri(format!("/v1/jobs/{id}/log"))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .expect("request");
        let response = within("an answer", self.app.clone().oneshot(request))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let mut stream = response.into_body().into_data_stream();
        let mut got = Vec::new();
        while got.len() < len {
            match within("more of the log", stream.next()).await {
                Some(chunk) => got.extend_from_slice(&chunk.expect("log chunk")),
                None => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Follows job `id`'s log from `offset` in a task of its own; the answer comes once the
    /// log ends.
    pub fn follow(&self, key: &str, id: &str, offset: u64) -> JoinHandle<Answer> {
        let app = self.app.clone();
        let request = Request::builder()
            .uri(format!("/v1/jobs/{id}/log?offset={offset}"))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .expect("request");
        tokio::spawn(async move {
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body")
                .to_vec();
            Answer {
                status,
                headers,
                body,
            }
        })
    }

    pub async fn cancel(&self, key: &str, id: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Some(key),
            Body::empty(),
        )
        .await
    }

    /// The names in the jobs directory.
    pub fn job_dirs(&self) -> BTreeSet<String> {
        self.state.jobs.layout().job_dirs().into_iter().collect()
    }

    /// The names in the logs directory.
    pub fn log_files(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.state.jobs.layout().logs())
            .expect("logs dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    pub async fn records(&self) -> Vec<Job> {
        self.state.store.list().await.expect("list jobs")
    }
}

/// A gzip'd tar of a tiny Python project, built in memory.
pub fn project_tarball() -> Vec<u8> {
    tarball(&[
        ("requirements.txt", b"pytest\n".as_slice()),
        (
            "tests/test_ok.py",
            b"def test_ok():\n    assert True\n".as_slice(),
        ),
    ])
}

/// A gzip'd tar of `files` (path, content).
pub fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data).expect("tar entry");
    }
    tar.into_inner().expect("tar").finish().expect("gzip")
}
