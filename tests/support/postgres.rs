//! A throwaway PostgreSQL server for tests: its own data directory under `/tmp`, a free
//! loopback port, trust authentication for the user `ci`, no fsync. Started from the newest
//! `/usr/lib/postgresql/*/bin` (or `pg_config --bindir`); when the tests run as root (which
//! `initdb` and `postgres` refuse), the server runs as the `postgres` system user.
//!
//! [`TestPostgres`] stops its server and removes its directory on drop; a watchdog process
//! does the same if the test process dies without dropping it (a panic in a static, a kill).
//! [`shared`] is one server per test process, for unit tests that each take a
//! [`TestPostgres::fresh_database`].

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The user every test connects as (trust authentication, superuser).
pub const USER: &str = "ci";

pub struct TestPostgres {
    /// `/tmp/ci-pg-XXXX`: `data/`, `sock/`, `server.log`; owned by the user the server
    /// runs as.
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    /// `(uid, gid)` of the `postgres` user when the tests run as root.
    run_as: Option<(u32, u32)>,
    /// Stops the server and removes `dir` if this process dies without dropping `self`.
    watchdog: Mutex<Option<Child>>,
    /// Whether the server offers TLS (`start_tls`).
    tls: bool,
}

impl TestPostgres {
    /// Creates a cluster and starts it; panics, with the server's log, when it does not come
    /// up within 30 s.
    pub fn start() -> TestPostgres {
        TestPostgres::start_with(false)
    }

    /// [`TestPostgres::start`], with TLS on (`ssl = on`), its certificate for `127.0.0.1`
    /// signed by a CA made for it with `openssl`; returns the server and that CA's PEM file
    /// (what a client must trust).
    pub fn start_tls() -> (TestPostgres, PathBuf) {
        let pg = TestPostgres::start_with(true);
        let ca = pg.data().join("ca.crt");
        (pg, ca)
    }

    fn start_with(tls: bool) -> TestPostgres {
        let bindir = bindir();
        let run_as = run_as();
        let dir = tempfile::Builder::new()
            .prefix("ci-pg-")
            .tempdir_in("/tmp")
            .expect("create a directory for PostgreSQL");
        std::fs::create_dir(dir.path().join("sock")).expect("create the socket directory");
        if let Some((uid, gid)) = run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("sock")] {
                nix::unistd::chown(
                    &path,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }
        let mut pg = TestPostgres {
            dir,
            bindir,
            port: 0,
            run_as,
            watchdog: Mutex::new(None),
            tls,
        };
        let initdb = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        if tls {
            pg.make_certificate();
        }
        pg.start_watchdog();
        // The port was free a moment ago; another process may take it before the server
        // binds it, so a failed start tries another port.
        let mut tries = 0;
        loop {
            tries += 1;
            pg.port = crate::free_port();
            pg.write_config();
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) if tries < 3 => eprintln!("PostgreSQL did not start, again: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `postgres://ci@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new, empty database with a name no other call used and returns its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut last = String::new();
        // CREATE DATABASE can fail while another one is created from the same template.
        for _ in 0..20 {
            let out = Command::new(self.bindir.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .arg(&name)
                .stdin(Stdio::null())
                .output()
                .expect("run createdb");
            if out.status.success() {
                return self.database_url(&name);
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if last.contains("already exists") {
                return self.database_url(&name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("createdb {name} failed: {last}");
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again: same port, same data; returns when it accepts
    /// connections.
    pub fn start_again(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    fn database_url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A program of the server's bindir, as the user the server runs as, in its directory.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        cmd
    }

    /// Settings after initdb's: appended, the last one of a name wins. No fsync (the data
    /// outlives the server, not the machine), but every commit is written before it returns:
    /// [`Self::stop_immediate`] loses no committed transaction.
    /// A test CA (`ca.crt`, what a client must trust) and the server's certificate for
    /// 127.0.0.1 signed by it, in the data directory; the key readable by the server's user
    /// only.
    fn make_certificate(&self) {
        let data = self.data();
        let ext = data.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write server.ext");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&data)
                .output()
                .expect("run openssl (Debian's openssl package)");
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ci-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        let (crt, key) = (data.join("server.crt"), data.join("server.key"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = self.run_as {
            for path in [&crt, &key] {
                nix::unistd::chown(
                    path,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
    }

    fn write_config(&self) {
        use std::io::Write;
        let conf = self.data().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("open {}: {e}", conf.display()));
        write!(
            file,
            "\n# ci-e2e test server\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = off\n\
             full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n",
            self.port,
            self.dir.path().join("sock").display()
        )
        .expect("write postgresql.conf");
        if self.tls {
            writeln!(file, "ssl = on").expect("write postgresql.conf");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_file())
            .args(["start", "-w", "-t", &START_TIMEOUT.as_secs().to_string()])
            // pg_ctl's server keeps these open: a caller reading its output would wait.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        if !out.success() {
            return Err(format!(
                "PostgreSQL did not start on port {} ({out}); its log:\n{}",
                self.port,
                self.log_tail()
            ));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", USER, "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL does not accept connections on 127.0.0.1:{} after {} s; its log:\n{}",
                    self.port,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A shell, in a process group of its own (a Ctrl-C of the tests does not reach it), that
    /// waits for this process to end, then stops the server as a crash would and removes
    /// its directory.
    fn start_watchdog(&self) {
        let dir = self.dir.path().display().to_string();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             pid=$(head -n1 '{dir}/data/postmaster.pid' 2>/dev/null); \
             if [ -n \"$pid\" ]; then kill -QUIT \"$pid\" 2>/dev/null; \
             while kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done; fi; \
             rm -rf '{dir}'",
            pid = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the PostgreSQL watchdog");
        *self.watchdog.lock().unwrap() = Some(child);
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The TempDir removes the directory.
    }
}

/// One server for the whole test process, started on first use; never dropped (its
/// watchdog stops it when the process ends).
pub fn shared() -> &'static TestPostgres {
    static SHARED: OnceLock<TestPostgres> = OnceLock::new();
    SHARED.get_or_init(TestPostgres::start)
}

/// The newest installed server's programs.
fn bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").is_file() {
            return bin;
        }
    }
    panic!(
        "no PostgreSQL server found (/usr/lib/postgresql/*/bin/initdb): \
         install it with scripts/install-deps (package postgresql)"
    );
}

/// The `postgres` user's ids when this process runs as root.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the tests run as root, so PostgreSQL runs as the user `postgres`, which is missing: install the postgresql package");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}
