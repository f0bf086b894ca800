//! Artifacts: what a job's tests write to `/artifacts` is kept with the job and fetched with
//! `ci artifacts`; links are left out; past `--max-artifacts-size` the job says so and keeps
//! what fit.

use ci_e2e::{fixture, project, shared_server};

#[test]
fn what_the_tests_write_to_artifacts_is_fetched_with_ci_artifacts() {
    let server = shared_server();
    let tests = r#"import os, pathlib

def test_writes_coverage():
    out = pathlib.Path(os.environ["CI_ARTIFACTS"])
    (out / "coverage.xml").write_text("<coverage line-rate='1'/>")
    (out / "htmlcov").mkdir()
    (out / "htmlcov" / "index.html").write_text("<html>100%</html>")
    os.symlink("/etc/passwd", out / "passwd")
"#;
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_cov.py", tests),
    ]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0);
    let id = run.job_id();
    run.expect_stdout(&format!(
        "==> kept 2 artifact files (42 bytes): ci artifacts {id}; 1 entry left out"
    ));

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got");
    let fetched = server.ci_as(
        &server.admin_key,
        &["artifacts", &id, "-o", target.to_str().unwrap()],
    );
    fetched.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(target.join("coverage.xml")).unwrap(),
        "<coverage line-rate='1'/>"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("htmlcov/index.html")).unwrap(),
        "<html>100%</html>"
    );
    assert!(
        std::fs::symlink_metadata(target.join("passwd")).is_err(),
        "a link was kept"
    );
    // A directory with something in it is not written into.
    let again = server.ci_as(
        &server.admin_key,
        &["artifacts", &id, "-o", target.to_str().unwrap()],
    );
    again.expect_code(2).expect_stderr("not empty");

    // A job whose tests wrote nothing kept nothing.
    let plain = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    plain.expect_code(0);
    let none = server.ci_as(&server.admin_key, &["artifacts", &plain.job_id()]);
    none.expect_code(2).expect_stderr("kept no artifacts");
}

#[test]
fn past_the_cap_the_job_says_so_and_keeps_what_fit() {
    let server = shared_server();
    let tests = r#"import os

def test_fills():
    block = b"x" * (1 << 20)
    for i in range(110):
        with open(os.path.join(os.environ["CI_ARTIFACTS"], f"f{i:03}"), "wb") as f:
            f.write(block)
"#;
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_fill.py", tests),
    ]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(1).expect_stdout(
        "the tests wrote more than 100 MiB into /artifacts (--max-artifacts-size); what fit is kept",
    );
    let id = run.job_id();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got");
    server
        .ci_as(
            &server.admin_key,
            &["artifacts", &id, "-o", target.to_str().unwrap()],
        )
        .expect_code(0);
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The first 100 MiB in name order are whole; a file the stop caught before its first
    // byte (empty) fits too, nothing else does.
    let expected: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
    assert_eq!(names[..100], expected[..], "{names:?}");
    for name in &names {
        let len = std::fs::metadata(target.join(name)).unwrap().len();
        let whole = expected.contains(name);
        assert_eq!(len, if whole { 1 << 20 } else { 0 }, "{name}");
    }
}
