//! The CI server: HTTP API, job queue, logs and users. It launches containers only through
//! helper processes of `ci-runner`, never in its own process.

pub mod accounts;
pub mod admin;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod bytecode;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod db;
pub mod doctor;
pub mod error;
pub mod execute;
pub mod executor;
pub mod image;
pub mod image_cli;
pub mod install;
pub mod jobfile;
pub mod jobs;
pub mod layout;
pub mod lifecycle;
pub mod listener;
pub mod lock;
pub mod logs;
pub mod model;
pub mod output;
pub mod perms;
pub mod pg;
pub mod queue;
pub mod report;
pub mod results;
pub mod retention;
pub mod sandbox;
pub mod shards;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod timing;
pub mod tools;
pub mod upload;
pub mod web;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

pub use config::ServeArgs;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Users and API keys.
    pub db: Arc<dyn accounts::Accounts>,
    /// Job records; every status change goes through `jobs`.
    pub store: Arc<dyn store::JobStore>,
    /// Job logs; written through `jobs`, read by the API, removed by retention.
    pub logs: Arc<dyn logs::LogStore>,
    pub jobs: jobs::Jobs,
    /// Who installs dependencies: the submission checks the project's plan for it.
    pub installer: ci_project::Installer,
    pub upload_limits: upload::Limits,
    /// `--job-retention`: how long a finished job's log is kept.
    pub job_retention: std::time::Duration,
    /// Concurrent uploads, their deadline, and the free disk a submission needs.
    pub uploads: upload::Intake,
    /// The data directory's lock (`open` takes it before anything in the directory is
    /// touched): held as long as the state is.
    pub data_lock: Option<Arc<lock::DataLock>>,
    /// Whether this node serves the API (a cluster's worker-only node does not).
    pub serves_api: bool,
}

/// The API. `body_timeout` is the longest pause allowed between the chunks of a request body.
pub fn router(state: AppState, body_timeout: std::time::Duration) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/v1/version", get(api::version))
        .route("/v1/jobs", post(api::submit).get(api::list_jobs))
        .route("/v1/jobs/{id}", get(api::get_job))
        .route("/v1/jobs/{id}/log", get(api::log))
        .route("/v1/jobs/{id}/report", get(api::report))
        .route("/v1/jobs/{id}/junit.xml", get(api::junit))
        .route("/v1/jobs/{id}/artifacts", get(api::artifacts))
        .route("/v1/jobs/{id}/cancel", post(api::cancel))
        .route("/v1/whoami", get(api::whoami))
        .route("/v1/pythons", get(api::pythons))
        .route(
            "/v1/admin/users",
            post(admin::create_user).get(admin::list_users),
        )
        .route("/v1/admin/users/{email}/disable", post(admin::disable_user))
        .route("/v1/admin/users/{email}/enable", post(admin::enable_user))
        .route(
            "/v1/admin/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route("/v1/admin/keys/{id}", delete(admin::revoke_key))
        .route(
            "/v1/admin/images",
            post(admin::import_image).get(admin::list_images),
        )
        .route("/v1/admin/images/{digest}", delete(admin::remove_image))
        // The web page and its assets; anything else, `/v1/` included, stays a JSON 404.
        .merge(web::routes())
        .fallback(api::no_such_endpoint)
        .method_not_allowed_fallback(api::wrong_method)
        // JSON bodies only: uploads are streamed and capped by `api::submit` itself.
        .layer(DefaultBodyLimit::max(api::JSON_BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .with_state(state)
}

/// What a cluster's worker-only node answers over HTTP: its health and version; anything
/// else is an api node's.
pub fn worker_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/v1/version", get(api::version))
        .fallback(api::worker_only)
        .with_state(state)
}

/// Opens the data directory, settles what a previous run left, and builds the state.
pub async fn open(args: &ServeArgs, helper_exe: PathBuf) -> anyhow::Result<AppState> {
    let layout = layout::DataLayout::new(std::path::absolute(args.data_dir())?);
    // The checks start processes and look at files: off the async threads, like everything
    // else that waits for the system here. A cluster's api-only node runs no job: it needs
    // no sandbox.
    let (data_lock, sandbox, ca_bundle) = {
        let (args, root) = (args.clone(), layout.root().to_path_buf());
        tokio::task::spawn_blocking(move || {
            fs_err::create_dir_all(&root).context("cannot create the data directory")?;
            // Before anything in it is touched.
            let data_lock = lock::acquire(&root)?;
            let sandbox = match args.runs_jobs() {
                true => Some(start_up_check(&args)?),
                false => None,
            };
            anyhow::Ok((data_lock, sandbox, args.ca_bundle()))
        })
        .await??
    };
    // The database and the logs are the server's user's only; a data dir of an older
    // version is tightened here, which walks every log once. A cluster's node keeps its
    // records in the cluster's database, and only the spool of its jobs' logs here.
    let embedded = args.database_url.is_none();
    let (db, logs) = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || {
            let stores = match embedded {
                true => Some((
                    db::Db::open(&layout.db())?,
                    logs::FileLogs::new(layout.logs()).context("cannot open the log directory")?,
                )),
                false => None,
            };
            perms::tighten(&layout.admin_key()).context("cannot make admin.key private")?;
            layout.create()?;
            anyhow::Ok(stores)
        })
        .await??
        .unzip()
    };
    let (installer, uv) = installer(args, ca_bundle.clone())?;
    let executor = match sandbox {
        Some(sandbox) => Some(
            container_executor(args, &layout, helper_exe, sandbox, ca_bundle, installer, uv)
                .await?,
        ),
        None => None,
    };
    let mut state = match (&args.database_url, db, logs, executor) {
        (None, Some(db), Some(logs), Some(executor)) => {
            AppState::new(db, Arc::new(logs), layout, executor, installer, args)
        }
        (Some(url), _, _, executor) => {
            cluster_state(url, layout, executor, installer, args).await?
        }
        _ => unreachable!("a single server has its stores and its executor"),
    };
    state.data_lock = Some(Arc::new(data_lock));
    api::bootstrap_admin(&state, &state.jobs.layout().admin_key()).await?;
    // Removes what a previous server process left, and settles its jobs.
    state.jobs.recover().await?;
    Ok(state)
}

/// What runs jobs here: containers from the server's images, in `sandbox`.
async fn container_executor(
    args: &ServeArgs,
    layout: &layout::DataLayout,
    helper_exe: PathBuf,
    sandbox: sandbox::Sandbox,
    ca_bundle: Option<PathBuf>,
    installer: ci_project::Installer,
    uv: Option<tools::UvProvider>,
) -> anyhow::Result<Arc<dyn executor::Executor>> {
    let sources = args.image_sources()?;
    // Paths end up in container specs, which take absolute paths only.
    let store = ci_rootfs::Store::new(std::path::absolute(args.image_cache())?);
    let options = ci_rootfs::PullOptions {
        insecure_registries: args.insecure_registries.clone(),
        progress: None,
    };
    if ca_bundle.is_none() {
        tracing::warn!(
            "no CA bundle found: the installers in the install phase use the image's own certificates"
        );
    }
    // File sources are resolved, and the images imported by earlier runs read: a broken
    // images.json stops the start, naming it.
    let images = {
        let imports = layout.imported_images();
        tokio::task::spawn_blocking(move || {
            image::Images::new(store, options, sources).with_imports(imports)
        })
        .await?
        .map_err(anyhow::Error::msg)?
    };
    Ok(Arc::new(execute::ContainerExecutor {
        helper_exe,
        state_root: layout.containers(),
        cache_dir: layout.cache(),
        // Never shorter than a job can run: an entry in use is touched when its job starts.
        cache_max_age: args.cache_max_age.max(args.job_timeout * 2),
        cache_max_size: args.cache_max_size,
        max_deps_size: args.max_deps_size,
        max_artifacts_size: args.max_artifacts_size,
        cache: cache::Registry::default(),
        images,
        image_bytecode: Default::default(),
        installer,
        uv,
        ca_bundle,
        tmp_size: args.tmp_size,
        log_cap: args.max_log_size,
        cgroup_parent: sandbox.cgroup_parent.clone(),
        sandbox,
    }))
}

/// The state of a node of a cluster: records, users and keys, logs, uploads and results in
/// the database at `url`.
async fn cluster_state(
    url: &str,
    layout: layout::DataLayout,
    executor: Option<Arc<dyn executor::Executor>>,
    installer: ci_project::Installer,
    args: &ServeArgs,
) -> anyhow::Result<AppState> {
    let pg = pg::Pg::connect_with(url, args.database_ca.as_deref())
        .await
        .context("cannot use the database of --database-url")?;
    let node = args.node_name();
    let roles = args
        .role
        .iter()
        .map(|r| match r {
            config::NodeRole::Api => "api",
            config::NodeRole::Worker => "worker",
        })
        .collect::<Vec<_>>()
        .join(",");
    let queue: Arc<dyn store::SharedQueue> = Arc::new(pg.clone());
    queue
        .register_node(&node, &roles, env!("CARGO_PKG_VERSION"))
        .await
        .context("cannot register this node in the database")?;
    tracing::info!(database = %pg::redacted(pg.config()), node = %node, roles = %roles, "cluster node");
    // An api-only node offers the Pythons the workers have.
    let executor = executor.unwrap_or_else(|| {
        Arc::new(cluster::WorkersPythons {
            queue: queue.clone(),
            fresh: args.lease_timeout,
        })
    });
    let spool = layout.logs();
    let logs = pg::logs::PgLogs::new(pg.clone(), spool).context("cannot open the log spool")?;
    let mut state = AppState::with_store(
        Arc::new(pg.clone()),
        Arc::new(pg.clone()),
        Arc::new(logs),
        layout,
        executor,
        installer,
        args,
    );
    state.jobs = state
        .jobs
        .clone()
        .with_results(Arc::new(pg::results::PgResults::new(pg.clone())))
        .with_cluster(cluster::Cluster {
            queue,
            node,
            worker: args.runs_jobs(),
            heartbeat: args.heartbeat_interval,
            lease: args.lease_timeout,
            retry_lost: args.retry_lost,
        });
    state.serves_api = args.serves_api();
    Ok(state)
}

impl AppState {
    /// The state for `executor`, with the limits of `args`; sled holds the job records.
    pub fn new(
        db: db::Db,
        logs: Arc<dyn logs::LogStore>,
        layout: layout::DataLayout,
        executor: Arc<dyn executor::Executor>,
        installer: ci_project::Installer,
        args: &ServeArgs,
    ) -> AppState {
        let store: Arc<dyn store::JobStore> = Arc::new(db.clone());
        AppState::with_store(Arc::new(db), store, logs, layout, executor, installer, args)
    }

    /// [`AppState::new`] with the job records in `store` (tests wrap sled to widen races).
    pub fn with_store(
        db: Arc<dyn accounts::Accounts>,
        store: Arc<dyn store::JobStore>,
        logs: Arc<dyn logs::LogStore>,
        layout: layout::DataLayout,
        executor: Arc<dyn executor::Executor>,
        installer: ci_project::Installer,
        args: &ServeArgs,
    ) -> AppState {
        let jobs = jobs::Jobs::new(
            store.clone(),
            logs.clone(),
            executor,
            layout,
            jobs::Limits {
                max_jobs: args.max_jobs(),
                max_timeout: args.job_timeout,
                per_user: queue::UserCaps {
                    queued: args.max_queued_per_user.max(1),
                    queued_bytes: args.max_queued_size_per_user,
                    running: args.max_running_per_user(),
                },
                log_cap: args.max_log_size,
                upload: upload_limits(args),
            },
        );
        AppState {
            db,
            store,
            logs,
            jobs,
            installer,
            upload_limits: upload_limits(args),
            job_retention: args.job_retention,
            uploads: upload::Intake::new(
                args.max_concurrent_uploads,
                args.upload_timeout,
                args.min_free_disk,
            ),
            data_lock: None,
            serves_api: true,
        }
    }
}

fn upload_limits(args: &ServeArgs) -> upload::Limits {
    upload::Limits {
        max_compressed_bytes: args.max_upload_size,
        max_unpacked_bytes: args.max_unpacked_size,
        max_entries: args.max_upload_entries,
    }
}

/// Who installs dependencies: uv from `--uv` or the pinned wheel, unless `--installer pip`
/// or no uv is pinned for this machine's architecture (then pip, with a warning).
fn installer(
    args: &ServeArgs,
    ca_bundle: Option<PathBuf>,
) -> anyhow::Result<(ci_project::Installer, Option<tools::UvProvider>)> {
    if args.installer == config::InstallerArg::Pip {
        return Ok((ci_project::Installer::Pip, None));
    }
    let source = match &args.uv {
        Some(path) => tools::UvSource::Local(path.clone()),
        None => match tools::UvSource::index(&args.uv_index_url) {
            Ok(source) => source,
            Err(e) => {
                let e = ci_runner::error_chain(&e);
                tracing::warn!("cannot install with uv (failed to {e}): jobs install with pip");
                return Ok((ci_project::Installer::Pip, None));
            }
        },
    };
    let tools_dir = std::path::absolute(args.tools_dir())?;
    let provider = tools::UvProvider::new(tools_dir, source, ca_bundle);
    Ok((ci_project::Installer::Uv, Some(provider)))
}

/// Decides how jobs are isolated here, or refuses to start with every reason.
fn start_up_check(args: &ServeArgs) -> anyhow::Result<sandbox::Sandbox> {
    let caps = ci_runner::probe::capabilities();
    let dirs = sandbox::reachable_dirs(args);
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    match sandbox::plan(args, &caps, &dirs) {
        Ok(sandbox) => {
            for warning in &sandbox.warnings {
                tracing::warn!("{warning}");
            }
            tracing::info!(
                user_namespace = ?sandbox.user_namespace,
                cgroups = ?sandbox.cgroups,
                install_network = ?sandbox.install_network,
                "job sandbox"
            );
            Ok(sandbox)
        }
        Err(problems) => anyhow::bail!(
            "cannot isolate jobs on this machine (`ci-server doctor` shows what is available):\n  - {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  - ")
        ),
    }
}

/// Serves until `shutdown` resolves, then stops taking jobs and winds down running ones.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: listener::ConnLimits,
    grace: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dispatcher = tokio::spawn(state.jobs.clone().dispatch());
    // A cluster's node renews its jobs' leases (a worker) and looks for silent workers.
    let cluster_tasks: Vec<tokio::task::JoinHandle<()>> = match state.jobs.cluster() {
        Some(cluster) => {
            // Every node beats (the database's list of nodes says who is alive); a worker's
            // beat renews its leases too.
            vec![
                tokio::spawn(cluster::reaper(cluster.clone())),
                tokio::spawn(cluster::heartbeats(state.jobs.clone(), cluster.clone())),
            ]
        }
        None => Vec::new(),
    };
    // The executor's upkeep: caches, warming the image.
    let upkeep = {
        let jobs = state.jobs.clone();
        tokio::spawn(async move { jobs.maintain().await })
    };
    // Remove the logs, reports and artifacts of jobs finished longer ago than
    // --job-retention, now and regularly.
    let retention = tokio::spawn(retention::run(
        state.store.clone(),
        state.logs.clone(),
        state.jobs.results(),
        state.job_retention,
    ));
    let jobs = state.jobs.clone();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: no new jobs");
        let _ = stopped_tx.send(());
    };
    let app = if state.serves_api {
        router(state, limits.body_timeout)
    } else {
        worker_router(state)
    };
    let server = tokio::spawn(listener::serve(listener, app, limits, graceful));
    let _ = stopped_rx.await;
    // Running jobs get the grace period; log followers see their end, then the server stops.
    jobs.shutdown(grace).await;
    for task in cluster_tasks {
        task.abort();
    }
    dispatcher.abort();
    upkeep.abort();
    retention.abort();
    server.await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
