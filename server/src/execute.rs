//! Runs one job: the image, the install container, the test container, and the verdict.
//!
//! This is the pipeline: the phases in order and what each one's end means for the job.
//! The containers' specs come from [`crate::spec`], and each container is run and stopped
//! by [`crate::supervisor`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ci_project::{InstallPlan, Installer};
use ci_runner::{ContainerSpec, Outcome};
use tokio::time::Instant;

use crate::bytecode;
use crate::cache;
use crate::config::format_size;
use crate::executor::{Control, Executor, JobEvents};
use crate::image::{ImageAdminError, Images, PythonInfo};
use crate::install::{self, Budget, Overrun, Tool};
use crate::layout::JobPaths;
use crate::lifecycle::Verdict;
use crate::logs::LiveLog;
use crate::model::{Job, Phase};
use crate::shards;
use crate::spec::{self, CacheMount, InstallInput, SpecConfig, Venv};
use crate::supervisor::{self, ContainerRun, Ended, Interruption, OverCap};
use crate::timing;
use ci_protocol::Shards;

/// What every job run needs from the server's configuration.
pub struct ContainerExecutor {
    /// The binary that has the `__container` and `__cleanup` subcommands (this server's own).
    pub helper_exe: PathBuf,
    pub state_root: PathBuf,
    pub cache_dir: PathBuf,
    /// Cache entries unused for this long are removed ([`crate::cache::collect`]).
    pub cache_max_age: Duration,
    /// Most one user's cache entries (dependency layers, installer caches) may hold; the
    /// least recently used go first ([`crate::cache::evict`]).
    pub cache_max_size: u64,
    /// Most an install may write into the layer it builds, and into the installer cache
    /// (`--max-deps-size`); also the largest file it may write.
    pub max_deps_size: u64,
    /// `--max-artifacts-size`: most bytes of files the tests may keep in `/artifacts`.
    pub max_artifacts_size: u64,
    /// The cache entries running jobs use, which nothing removes.
    pub cache: cache::Registry,
    /// The server's images, one per Python.
    pub images: Images,
    /// Held while an image's bytecode is compiled (one compile at a time); the images whose
    /// compile failed, which are not tried again by this process.
    pub image_bytecode: tokio::sync::Mutex<std::collections::HashSet<String>>,
    /// Who installs dependencies (`--installer`); pip when uv cannot be had.
    pub installer: Installer,
    /// Where uv comes from; `None` when jobs install with pip.
    pub uv: Option<crate::tools::UvProvider>,
    pub ca_bundle: Option<PathBuf>,
    pub tmp_size: u64,
    pub log_cap: u64,
    pub cgroup_parent: String,
    /// User namespace, cgroups, install network and the limits of every job as applied
    /// (`sandbox::plan`): a limit that cannot be enforced is `None` there.
    pub sandbox: crate::sandbox::Sandbox,
}

impl ContainerExecutor {
    /// The helper process that runs the containers, for [`supervisor`].
    pub fn helper(&self) -> supervisor::Helper<'_> {
        supervisor::Helper {
            exe: &self.helper_exe,
            state_root: &self.state_root,
            log_cap: self.log_cap,
        }
    }
}

/// Runs jobs in containers.
#[async_trait::async_trait]
impl Executor for ContainerExecutor {
    async fn run(
        &self,
        job: &Job,
        paths: &JobPaths,
        events: &JobEvents,
        stop: &Control,
    ) -> Verdict {
        let deadline = Instant::now() + Duration::from_secs(job.timeout_secs);
        execute(self, job, paths, events, stop, deadline).await
    }

    /// Containers of a previous server process (it crashed or was killed) go first, so that
    /// its jobs can be marked lost with nothing of theirs left on the host; then what its
    /// installs wrote into the installer caches without being seen to the end.
    async fn reconcile(&self) {
        let status = tokio::process::Command::new(&self.helper_exe)
            .args(ci_runner::cleanup_args(&self.state_root, None))
            .stdin(Stdio::null())
            .status()
            .await;
        if !status.as_ref().is_ok_and(|s| s.success()) {
            tracing::error!(
                ?status,
                "cleanup of containers left by a previous run failed"
            );
        }
        let cache_dir = self.cache_dir.clone();
        let _ = tokio::task::spawn_blocking(move || cache::recover(&cache_dir)).await;
    }

    async fn pythons(&self, wait: Duration) -> Vec<ci_protocol::PythonView> {
        self.images.settled_views(wait).await
    }

    fn pull_progress(&self, python: Option<&str>) -> Option<ci_protocol::PullProgress> {
        let (done_bytes, total_bytes) = self.images.pull_progress(python)?;
        Some(ci_protocol::PullProgress {
            done_bytes,
            total_bytes,
        })
    }

    async fn images(&self) -> Result<Vec<ci_protocol::ImageView>, ImageAdminError> {
        self.images.list().await
    }

    async fn import_image(
        &self,
        source: ci_rootfs::ImageSource,
    ) -> Result<ci_protocol::PythonView, ImageAdminError> {
        self.images
            .add(source, |image| probe_python(self, image))
            .await
    }

    async fn remove_image(
        &self,
        digest: &str,
        busy: &(dyn for<'s> Fn(&'s str) -> usize + Sync),
    ) -> Result<ci_protocol::ImageView, ImageAdminError> {
        self.images.remove(digest, busy).await
    }

    /// Warms the images and uv so that the first job does not wait for them, then expires
    /// unused dependency and installer caches and holds each user's to --cache-max-size,
    /// now and every hour.
    async fn maintain(&self) {
        let image = async {
            let images = self
                .images
                .prepare_all(|image| probe_python(self, image))
                .await;
            for ready in images.into_iter().flatten() {
                image_bytecode(self, &ready.image, None).await;
            }
        };
        let uv = async {
            if let Some(uv) = &self.uv {
                if let Err(e) = uv.get().await {
                    let e = ci_runner::error_chain(&e);
                    tracing::error!(error = %e, "uv is not available yet; jobs will retry");
                }
            }
        };
        let caches = async {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let (dir, max_age, max_size, registry) = (
                    self.cache_dir.clone(),
                    self.cache_max_age,
                    self.cache_max_size,
                    self.cache.clone(),
                );
                let _ = tokio::task::spawn_blocking(move || {
                    cache::maintain(&dir, max_age, max_size, &registry)
                })
                .await;
            }
        };
        // What the warm-up allocated (an image pull, uv's wheel) is given back once it is done.
        let warm = async {
            let ((), ()) = tokio::join!(image, uv);
            let _ = tokio::task::spawn_blocking(crate::listener::trim_heap).await;
        };
        let ((), ()) = tokio::join!(warm, caches);
    }
}

async fn execute(
    ctx: &ContainerExecutor,
    job: &Job,
    paths: &JobPaths,
    events: &JobEvents,
    control: &Control,
    deadline: Instant,
) -> Verdict {
    let log = events.log();
    let step = timing::step(&job.id, "read the project's config");
    // The project is read first: a job that cannot run should not wait for an image. The
    // config was checked at submit; it is read again because the installer is known only
    // now (uv may turn out to be unavailable).
    let project = paths.project();
    let args = job.pytest_args.clone();
    let read = blocking(move || {
        let config = ci_project::read_config(&project)?;
        // Whether the server adds `-v`: only when the project did not choose a verbosity.
        let verbose = ci_project::pytest_verbose(&project, &config, &args);
        Ok::<_, ci_project::Error>((config, verbose))
    });
    let (config, verbose) = match read.await {
        Ok(read) => read,
        Err(e) => return Verdict::error(e),
    };

    drop(step);
    let step = timing::step(&job.id, "image (and its bytecode)");
    let source = ctx.images.source_for(job.python.as_deref()).to_string();
    events
        .phase(Phase::PullingImage, &format!("preparing image {source}"))
        .await;
    let ready = match ctx
        .images
        .for_python(job.python.as_deref(), |image| probe_python(ctx, image))
        .await
    {
        Ok(ready) => ready,
        Err(e) => return Verdict::error(e.to_string()),
    };
    let image = ready.image.clone();
    let _ = log.note(&format!(
        "image {} ({}): Python {}{}",
        image.reference,
        short_digest(&image.manifest_digest),
        ready.python.version,
        match ready.python.implementation.as_str() {
            "cpython" => String::new(),
            other => format!(" ({other})"),
        }
    ));
    if job.python.is_none() {
        events.python(&ready.python.name()).await;
    }
    if let Some(note) = &job.python_note {
        let _ = log.note(note);
    }
    let image_tree = image_bytecode(ctx, &image, Some(log)).await;
    drop(step);
    let step = timing::step(&job.id, "plan the install");

    let (tool, uv_dir) = match &ctx.uv {
        None => (pip_tool(), None),
        Some(provider) => match provider.get().await {
            Ok(uv) => (
                Tool {
                    kind: Installer::Uv,
                    version: uv.version.clone(),
                },
                Some(uv.dir.clone()),
            ),
            Err(e) => {
                let _ = log.note(&format!(
                    "uv cannot be used (failed to {}): installing with pip",
                    ci_runner::error_chain(&e)
                ));
                (pip_tool(), None)
            }
        },
    };
    let (project, config_for_plan, kind) = (paths.project(), config.clone(), tool.kind);
    let plan = match blocking(move || ci_project::plan(&project, &config_for_plan, kind)).await {
        Ok(plan) => plan,
        Err(e) => return Verdict::error(e),
    };
    events
        .phase(Phase::Installing, &format!("installing: {}", plan.summary))
        .await;
    for note in &plan.notes {
        let _ = log.note(note);
    }
    let missing = {
        let (rootfs, plan) = (image.rootfs.clone(), plan.clone());
        blocking(move || Ok::<_, String>(install::missing_vcs_tool(&rootfs, &plan))).await
    };
    match missing {
        Ok(None) => {}
        Ok(Some(missing)) | Err(missing) => return Verdict::error(missing),
    }

    drop(step);
    // A job run again after its worker was lost may meet its first attempt's containers on
    // this host (a worker that was stopped, not dead): they are named apart.
    let job_id = match job.attempt {
        0 | 1 => job.id.clone(),
        n => format!("{}-a{n}", job.id),
    };
    let common = Common {
        ctx,
        spec: spec_config(ctx, &image, &job_id, paths),
        python: ready.python.name(),
    };
    let step = Step {
        log,
        control,
        deadline,
    };
    // What the upload is, to the byte: the key of its install and of its bytecode.
    let content = {
        let project = paths.project();
        blocking(move || bytecode::content_hash(&project)).await
    };
    let content = match content {
        Ok(content) => content,
        Err(e) => return Verdict::error(format!("cannot read the upload: {e}")),
    };
    let install_step = timing::step(&job.id, "install (or reuse) /venv");
    let installed = install_venv(
        &common,
        &step,
        job,
        paths,
        &plan,
        &tool,
        uv_dir.as_deref(),
        &image.manifest_digest,
        &content,
    )
    .await;
    // The holds keep the layers in the cache while the tests mount them.
    let (venv, _layers) = match installed {
        Ok(installed) => installed,
        Err(ending) => return ending,
    };
    drop(install_step);

    let shown: Vec<String> = job
        .pytest_args
        .iter()
        .map(|a| install::sh_quote(a))
        .collect();
    let v = if verbose { "-v " } else { "" };
    let line = format!("running tests: python -m pytest {v}{}", shown.join(" "));
    events.phase(Phase::Testing, line.trim_end()).await;
    let setup = timing::step(&job.id, "test setup: directories, bytecode trees, spec");
    // The shards beyond the first run in job slots of their own, as many as are free.
    let asked = match job.shards {
        None => 1,
        Some(Shards::Count(n)) => n,
        Some(Shards::Auto) => ci_protocol::MAX_SHARDS,
    };
    let extra_slots = (asked > 1).then(|| control.more_slots(asked - 1)).flatten();
    let count = 1 + extra_slots.as_ref().map_or(0, |p| p.num_permits() as u32);
    if asked > 1 {
        let _ = log.note(&shards_line(job.shards, asked, count));
    }
    let shard_paths: Vec<JobPaths> = if count == 1 {
        vec![paths.clone()]
    } else {
        (1..=count).map(|k| paths.shard(k)).collect()
    };
    let ready = {
        let mut dirs = vec![paths.artifacts()];
        for p in &shard_paths {
            dirs.extend([p.report(), p.bytecode(), p.bytecode_work()]);
        }
        let userns = ctx.sandbox.user_namespace;
        let (project, cache_dir, owner) =
            (paths.project(), ctx.cache_dir.clone(), job.owner.clone());
        let inputs = (count > 1).then(|| paths.shard_inputs());
        blocking(move || {
            for dir in &dirs {
                fs_err::create_dir_all(dir).map_err(|e| e.to_string())?;
                ci_runner::give_to_container(dir, &userns)
                    .map_err(|e| ci_runner::error_chain(&e))?;
            }
            if let Some(inputs) = inputs {
                let name = ci_project::project_name(&project);
                let known = shards::Durations::of(&cache_dir, &owner, name.as_deref()).load();
                fs_err::create_dir_all(&inputs).map_err(|e| e.to_string())?;
                fs_err::write(
                    inputs.join(format!("{}.py", shards::PLUGIN_MODULE)),
                    shards::PLUGIN,
                )
                .map_err(|e| e.to_string())?;
                let known = serde_json::to_vec(&known).map_err(|e| e.to_string())?;
                fs_err::write(inputs.join("durations.json"), known).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
        .await
    };
    if let Err(e) = ready {
        return Verdict::error(format!(
            "cannot prepare the test's writable directories: {e}"
        ));
    }
    let trees = bytecode_trees(ctx, job, &content, &venv, &image, image_tree, &config.env).await;
    drop(setup);
    // What the tests may write is capped like what the installs write: /artifacts (shared
    // by the shards), and each shard's report directory and bytecode are watched, and the
    // tests stopped past a cap.
    let artifacts = Arc::new(Budget::of(
        vec![paths.artifacts()],
        ctx.max_artifacts_size,
        Overrun::Artifacts,
    ));
    let mut budgets = vec![artifacts.clone()];
    let mut runs = Vec::new();
    // Where the shards after the first write, while the first's output is the live log.
    let sinks = {
        let (paths, cap) = (paths.clone(), ctx.log_cap);
        blocking(move || {
            (2..=count)
                .map(|k| supervisor::FileSink::create(&paths.shard_log(k), cap))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    };
    let sinks = match sinks {
        Ok(sinks) => sinks,
        Err(e) => return Verdict::error(format!("cannot prepare the shards' output: {e}")),
    };
    // The tests may ask which Python they run on (a run of several has one job each).
    let mut test_env = config.env.clone();
    test_env.insert(PYTHON_ENV.to_string(), common.python.clone());
    for (i, shard) in shard_paths.iter().enumerate() {
        let cfg = SpecConfig {
            paths: shard,
            ..common.spec.clone()
        };
        let which = (count > 1).then_some(spec::Shard {
            index: i as u32 + 1,
            count,
        });
        let spec = spec::test(
            &cfg,
            &venv,
            &trees.lower,
            &job.pytest_args,
            &test_env,
            which,
            verbose,
        );
        let report = Arc::new(Budget::of(
            vec![shard.report()],
            crate::report::MAX_REPORT_BYTES,
            Overrun::Report,
        ));
        let bytecode = Arc::new(Budget::of(
            vec![shard.bytecode()],
            ctx.max_deps_size,
            Overrun::Bytecode,
        ));
        budgets.extend([report.clone(), bytecode.clone()]);
        let artifacts = artifacts.clone();
        let watch = async move {
            tokio::select! {
                over = supervisor::watch_writes(artifacts) => over,
                over = supervisor::watch_writes(report) => over,
                over = supervisor::watch_writes(bytecode) => over,
            }
        };
        runs.push((spec, watch));
    }
    let started = runs.into_iter().enumerate().map(|(i, (spec, watch))| {
        let sink: &dyn supervisor::OutputSink = if i == 0 { log } else { &sinks[i - 1] };
        let shard = &shard_paths[i];
        async move {
            supervisor::supervise(
                &ctx.helper(),
                &spec,
                shard,
                sink,
                control.stopped(),
                deadline,
                watch,
            )
            .await
        }
    });
    let mut ended = futures_util::future::join_all(started).await;
    drop(extra_slots);
    let results = timing::step(&job.id, "test results: caps, artifacts, bytecode, report");
    // The other shards' output, after the first's, each under a header.
    for k in 2..=count {
        let _ = log.note(&format!("shard {k}/{count}"));
        if let Err(e) = copy_into_log(&paths.shard_log(k), log).await {
            let _ = log.note(&format!("shard {k}'s output is lost: {e}"));
        }
    }
    // The watchers look only now and then: the last writes are measured now. What fits of
    // the artifacts is kept however the tests ended.
    let over = blocking(move || {
        Ok::<_, String>(
            budgets
                .iter()
                .find_map(|b| b.check().err().map(|over| (over, b.cap))),
        )
    })
    .await
    .unwrap_or(None);
    events
        .artifacts(paths.artifacts(), ctx.max_artifacts_size)
        .await;
    let mut outcomes = Vec::new();
    for run in &ended {
        match &run.ended {
            Ended::Finished(outcome) => outcomes.push(outcome.clone()),
            Ended::Interrupted(why) => return interrupted(ctx, job, *why),
            Ended::HelperFailed(failure) => return Verdict::error(failure.reason()),
        }
    }
    // One outcome for the job: the shard whose exit code is the combined one speaks for it
    // (its output tail explains pytest's code), with every shard's limits hit.
    let codes: Vec<i32> = outcomes.iter().map(|o| o.exit_code.unwrap_or(-1)).collect();
    let combined = shards::combined_exit(&codes);
    let speaker = codes.iter().position(|c| *c == combined).unwrap_or(0);
    let mut outcome = outcomes[speaker].clone();
    outcome.oom_killed = outcomes.iter().any(|o| o.oom_killed);
    outcome.pids_limit_hit = outcomes.iter().any(|o| o.pids_limit_hit);
    let run = ended.swap_remove(speaker);
    if let Some((over, cap)) = over {
        return Verdict::Error {
            exit_code: outcome.exit_code,
            reason: over.reason(cap),
        };
    }
    if count > 1 && matches!(combined, 0 | 1) {
        let files: Vec<PathBuf> = shard_paths
            .iter()
            .map(|p| p.report().join(shards::COUNTS_FILE))
            .collect();
        if let Err(reason) = blocking(move || shards::check_counts(&files)).await {
            return Verdict::Error {
                exit_code: outcome.exit_code,
                reason,
            };
        }
    }
    if count > 1 {
        // One bytecode tree for the project: the other shards' merged into the first's.
        let dirs: Vec<PathBuf> = shard_paths.iter().map(JobPaths::bytecode).collect();
        let merged = blocking(move || {
            for other in &dirs[1..] {
                cache::merge(other, &dirs[0])?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if merged.is_ok() {
            trees.keep(ctx, job, &shard_paths[0]).await;
        }
    } else {
        trees.keep(ctx, job, paths).await;
    }
    let report_file = paths.junit();
    let report = {
        let parts: Vec<PathBuf> = shard_paths.iter().map(JobPaths::junit).collect();
        let (out, many) = (report_file.clone(), count > 1);
        blocking(move || {
            if !many {
                return crate::report::read(&out);
            }
            // The job's own report directory, which no shard mounts, holds the merged one.
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            shards::merge_junit(&parts, &out, crate::report::MAX_REPORT_BYTES)?;
            let wall = parts
                .iter()
                .filter_map(|p| crate::report::read(p).ok().flatten())
                .map(|r| r.counts.duration_secs)
                .fold(0.0, f64::max);
            // The shards ran side by side: the run took as long as the longest.
            Ok(crate::report::read(&out)?.map(|mut r| {
                r.counts.duration_secs = wall;
                r
            }))
        })
        .await
    };
    match &report {
        Ok(Some(read)) => events.report(read.clone(), paths.junit()).await,
        Ok(None) => {}
        Err(e) => events.note(&format!("no test report: {e}")),
    }
    // What each file took, for the next split of this project.
    let record = {
        let (project, cache_dir, owner) =
            (paths.project(), ctx.cache_dir.clone(), job.owner.clone());
        blocking(move || {
            let ran = crate::report::file_durations(&report_file).map_err(|e| e.to_string())?;
            let name = ci_project::project_name(&project);
            shards::Durations::of(&cache_dir, &owner, name.as_deref())
                .update(ran)
                .map_err(|e| e.to_string())
        })
        .await
    };
    if let Err(e) = record {
        tracing::warn!(job = %job.id, error = %e, "cannot record the tests' durations");
    }
    drop(results);
    if let Some(reason) = dishonest_pass(outcome.exit_code, &report, &job.pytest_args) {
        return Verdict::Error {
            exit_code: outcome.exit_code,
            reason,
        };
    }
    // A limit that was hit explains a failure better than pytest's exit code does: a test
    // whose child was OOM-killed, or that could not fork, fails for that reason.
    if outcome.exit_code != Some(0) && (outcome.oom_killed || outcome.pids_limit_hit) {
        return Verdict::Error {
            exit_code: outcome.exit_code,
            reason: describe(ctx, &outcome),
        };
    }
    match outcome.exit_code {
        Some(0) => Verdict::Passed,
        Some(1) => Verdict::Failed,
        Some(code) => Verdict::Error {
            exit_code: Some(code),
            reason: pytest_exit_reason(code, &run.tail).unwrap_or_else(|| describe(ctx, &outcome)),
        },
        None => Verdict::error(describe(ctx, &outcome)),
    }
}

/// Why pytest ended with `code` when that is neither a pass nor a failure, in words a
/// developer can act on; `tail` is the end of its output. `None` for a code pytest does not
/// use (the test process ended itself).
fn pytest_exit_reason(code: i32, tail: &[u8]) -> Option<String> {
    Some(match code {
        2 => "pytest was interrupted, or could not collect the tests (exit code 2): see the \
              errors above"
            .to_string(),
        3 => "pytest hit an internal error (exit code 3)".to_string(),
        4 => {
            let tail = String::from_utf8_lossy(tail);
            // pytest says what was wrong on a line of its own: `ERROR: Wrong expression
            // passed to '-k': ...`, `ERROR: file or directory not found: ...`.
            let said = tail
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("ERROR: "))
                .map(|l| {
                    // The job's own output: nothing a terminal would act on goes into the
                    // reason `ci` prints.
                    let cut: String = l
                        .chars()
                        .take(200)
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect();
                    format!(": {cut}")
                })
                .unwrap_or_default();
            format!("pytest was called wrongly (usage error, exit code 4){said}")
        }
        5 => format!(
            "no tests collected (exit code 5): pytest looked in {} and found no test_*.py or \
             *_test.py files, or every test was deselected",
            spec::WORKSPACE
        ),
        _ => return None,
    })
}

/// Why an exit status of 0 is not a pass, when the report says otherwise: a test process can
/// end itself with status 0 after pytest reported failures (`os._exit(0)` in an atexit hook or
/// a `sitecustomize` planted by a dependency). `None` when the exit status stands.
fn dishonest_pass(
    exit_code: Option<i32>,
    report: &Result<Option<ci_protocol::TestReport>, String>,
    pytest_args: &[String],
) -> Option<String> {
    if exit_code != Some(0) {
        return None;
    }
    // The user's own --junitxml replaces ours: then there is no second witness.
    let own_report = pytest_args
        .iter()
        .any(|a| a.starts_with("--junitxml") || a.starts_with("--junit-xml"));
    match report {
        Ok(Some(report)) if report.counts.not_passed() > 0 => Some(format!(
            "the test process exited 0 but the report lists {} failed test{}",
            report.counts.not_passed(),
            if report.counts.not_passed() == 1 {
                ""
            } else {
                "s"
            }
        )),
        Ok(Some(_)) => None,
        Ok(None) if own_report => None,
        Ok(None) => Some("the test process exited 0 but pytest wrote no report".into()),
        Err(e) => Some(format!(
            "the test process exited 0 but its report is unusable: {e}"
        )),
    }
}

fn pip_tool() -> Tool {
    Tool {
        kind: Installer::Pip,
        version: String::new(),
    }
}

/// Runs file-system work off the async threads.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// Writes the install inputs and makes the directories the install containers write to:
/// the staging directory of a new dependency layer, the overlay upper and work directories,
/// and the writable copy of the project. All of them belong to the containers' root.
/// Returns the copy's disk use, from which what a build adds to it is counted.
fn prepare_job_dirs(
    paths: &JobPaths,
    plan: &InstallPlan,
    tool: &Tool,
    build_deps: bool,
    userns: &ci_runner::UserNamespace,
) -> Result<u64, String> {
    let give = |dir: &Path| {
        ci_runner::give_to_container(dir, userns).map_err(|e| ci_runner::error_chain(&e))
    };
    install::write_inputs(&paths.inputs(), plan, tool).map_err(|e| e.to_string())?;
    let mut dirs = Vec::new();
    if build_deps {
        dirs.push(paths.deps_staging());
    }
    if plan.project.is_some() {
        dirs.extend([paths.venv_upper(), paths.venv_work()]);
    }
    for dir in dirs {
        fs_err::create_dir_all(&dir).map_err(|e| e.to_string())?;
        give(&dir)?;
    }
    if !spec::needs_build_copy(plan) {
        return Ok(0);
    }
    install::copy_tree(&paths.project(), &paths.build()).map_err(|e| e.to_string())?;
    give(&paths.build())?;
    let copy = cache::usage(&paths.build(), u64::MAX).map_err(|e| e.to_string())?;
    Ok(copy.bytes)
}

/// A project's own install: how, and where it is kept for the next job of the same upload.
struct ProjectInstall {
    command: String,
    entry: PathBuf,
    /// Kept by an earlier job: nothing to install.
    cached: bool,
}

/// The installer cache a job's installs see.
enum InstallerCache {
    /// The user's own, claimed by this job alone (no other job mounts it, nothing evicts
    /// it meanwhile) and seen through an overlay: the installs write into the job's
    /// `upper` directory, which is merged into the cache only if they succeed.
    Shared {
        dir: PathBuf,
        _claim: cache::Hold,
        /// [`JobPaths::cache_upper`], which the spec mounts as the overlay's upper layer.
        upper: PathBuf,
    },
    /// Another job of the user has the user's own: a cache of the job's own, which goes
    /// with the job directory.
    Private(PathBuf),
}

impl InstallerCache {
    /// Where what the installs write into the cache lands.
    fn writes(&self) -> &Path {
        match self {
            InstallerCache::Shared { upper, .. } => upper,
            InstallerCache::Private(dir) => dir,
        }
    }
}

/// Claims the user's installer cache `shared` with the overlay directories this job's
/// installs write through, or makes a private one when another job of the user has it;
/// all of them belong to the containers' root. `None` when neither can be had (the job
/// then installs without a cache, which is slower, not wrong).
fn ready_cache(
    registry: &cache::Registry,
    shared: PathBuf,
    paths: &JobPaths,
    userns: &ci_runner::UserNamespace,
) -> Option<InstallerCache> {
    let ready = |dirs: &[&Path]| {
        dirs.iter().try_for_each(|dir| {
            fs_err::create_dir_all(dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    ci_runner::give_to_container(dir, userns)
                        .map_err(|e| ci_runner::error_chain(&e))
                })
        })
    };
    // The claim first: once held, the cache cannot be evicted before the job mounts it.
    let cache = match registry.claim(&shared) {
        Some(claim) => {
            let (upper, work) = (paths.cache_upper(), paths.cache_work());
            ready(&[&shared, &upper, &work]).map(|()| InstallerCache::Shared {
                dir: shared.clone(),
                _claim: claim,
                upper,
            })
        }
        None => {
            let own = paths.installer_cache();
            ready(&[&own]).map(|()| InstallerCache::Private(own))
        }
    };
    match cache {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!(dir = %shared.display(), error = %e, "installer cache unavailable for this job");
            None
        }
    }
}

/// After the installs: when the user's cache entries `grew`, brings them under `max_size`
/// counting what the installs wrote into the shared installer cache, then merges that in
/// if the install is `kept` and it fits. Returns the eviction, if one ran. Blocking.
fn settle_caches(
    cache: (&Path, &cache::Registry),
    owner: &str,
    max_size: u64,
    installer_cache: Option<InstallerCache>,
    kept: bool,
    grew: bool,
) -> Result<Option<cache::Eviction>, String> {
    let (cache_dir, registry) = cache;
    let settled = match &installer_cache {
        Some(InstallerCache::Shared { dir, upper, .. }) if kept => {
            merge_if_it_fits(cache, owner, max_size, upper, dir).map(Some)
        }
        _ if grew => cache::evict(cache_dir, owner, max_size, registry).map(Some),
        _ => Ok(None),
    };
    if let Some(InstallerCache::Shared { dir, .. }) = &installer_cache {
        // Its last use, for eviction by age and by size.
        cache::touch(dir);
    }
    settled.map_err(|e| e.to_string())
}

/// Evicts the user's entries to make room for what an install wrote into `upper` over the
/// installer cache `dir`, and merges it in if it then fits.
fn merge_if_it_fits(
    (cache_dir, registry): (&Path, &cache::Registry),
    owner: &str,
    max_size: u64,
    upper: &Path,
    dir: &Path,
) -> std::io::Result<cache::Eviction> {
    let pending = cache::usage(upper, u64::MAX)?.bytes;
    let room = max_size.saturating_sub(pending);
    let mut eviction = cache::evict(cache_dir, owner, room, registry)?;
    eviction.bytes += pending;
    if eviction.bytes <= max_size {
        if let Err(e) = cache::merge(upper, dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot merge what an install downloaded into the installer cache");
        }
    }
    Ok(eviction)
}

/// Builds the job's `/venv`: the dependency layer (from the cache, or installed and stored
/// there), then the project's own layer over it. Returns it with the job's hold on the
/// dependency layer, which the tests mount too.
///
/// Afterwards the user's cache entries are brought back under `--cache-max-size` (least
/// recently used first), counting what the installs wrote into the installer cache, which
/// is merged into it only then; what a failed install wrote there goes with the job
/// directory. When the entries cannot be brought under the cap, because running jobs use
/// the rest, the job fails and nothing of its install is kept.
#[expect(
    clippy::too_many_arguments,
    reason = "the pieces execute() has decided by then; a struct would only rename them"
)]
async fn install_venv(
    common: &Common<'_>,
    step: &Step<'_>,
    job: &Job,
    paths: &JobPaths,
    plan: &InstallPlan,
    tool: &Tool,
    uv_dir: Option<&Path>,
    image_digest: &str,
    content: &str,
) -> Result<(Venv, Vec<cache::Hold>), Verdict> {
    let ctx = common.ctx;
    // Third-party dependencies: built once per user and key, then shared read-only.
    let key = install::deps_key(image_digest, tool, plan);
    let deps = cache::layer_dir(&ctx.cache_dir, &job.owner, &key);
    // Taken before the lookup: a layer held is never evicted, one evicted before it is
    // simply missing and built again.
    let mut layers = vec![ctx.cache.hold(&deps)];
    let cached = tokio::fs::metadata(&deps).await.is_ok_and(|m| m.is_dir());
    // The project's own install, kept for the next job of the byte-identical upload.
    let project = match install::project_command(plan, tool) {
        None => None,
        Some(command) => {
            let entry = cache::project_dir(
                &ctx.cache_dir,
                &job.owner,
                &install::project_key(&key, content, &command),
            );
            layers.push(ctx.cache.hold(&entry));
            let cached = tokio::fs::metadata(&entry).await.is_ok_and(|m| m.is_dir());
            Some(ProjectInstall {
                command,
                entry,
                cached,
            })
        }
    };
    let project_command = project
        .as_ref()
        .filter(|p| !p.cached)
        .map(|p| p.command.clone());
    let installs = !cached || project_command.is_some();
    let setup = {
        let (paths, plan, tool) = (paths.clone(), plan.clone(), tool.clone());
        let shared = cache::installer_dir(&ctx.cache_dir, tool.kind, &job.owner);
        let registry = ctx.cache.clone();
        let userns = ctx.sandbox.user_namespace;
        blocking(move || {
            let build_size = prepare_job_dirs(&paths, &plan, &tool, !cached, &userns)?;
            let cache = installs
                .then(|| ready_cache(&registry, shared, &paths, &userns))
                .flatten();
            Ok::<_, String>((build_size, cache))
        })
        .await
    };
    let (build_size, installer_cache) = match setup {
        Ok(setup) => setup,
        Err(e) => return Err(Verdict::error(format!("cannot prepare the install: {e}"))),
    };
    if let Some(InstallerCache::Private(_)) = &installer_cache {
        let _ = step.log.note(
            "another job of yours is installing with your installer cache: this one downloads into a cache of its own",
        );
    }
    let (result, stored) = Install {
        common,
        paths,
        plan,
        tool,
        uv_dir,
        installer_cache: installer_cache.as_ref(),
        build_size,
    }
    .layers(&deps, cached, project.as_ref(), step, job)
    .await;

    let settled = {
        let (registry, cache_dir, owner) =
            (ctx.cache.clone(), ctx.cache_dir.clone(), job.owner.clone());
        let max_size = ctx.cache_max_size;
        let kept = result.is_ok() && installs;
        // A layer stored before the project's install failed is kept, and counts too.
        let grew = kept || stored;
        blocking(move || {
            let cache = (cache_dir.as_path(), &registry);
            settle_caches(cache, &owner, max_size, installer_cache, kept, grew)
        })
        .await
    };
    let eviction = match settled {
        Ok(eviction) => eviction,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot bring the caches under --cache-max-size");
            None
        }
    };
    let Some(eviction) = eviction else {
        return result.map(|venv| (venv, layers));
    };
    if !eviction.removed.is_empty() {
        let _ = step.log.note(&format!(
            "removed your {} least recently used cache entries to stay under {} (--cache-max-size)",
            eviction.removed.len(),
            format_size(ctx.cache_max_size)
        ));
    }
    if eviction.bytes <= ctx.cache_max_size {
        return result.map(|venv| (venv, layers));
    }
    // Every entry left is in use, this job's among them: its own new layer goes.
    drop(layers);
    if stored {
        let (registry, cache_dir) = (ctx.cache.clone(), ctx.cache_dir.clone());
        let _ = blocking(move || registry.remove_unless_used(&cache_dir, &deps)).await;
    }
    let over = format!(
        "your caches would hold {} with this install, more than {} (--cache-max-size), with every entry no running job uses already removed; nothing of this install is kept",
        crate::config::approx_size(eviction.bytes),
        format_size(ctx.cache_max_size)
    );
    // An install that failed anyway keeps its own reason.
    Err(result.err().unwrap_or_else(|| Verdict::error(over)))
}

/// What a container's end means in words. The limits named are those the sandbox applied:
/// under `--allow-unlimited` one that could not be enforced was not, and naming the flag's
/// value would blame a limit that did not exist.
fn describe(ctx: &ContainerExecutor, o: &Outcome) -> String {
    if o.oom_killed {
        match ctx.sandbox.memory_limit {
            Some(limit) => format!("killed: out of memory (limit {})", format_size(limit)),
            None => "killed: out of memory (no memory limit applied)".to_string(),
        }
    } else if o.pids_limit_hit {
        match ctx.sandbox.pids_limit {
            Some(limit) => format!("pids limit ({limit}) reached"),
            None => "could not create a process (no pids limit applied)".to_string(),
        }
    } else if let Some(sig) = o.signal {
        format!("killed by signal {sig}")
    } else {
        format!("exit code {}", o.exit_code.unwrap_or(-1))
    }
}

fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// What every container of the job is made from, with the server's configuration.
struct Common<'a> {
    ctx: &'a ContainerExecutor,
    spec: SpecConfig<'a>,
    /// The name of the job's Python (`3.13`), for [`PYTHON_ENV`].
    python: String,
}

/// The spec builder's view of the job: the server's configuration and the sandbox as plain
/// values.
fn spec_config<'a>(
    ctx: &'a ContainerExecutor,
    image: &'a ci_rootfs::Image,
    job: &'a str,
    paths: &'a JobPaths,
) -> SpecConfig<'a> {
    SpecConfig {
        job_id: job,
        image_rootfs: &image.rootfs,
        image_env: &image.config.env,
        paths,
        user_namespace: ctx.sandbox.user_namespace,
        cgroups: ctx.sandbox.cgroups,
        cgroup_parent: &ctx.cgroup_parent,
        memory_limit: ctx.sandbox.memory_limit,
        pids_limit: ctx.sandbox.pids_limit,
        cpu_quota_us: ctx.sandbox.cpu_quota_us,
        tmp_size: ctx.tmp_size,
        install_network: ctx.sandbox.install_network,
        ca_bundle: ctx.ca_bundle.as_deref(),
    }
}

/// The two install containers of a job.
struct Install<'a> {
    common: &'a Common<'a>,
    paths: &'a JobPaths,
    plan: &'a InstallPlan,
    tool: &'a Tool,
    uv_dir: Option<&'a Path>,
    /// The installer cache, when one could be made ready.
    installer_cache: Option<&'a InstallerCache>,
    /// Disk use of the writable copy of the project before any install.
    build_size: u64,
}

/// What a container run of the job needs besides its spec.
struct Step<'a> {
    log: &'a LiveLog,
    control: &'a Control,
    deadline: Instant,
}

impl Install<'_> {
    /// Reuses the dependency layer at `deps` or builds and stores it, then installs the
    /// project over it. Returns the job's `/venv`, or how the job ends, and whether this
    /// job stored the layer.
    async fn layers(
        &self,
        deps: &Path,
        cached: bool,
        project: Option<&ProjectInstall>,
        step: &Step<'_>,
        job: &Job,
    ) -> (Result<Venv, Verdict>, bool) {
        let mut stored = false;
        if cached {
            let deps = deps.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || cache::touch(&deps)).await;
            let _ = step
                .log
                .note("dependencies unchanged since an earlier job: reusing them");
        } else {
            let staging = self.paths.deps_staging();
            if let Some(ending) = self.deps(&staging, step, job).await {
                return (Err(ending), false);
            }
            match self.store(staging, deps).await {
                Ok(new) => stored = new,
                Err(ending) => return (Err(ending), false),
            }
        }

        // The project itself, from this job's source, into an overlay over the layer: kept
        // for the next job of the byte-identical upload.
        let deps = deps.to_path_buf();
        let venv = match project {
            None => Venv::Layer(deps),
            Some(p) if p.cached => {
                let entry = p.entry.clone();
                let _ = tokio::task::spawn_blocking(move || cache::touch(&entry)).await;
                let _ = step
                    .log
                    .note("the project is unchanged since an earlier job: reusing its install");
                Venv::WithProject {
                    upper: p.entry.clone(),
                    deps,
                }
            }
            Some(p) => {
                let _ = step
                    .log
                    .note(&format!("installing the project: {}", p.command));
                if let Some(ending) = self.project(&deps, step, job).await {
                    return (Err(ending), stored);
                }
                let upper = self.store_project(&p.entry).await;
                Venv::WithProject { upper, deps }
            }
        };
        (Ok(venv), stored)
    }

    /// Builds the dependency layer into `staging` (empty), mounted as `/venv`.
    async fn deps(&self, staging: &Path, step: &Step<'_>, job: &Job) -> Option<Verdict> {
        let spec = spec::install_deps(&self.common.spec, &self.input());
        let output = vec![staging.to_path_buf()];
        self.run(&spec, "installing the dependencies", step, job, output)
            .await
    }

    /// Moves a built layer into the cache at `deps`, marked as used now (the job may have
    /// set its mtime) and with its size noted; `false` when another job with the same key
    /// stored one first (then that one is used).
    async fn store(&self, staging: PathBuf, deps: &Path) -> Result<bool, Verdict> {
        let (deps, registry) = (deps.to_path_buf(), self.common.ctx.cache.clone());
        let stored = blocking(move || {
            bytecode::prune_install_tree(&staging)?;
            let size = cache::usage(&staging, u64::MAX)?.bytes;
            if let Some(parent) = deps.parent() {
                fs_err::create_dir_all(parent)?;
            }
            if let Err(e) = std::fs::rename(&staging, &deps) {
                return if deps.is_dir() { Ok(false) } else { Err(e) };
            }
            cache::touch(&deps);
            registry.set_layer_size(&deps, size);
            Ok::<_, std::io::Error>(true)
        })
        .await;
        stored.map_err(|e| Verdict::error(format!("cannot store the installed dependencies: {e}")))
    }

    /// Moves the project's install (the job's upper directory) into the cache at `entry` and
    /// returns where it is now: the job's own directory still when another job stored the
    /// same first, or it cannot be moved (the next job then installs again).
    async fn store_project(&self, entry: &Path) -> PathBuf {
        let (upper, entry) = (self.paths.venv_upper(), entry.to_path_buf());
        let registry = self.common.ctx.cache.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let size = cache::usage(&upper, u64::MAX)?.bytes;
            if let Some(parent) = entry.parent() {
                fs_err::create_dir_all(parent)?;
            }
            match std::fs::rename(&upper, &entry) {
                Ok(()) => {
                    cache::touch(&entry);
                    registry.set_layer_size(&entry, size);
                    Ok::<_, std::io::Error>(entry)
                }
                Err(_) if entry.is_dir() => Ok(upper),
                Err(e) => Err(e),
            }
        })
        .await;
        match stored {
            Ok(Ok(dir)) => dir,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot keep the project's install");
                self.paths.venv_upper()
            }
            Err(_) => self.paths.venv_upper(),
        }
    }

    /// Installs the project on top of the layer at `deps`, into the job's upper directory.
    async fn project(&self, deps: &Path, step: &Step<'_>, job: &Job) -> Option<Verdict> {
        let (upper, work) = (self.paths.venv_upper(), self.paths.venv_work());
        let spec = spec::install_project(&self.common.spec, &self.input(), deps);
        let failed = self
            .run(
                &spec,
                "installing the project",
                step,
                job,
                vec![upper.clone(), work],
            )
            .await;
        if failed.is_none() {
            // What the build compiled of the upload belongs to no layer.
            if let Err(e) = blocking(move || bytecode::prune_install_tree(&upper)).await {
                return Some(Verdict::error(format!(
                    "cannot settle the project's install: {e}"
                )));
            }
        }
        failed
    }

    /// What an install container writing into `layer` may write, and where.
    fn budget(&self, layer: Vec<PathBuf>) -> Budget {
        Budget {
            cap: self.common.ctx.max_deps_size,
            layer,
            build: spec::needs_build_copy(self.plan).then(|| (self.paths.build(), self.build_size)),
            cache: self.installer_cache.map(|c| c.writes().to_path_buf()),
            layer_over: Overrun::Output,
        }
    }

    /// Runs one install container that writes into `layer`, watching what it writes;
    /// `Some` is how the job ends when it cannot go on (stopped, past a cap, or the install
    /// failed: `what` names the step in the reason).
    async fn run(
        &self,
        spec: &ContainerSpec,
        what: &str,
        step: &Step<'_>,
        job: &Job,
        layer: Vec<PathBuf>,
    ) -> Option<Verdict> {
        let ctx = self.common.ctx;
        let budget = Arc::new(self.budget(layer));
        let watch = supervisor::watch_writes(budget.clone());
        let run = supervisor::supervise(
            &ctx.helper(),
            spec,
            self.paths,
            step.log,
            step.control.stopped(),
            step.deadline,
            watch,
        )
        .await;
        if let Some(ending) = install_failure(ctx, job, &run, what) {
            return Some(ending);
        }
        // The watcher looks only now and then: the last writes are measured now.
        match tokio::task::spawn_blocking(move || budget.check()).await {
            Ok(Ok(_)) => None,
            Ok(Err(over)) => Some(Verdict::error(over.reason(ctx.max_deps_size))),
            Err(e) => Some(Verdict::error(format!("internal error: {e}"))),
        }
    }

    /// The spec builder's view of the installs.
    fn input(&self) -> InstallInput<'_> {
        InstallInput {
            plan: self.plan,
            tool: self.tool,
            uv_dir: self.uv_dir,
            cache: self.installer_cache.map(|cache| match cache {
                InstallerCache::Shared { dir, .. } => CacheMount::Shared(dir),
                InstallerCache::Private(_) => CacheMount::Private,
            }),
            max_file_size: self.common.ctx.max_deps_size,
        }
    }
}

/// The image's bytecode tree ([`bytecode::image_tree`]), compiled by a container of the
/// image the first time it is asked for; `None` when it cannot be had, and then jobs compile
/// what they import, which is slower, not wrong. One compile at a time: a job that asks
/// meanwhile waits for it. A failed compile is not tried again by this process.
async fn image_bytecode(
    ctx: &ContainerExecutor,
    image: &ci_rootfs::Image,
    log: Option<&LiveLog>,
) -> Option<PathBuf> {
    let tree = bytecode::image_tree(&image.rootfs);
    let mut failed = ctx.image_bytecode.lock().await;
    if tokio::fs::metadata(&tree).await.is_ok_and(|m| m.is_dir()) {
        return Some(tree);
    }
    if failed.contains(&image.manifest_digest) {
        return None;
    }
    // No line in the job's log: it is the server's work, once, and the job is still
    // "preparing image" meanwhile.
    let started = std::time::Instant::now();
    match compile_image(ctx, image, &tree).await {
        Ok(()) => {
            tracing::info!(image = %image.reference, tree = %tree.display(), secs = started.elapsed().as_secs_f64(), "image bytecode compiled");
            Some(tree)
        }
        Err(e) => {
            tracing::warn!(image = %image.reference, error = %e, "cannot compile the image's bytecode; jobs compile what they import");
            if let Some(log) = log {
                let _ = log.note(&format!(
                    "cannot compile the image's bytecode ({e}): the tests compile what they import"
                ));
            }
            failed.insert(image.manifest_digest.clone());
            None
        }
    }
}

/// Runs the compile container of `image` in a directory of its own beside `tree`, then
/// moves its output to `tree` (unless another server sharing the image cache did first).
async fn compile_image(
    ctx: &ContainerExecutor,
    image: &ci_rootfs::Image,
    tree: &Path,
) -> Result<(), String> {
    let digest = image.manifest_digest.trim_start_matches("sha256:");
    // The server's pid: servers sharing an image cache may compile it at the same time.
    let id = format!(
        "image-{}-{}",
        &digest[..digest.len().min(12)],
        std::process::id()
    );
    let root = tree.with_file_name(format!("bytecode.{}", std::process::id()));
    let paths = JobPaths::new(root.clone());
    let prepared = {
        let (paths, userns) = (paths.clone(), ctx.sandbox.user_namespace);
        blocking(move || {
            if paths.root().exists() {
                cache::remove_tree(paths.root()).map_err(|e| e.to_string())?;
            }
            fs_err::create_dir_all(paths.project()).map_err(|e| e.to_string())?;
            fs_err::create_dir_all(paths.bytecode()).map_err(|e| e.to_string())?;
            ci_runner::give_to_container(&paths.bytecode(), &userns)
                .map_err(|e| ci_runner::error_chain(&e))
        })
        .await
    };
    let result = match prepared {
        Ok(()) => run_compile(ctx, image, &id, &paths, tree).await,
        Err(e) => Err(e),
    };
    let _ = blocking(move || cache::remove_tree(&root)).await;
    result
}

async fn run_compile(
    ctx: &ContainerExecutor,
    image: &ci_rootfs::Image,
    id: &str,
    paths: &JobPaths,
    tree: &Path,
) -> Result<(), String> {
    let spec = spec::compile_bytecode(&spec_config(ctx, image, id, paths));
    let run = supervisor::supervise(
        &ctx.helper(),
        &spec,
        paths,
        &supervisor::Discard,
        std::future::pending(),
        Instant::now() + COMPILE_TIMEOUT,
        std::future::pending(),
    )
    .await;
    match run.ended {
        Ended::Finished(Outcome {
            exit_code: Some(0), ..
        }) => {}
        Ended::Finished(o) => {
            let tail = String::from_utf8_lossy(&run.tail);
            let last = tail.lines().last().unwrap_or_default().to_string();
            return Err(format!("{} {last}", describe(ctx, &o)));
        }
        Ended::Interrupted(why) => return Err(format!("interrupted: {why:?}")),
        Ended::HelperFailed(failure) => return Err(failure.reason()),
    }
    let (out, tree) = (paths.bytecode(), tree.to_path_buf());
    blocking(move || match std::fs::rename(&out, &tree) {
        Ok(()) => Ok(()),
        Err(_) if tree.is_dir() => Ok(()),
        Err(e) => Err(format!("cannot keep it: {e}")),
    })
    .await
}

/// The variable that tells the tests the name of the Python they run on (`3.13`).
pub const PYTHON_ENV: &str = "CI_PYTHON";

/// Asks `image` which Python it has: its `python3` in a container with nothing to read but
/// the image, no network and nothing writable ([`spec::probe_python`]).
async fn probe_python(
    ctx: &ContainerExecutor,
    image: Arc<ci_rootfs::Image>,
) -> Result<PythonInfo, String> {
    let digest = image.manifest_digest.trim_start_matches("sha256:");
    let id = format!(
        "probe-{}-{}",
        &digest[..digest.len().min(12)],
        std::process::id()
    );
    let root = image
        .rootfs
        .with_file_name(format!("probe.{}", std::process::id()));
    let paths = JobPaths::new(root.clone());
    let prepared = {
        let paths = paths.clone();
        blocking(move || {
            if paths.root().exists() {
                cache::remove_tree(paths.root()).map_err(|e| e.to_string())?;
            }
            fs_err::create_dir_all(paths.project()).map_err(|e| e.to_string())
        })
        .await
    };
    let result = match prepared {
        Ok(()) => {
            let spec = spec::probe_python(&spec_config(ctx, &image, &id, &paths));
            let run = supervisor::supervise(
                &ctx.helper(),
                &spec,
                &paths,
                &supervisor::Discard,
                std::future::pending(),
                Instant::now() + PROBE_TIMEOUT,
                std::future::pending(),
            )
            .await;
            let tail = String::from_utf8_lossy(&run.tail).into_owned();
            match run.ended {
                Ended::Finished(Outcome {
                    exit_code: Some(0), ..
                }) => PythonInfo::parse(&tail),
                Ended::Finished(o) => {
                    let last = tail.lines().last().unwrap_or_default().to_string();
                    Err(format!("{} {last}", describe(ctx, &o)))
                }
                Ended::Interrupted(why) => Err(format!("interrupted: {why:?}")),
                Ended::HelperFailed(failure) => Err(failure.reason()),
            }
        }
        Err(e) => Err(e),
    };
    let _ = blocking(move || cache::remove_tree(&root)).await;
    result
}

/// Longest asking an image for its Python may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest an image's bytecode compile may take.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// The bytecode trees the test container's cache is laid over, and the project's own to
/// keep when the run had none.
struct Trees {
    /// Read-only, first found first: the project's `/venv` layers', the image's, then the
    /// project's own from an earlier run of the same upload.
    lower: Vec<PathBuf>,
    /// The project's tree; `None` when it could not be keyed (the tests then keep nothing).
    entry: Option<PathBuf>,
    /// Whether `entry` was there already (then it is not replaced).
    found: bool,
    /// Keeps `entry` in the cache while the tests read it.
    _hold: Option<cache::Hold>,
}

/// Finds the trees for the test container of `job` ([`crate::bytecode`]). Blocking work off
/// the async threads; what cannot be read is left out (the tests then compile more).
async fn bytecode_trees(
    ctx: &ContainerExecutor,
    job: &Job,
    content: &str,
    venv: &Venv,
    image: &ci_rootfs::Image,
    image_tree: Option<PathBuf>,
    env: &std::collections::BTreeMap<String, String>,
) -> Trees {
    let layers: Vec<PathBuf> = match venv {
        Venv::Layer(deps) => vec![deps.join(bytecode::IN_VENV)],
        Venv::WithProject { upper, deps } => {
            vec![upper.join(bytecode::IN_VENV), deps.join(bytecode::IN_VENV)]
        }
    };
    // The project's own install comes from the same upload (whichever job made it).
    let venv_id = match venv {
        Venv::Layer(deps) => format!("layer:{}", deps.display()),
        Venv::WithProject { deps, .. } => format!("project:{}", deps.display()),
    };
    let content = content.to_string();
    let (cache_dir, owner, digest) = (
        ctx.cache_dir.clone(),
        job.owner.clone(),
        image.manifest_digest.clone(),
    );
    let (args, env) = (job.pytest_args.clone(), env.clone());
    let registry = ctx.cache.clone();
    let found = blocking(move || {
        let mut lower: Vec<PathBuf> = layers.into_iter().filter(|t| t.is_dir()).collect();
        lower.extend(image_tree);
        let key = bytecode::project_key(&owner, &digest, &venv_id, &content, &args, &env);
        let entry = Some(bytecode::project_entry(&cache_dir, &owner, &key));
        let hold = entry.as_ref().map(|e| registry.hold(e));
        let found = entry.as_ref().is_some_and(|e| e.is_dir());
        if let (true, Some(entry)) = (found, &entry) {
            cache::touch(entry);
            lower.push(entry.clone());
        }
        Ok::<_, String>(Trees {
            lower,
            entry,
            found,
            _hold: hold,
        })
    })
    .await;
    found.unwrap_or_else(|_| Trees {
        lower: vec![],
        entry: None,
        found: false,
        _hold: None,
    })
}

impl Trees {
    /// Keeps what the tests compiled as the project's tree when there was none, then brings
    /// the user's cache entries back under `--cache-max-size`.
    async fn keep(self, ctx: &ContainerExecutor, job: &Job, paths: &JobPaths) {
        let Some(entry) = self.entry.filter(|_| !self.found) else {
            return;
        };
        let (upper, owner) = (paths.bytecode(), job.owner.clone());
        let (cache_dir, registry, max) =
            (ctx.cache_dir.clone(), ctx.cache.clone(), ctx.cache_max_size);
        let kept = blocking(move || {
            let kept = bytecode::keep(&upper, &entry)?;
            if kept {
                cache::evict(&cache_dir, &owner, max, &registry)?;
            }
            Ok::<_, std::io::Error>(kept)
        })
        .await;
        if let Err(e) = kept {
            tracing::warn!(job = %job.id, error = %e, "cannot keep the project's bytecode");
        }
    }
}

/// The line that says how the suite is split.
fn shards_line(asked: Option<Shards>, wanted: u32, count: u32) -> String {
    match asked {
        Some(Shards::Auto) => format!(
            "shards: auto: {count} test container{} (the job slots free now); the others' output follows the first's",
            if count == 1 { "" } else { "s" }
        ),
        _ if count < wanted => format!(
            "shards: {wanted} asked, {count} job slot{} free: {count} test container{}",
            if count == 1 { "" } else { "s" },
            if count == 1 { "" } else { "s" }
        ),
        _ => format!(
            "shards: {count} test containers, by test file; the others' output follows the first's"
        ),
    }
}

/// Appends a shard's output file to the job's log, in chunks.
async fn copy_into_log(file: &Path, log: &LiveLog) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(file).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let crate::logs::Appended::CapReached = log.append(&buf[..n])? {
            return Ok(());
        }
    }
}

/// How a job ends when its container was stopped before it ended on its own.
fn interrupted(ctx: &ContainerExecutor, job: &Job, why: Interruption) -> Verdict {
    match why {
        Interruption::Stop(reason) => reason.verdict(),
        Interruption::TimedOut => Verdict::TimedOut {
            reason: format!(
                "timed out after {}",
                humantime::format_duration(Duration::from_secs(job.timeout_secs))
            ),
        },
        Interruption::LogLimit => Verdict::error(format!(
            "log limit reached: log truncated at {}",
            format_size(ctx.log_cap)
        )),
        Interruption::OverCap(OverCap { over, cap }) => Verdict::error(over.reason(cap)),
    }
}

/// How a failed install ends the job: the reason in words when the output shows a known
/// cause, else the installer's exit code. `None` when the install succeeded.
fn install_failure(
    ctx: &ContainerExecutor,
    job: &Job,
    run: &ContainerRun,
    what: &str,
) -> Option<Verdict> {
    match &run.ended {
        Ended::Finished(Outcome {
            exit_code: Some(0), ..
        }) => None,
        Ended::Finished(o) => {
            let tail = String::from_utf8_lossy(&run.tail);
            if install::hit_file_size_limit(o.signal, &tail) {
                return Some(Verdict::error(Overrun::File.reason(ctx.max_deps_size)));
            }
            let said = install::diagnose(&tail);
            Some(Verdict::error(match said {
                Some(reason) => reason,
                None => format!("{what} failed ({})", describe(ctx, o)),
            }))
        }
        Ended::Interrupted(why) => Some(interrupted(ctx, job, *why)),
        Ended::HelperFailed(failure) => Some(Verdict::error(failure.reason())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytests_own_codes_say_why_in_words() {
        let tail = b"collected 2 items\nERROR: Wrong expression passed to '-k': add and\x1b[2J\n";
        assert_eq!(
            pytest_exit_reason(4, tail).unwrap(),
            "pytest was called wrongly (usage error, exit code 4): Wrong expression passed to \
             '-k': add and?[2J"
        );
        assert_eq!(
            pytest_exit_reason(4, b"").unwrap(),
            "pytest was called wrongly (usage error, exit code 4)"
        );
        assert!(pytest_exit_reason(5, b"").unwrap().contains("/workspace"));
        assert_eq!(pytest_exit_reason(137, b""), None);
    }

    #[test]
    fn quotes_what_a_shell_would_split() {
        assert_eq!(install::sh_quote("-k"), "-k");
        assert_eq!(
            install::sh_quote("tests/test_a.py::test_x"),
            "tests/test_a.py::test_x"
        );
        assert_eq!(install::sh_quote("add or sub"), "'add or sub'");
        assert_eq!(install::sh_quote("it's"), r"'it'\''s'");
        assert_eq!(install::sh_quote(""), "''");
    }
}
