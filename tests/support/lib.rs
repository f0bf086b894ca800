//! Shared support for the end-to-end tests: a real `ci-server` on a free loopback port with
//! its own data directory, the real `ci` binary, and guards that stop what a test started even
//! when it panics.
//!
//! The tests need a registry on loopback serving the stand-in image: `scripts/test` starts one
//! and exports `CI_TEST_REGISTRY=127.0.0.1:PORT`.

pub mod browser;
pub mod postgres;
pub mod tarball;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A built binary of this workspace (`cargo build --bins` runs before the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The image the test servers run jobs in.
pub fn test_image() -> String {
    let registry = std::env::var("CI_TEST_REGISTRY").expect(
        "CI_TEST_REGISTRY is not set: run the suite with scripts/test, which starts the loopback registry",
    );
    format!("{registry}/library/python:3.11-slim")
}

/// The second stand-in, Python 3.13 from Debian trixie, in the loopback registry.
pub fn test_image_313() -> String {
    let registry = std::env::var("CI_TEST_REGISTRY").expect("CI_TEST_REGISTRY is not set");
    let tag = std::env::var("CI_TEST_IMAGE_313_TAG").unwrap_or_else(|_| "3.13-slim".into());
    format!("{registry}/library/python:{tag}")
}

/// A stand-in image (`3.11` or `3.13`) as an OCI archive in `dir` (a tar of its layout, as
/// `skopeo copy … oci-archive:` writes), and the tag to pick it by.
pub fn stand_in_archive(python: &str, dir: &Path) -> (PathBuf, String) {
    let (prefix, default_tag) = match python {
        "3.11" => ("CI_TEST_IMAGE", "3.11-slim"),
        "3.13" => ("CI_TEST_IMAGE_313", "3.13-slim"),
        other => panic!("no stand-in image of Python {other}"),
    };
    let layout = std::env::var(format!("{prefix}_LAYOUT"))
        .unwrap_or_else(|_| panic!("{prefix}_LAYOUT is not set (scripts/test sets it)"));
    let tag = std::env::var(format!("{prefix}_TAG")).unwrap_or_else(|_| default_tag.into());
    let archive = dir.join(format!("python-{python}.oci.tar"));
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success(), "tar of {layout}");
    (archive, tag)
}

/// Image cache shared by every test server, so the image is unpacked once per run.
fn image_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-image-cache")
}

/// Tools (uv) shared by every test server, so the pinned uv is fetched once per machine.
fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-tools")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This test process's scratch directory, `$TMPDIR/ci-e2e-<pid>`. Servers that live as long as
/// the process cannot clean up after themselves (nothing runs after the last test), so each
/// run first removes the scratch directories of test processes that are gone.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("ci-e2e-")
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("ci-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // Job containers run as an unprivileged uid that must be able to reach the data dirs.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        dir
    })
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A finished process's exit status, stdout and stderr, for an assertion's message.
pub fn output_text(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A minimal HTTP/1.1 request, enough for assertions on status and body.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    // A server that answers early (413 on the declared length) reads and drops only so much
    // of the rest before it closes: the answer is there to read even when the rest of the body
    // can no longer be sent, as for curl.
    match s.write_all(body) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) => {}
        other => other?,
    }
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        // The reset that follows an early answer, once the answer is read.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// How to start a test server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    pub extra_args: Vec<String>,
    /// `--image` [default: the test image in the loopback registry].
    pub image: Option<String>,
    /// `--image-cache` [default: one shared by every test server; a run-as server's own].
    pub image_cache: Option<PathBuf>,
}

/// A normal (non-root) user to run a test server as, for the rootless tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A running `ci-server`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The server process's pid (also on the copy `long_lived` hands out).
    pid: i32,
    pub addr: String,
    pub data_dir: PathBuf,
    pub admin_key: String,
    options: ServerOptions,
    run_as: Option<RunAs>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start(options: ServerOptions) -> Server {
        Server::start_with(options, None)
    }

    /// Starts the server as `user` rather than as the test's root: the data directory is
    /// the user's, under directories everyone may search (the jobs, run as that user, read
    /// from it), and holds its own image cache (the shared one under `target/` is root's).
    pub fn start_as(options: ServerOptions, user: RunAs) -> Server {
        Server::start_with(options, Some(user))
    }

    fn start_with(options: ServerOptions, run_as: Option<RunAs>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("server-")
            .tempdir_in(scratch())
            .expect("temp dir");
        if run_as.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let data_dir = dir.path().join("data");
        let mut server = Server {
            child: None,
            pid: 0,
            addr: String::new(),
            data_dir,
            admin_key: String::new(),
            options,
            run_as,
            _dir: Some(dir),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        // A restart keeps the address, as a real server would, so clients can reconnect.
        if self.addr.is_empty() {
            self.addr = format!("127.0.0.1:{}", free_port());
        }
        std::fs::create_dir_all(&self.data_dir).unwrap();
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(&self.data_dir, Some(user.uid), Some(user.gid)).unwrap();
        }
        // Opened by the test, so it stays readable to it whoever the server runs as.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(bin("ci-server"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--image")
            .arg(self.options.image.clone().unwrap_or_else(test_image))
            .arg("--image-cache")
            .arg(match (&self.options.image_cache, self.run_as) {
                (Some(dir), _) => dir.clone(),
                (None, Some(_)) => self.data_dir.join("images"),
                (None, None) => image_cache(),
            })
            .args(&self.options.extra_args)
            .env("CI_LOG", "info,ci_server=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(user) = self.run_as {
            // std drops the supplementary groups when root sets a uid. Root's HOME and the
            // test's working directory are not the user's to read.
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("HOME", &self.data_dir)
                .current_dir("/");
        }
        // SAFETY: prctl is async-signal-safe; the server dies with the test process. std runs
        // this after it has set the uid, and the kernel clears the death signal on a change of
        // credentials (not on exec of a plain binary), so it holds for a server run as a user.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        if !self.options.extra_args.iter().any(|a| a == "--tools-dir") {
            cmd.arg("--tools-dir").arg(match self.run_as {
                Some(_) => self.data_dir.join("tools"),
                None => tools_dir(),
            });
        }
        let child = cmd.spawn().expect("start ci-server");
        self.pid = child.id() as i32;
        self.child = Some(child);
        let addr = self.addr.clone();
        poll(
            Duration::from_secs(60),
            "ci-server to answer /healthz",
            || {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("ci-server exited with {status}:\n{}", self.log());
                }
                matches!(http("GET", &addr, "/healthz", None, b""), Ok((200, _))).then_some(())
            },
        );
        // A cluster's later nodes find an admin in the database and write no key file:
        // the test hands them the first node's.
        if let Ok(key) = std::fs::read_to_string(self.data_dir.join("admin.key")) {
            self.admin_key = key.trim().to_string();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("../server.log")
    }

    /// Everything the server printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        assert!(self.pid > 0, "the server was not started");
        self.pid
    }

    /// Sends a signal and waits for the server to exit.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        poll(Duration::from_secs(120), "ci-server to exit", || {
            child.try_wait().unwrap()
        })
    }

    /// Starts the server again on the same data directory (after `stop_with`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.launch();
    }

    /// `ci submit test --async` in `dir` as the admin; returns the job id it printed.
    pub fn submit_async(&self, dir: &Path) -> String {
        let run = self.ci(dir).args(["submit", "test", "--async"]).run();
        run.expect_code(0);
        run.stdout().trim().to_string()
    }

    /// `GET /v1/jobs/{id}` as the admin.
    pub fn job(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/jobs/{id}"))
    }

    /// `GET path` as the admin: 200 and its JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http("GET", &self.addr, path, Some(&self.admin_key), b"").unwrap();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// `GET /v1/jobs/{id}/report` as the admin.
    pub fn report(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/jobs/{id}/report"))
    }

    /// Polls the job until `pred` holds for it.
    pub fn wait_job(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        poll(Duration::from_secs(300), what, || {
            Some(self.job(id)).filter(|j| pred(j))
        })
    }

    /// Creates a user through `ci admin`, as an admin would, and a key for them; returns
    /// (email, key).
    pub fn new_user(&self, who: &str, is_admin: bool) -> (String, String) {
        let email = unique_email(who);
        let mut args = vec!["admin", "user", "create", "--name", who, "--email", &email];
        if is_admin {
            args.push("--admin");
        }
        self.ci_as(&self.admin_key, &args)
            .expect_code(0)
            .expect_stdout(&email);
        let key = self.new_key(&email, "laptop");
        (email, key)
    }

    /// A new key for the user with `email`, through `ci admin key create`.
    pub fn new_key(&self, email: &str, name: &str) -> String {
        let args = ["admin", "key", "create", "--email", email, "--name", name];
        let run = self.ci_as(&self.admin_key, &args);
        run.expect_code(0)
            .expect_stderr("shown only now")
            .expect_stderr(email);
        let key = run.stdout().trim().to_string();
        assert!(
            key.starts_with("ci_") && key.len() == 67,
            "not a key: {key:?}\n{run}"
        );
        key
    }

    /// `ci` as the holder of `key`, from a scratch directory.
    pub fn ci_as(&self, key: &str, args: &[&str]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        self.ci(dir.path()).env("CI_API_KEY", key).args(args).run()
    }

    /// Submits a project as `key` without following it; returns the job id.
    pub fn submit_async_as(&self, key: &str, dir: &Path) -> String {
        self.ci(dir)
            .env("CI_API_KEY", key)
            .args(["submit", "test", "--async"])
            .run()
            .expect_code(0)
            .stdout()
            .trim()
            .to_string()
    }

    /// The job as `key` sees it (`GET /v1/jobs/{id}`), or the status and body.
    pub fn job_as(&self, key: &str, id: &str) -> Result<serde_json::Value, (u16, String)> {
        let path = format!("/v1/jobs/{id}");
        let (status, body) = http("GET", &self.addr, &path, Some(key), b"").unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == 200 {
            Ok(serde_json::from_str(&text).unwrap())
        } else {
            Err((status, text))
        }
    }

    /// The whole stored log of a finished job, straight from the server.
    pub fn stored_log(&self, id: &str) -> Vec<u8> {
        let (status, body) = http(
            "GET",
            &self.addr,
            &format!("/v1/jobs/{id}/log?offset=0"),
            Some(&self.admin_key),
            b"",
        )
        .unwrap();
        assert_eq!(status, 200);
        body
    }

    /// A `ci` command against this server with the admin key, from `dir`, with an empty HOME.
    pub fn ci(&self, dir: &Path) -> Ci {
        Ci::new(self, dir, &self.admin_key)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One server for every test that does not need its own, started on first use.
pub fn shared_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| long_lived(ServerOptions::default()))
}

/// A server that lives as long as the test process. It is started from a thread that never
/// ends, because the death signal that stops it fires when the *thread* that spawned it exits,
/// and the test harness ends each test's thread. Keep the result in a `static OnceLock`.
pub fn long_lived(options: ServerOptions) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let server = Server::start(options);
        let copy = Server {
            child: None,
            pid: server.pid,
            addr: server.addr.clone(),
            data_dir: server.data_dir.clone(),
            admin_key: server.admin_key.clone(),
            options: server.options.clone(),
            run_as: server.run_as,
            _dir: None,
        };
        tx.send(copy).unwrap();
        let _keep = server;
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("server started")
}

/// A `ci` invocation under construction.
pub struct Ci {
    cmd: Command,
    timeout: Duration,
    _home: tempfile::TempDir,
}

impl Ci {
    fn new(server: &Server, dir: &Path, key: &str) -> Ci {
        let home = tempfile::tempdir_in(scratch()).unwrap();
        let mut cmd = Command::new(bin("ci"));
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("CI_SERVER_URL", server.url())
            .env("CI_API_KEY", key)
            .stdin(Stdio::null());
        Ci {
            cmd,
            timeout: Duration::from_secs(600),
            _home: home,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Ci
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ci {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Ci {
        self.cmd.env_remove(k);
        self
    }

    pub fn command(self) -> (Command, tempfile::TempDir) {
        (self.cmd, self._home)
    }

    /// Starts it with piped output, for tests that act while it runs.
    pub fn spawn(mut self) -> Running {
        let child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ci");
        Running {
            child: Some(child),
            _home: self._home,
        }
    }

    /// Runs to completion (panics past the timeout, after killing it).
    pub fn run(self) -> Run {
        let timeout = self.timeout;
        self.spawn().finish(timeout)
    }
}

/// A `ci` process still running.
pub struct Running {
    child: Option<Child>,
    _home: tempfile::TempDir,
}

impl Running {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// Reads stdout until it contains `needle`, returns what was read; the rest stays readable
    /// through `finish`.
    pub fn read_until(&mut self, needle: &str) -> String {
        let stdout = self.child.as_mut().unwrap().stdout.as_mut().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            match stdout.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!(
                    "output ended before {needle:?}:\n{}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    pub fn finish(mut self, timeout: Duration) -> Run {
        Run(wait_with_timeout(self.child.take().unwrap(), timeout))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a child, reading its output, killing it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let (o, e) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "command timed out after {timeout:?} ({status})\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The result of a `ci` run, with helpers that print everything when an assertion fails.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), code, "unexpected exit code\n{self}");
        self
    }

    pub fn expect_stdout(&self, needle: &str) -> &Run {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// The job id from `Job ID: <id>` on stderr.
    pub fn job_id(&self) -> String {
        self.stderr()
            .lines()
            .find_map(|l| l.strip_prefix("Job ID: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no job id\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.0.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Writes a small project (path -> content) into a new temp dir.
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("project-")
        .tempdir_in(scratch())
        .unwrap();
    for (path, body) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

/// Makes /dev/net/tun 0666, as Debian's udev rule does, for the life of the guard, so that
/// slirp4netns run by a normal user can open it (the kernel's own default is 0600 and a
/// machine without udev keeps it). The mode is put back when the last guard of this process
/// drops: tests run in parallel, and one that put it back while another's slirp4netns was
/// about to open it failed that one ("open(/dev/net/tun): Permission denied").
pub struct TunOpen(());

/// How many guards are alive, and the mode to put back after the last.
static TUN_GUARDS: std::sync::Mutex<(usize, Option<u32>)> = std::sync::Mutex::new((0, None));

impl TunOpen {
    #[expect(
        clippy::new_without_default,
        reason = "it changes the host: no silent default"
    )]
    pub fn new() -> TunOpen {
        use std::os::unix::fs::PermissionsExt;
        let mut guards = TUN_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if guards.0 == 0 {
            let mode = std::fs::metadata("/dev/net/tun")
                .expect("/dev/net/tun exists")
                .permissions()
                .mode();
            if mode & 0o006 != 0o006 {
                std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
                    .unwrap();
                guards.1 = Some(mode);
            }
        }
        guards.0 += 1;
        TunOpen(())
    }
}

impl Drop for TunOpen {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let mut guards = TUN_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        guards.0 -= 1;
        if guards.0 == 0 {
            if let Some(mode) = guards.1.take() {
                let _ =
                    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(mode));
            }
        }
    }
}

/// A system user (no home, no login, no subordinate ids) for rootless tests, created if
/// missing. Tolerates another test process creating it at the same time.
pub fn system_user(name: &str) -> nix::unistd::User {
    let find = || nix::unistd::User::from_name(name).unwrap();
    if find().is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .unwrap();
        assert!(
            status.success() || find().is_some(),
            "useradd {name}: {status}"
        );
    }
    find().unwrap()
}

/// Delegates the cgroup v1 subtree to `name` with `scripts/delegate-cgroups` (idempotent).
pub fn delegate_cgroups(name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/delegate-cgroups");
    let out = Command::new(script).arg(name).output().unwrap();
    assert!(
        out.status.success(),
        "delegate-cgroups {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An email no other test (or earlier run against the same server) uses.
pub fn unique_email(who: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{who}.{}.{}@example.com",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// What `ci` printed of the job's log: its output without what `ci` prints after it from
/// the job's record (the log itself has neither): the tests' summary, when the job has a
/// report, and the result line.
pub fn log_part(stdout: &[u8]) -> &[u8] {
    let text = stdout.strip_suffix(b"\n").unwrap_or(stdout);
    let start = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    assert!(
        text[start..].starts_with(b"==> result: "),
        "ci's output does not end with the result line: {:?}",
        String::from_utf8_lossy(&text[start..])
    );
    let summary = b"\n==> tests: ";
    match stdout[..start]
        .windows(summary.len())
        .rposition(|w| w == summary)
    {
        Some(at) => &stdout[..at + 1],
        None if stdout.starts_with(&summary[1..]) => &stdout[..0],
        None => &stdout[..start],
    }
}
