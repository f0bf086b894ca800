//! The Python package `ci-client` (`pyclient/`, built by maturin) as a user gets it: the wheel
//! installed with pip into a fresh venv or with `uv tool install`, its `ci` command behaving as
//! the binary, and the library's own suite (`pyclient/tests`) run against a real server.
//!
//! `scripts/build-wheel --all` builds the wheels and prints `CI_TEST_WHEEL`,
//! `CI_TEST_WHEELHOUSE` (pytest's wheels, for `pip --no-index`), `CI_TEST_UV`, and for the
//! aarch64 wheel `CI_WHEEL_AARCH64` and `CI_TEST_AARCH64_ROOT` (Debian's arm64 Python, run
//! with qemu-user); `scripts/test` exports them. Nothing here reaches past loopback: pip and uv
//! install only from those files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ci_e2e::{fixture, poll, project, scratch, shared_server, wait_with_timeout, Run};

/// A path `scripts/build-wheel` exports.
fn built(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            panic!("{name} is not set: build the wheel first with: eval \"$(scripts/build-wheel)\"")
        }
    }
}

/// Runs `cmd` to the end with its output read (killed past `timeout`).
fn run(cmd: &mut Command, timeout: Duration) -> Run {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run(wait_with_timeout(child, timeout))
}

/// pip from `venv`, kept off the network and away from the user's pip settings.
fn pip(venv: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .arg("install")
        .arg("--no-index");
    cmd
}

/// One venv for this process with the wheel installed by pip, as a user would: no Rust.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let wheel = built("CI_TEST_WHEEL");
        let dir = tempfile::Builder::new()
            .prefix("venv-")
            .tempdir_in(scratch())
            .unwrap()
            .keep();
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&dir),
            Duration::from_secs(120),
        )
        .expect_code(0);
        run(pip(&dir).arg(&wheel), Duration::from_secs(120)).expect_code(0);
        dir
    })
}

/// An installed `ci` (or what runs it: qemu and an arm64 Python) against the shared server as
/// the holder of `key`, from `dir`, with an empty HOME and nothing else of this process's
/// environment but PATH.
fn installed_ci(exe: &Path, key: &str, dir: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CI_SERVER_URL", shared_server().url())
        .env("CI_API_KEY", key);
    cmd
}

/// A project with one test that sleeps `secs`.
fn slow_project(secs: u32) -> tempfile::TempDir {
    let test = format!("import time\n\ndef test_slow():\n    time.sleep({secs})\n");
    project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_slow.py", &test),
    ])
}

#[test]
fn pip_installed_ci_is_the_ci_command() {
    let server = shared_server();
    let (_, key) = server.new_user("wheel-pip", false);
    let venv = venv();
    let ci = venv.join("bin/ci");
    let home = tempfile::tempdir_in(scratch()).unwrap();
    let here = project(&[]);
    let minute = Duration::from_secs(60);

    let dist = run(
        Command::new(venv.join("bin/python")).args([
            "-c",
            "import importlib.metadata as m; print(m.version('ci-client'))",
        ]),
        minute,
    );
    dist.expect_code(0);
    let version = run(
        installed_ci(&ci, &key, here.path(), home.path()).arg("--version"),
        minute,
    );
    version.expect_code(0);
    assert_eq!(
        version.stdout(),
        format!("ci {}", dist.stdout()),
        "{version}"
    );
    let verbose = run(
        installed_ci(&ci, &key, here.path(), home.path())
            .env_remove("CI_SERVER_URL")
            .args(["--version", "--verbose", "--server", &server.url()]),
        minute,
    );
    verbose
        .expect_code(0)
        .expect_stdout(&format!("server: {}", server.url()))
        .expect_stdout(&format!(
            "server version: {} (API v1)",
            env!("CARGO_PKG_VERSION")
        ));

    // The seed's three projects side by side, each with the binary's exit code.
    let submit = |name: &str| -> Child {
        installed_ci(&ci, &key, &fixture(name), home.path())
            .args(["submit", "test"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = ["dummy_project", "failing_project", "invalid_project"].map(submit);
    let [dummy, failing, invalid] =
        runs.map(|child| Run(wait_with_timeout(child, Duration::from_secs(300))));
    dummy
        .expect_code(0)
        .expect_stdout("test_add PASSED")
        .expect_stdout("==> result: passed");
    dummy.job_id();
    failing
        .expect_code(1)
        .expect_stdout("ZeroDivisionError")
        .expect_stdout("==> result: failed");
    invalid.expect_code(1).expect_stdout("SyntaxError");

    let refused = run(
        installed_ci(&ci, "ci_bogus", here.path(), home.path()).arg("list"),
        minute,
    );
    refused.expect_code(2);
    assert!(!refused.stderr().contains("Traceback"), "{refused}");
}

#[test]
fn ctrl_c_in_the_python_entry_leaves_the_job_running() {
    let server = shared_server();
    let (_, key) = server.new_user("wheel-sigint", false);
    let ci = venv().join("bin/ci");
    let home = tempfile::tempdir_in(scratch()).unwrap();
    let dir = slow_project(5);
    let mut child = installed_ci(&ci, &key, dir.path(), home.path())
        .args(["submit", "test"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read until the tests run, by hand: the rest stays for wait_with_timeout.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("running tests") {
        match stdout.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => {
                let _ = child.kill();
                panic!(
                    "output ended before the tests ran:\n{}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
    }
    child.stdout = Some(stdout);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let run = Run(wait_with_timeout(child, Duration::from_secs(30)));
    run.expect_code(130)
        .expect_stderr("keeps running")
        .expect_stderr("ci wait");
    assert!(!run.stderr().contains("Traceback"), "{run}");
    let id = run.job_id();
    let job = poll(Duration::from_secs(300), "the job to end by itself", || {
        let job = server.job_as(&key, &id).unwrap();
        (job["status"] != "queued" && job["status"] != "running").then_some(job)
    });
    assert_eq!(job["status"], "passed", "{job}");
}

#[test]
fn uv_tool_install_gives_a_working_ci() {
    let server = shared_server();
    let (_, key) = server.new_user("wheel-uv", false);
    let (wheel, uv) = (built("CI_TEST_WHEEL"), built("CI_TEST_UV"));
    let root = tempfile::tempdir_in(scratch()).unwrap();
    let (tools, bin, home) = (
        root.path().join("tools"),
        root.path().join("bin"),
        root.path().join("home"),
    );
    std::fs::create_dir_all(&home).unwrap();
    // The wheel needs nothing else, so uv never has to look anything up: --offline.
    let install = run(
        Command::new(&uv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("UV_TOOL_DIR", &tools)
            .env("UV_TOOL_BIN_DIR", &bin)
            .env("UV_CACHE_DIR", root.path().join("cache"))
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_CONFIG", "1")
            .args(["tool", "install", "--offline", "--python", "python3"])
            .arg(&wheel),
        Duration::from_secs(120),
    );
    install.expect_code(0);
    let submitted = run(
        installed_ci(&bin.join("ci"), &key, &fixture("dummy_project"), &home)
            .args(["submit", "test"]),
        Duration::from_secs(300),
    );
    submitted
        .expect_code(0)
        .expect_stdout("test_add PASSED")
        .expect_stdout("==> result: passed");
    assert_eq!(
        server.job_as(&key, &submitted.job_id()).unwrap()["status"],
        "passed"
    );
}

#[test]
fn the_library_suite_passes_against_a_real_server() {
    let server = shared_server();
    let (_, key) = server.new_user("wheel-lib", false);
    let venv = venv();
    run(
        pip(venv)
            .arg("--find-links")
            .arg(built("CI_TEST_WHEELHOUSE"))
            .arg("pytest"),
        Duration::from_secs(120),
    )
    .expect_code(0);
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pyclient/tests");
    let home = tempfile::tempdir_in(scratch()).unwrap();
    // Nothing written into the source tree: no .pytest_cache, no __pycache__.
    let run = run(
        Command::new(venv.join("bin/python"))
            .current_dir(home.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CI_SERVER_URL", server.url())
            .env("CI_API_KEY", &key)
            .env("CI_TEST_FIXTURES", fixture(""))
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rA",
                "--durations=0",
            ])
            .arg(&suite),
        Duration::from_secs(600),
    );
    // Shown with --nocapture: which cases ran, and how long each took.
    println!("{run}");
    assert_eq!(run.code(), 0, "the library's suite failed\n{run}");
    assert!(run.stdout().contains(" passed"), "{run}");
    assert!(!run.stdout().contains("skipped"), "{run}");
}

/// The aarch64 wheel as an arm64 machine gets it: installed by Debian's arm64 pip and run by its
/// arm64 Python under qemu-user (qemu is the program and `-L` its root, so nothing is registered
/// with the host's binfmt_misc): the `ci` command's exit codes and the library, against the
/// real server.
#[test]
fn the_aarch64_wheel_works_under_qemu() {
    let server = shared_server();
    let (_, key) = server.new_user("wheel-aarch64", false);
    let (wheel, root) = (built("CI_WHEEL_AARCH64"), built("CI_TEST_AARCH64_ROOT"));
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let (site, home) = (dir.path().join("site"), dir.path().join("home"));
    std::fs::create_dir_all(&home).unwrap();
    let arm64_python = |cwd: &Path| -> Command {
        let mut cmd = installed_ci(Path::new("qemu-aarch64-static"), &key, cwd, &home);
        cmd.env("PYTHONPATH", &site)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PIP_CONFIG_FILE", "/dev/null")
            .arg("-L")
            .arg(&root)
            .arg(root.join("usr/bin/python3"));
        cmd
    };
    let minutes = Duration::from_secs(300);

    run(
        arm64_python(dir.path())
            .args(["-m", "pip", "install", "--no-index", "--no-compile"])
            .args(["--disable-pip-version-check", "--target"])
            .arg(&site)
            .arg(&wheel),
        minutes,
    )
    .expect_code(0);
    // Emulated, not the host's: the interpreter is aarch64, and it loaded the wheel's module.
    let probe = run(
        arm64_python(dir.path()).args([
            "-c",
            "import platform, ci_client._native as n; print(platform.machine(), n.__file__)",
        ]),
        minutes,
    );
    probe.expect_code(0);
    assert_eq!(
        probe.stdout().split_whitespace().collect::<Vec<_>>(),
        [
            "aarch64",
            &site.join("ci_client/_native.abi3.so").display().to_string()
        ],
        "{probe}"
    );

    let ci = site.join("bin/ci");
    let submit = |project: &str| {
        run(
            arm64_python(&fixture(project))
                .arg(&ci)
                .args(["submit", "test"]),
            minutes,
        )
    };
    submit("dummy_project")
        .expect_code(0)
        .expect_stdout("test_add PASSED")
        .expect_stdout("==> result: passed");
    submit("failing_project")
        .expect_code(1)
        .expect_stdout("==> result: failed");
    let library = run(
        arm64_python(&fixture("dummy_project")).args([
            "-c",
            "import ci_client; r = ci_client.Client().submit('.').wait(); \
             print(r.status, r.counts.passed)",
        ]),
        minutes,
    );
    library.expect_code(0).expect_stdout("passed 2");
}
