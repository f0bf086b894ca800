//! What a server keeps, and from whom: the logs of old jobs go after `--job-retention`
//! (their records stay and say so), and the database, the logs and the admin key are the
//! server's user's only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ci_e2e::{fixture, http, poll, project, Server, ServerOptions};

const EXPIRED: &str = "its log was removed after the server's retention period";

/// Waits until the server has expired the job, and returns its record.
fn expired(server: &Server, id: &str) -> serde_json::Value {
    poll(Duration::from_secs(60), "the job to expire", || {
        Some(server.job(id)).filter(|j| j["expired"] == true)
    })
}

#[test]
fn logs_of_old_jobs_are_removed_and_their_jobs_listed_as_expired() {
    let server = Server::start(ServerOptions {
        extra_args: vec!["--job-retention".into(), "3s".into()],
        ..Default::default()
    });
    // A job that runs longer than the retention keeps its log while it runs: only the
    // finish time counts.
    let slow = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_slow.py",
            "import time\n\ndef test_slow():\n    time.sleep(5)\n",
        ),
    ]);
    let passed = server.ci(slow.path()).args(["submit", "test"]).run();
    passed
        .expect_code(0)
        .expect_stdout("1 passed")
        .expect_stdout("==> result: passed");
    let passed = passed.job_id();
    let failed = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    failed.expect_code(1);
    let failed = failed.job_id();

    for id in [&passed, &failed] {
        let job = expired(&server, id);
        assert_eq!(job["log_bytes"], 0, "{job}");
        let log = server.data_dir.join(format!("logs/{id}.log"));
        assert!(!log.exists(), "{} is still there", log.display());
        let (status, body) = http(
            "GET",
            &server.addr,
            &format!("/v1/jobs/{id}/log?offset=0"),
            Some(&server.admin_key),
            b"",
        )
        .unwrap();
        assert_eq!(status, 410, "{}", String::from_utf8_lossy(&body));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": format!(
                "the log of job {id} was removed after the server's retention period (3 seconds)"
            )})
        );
    }
    // The records stay, and say what happened.
    assert_eq!(server.job(&passed)["status"], "passed");

    let dir = fixture("dummy_project");
    let list = server.ci(&dir).args(["list"]).run();
    list.expect_code(0);
    let line = |id: &str| {
        list.stdout()
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed\n{list}"))
            .to_owned()
    };
    assert!(line(&passed).contains(" passed (expired) "), "{list}");
    assert!(line(&failed).contains(" failed (expired) "), "{list}");
    let json = server.ci(&dir).args(["list", "--json"]).run();
    json.expect_code(0);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(jobs.len(), 2, "{json}");
    assert!(jobs.iter().all(|j| j["expired"] == true), "{json}");

    // `ci wait` has nothing to follow: one line, and the job's own exit code.
    for all in [false, true] {
        let mut args = vec!["wait", passed.as_str()];
        if all {
            args.push("--all");
        }
        let wait = server.ci(&dir).args(&args).run();
        wait.expect_code(0)
            .expect_stderr(&format!("ci: job {passed} passed; {EXPIRED}\n"));
        assert_eq!(wait.stdout(), "", "{wait}");
        assert_eq!(wait.stderr().lines().count(), 1, "{wait}");
    }
    server
        .ci(&dir)
        .args(["wait", &failed])
        .run()
        .expect_code(1)
        .expect_stderr(&format!("ci: job {failed} failed (exit 1); {EXPIRED}\n"));
}

/// Mode bits of `path`, without the file type.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `dir`, itself included.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            let children: Vec<_> = std::fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// db/ and logs/ are 0700 with nothing inside open to others, admin.key is 0600; what
/// jobs read stays reachable.
fn check_private(data: &Path) {
    for dir in ["db", "logs"] {
        let dir = data.join(dir);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for path in tree(&dir) {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
        }
    }
    let logs = tree(&data.join("logs"));
    assert!(logs.len() > 1, "no log to check");
    for log in &logs[1..] {
        assert_eq!(mode(log), 0o600, "{}", log.display());
    }
    assert_eq!(mode(&data.join("admin.key")), 0o600);
    for reachable in ["", "jobs", "cache"] {
        let dir = data.join(reachable);
        assert_eq!(
            mode(&dir) & 0o001,
            0o001,
            "{} is not searchable",
            dir.display()
        );
    }
}

#[test]
fn the_database_logs_and_admin_key_are_private_also_in_an_older_data_dir() {
    let mut server = Server::start(ServerOptions::default());
    let dir = fixture("dummy_project");
    // A job of its own: it runs with the private directories, and leaves a log.
    let id = server.submit_async(&dir);
    server.wait_job(&id, "the job to end", |j| j["status"] == "passed");
    check_private(&server.data_dir);

    // What an older version left: everything readable by everyone.
    server.stop_with(nix::sys::signal::Signal::SIGTERM);
    for dir in ["db", "logs"] {
        for path in tree(&server.data_dir.join(dir)) {
            let open = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
        }
    }
    let key = server.data_dir.join("admin.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(mode(&server.data_dir.join(format!("logs/{id}.log"))), 0o644);
    server.restart();
    check_private(&server.data_dir);
    // Its data survived the change.
    assert_eq!(server.job(&id)["status"], "passed");
    assert!(String::from_utf8_lossy(&server.stored_log(&id)).contains("2 passed"));
}
