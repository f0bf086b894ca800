//! Disk quotas of the install phase, end to end: an install that writes without end is
//! stopped at `--max-deps-size` with nothing of it kept, what a failed install wrote into the
//! installer cache is gone, and each user's caches are held to `--cache-max-size` by removing
//! the least recently used entry.
//!
//! The hostile installs are local source distributions (found through `--find-links` in the
//! project, so they go into the cached dependency layer) whose in-tree build backend runs
//! our Python: no network beyond the package index the install already uses.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ci_e2e::tarball::{self, Entry};
use ci_e2e::{http, long_lived, project, Run, Server, ServerOptions};

/// A server whose installs may write 64 MiB each.
fn capped() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        long_lived(ServerOptions {
            extra_args: ["--installer", "pip", "--max-deps-size", "64MiB"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
    })
}

/// A server whose users' caches may hold 75 MiB each: two dependency layers of pytest
/// (about 31 MB each) fit, three do not.
fn small_caches() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        long_lived(ServerOptions {
            extra_args: ["--installer", "pip", "--cache-max-size", "75MiB"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
    })
}

/// A user of its own for each test: caches are per user, and a user's installer cache is
/// used by one install at a time.
struct User {
    key: String,
    id: String,
}

fn new_user(server: &Server, who: &str) -> User {
    let (_, key) = server.new_user(who, false);
    let (status, body) = http("GET", &server.addr, "/v1/whoami", Some(&key), b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
    User {
        key,
        id: me["id"].as_str().unwrap().to_string(),
    }
}

/// The in-tree build backend: `build_wheel` runs `body`, then builds an empty wheel. pip
/// shows what it prints only when it fails.
const BACKEND: &str = r#"
import base64, errno, hashlib, os, zipfile

def fill(directory, total, file_size):
    """Writes `total` bytes into files of at most `file_size` under `directory`; a file the
    size limit stops goes on in the next one."""
    os.makedirs(directory, exist_ok=True)
    chunk = b"\1" * (1 << 20)
    written, i = 0, 0
    while written < total:
        fd = os.open(os.path.join(directory, "f%d" % i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        i += 1
        n = 0
        try:
            while n < file_size and written < total:
                k = os.write(fd, chunk[: min(len(chunk), file_size - n)])
                n += k
                written += k
        except OSError as e:
            if e.errno != errno.EFBIG:
                raise
        finally:
            os.close(fd)

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    cache = os.environ.get("PIP_CACHE_DIR", "/nonexistent")
@BODY@
    files = {
        "@MOD@/__init__.py": b"",
        "@MOD@-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: @DIST@\nVersion: 1.0\n",
        "@MOD@-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: ci-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += "%s,sha256=%s,%d\n" % (path, digest, len(data))
    record += "@MOD@-1.0.dist-info/RECORD,,\n"
    name = "@MOD@-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr("@MOD@-1.0.dist-info/RECORD", record)
    return name
"#;

/// A project that requires `dist`, a local source distribution whose build runs `body`
/// (Python, indented by four spaces, `cache` is the installer cache), plus `more`
/// requirement lines.
fn project_building(dist: &str, body: &str, more: &str) -> tempfile::TempDir {
    let module = dist.replace('-', "_");
    let backend = BACKEND
        .replace("@BODY@", body)
        .replace("@MOD@", &module)
        .replace("@DIST@", dist);
    let pyproject = format!(
        "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"{dist}\"\nversion = \"1.0\"\n"
    );
    let pkg_info = format!("Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n");
    let names: Vec<String> = ["PKG-INFO", "pyproject.toml", "backend.py"]
        .iter()
        .map(|f| format!("{dist}-1.0/{f}"))
        .collect();
    let sdist = tarball::gz(&[
        Entry::File(&names[0], pkg_info.into_bytes()),
        Entry::File(&names[1], pyproject.into_bytes()),
        Entry::File(&names[2], backend.into_bytes()),
    ]);
    let requirements = format!("--find-links ./wheels\n{dist}==1.0\n{more}");
    let dir = project(&[
        ("requirements.txt", requirements.as_str()),
        ("tests/test_ok.py", "def test_ok():\n    pass\n"),
    ]);
    std::fs::create_dir_all(dir.path().join("wheels")).unwrap();
    std::fs::write(dir.path().join(format!("wheels/{dist}-1.0.tar.gz")), sdist).unwrap();
    dir
}

/// `ci submit test` in `dir` as `user`; returns the run and the job's record.
fn submit(server: &Server, user: &User, dir: &Path) -> (Run, serde_json::Value) {
    let run = server
        .ci(dir)
        .env("CI_API_KEY", &user.key)
        .args(["submit", "test"])
        .run();
    let id = run.job_id();
    assert!(
        !server.data_dir.join("jobs").join(&id).exists(),
        "the job directory is left"
    );
    let (status, body) = http(
        "GET",
        &server.addr,
        &format!("/v1/jobs/{id}"),
        Some(&user.key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (run, serde_json::from_slice(&body).unwrap())
}

/// Every path under the user's `kind` cache (`deps` layers or the `pip` cache), relative.
fn cache_entries(server: &Server, kind: &str, user: &User) -> Vec<String> {
    let root = server.data_dir.join("cache").join(kind).join(&user.id);
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(&root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Samples, from the host, the disk use of every `jobs/*/deps/<name>` directory (where a
/// dependency install writes `/venv/<name>`) until stopped, keeping the largest.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Sampler {
    fn start(server: &Server, name: &str) -> Sampler {
        let (jobs, name) = (server.data_dir.join("jobs"), name.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !stopped.load(Ordering::SeqCst) {
                let now: u64 = std::fs::read_dir(&jobs)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .flat_map(|job| std::fs::read_dir(job.path().join("deps").join(&name)))
                    .flatten()
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum();
                most = most.max(now);
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// The most it saw, in MiB.
    fn most_mib(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap() >> 20
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn an_install_writing_3_gib_is_stopped_at_the_cap_and_nothing_is_kept() {
    let server = capped();
    let user = new_user(server, "filler");
    // 3 GiB in files of 1 GiB: the file size limit cuts each at 64 MiB, and the watcher
    // stops the install once they add up past it.
    let dir = project_building(
        "ci-e2e-venv-filler",
        "    fill('/venv/filler', 3 << 30, 1 << 30)",
        "",
    );
    let sampler = Sampler::start(server, "filler");
    let (run, job) = submit(server, &user, dir.path());
    let most = sampler.most_mib();
    run.expect_code(1)
        .expect_stdout("==> the install wrote more than 64 MiB (--max-deps-size): stopping it");
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(
        job["reason"],
        "the install wrote more than 64 MiB (--max-deps-size); nothing of it is kept",
        "{job}"
    );
    // Stopped near the cap (some 100 MiB seen here), far from the 3 GiB it meant to write.
    // Measuring only twice a second would let a disk writing 2 GB/s go ~1 GiB past it. (The
    // sampler may miss the peak by a few samples, but not all of it.)
    assert!(
        (16..512).contains(&most),
        "the install's files held at most {most} MiB\n{run}"
    );
    assert_eq!(cache_entries(server, "deps", &user), Vec::<String>::new());
    assert_eq!(cache_entries(server, "pip", &user), Vec::<String>::new());
}

#[test]
fn an_install_flooding_the_installer_cache_is_stopped_at_the_cap() {
    let server = capped();
    let user = new_user(server, "flood");
    let dir = project_building(
        "ci-e2e-cache-flood",
        "    fill(os.path.join(cache, 'flood'), 1 << 30, 8 << 20)",
        "",
    );
    let (run, job) = submit(server, &user, dir.path());
    run.expect_code(1);
    assert_eq!(
        job["reason"],
        "the install wrote more than 64 MiB into the installer's cache (--max-deps-size); nothing of it is kept",
        "{job}\n{run}"
    );
    assert_eq!(cache_entries(server, "deps", &user), Vec::<String>::new());
    assert_eq!(cache_entries(server, "pip", &user), Vec::<String>::new());
}

#[test]
fn what_a_failed_install_wrote_into_the_installer_cache_is_gone() {
    let server = capped();
    let user = new_user(server, "planter");
    // A successful install leaves the wheel pip built for it in the user's cache.
    let keeper = project_building("ci-e2e-keeper", "    pass", "pytest==7.4.3\n");
    let (run, _) = submit(server, &user, keeper.path());
    run.expect_code(0);
    let before = cache_entries(server, "pip", &user);
    assert!(
        before
            .iter()
            .any(|p| p.ends_with("ci_e2e_keeper-1.0-py3-none-any.whl")),
        "{before:?}"
    );
    // Then an install plants files in the cache, removes what was there, and fails.
    let planter = project_building(
        "ci-e2e-planter",
        r#"    import shutil
    for i in range(2000):
        d = os.path.join(cache, "planted", "d%d" % (i // 100))
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "f%d" % i), "wb").write(b"p" * 100)
    for entry in os.listdir(cache):
        if entry != "planted":
            shutil.rmtree(os.path.join(cache, entry), ignore_errors=True)
    raise SystemExit("planted 2000 files, emptied the rest, failing on purpose")"#,
        "",
    );
    let (run, job) = submit(server, &user, planter.path());
    run.expect_code(1)
        .expect_stdout("planted 2000 files, emptied the rest, failing on purpose");
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(
        cache_entries(server, "pip", &user),
        before,
        "the cache is as the successful install left it"
    );
}

/// The pytest version installed in a dependency layer.
fn pytest_version(layer: &Path) -> String {
    let site = layer.join("lib/python3.11/site-packages");
    std::fs::read_dir(&site)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(
                name.strip_prefix("pytest-")?
                    .strip_suffix(".dist-info")?
                    .to_string(),
            )
        })
        .unwrap_or_else(|| panic!("no pytest in {}", site.display()))
}

#[test]
fn the_least_recently_used_layer_is_evicted_past_the_users_cap() {
    let server = small_caches();
    let user = new_user(server, "lru");
    let pinned = |version: &str| {
        project(&[
            ("requirements.txt", &format!("pytest=={version}\n")),
            ("tests/test_ok.py", "def test_ok():\n    pass\n"),
        ])
    };
    let (a, b, c) = (pinned("7.4.1"), pinned("7.4.2"), pinned("7.4.3"));
    for dir in [&a, &b] {
        submit(server, &user, dir.path()).0.expect_code(0);
    }
    // A again: reused, so B is now the least recently used.
    submit(server, &user, a.path())
        .0
        .expect_code(0)
        .expect_stdout("reusing them");
    let (run, _) = submit(server, &user, c.path());
    run.expect_code(0).expect_stdout(
        "==> removed your 1 least recently used cache entries to stay under 75 MiB (--cache-max-size)",
    );
    let deps = server.data_dir.join("cache/deps").join(&user.id);
    let mut kept: Vec<String> = std::fs::read_dir(&deps)
        .unwrap()
        .flatten()
        .map(|e| pytest_version(&e.path()))
        .collect();
    kept.sort();
    assert_eq!(kept, ["7.4.1", "7.4.3"]);
}

#[test]
fn an_install_that_cannot_fit_the_users_cap_fails_and_keeps_nothing() {
    static SERVER: OnceLock<Server> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        long_lived(ServerOptions {
            extra_args: ["--installer", "pip", "--cache-max-size", "16MiB"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
    });
    let user = new_user(server, "toobig");
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_ok.py", "def test_ok():\n    pass\n"),
    ]);
    // The layer alone (a virtualenv with pip and pytest, some 31 MB) is past the cap.
    let (run, job) = submit(server, &user, dir.path());
    run.expect_code(1);
    let reason = job["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("your caches would hold ")
            && reason.ends_with(
                "with this install, more than 16 MiB (--cache-max-size), with every entry no running job uses already removed; nothing of this install is kept"
            ),
        "{job}"
    );
    assert_eq!(cache_entries(server, "deps", &user), Vec::<String>::new());
    assert_eq!(cache_entries(server, "pip", &user), Vec::<String>::new());
}
