//! Fair queueing: one user's backlog neither grows without bound nor delays another user's
//! job. A user past `--max-queued-per-user` is refused with 429 and `Retry-After` before the
//! upload is read, and the next free slot goes to the user who has waited, not to the backlog.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ci_e2e::{http, poll, project, Server, ServerOptions};

fn unique_email(who: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{who}.{}.{}@example.com",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A new normal user and their key, made through `ci admin` as a real admin would.
fn new_user(server: &Server, who: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let email = unique_email(who);
    server
        .ci(scratch.path())
        .args(["admin", "user", "create", "--name", who, "--email", &email])
        .run()
        .expect_code(0);
    let run = server
        .ci(scratch.path())
        .args([
            "admin", "key", "create", "--email", &email, "--name", "laptop",
        ])
        .run();
    run.expect_code(0);
    run.stdout().trim().to_string()
}

fn submit_async(server: &Server, key: &str, dir: &std::path::Path) -> String {
    server
        .ci(dir)
        .env("CI_API_KEY", key)
        .args(["submit", "test", "--async"])
        .run()
        .expect_code(0)
        .stdout()
        .trim()
        .to_string()
}

/// The job as the holder of `key` sees it.
fn job_as(server: &Server, key: &str, id: &str) -> serde_json::Value {
    let path = format!("/v1/jobs/{id}");
    let (status, body) = http("GET", &server.addr, &path, Some(key), b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Status line and headers of a raw submission, for what `ci` does not show (Retry-After).
fn raw_submit(server: &Server, key: &str) -> String {
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = b"not even read";
    write!(
        s,
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.to_ascii_lowercase()
}

#[test]
fn a_full_queue_answers_429_and_another_users_job_goes_next() {
    let server = Server::start(ServerOptions {
        extra_args: ["--max-jobs", "1", "--max-queued-per-user", "2"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let busy = server.admin_key.clone();
    let other = new_user(&server, "other");
    let slow = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_slow.py",
            "import time\n\n\ndef test_slow():\n    time.sleep(300)\n",
        ),
    ]);
    let quick = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_quick.py", "def test_quick():\n    pass\n"),
    ]);

    // The busy user fills the only slot and their queue.
    let running = submit_async(&server, &busy, slow.path());
    poll(Duration::from_secs(120), "the first job to run", || {
        (server.job(&running)["status"] == "running").then_some(())
    });
    let backlog: Vec<String> = (0..2)
        .map(|_| submit_async(&server, &busy, quick.path()))
        .collect();

    // One more is refused at once, before the upload is read, and says how to go on.
    let refused = server
        .ci(quick.path())
        .env("CI_API_KEY", &busy)
        .args(["submit", "test", "--async"])
        .run();
    assert_ne!(refused.code(), 0, "{refused}");
    refused.expect_stderr("--max-queued-per-user");
    let raw = raw_submit(&server, &busy);
    assert!(raw.starts_with("http/1.1 429"), "{raw}");
    assert!(raw.contains("retry-after: 30"), "{raw}");
    assert!(raw.contains("{\"error\":"), "{raw}");

    // Another user's job, submitted last, is next in line and starts before the backlog.
    let theirs = submit_async(&server, &other, quick.path());
    let view = {
        let scratch = tempfile::tempdir().unwrap();
        let run = server
            .ci(scratch.path())
            .env("CI_API_KEY", &other)
            .args(["list", "--json"])
            .run();
        run.expect_code(0);
        let jobs: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
        jobs[0].clone()
    };
    assert_eq!(view["id"], theirs.as_str());
    assert_eq!(view["queue_position"], 1, "{view}");
    // The slot frees up.
    server
        .ci(slow.path())
        .env("CI_API_KEY", &busy)
        .args(["cancel", &running])
        .run()
        .expect_code(0);
    poll(
        Duration::from_secs(120),
        "the other user's job to start",
        || (job_as(&server, &other, &theirs)["status"] != "queued").then_some(()),
    );
    for id in &backlog {
        assert_eq!(
            server.job(id)["status"],
            "queued",
            "the backlog went before the other user's job"
        );
    }
    let owners = backlog
        .iter()
        .map(|id| (id, &busy))
        .chain([(&theirs, &other)]);
    for (id, key) in owners {
        let job = poll(Duration::from_secs(300), "the jobs to end", || {
            let job = job_as(&server, key, id);
            (job["status"] != "queued" && job["status"] != "running").then_some(job)
        });
        assert_eq!(job["status"], "passed", "{job}");
    }
}
