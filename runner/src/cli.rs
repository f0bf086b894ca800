//! The hidden helper subcommands (`__container`, `__cleanup`) that the server runs as child
//! processes: argument parsing, argv construction for the server, and exit codes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::chain;

/// Subcommand that runs one container ([`crate::run_helper`]).
pub const CONTAINER_SUBCOMMAND: &str = "__container";
/// Subcommand that removes one leftover container, or all of them ([`crate::reconcile`]).
pub const CLEANUP_SUBCOMMAND: &str = "__cleanup";

/// Exit codes of the helper subcommands.
pub mod exit_codes {
    /// Done; for `__container` the result file holds the [`crate::Outcome`] (whatever the
    /// container's own exit code was).
    pub const OK: i32 = 0;
    /// Failed; the reason is on stderr. For `__container` a result file may still exist
    /// if the container ran but removing it failed: trust the outcome and run `__cleanup`.
    pub const FAILED: i32 = 1;
    /// Bad arguments.
    pub const USAGE: i32 = 2;
}

const USAGE: &str = "usage:
  __container --bundle DIR --state-root DIR --id ID --result FILE [--die-with-parent]
  __cleanup --state-root DIR [--id ID]   (without --id: remove every container, print ids)";

/// True when `args` (argv without the program name) is a helper invocation, i.e. the
/// server's `main` should call [`helper_main`] and nothing else.
pub fn is_helper_invocation(args: &[String]) -> bool {
    matches!(
        args.first().map(String::as_str),
        Some(CONTAINER_SUBCOMMAND | CLEANUP_SUBCOMMAND)
    )
}

/// Arguments (after the program) that run one container: stdout of the helper gets the
/// container's merged output, stderr the helper's diagnostics.
///
/// `die_with_parent` adds `--die-with-parent`: PR_SET_PDEATHSIG=SIGTERM, so the helper
/// kills and removes its container when the *thread* that spawned it exits (prctl(2)).
/// Right for a server that spawns from long-lived runtime worker threads (a crashed
/// server then leaves no running containers); wrong if it spawns from a thread that may
/// exit early, such as tokio's blocking pool.
pub fn container_args(
    bundle: &Path,
    state_root: &Path,
    id: &str,
    result: &Path,
    die_with_parent: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        CONTAINER_SUBCOMMAND.into(),
        "--bundle".into(),
        bundle.into(),
        "--state-root".into(),
        state_root.into(),
        "--id".into(),
        id.into(),
        "--result".into(),
        result.into(),
    ];
    if die_with_parent {
        args.push("--die-with-parent".into());
    }
    args
}

/// Arguments that remove container `id`, or with `None` every container under
/// `state_root` (the removed ids are printed on stdout, one per line).
pub fn cleanup_args(state_root: &Path, id: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        CLEANUP_SUBCOMMAND.into(),
        "--state-root".into(),
        state_root.into(),
    ];
    if let Some(id) = id {
        args.extend(["--id".into(), id.into()]);
    }
    args
}

/// A parsed helper invocation.
#[derive(Debug, PartialEq)]
pub enum Command {
    Container {
        bundle: PathBuf,
        state_root: PathBuf,
        id: String,
        result: PathBuf,
        /// See [`container_args`].
        die_with_parent: bool,
    },
    Cleanup {
        state_root: PathBuf,
        id: Option<String>,
    },
}

/// Parses argv without the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let (sub, rest) = args.split_first().ok_or("missing subcommand")?;
    let mut bundle = None;
    let mut state_root = None;
    let mut id = None;
    let mut result = None;
    let mut die_with_parent = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--state-root" => state_root = Some(PathBuf::from(value()?)),
            "--id" => id = Some(value()?),
            "--result" => result = Some(PathBuf::from(value()?)),
            "--die-with-parent" if sub == CONTAINER_SUBCOMMAND => die_with_parent = true,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let need = |v: Option<PathBuf>, name: &str| v.ok_or_else(|| format!("missing {name}"));
    match sub.as_str() {
        CONTAINER_SUBCOMMAND => Ok(Command::Container {
            bundle: need(bundle, "--bundle")?,
            state_root: need(state_root, "--state-root")?,
            id: id.ok_or("missing --id")?,
            result: need(result, "--result")?,
            die_with_parent,
        }),
        CLEANUP_SUBCOMMAND if bundle.is_none() && result.is_none() => Ok(Command::Cleanup {
            state_root: need(state_root, "--state-root")?,
            id,
        }),
        CLEANUP_SUBCOMMAND => Err("__cleanup takes only --state-root and --id".into()),
        other => Err(format!("unknown subcommand {other:?}")),
    }
}

/// Runs a helper subcommand; `args` is argv without the program name, starting with
/// `__container` or `__cleanup`. Returns the process exit code ([`exit_codes`]).
///
/// Call it first thing in `main`, before any thread (tokio runtime) exists: libcontainer
/// needs a single-threaded process.
pub fn helper_main(args: Vec<String>) -> i32 {
    init_tracing();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("ci-runner helper: {msg}\n{USAGE}");
            return exit_codes::USAGE;
        }
    };
    let result = match command {
        Command::Container {
            bundle,
            state_root,
            id,
            result,
            die_with_parent,
        } => {
            // Before anything else: it may re-execute this process.
            if let Err(err) = crate::helper::enter_own_userns(&bundle) {
                eprintln!("ci-runner helper: failed to {}", chain(&err));
                return exit_codes::FAILED;
            }
            if die_with_parent {
                if let Err(err) = die_with_parent_thread() {
                    eprintln!("ci-runner helper: {err}");
                    return exit_codes::FAILED;
                }
            }
            crate::run_helper(&bundle, &state_root, &id, &result).map(drop)
        }
        Command::Cleanup {
            state_root,
            id: Some(id),
        } => crate::cleanup(&state_root, &id),
        Command::Cleanup {
            state_root,
            id: None,
        } => crate::reconcile(&state_root).map(|ids| {
            for id in ids {
                println!("{id}");
            }
        }),
    };
    match result {
        Ok(()) => exit_codes::OK,
        Err(err) => {
            eprintln!("ci-runner helper: failed to {}", chain(&err));
            exit_codes::FAILED
        }
    }
}

/// Asks for SIGTERM when the parent goes, then checks it has not gone already (the
/// request does not fire for a parent that died before it was made).
fn die_with_parent_thread() -> Result<(), String> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("failed to set the parent-death signal: {e}"))?;
    if nix::unistd::getppid() != parent {
        return Err("parent exited before the container was started".into());
    }
    Ok(())
}

/// Diagnostics to stderr; `CI_RUNNER_LOG` takes an env-filter directive. libcgroups warns
/// about every controller this machine lacks (net_cls, hugetlb, ...) on every run, so it
/// is quiet by default.
///
/// The subscriber writes to a duplicate of fd 2, not to fd 2 itself: libcontainer's
/// intermediate and init processes are clones of this process and log through the same
/// subscriber, and init dup2()s the container's stdio over fds 0-2 before it execs. With
/// fd 2 their errors ("executable not found") would land in the job's output stream; the
/// duplicate keeps them on the helper's stderr (libcontainer marks it close-on-exec, so the
/// payload never sees it).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CI_RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libcgroups=error"));
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(filter);
    let _ = match diagnostics_fd() {
        Some(file) => builder.with_writer(move || file).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// A close-on-exec duplicate of fd 2, kept for the life of the process.
fn diagnostics_fd() -> Option<&'static std::fs::File> {
    use std::os::fd::FromRawFd;
    let fd = nix::fcntl::fcntl(
        nix::libc::STDERR_FILENO,
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
    )
    .ok()?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    Some(Box::leak(Box::new(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    fn check(args: &[&str], expected: Result<Command, ()>) {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(parse(&args).map_err(drop), expected, "{args:?}");
    }

    #[test]
    fn container_argv_roundtrips() {
        let args = container_args(
            Path::new("/b"),
            Path::new("/s"),
            "ci-1",
            Path::new("/r.json"),
            true,
        );
        let args = strings(&args);
        assert!(is_helper_invocation(&args));
        assert_eq!(
            parse(&args).unwrap(),
            Command::Container {
                bundle: "/b".into(),
                state_root: "/s".into(),
                id: "ci-1".into(),
                result: "/r.json".into(),
                die_with_parent: true,
            }
        );
    }

    #[test]
    fn cleanup_argv_roundtrips() {
        let args = strings(&cleanup_args(Path::new("/s"), Some("ci-1")));
        assert_eq!(
            parse(&args).unwrap(),
            Command::Cleanup {
                state_root: "/s".into(),
                id: Some("ci-1".into())
            }
        );
        let args = strings(&cleanup_args(Path::new("/s"), None));
        assert_eq!(
            parse(&args).unwrap(),
            Command::Cleanup {
                state_root: "/s".into(),
                id: None
            }
        );
    }

    #[test]
    fn bad_argv() {
        check(&[], Err(()));
        check(&["serve"], Err(()));
        check(&["__container", "--bundle"], Err(()));
        check(
            &["__container", "--bundle", "/b", "--state-root", "/s"],
            Err(()),
        );
        check(&["__cleanup"], Err(()));
        check(
            &["__cleanup", "--state-root", "/s", "--bundle", "/b"],
            Err(()),
        );
        check(
            &["__cleanup", "--state-root", "/s", "--die-with-parent"],
            Err(()),
        );
        check(&["__cleanup", "--state-root", "/s", "--extra"], Err(()));
        assert!(!is_helper_invocation(&["serve".to_owned()]));
    }
}
