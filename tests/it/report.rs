//! Results at a glance, with real pytest: the summary `ci` prints at the end with the failed
//! tests and their messages, the report over the API, `ci list`'s tests column, reruns of
//! the failed tests, pytest's exit codes that are not failures, and hostile reports.

use std::time::Duration;

use ci_e2e::{fixture, http, project, shared_server, Run, Server};

/// The lines `ci` printed after the log: from `==> tests:` to the end.
fn summary(run: &Run) -> Vec<String> {
    let out = run.stdout();
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("==> tests: "))
        .unwrap_or_else(|| panic!("no summary\n{run}"));
    lines[start..].to_vec()
}

/// The `==> tests:` line without its time (`in 0.02s`), which varies.
fn counts_of(line: &str) -> String {
    let (counts, rest) = line.split_once(" in ").expect("a time");
    let (_, job) = rest.split_once(' ').expect("the job");
    format!("{counts} {job}")
}

fn api_json(server: &Server, path: &str) -> (u16, serde_json::Value) {
    api_json_as(server, &server.admin_key, path)
}

fn api_json_as(server: &Server, key: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http("GET", &server.addr, path, Some(key), b"").unwrap();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, value)
}

#[test]
fn the_failing_project_ends_with_its_failed_tests_and_reruns_them() {
    let server = shared_server();
    let run = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(1);
    let id = run.job_id();
    let shown = summary(&run);
    assert_eq!(
        counts_of(&shown[0]),
        format!("==> tests: 1 passed, 2 failed · job {id}"),
        "{run}"
    );
    assert_eq!(
        shown[1..],
        [
            "FAILED tests/test_math_ops.py::test_divide - assert 3.5 == 3".to_string(),
            "FAILED tests/test_math_ops.py::test_divide_by_zero - ZeroDivisionError: division by zero"
                .to_string(),
            format!("rerun the failed: ci submit test --failed-from {id}"),
            shown[4].clone(),
        ],
        "{run}"
    );
    assert!(shown[4].starts_with("==> result: failed ("), "{run}");

    // The same over the API: the counts on the job, the report, pytest's own file.
    let job = server.job(&id);
    assert_eq!(job["tests"]["passed"], 1);
    assert_eq!(job["tests"]["failed"], 2);
    let (status, report) = api_json(server, &format!("/v1/jobs/{id}/report"));
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["failed"][0]["node_id"],
        "tests/test_math_ops.py::test_divide"
    );
    assert_eq!(report["failed"][0]["file"], "tests/test_math_ops.py");
    assert_eq!(report["failed"][0]["line"], 11);
    let (status, junit) = http(
        "GET",
        &server.addr,
        &format!("/v1/jobs/{id}/junit.xml"),
        Some(&server.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&junit).contains("<testsuite"));

    // `ci list` shows the counts; --json carries them.
    let list = server.ci_as(&server.admin_key, &["list"]);
    let row = list
        .stdout()
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("job not listed\n{list}"));
    assert!(row.contains(" 1/3 "), "{row}");
    let json = server.ci_as(&server.admin_key, &["list", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&json.stdout()).unwrap();
    let listed = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(listed["tests"]["failed"], 2);

    // Only the two failed tests run again.
    let rerun = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test", "--failed-from", &id])
        .run();
    rerun.expect_code(1).expect_stdout("collected 2 items");
    let again = rerun.job_id();
    assert_eq!(
        counts_of(&summary(&rerun)[0]),
        format!("==> tests: 2 failed · job {again}")
    );
}

#[test]
fn a_passing_job_has_nothing_to_rerun() {
    let server = shared_server();
    // A user of its own: other tests submit as the admin meanwhile.
    let (_, key) = server.new_user("rerunner", false);
    let run = server
        .ci(&fixture("dummy_project"))
        .env("CI_API_KEY", &key)
        .args(["submit", "test"])
        .run();
    run.expect_code(0);
    let id = run.job_id();
    let shown = summary(&run);
    assert_eq!(shown.len(), 2, "{run}");
    assert_eq!(
        counts_of(&shown[0]),
        format!("==> tests: 2 passed · job {id}")
    );

    let jobs_before = api_json_as(server, &key, "/v1/jobs")
        .1
        .as_array()
        .unwrap()
        .len();
    let rerun = server
        .ci(&fixture("dummy_project"))
        .env("CI_API_KEY", &key)
        .args(["rerun", &id, "--failed"])
        .run();
    rerun.expect_code(0).expect_stderr("nothing to rerun");
    let jobs_after = api_json_as(server, &key, "/v1/jobs")
        .1
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs_before, jobs_after, "no job was submitted\n{rerun}");
    // The server refuses it too, before the upload.
    let (status, body) = http(
        "POST",
        &server.addr,
        &format!("/v1/jobs?failed_from={id}"),
        Some(&key),
        b"not read",
    )
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no failed or errored tests to rerun"));
}

#[test]
fn twenty_failures_are_shown_and_the_rest_counted() {
    let server = shared_server();
    let tests = "import pytest\n\n\
                 @pytest.mark.parametrize('n', range(300))\n\
                 def test_number(n):\n    assert n % 12 != 5, f'{n} is bad'\n";
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_many.py", tests),
    ]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(1);
    let id = run.job_id();
    let shown = summary(&run);
    assert_eq!(
        counts_of(&shown[0]),
        format!("==> tests: 275 passed, 25 failed · job {id}")
    );
    let failed: Vec<&String> = shown.iter().filter(|l| l.starts_with("FAILED ")).collect();
    assert_eq!(failed.len(), 20, "{run}");
    assert_eq!(
        failed[0],
        "FAILED tests/test_many.py::test_number[5] - AssertionError: 5 is bad"
    );
    assert!(shown.contains(&"… and 5 more".to_string()), "{run}");

    let rerun = server.ci(dir.path()).args(["rerun", &id, "--failed"]).run();
    rerun.expect_code(1).expect_stdout("collected 25 items");
    assert!(summary(&rerun)[0].starts_with("==> tests: 25 failed in "));
}

#[test]
fn pytest_exit_codes_that_are_not_failures_say_why() {
    let server = shared_server();
    let empty = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("src/app.py", "X = 1\n"),
    ]);
    let run = server.ci(empty.path()).args(["submit", "test"]).run();
    run.expect_code(1).expect_stdout(
        "==> result: error: no tests collected (exit code 5): pytest looked in /workspace and \
         found no test_*.py or *_test.py files, or every test was deselected",
    );

    let typo = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test", "--", "-k", "add and"])
        .run();
    typo.expect_code(1)
        .expect_stdout("==> result: error: pytest was called wrongly (usage error, exit code 4): Wrong expression passed to '-k': add and");
}

/// A conftest that overwrites pytest's report after pytest wrote it, with `body`.
fn forging(body_py: &str) -> tempfile::TempDir {
    let conftest = format!(
        "def pytest_unconfigure(config):\n    with open('/ci-report/junit.xml', 'w') as f:\n        f.write({body_py})\n"
    );
    project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("conftest.py", &conftest),
        ("tests/test_ok.py", "def test_ok():\n    pass\n"),
    ])
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_hostile_report_gives_a_job_without_a_report() {
    let server = shared_server();
    let before = rss_kib(server.pid());
    let laughs = r#"'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa">' + ''.join(f'<!ENTITY a{i} "' + f'&a{i - 1 if i else ""};' * 10 + '">' for i in range(9)) + ']><testsuite tests="1">&a8;</testsuite>'"#;
    let nested =
        r#"'<testsuite tests="1">' + '<a>' * 1_000_000 + '</a>' * 1_000_000 + '</testsuite>'"#;
    for body in [laughs, nested] {
        let dir = forging(body);
        let run = server.ci(dir.path()).args(["submit", "test"]).run();
        run.expect_code(1)
            .expect_stdout("no test report: the test report is not valid JUnit XML")
            .expect_stdout(
                "==> result: error: the test process exited 0 but its report is unusable",
            );
        assert!(!run.stdout().contains("==> tests: "), "{run}");
        let id = run.job_id();
        assert!(server.job(&id)["tests"].is_null());
        let (status, _) = api_json(server, &format!("/v1/jobs/{id}/report"));
        assert_eq!(status, 404);
        let rerun = server
            .ci(dir.path())
            .args(["submit", "test", "--failed-from", &id])
            .run();
        rerun.expect_code(2).expect_stderr("has no test report");
    }
    let (status, body) = http("GET", &server.addr, "/healthz", None, b"").unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    // Reading them cost the server no more than a bounded buffer.
    std::thread::sleep(Duration::from_millis(100));
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
}
