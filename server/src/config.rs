//! Command-line configuration of `ci-server serve`, with the defaults a single host wants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The image of a server given none: the Docker Official Image of the newest stable Python
/// as of this release line.
pub const DEFAULT_IMAGE: &str = "python:3.12-slim";

/// Options of `ci-server serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A TOML file of these options, each key named like its flag (`max-jobs = 4`,
    /// `image = ["python:3.13-slim"]`, `allow-unlimited = true`); a flag or an environment
    /// variable wins over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "CI_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Where jobs, logs, the image cache and the database live; jobs must be able to
    /// search every directory on the way [default: /var/lib/ci-server for root, else
    /// $XDG_DATA_HOME/ci-server or ~/.local/share/ci-server].
    #[arg(long, env = "CI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// An image jobs run in, pulled (or imported) once and cached unpacked, and named by the
    /// Python it has; give it once per Python (the first is the default) [default:
    /// python:3.12-slim]. A registry reference, or a file: `oci-archive:PATH`,
    /// `oci:DIR[:TAG]`, `docker-archive:PATH`.
    #[arg(long, env = "CI_IMAGE", value_name = "IMAGE")]
    pub image: Vec<String>,

    /// A file of images, one per line (`#` starts a comment), after the --image ones.
    #[arg(long, value_name = "FILE")]
    pub images: Option<PathBuf>,

    /// Where pulled images are kept unpacked [default: DATA_DIR/images]. Servers on one host
    /// may share it.
    #[arg(long, value_name = "DIR")]
    pub image_cache: Option<PathBuf>,

    /// Registry host (HOST or HOST:PORT) to reach over plain HTTP; loopback always is.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// CA bundle handed to pip in the install phase [default: $SSL_CERT_FILE or $PIP_CERT if
    /// set, else the system bundle].
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,

    /// Who installs a job's dependencies: `uv` (a pinned version fetched once from the
    /// package index, or --uv) or `pip` (the image's own). Where uv cannot be had, jobs
    /// fall back to pip and say so in their log.
    #[arg(long, value_enum, default_value_t = InstallerArg::Uv)]
    pub installer: InstallerArg,

    /// A uv binary to use instead of fetching the pinned one (for servers without access to
    /// the package index); it must run in the image (glibc, same architecture).
    #[arg(long, value_name = "FILE")]
    pub uv: Option<PathBuf>,

    /// Package index (PEP 503/691 simple API) the pinned uv wheel is fetched from.
    #[arg(long, value_name = "URL", default_value = "https://pypi.org/simple")]
    pub uv_index_url: String,

    /// Where fetched tools (uv) are kept [default: DATA_DIR/tools]. Servers on one host may
    /// share it.
    #[arg(long, value_name = "DIR")]
    pub tools_dir: Option<PathBuf>,

    /// Memory limit of each container (e.g. 512MiB, 2GiB).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    pub memory_limit: u64,

    /// CPU time each container may use, in CPUs (e.g. 1.5); 0 for no limit.
    #[arg(long, default_value_t = 2.0)]
    pub cpus: f64,

    /// Maximum number of processes (pids) in each container.
    #[arg(long, default_value_t = 512)]
    pub pids_limit: i64,

    /// Size of the writable tmpfs at /tmp (and of $HOME) in each container.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub tmp_size: u64,

    /// How many jobs run at once; the others wait in order [default: number of CPUs].
    #[arg(long)]
    pub max_jobs: Option<usize>,

    /// Wall-clock limit of a job (install and tests); a client may ask for less.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,

    /// Most log output stored per job; past it the job is stopped ("log limit reached").
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_log_size: u64,

    /// Installed dependencies and installer caches unused for this long are removed (checked hourly).
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    pub cache_max_age: Duration,

    /// Largest project upload, compressed.
    #[arg(long, default_value = default_max_upload_size(), value_parser = parse_size)]
    pub max_upload_size: u64,

    /// Largest project once unpacked.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_unpacked_size: u64,

    /// Most files, directories and links in one project.
    #[arg(long, default_value_t = 100_000)]
    pub max_upload_entries: u64,

    /// Most open client connections; past it new ones wait in the kernel's backlog
    /// [default: sized to the file-descriptor limit, which the server raises to its hard limit].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most connections from one IP address that have not yet sent a valid API key; past it
    /// new ones from that address are answered 429 and closed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// How long a client may take to send a request's headers (also the first request on a
    /// new connection).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// How long a kept-alive connection may sit idle between requests before it is closed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Longest pause while a request body (an upload) is being sent.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Longest an upload may take from its first byte to its last.
    #[arg(long, default_value = "10min", value_parser = humantime::parse_duration)]
    pub upload_timeout: Duration,

    /// Most uploads received at once; past it submissions are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_concurrent_uploads: usize,

    /// Largest a job's installed dependencies (and its project layer) may grow; an install
    /// past it is stopped with that reason and nothing of it is kept.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    pub max_deps_size: u64,

    /// Most disk each user's caches (dependency layers, uv's and pip's downloads) may use;
    /// past it the least recently used entries are removed.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub cache_max_size: u64,

    /// Most jobs one user may have queued (not yet running); past it submissions are
    /// answered 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_queued_per_user: usize,

    /// Most unpacked upload bytes one user's queued jobs may hold on disk together.
    #[arg(long, default_value = "5GiB", value_parser = parse_size)]
    pub max_queued_size_per_user: u64,

    /// Most jobs of one user running at once [default: --max-jobs]; jobs of different users
    /// take turns for free slots either way.
    #[arg(long, value_name = "N")]
    pub max_running_per_user: Option<usize>,

    /// Most bytes of files a job's tests may write to `/artifacts` (kept with the job, fetched
    /// with `ci artifacts`); past it the tests are stopped with that reason and what fit is kept.
    #[arg(long, default_value = "100MiB", value_parser = parse_size)]
    pub max_artifacts_size: u64,

    /// How long a finished job's log, test report and artifacts are kept; older ones are
    /// removed, while the job's record (and its test counts) stays and lists as `expired`.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub job_retention: Duration,

    /// Free disk below which new submissions are refused (507) rather than half written.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub min_free_disk: u64,

    /// On SIGTERM or Ctrl-C, how long running jobs may go on before they are stopped.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Host ids that the jobs' container ids 0.. map to, as START:COUNT (a user namespace;
    /// root only, a normal user's jobs run as that user) [default: 1879048192:65536].
    #[arg(long, value_name = "START:COUNT", value_parser = crate::sandbox::parse_id_range)]
    pub userns_range: Option<ci_runner::IdRange>,

    /// Network of the install phase: `slirp` (a namespace of its own, NATed by slirp4netns,
    /// no access to this machine's services) or `host` (this machine's network: only
    /// where slirp4netns is missing).
    #[arg(long, value_enum, default_value_t = InstallNetwork::Slirp)]
    pub install_network: InstallNetwork,

    /// Start even where --memory-limit or --pids-limit cannot be enforced (no usable cgroup
    /// controller), and run jobs without that limit.
    #[arg(long)]
    pub allow_unlimited: bool,

    /// Log where each job's time goes: a line per step (upload, queue, each phase, each
    /// container's bundle, run and teardown) with its duration in milliseconds.
    #[arg(long)]
    pub log_timings: bool,

    /// How the server's own log (on stderr) is written: `text` (colours only on a terminal)
    /// or `json` (one object per line: timestamp, level, target, fields).
    #[arg(long, value_enum, env = "CI_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A PostgreSQL database that several servers share (`postgres://USER:PASSWORD@HOST/DB`):
    /// job records, users and keys, uploads, logs and results live there, and any mix of
    /// nodes (--role) may use it. Without it, everything is kept in the data directory and
    /// this server is the only one.
    #[arg(
        long,
        env = "CI_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// A PEM file of certificates to trust for the database's TLS besides the system's (a
    /// database with a certificate of its own CA). TLS is as the URL's `sslmode` says:
    /// `prefer` by default, `require` to refuse a database without it.
    #[arg(long, env = "CI_DATABASE_CA", value_name = "FILE")]
    pub database_ca: Option<PathBuf>,

    /// What this node does, with --database-url: `api` serves HTTP (submissions, logs, the
    /// web page), `worker` claims jobs from the database and runs them; `api,worker` does both.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "api,worker")]
    pub role: Vec<NodeRole>,

    /// This node's name in the cluster, in the database and in the logs of the jobs it ran
    /// [default: the host name and the port].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// How often a worker renews the leases of its running jobs (and hears of their cancels).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long a job's lease lasts without a heartbeat: past it, any node queues the job
    /// again for another worker (the silent worker's later writes are refused).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_timeout: Duration,

    /// How many times a job whose worker was lost is run again before it ends `lost`.
    #[arg(long, default_value_t = 1)]
    pub retry_lost: u32,
}

/// `--role`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Api,
    Worker,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--installer`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallerArg {
    Uv,
    Pip,
}

impl From<InstallerArg> for ci_project::Installer {
    fn from(arg: InstallerArg) -> Self {
        match arg {
            InstallerArg::Uv => ci_project::Installer::Uv,
            InstallerArg::Pip => ci_project::Installer::Pip,
        }
    }
}

/// `--install-network`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallNetwork {
    Slirp,
    Host,
}

impl ServeArgs {
    /// Whether this node serves HTTP (always without a database: a single server does all).
    pub fn serves_api(&self) -> bool {
        self.database_url.is_none() || self.role.contains(&NodeRole::Api)
    }

    /// Whether this node runs jobs (always without a database).
    pub fn runs_jobs(&self) -> bool {
        self.database_url.is_none() || self.role.contains(&NodeRole::Worker)
    }

    /// This node's name: --node-name, else the host name and the port it listens on.
    pub fn node_name(&self) -> String {
        if let Some(name) = self.node_name.as_deref().filter(|n| !n.trim().is_empty()) {
            return name.trim().to_string();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "node".into());
        format!("{host}:{}", self.listen.port())
    }

    /// The data directory, with the per-user default applied.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        // Root's jobs run as an unprivileged uid, which cannot search root's home (0700).
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/ci-server");
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("ci-server");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/ci-server")
    }

    /// The images, the default first: --image's, then --images's lines, else the default.
    /// Refused: a file that cannot be read, a line that is no image, an image twice.
    pub fn image_sources(&self) -> anyhow::Result<Vec<ci_rootfs::ImageSource>> {
        let mut texts: Vec<(String, String)> = self
            .image
            .iter()
            .map(|i| (i.clone(), "--image".to_string()))
            .collect();
        if let Some(file) = &self.images {
            let text = fs_err::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read --images: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if !line.is_empty() {
                    texts.push((line.to_string(), format!("{}:{}", file.display(), n + 1)));
                }
            }
        }
        if texts.is_empty() {
            texts.push((DEFAULT_IMAGE.to_string(), "the default".to_string()));
        }
        let mut sources: Vec<ci_rootfs::ImageSource> = Vec::new();
        for (text, whence) in texts {
            let source: ci_rootfs::ImageSource = text
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid image {text:?} ({whence}): {e}"))?;
            if sources.iter().any(|s| s.to_string() == source.to_string()) {
                anyhow::bail!("image {text:?} ({whence}) is given twice");
            }
            sources.push(source);
        }
        Ok(sources)
    }

    /// Where pulled images are kept, with the default applied.
    pub fn image_cache(&self) -> PathBuf {
        (self.image_cache.clone()).unwrap_or_else(|| self.data_dir().join("images"))
    }

    /// Where fetched tools (uv) are kept, with the default applied.
    pub fn tools_dir(&self) -> PathBuf {
        (self.tools_dir.clone()).unwrap_or_else(|| self.data_dir().join("tools"))
    }

    /// The CA bundle for pip: the flag, then the variables pip and OpenSSL read, then the
    /// system bundle. `None` when none of them names an existing file.
    pub fn ca_bundle(&self) -> Option<PathBuf> {
        let candidates = self
            .ca_bundle
            .clone()
            .into_iter()
            .chain(
                ["SSL_CERT_FILE", "PIP_CERT"]
                    .iter()
                    .filter_map(|v| std::env::var_os(v).map(PathBuf::from)),
            )
            .chain([PathBuf::from("/etc/ssl/certs/ca-certificates.crt")]);
        candidates.into_iter().find(|p| p.is_file())
    }

    /// Most jobs of one user running at once, with the default applied.
    pub fn max_running_per_user(&self) -> usize {
        self.max_running_per_user
            .unwrap_or_else(|| self.max_jobs())
            .max(1)
    }

    pub fn max_jobs(&self) -> usize {
        self.max_jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

/// Parses a byte size such as `512MiB`, `2GiB`, `64M` or `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use K, M, G or T"
            ))
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Formats a byte count the way `parse_size` reads it back, for messages.
/// `--max-upload-size`'s default as the help shows it (`100MiB`): the cap `ci` also keeps.
fn default_max_upload_size() -> &'static str {
    static DEFAULT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format_size(ci_protocol::DEFAULT_MAX_UPLOAD_BYTES).replace(' ', "")
    });
    DEFAULT.as_str()
}

pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A byte count for people, rounded: `812.4 MiB`, `1 GiB`, `42 bytes`.
pub fn approx_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(approx_size(0), "0 bytes");
        assert_eq!(approx_size(1000), "1000 bytes");
        assert_eq!(approx_size(1 << 30), "1 GiB");
        assert_eq!(approx_size(1000 << 40), "1000 TiB");
        assert_eq!(approx_size((1 << 30) + (1 << 29) / 5 * 2), "1.2 GiB");
        assert_eq!(approx_size((3 << 30) / 2), "1.5 GiB");
        assert_eq!(approx_size(64 << 20), "64 MiB");
    }

    fn check(input: &str, expected: Result<u64, ()>) {
        assert_eq!(parse_size(input).map_err(|_| ()), expected, "{input}");
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("ci-server").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().serve
    }

    fn texts(args: &ServeArgs) -> Result<Vec<String>, String> {
        args.image_sources()
            .map(|s| s.iter().map(ToString::to_string).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn images_from_flags_and_a_file_the_default_first() {
        assert_eq!(
            texts(&serve_args(&[])).unwrap(),
            ["registry-1.docker.io/library/python:3.12-slim"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images");
        std::fs::write(
            &file,
            "# the interpreters\npython:3.13-slim  # newest\n\noci-archive:/srv/pypy.tar\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let args = serve_args(&["--image", "python:3.11-slim", "--images", file]);
        assert_eq!(
            texts(&args).unwrap(),
            [
                "registry-1.docker.io/library/python:3.11-slim",
                "registry-1.docker.io/library/python:3.13-slim",
                "oci-archive:/srv/pypy.tar"
            ]
        );
        let twice = serve_args(&["--image", "python:3.13-slim", "--images", file]);
        let err = texts(&twice).unwrap_err();
        assert!(err.contains("is given twice"), "{err}");
        let bad = serve_args(&["--image", "Not An Image!"]);
        assert!(texts(&bad)
            .unwrap_err()
            .starts_with("invalid image \"Not An Image!\" (--image)"));
        let missing = serve_args(&["--images", "/nonexistent/images"]);
        assert!(texts(&missing)
            .unwrap_err()
            .starts_with("cannot read --images"));
    }

    #[test]
    fn sizes() {
        check("1048576", Ok(1 << 20));
        check("512MiB", Ok(512 << 20));
        check("2GiB", Ok(2 << 30));
        check("64m", Ok(64 << 20));
        check("1 G", Ok(1 << 30));
        check("12parsecs", Err(()));
        check("", Err(()));
        check("99999999999T", Err(()));
    }

    #[test]
    fn the_default_upload_cap_is_the_one_ci_keeps() {
        assert_eq!(default_max_upload_size(), "100MiB");
        assert_eq!(
            parse_size(default_max_upload_size()),
            Ok(ci_protocol::DEFAULT_MAX_UPLOAD_BYTES)
        );
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(2 << 30), "2 GiB");
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }
}
