//! Several `ci-server` nodes on one PostgreSQL (started by the test from Debian's packages,
//! on loopback): two api-only nodes, two worker-only nodes, short lease timings. Jobs are
//! submitted to one api node and followed on the other; workers are killed, stopped past
//! their lease, and the database is stopped mid-job.

use std::time::{Duration, Instant};

use ci_e2e::postgres::TestPostgres;
use ci_e2e::{http, poll, project, Server, ServerOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lease timings short enough for a test: a silent worker's job is queued again within
/// about 5 s.
const HEARTBEAT: &str = "1s";
const LEASE: &str = "4s";

struct Cluster {
    apis: Vec<Server>,
    workers: Vec<Server>,
}

fn node(db: &str, name: &str, role: &str, extra: &[&str]) -> Server {
    let mut args: Vec<String> = [
        "--database-url",
        db,
        "--role",
        role,
        "--node-name",
        name,
        "--heartbeat-interval",
        HEARTBEAT,
        "--lease-timeout",
        LEASE,
        "--max-jobs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(ServerOptions {
        extra_args: args,
        ..ServerOptions::default()
    })
}

impl Cluster {
    /// Two api nodes and two workers on `db`; the first api node creates the admin.
    fn start(db: &str) -> Cluster {
        let first = node(db, "api-1", "api", &[]);
        let key = first.admin_key.clone();
        assert!(!key.is_empty(), "the first node wrote no admin key");
        let mut second = node(db, "api-2", "api", &[]);
        second.admin_key = key.clone();
        let workers = ["worker-1", "worker-2"]
            .iter()
            .map(|name| {
                let mut w = node(db, name, "worker", &[]);
                w.admin_key = key.clone();
                w
            })
            .collect();
        Cluster {
            apis: vec![first, second],
            workers,
        }
    }

    /// Which worker's log says it claimed `id`, by index.
    fn claimed_by(&self, id: &str) -> Vec<usize> {
        let needle = format!("job={id}");
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w.log()
                    .lines()
                    .any(|l| l.contains("job claimed") && l.contains(&needle))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Tests that print a line a second for `secs` seconds, then pass.
fn ticking_project(secs: u32) -> tempfile::TempDir {
    let tests: String = (0..secs)
        .map(|i| format!("def test_tick_{i:02}():\n    time.sleep(1)\n\n"))
        .collect();
    project(&[("tests/test_ticks.py", &format!("import time\n\n{tests}"))])
}

/// The whole log of `id` from `api`, read from `offset` to its end.
fn log_from(api: &Server, id: &str, offset: usize) -> Vec<u8> {
    let (status, body) = http(
        "GET",
        &api.addr,
        &format!("/v1/jobs/{id}/log?offset={offset}"),
        Some(&api.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

fn wait_terminal(api: &Server, id: &str) -> serde_json::Value {
    api.wait_job(id, "the job to end", |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
}

/// Jobs submitted to one api node run on both workers and are followed, byte for byte, on
/// the other api node.
#[test]
fn jobs_spread_over_both_workers_and_any_api_node_serves_them() {
    let pg = TestPostgres::start();
    let db = pg.fresh_database();
    let cluster = Cluster::start(&db);
    let (api1, api2) = (&cluster.apis[0], &cluster.apis[1]);
    let project = ticking_project(3);
    let ids: Vec<String> = (0..4).map(|_| api1.submit_async(project.path())).collect();
    for id in &ids {
        // `ci wait` on the other api node: what it prints is the stored log.
        let run = api2.ci(project.path()).args(["wait", "--all", id]).run();
        run.expect_code(0);
        let stored = String::from_utf8(log_from(api1, id, 0)).unwrap();
        assert!(
            run.stdout().starts_with(&stored),
            "ci wait printed something else than the stored log:\n{run}\nstored:\n{stored}"
        );
        assert_eq!(api2.job(id)["status"], "passed");
        // The report was kept where any api node reads it.
        assert_eq!(api2.report(id)["counts"]["passed"], 3, "{id}");
    }
    let mut used = std::collections::BTreeSet::new();
    for id in &ids {
        let by = cluster.claimed_by(id);
        assert_eq!(by.len(), 1, "job {id} claimed by {by:?}");
        used.insert(by[0]);
    }
    assert_eq!(used.len(), 2, "every job ran on one worker: {used:?}");
    // The api nodes took the workers' Pythons: they have no image of their own.
    let pythons = api2.get_json("/v1/pythons");
    assert_eq!(pythons[0]["version"], "3.11.2", "{pythons}");
    // `doctor` names the database and the four nodes it has seen.
    let scratch = tempfile::tempdir().unwrap();
    let doctor = std::process::Command::new(ci_e2e::bin("ci-server"))
        .args(["doctor", "--database-url", &db, "--data-dir"])
        .arg(scratch.path())
        .args(["--listen", &format!("127.0.0.1:{}", ci_e2e::free_port())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("PostgreSQL 15"), "{text}");
    for name in ["api-1", "api-2", "worker-1", "worker-2"] {
        assert!(
            text.contains(&format!("node {name}")),
            "{name} missing:\n{text}"
        );
    }
    assert!(
        text.contains("api,worker") || text.contains("worker ("),
        "{text}"
    );
    // A worker-only node serves no API.
    let (status, _) = http(
        "GET",
        &cluster.workers[0].addr,
        "/v1/jobs",
        Some(&api1.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 404);
}

/// A worker killed with SIGKILL mid-job: its lease expires, the job runs again on the other
/// worker, the log says so, and a client following it prints exactly the stored log.
#[test]
fn a_job_of_a_killed_worker_runs_again_on_the_other() {
    let pg = TestPostgres::start();
    let mut cluster = Cluster::start(&pg.fresh_database());
    let project = ticking_project(8);
    let id = cluster.apis[0].submit_async(project.path());
    // Followed from the start on api-2, through the takeover.
    let follower = {
        let ci = cluster.apis[1]
            .ci(project.path())
            .args(["wait", "--all", &id]);
        std::thread::spawn(move || ci.run())
    };
    cluster.apis[0].wait_job(&id, "the job to run its tests", |j| j["phase"] == "testing");
    let victim = poll(Duration::from_secs(30), "a worker to claim it", || {
        cluster.claimed_by(&id).first().copied()
    });
    let killed_at = Instant::now();
    cluster.workers[victim].stop_with(Signal::SIGKILL);
    let job = wait_terminal(&cluster.apis[1], &id);
    assert_eq!(job["status"], "passed", "{job}");
    eprintln!(
        "kill -9 to the job's end on the other worker: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        cluster.claimed_by(&id).len(),
        2,
        "claimed once by each worker"
    );
    let stored = String::from_utf8(log_from(&cluster.apis[0], &id, 0)).unwrap();
    let lost = format!("==> worker worker-{} lost; attempt 2", victim + 1);
    assert!(stored.contains(&lost), "no takeover line in:\n{stored}");
    let run = follower.join().unwrap();
    run.expect_code(0);
    assert!(
        run.stdout().starts_with(&stored),
        "the follower printed something else than the stored log:\n{run}\nstored:\n{stored}"
    );
    // The killed worker comes back and removes what it left.
    cluster.workers[victim].restart();
}

/// A worker stopped with SIGTERM (a rolling restart) gives its running job back after its
/// grace period: the other worker runs it, and nothing is lost.
#[test]
fn a_worker_that_shuts_down_hands_its_job_back() {
    let pg = TestPostgres::start();
    let db = pg.fresh_database();
    let api = node(&db, "api-1", "api", &[]);
    let mut workers: Vec<Server> = ["worker-1", "worker-2"]
        .iter()
        .map(|name| {
            let mut w = node(&db, name, "worker", &["--shutdown-grace", "1s"]);
            w.admin_key = api.admin_key.clone();
            w
        })
        .collect();
    let project = ticking_project(8);
    let id = api.submit_async(project.path());
    api.wait_job(&id, "the job to run its tests", |j| j["phase"] == "testing");
    let claimed = |workers: &[Server]| -> Vec<usize> {
        let needle = format!("job={id}");
        (0..workers.len())
            .filter(|&i| {
                workers[i]
                    .log()
                    .lines()
                    .any(|l| l.contains("job claimed") && l.contains(&needle))
            })
            .collect()
    };
    let first = poll(Duration::from_secs(30), "a worker to claim it", || {
        claimed(&workers).first().copied()
    });
    let status = workers[first].stop_with(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    let job = wait_terminal(&api, &id);
    assert_eq!(job["status"], "passed", "{job}");
    assert_eq!(claimed(&workers).len(), 2, "run again by the other worker");
    let stored = String::from_utf8(log_from(&api, &id, 0)).unwrap();
    let line = format!(
        "==> worker worker-{} shut down: the job goes back to the queue",
        first + 1
    );
    assert!(stored.contains(&line), "{stored}");
    assert_eq!(stored.matches("8 passed").count(), 1, "{stored}");
    workers.clear();
}

/// A worker stopped (SIGSTOP) past its lease: its job runs again elsewhere; once it wakes
/// up, its late writes are refused and its container is killed.
#[test]
fn a_worker_that_wakes_up_after_its_lease_is_fenced() {
    let pg = TestPostgres::start();
    let cluster = Cluster::start(&pg.fresh_database());
    let project = ticking_project(8);
    let id = cluster.apis[0].submit_async(project.path());
    cluster.apis[0].wait_job(&id, "the job to run its tests", |j| j["phase"] == "testing");
    let victim = poll(Duration::from_secs(30), "a worker to claim it", || {
        cluster.claimed_by(&id).first().copied()
    });
    let pid = Pid::from_raw(cluster.workers[victim].pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    poll(
        Duration::from_secs(60),
        "the other worker to take it",
        || (cluster.claimed_by(&id).len() == 2).then_some(()),
    );
    kill(pid, Signal::SIGCONT).unwrap();
    let job = wait_terminal(&cluster.apis[0], &id);
    assert_eq!(job["status"], "passed", "{job}");
    poll(
        Duration::from_secs(30),
        "the woken worker to stop its copy of the job",
        || {
            let log = cluster.workers[victim].log();
            log.contains("lease of the job was taken away")
                .then_some(())
        },
    );
    let stored = String::from_utf8(log_from(&cluster.apis[1], &id, 0)).unwrap();
    assert_eq!(
        stored.matches("8 passed").count(),
        1,
        "only the second attempt's summary is stored:\n{stored}"
    );
}

/// A follower that switches api nodes mid-stream, by byte offset, gets the stored log
/// exactly: nothing lost, nothing repeated.
#[test]
fn a_follower_switches_api_nodes_mid_stream() {
    let pg = TestPostgres::start();
    let cluster = Cluster::start(&pg.fresh_database());
    let project = ticking_project(6);
    let id = cluster.apis[0].submit_async(project.path());
    let mut got: Vec<u8> = Vec::new();
    let mut turn = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let api = &cluster.apis[turn % 2];
        let more = log_from_for(api, &id, got.len(), Duration::from_millis(1500));
        got.extend_from_slice(&more);
        turn += 1;
        let job = api.job(&id);
        let ended = !matches!(job["status"].as_str(), Some("queued" | "running"));
        if ended && log_from(api, &id, got.len()).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not end");
    }
    assert!(turn >= 3, "the log was read in {turn} parts only");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&log_from(&cluster.apis[1], &id, 0))
    );
}

/// Reads the log of `id` from `offset` for at most `for_`, then hangs up: what came.
fn log_from_for(api: &Server, id: &str, offset: usize, for_: Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&api.addr).unwrap();
    write!(
        stream,
        "GET /v1/jobs/{id}/log?offset={offset} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        api.admin_key
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + for_;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    decode_chunked_prefix(&raw)
}

/// The body bytes of a chunked HTTP/1.1 response cut anywhere: only whole chunks count (a
/// client that hangs up mid-chunk resumes from what it counted).
fn decode_chunked_prefix(raw: &[u8]) -> Vec<u8> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut rest = &raw[head_end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return rest.to_vec();
    }
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&rest[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 || rest.len() < line_end + 2 + size + 2 {
            return body;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

/// PostgreSQL stopped for 10 s while a job runs (`pg_ctl stop -m immediate`, then started
/// again): the job still ends, its log is whole, and a submission during the outage is
/// answered 503 with Retry-After, never 201.
#[test]
fn the_database_stopped_mid_job_loses_nothing() {
    let pg = TestPostgres::start();
    let cluster = Cluster::start(&pg.fresh_database());
    let project = ticking_project(15);
    let id = cluster.apis[0].submit_async(project.path());
    cluster.apis[0].wait_job(&id, "the job to run its tests", |j| j["phase"] == "testing");
    pg.stop_immediate();
    // A submission during the outage is answered 503 (never 201 for an upload not stored);
    // `ci` tries again and gets in once the database is back.
    let during = {
        let ci = cluster.apis[1]
            .ci(project.path())
            .args(["submit", "test", "--async"]);
        std::thread::spawn(move || ci.run())
    };
    let (status, body) = http(
        "GET",
        &cluster.apis[0].addr,
        "/v1/jobs",
        Some(&cluster.apis[0].admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    std::thread::sleep(Duration::from_secs(10));
    pg.start_again();
    let later = during.join().unwrap();
    later.expect_code(0);
    assert!(
        later.stderr().contains("database is unavailable"),
        "the submission did not meet the outage:\n{later}"
    );
    let job = wait_terminal(&cluster.apis[1], &id);
    assert_eq!(job["status"], "passed", "{job}");
    let stored = String::from_utf8(log_from(&cluster.apis[0], &id, 0)).unwrap();
    for i in 0..15 {
        assert!(
            stored.contains(&format!("test_tick_{i:02} PASSED")),
            "test {i} is missing from the log:\n{stored}"
        );
    }
    // The job submitted during the outage runs too.
    let second = later.stdout().trim().to_string();
    let job = wait_terminal(&cluster.apis[0], &second);
    assert_eq!(job["status"], "passed", "{job}");
}
