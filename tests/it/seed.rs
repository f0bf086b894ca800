//! The seed's three projects, through the whole path.

use ci_e2e::{fixture, shared_server};

#[test]
fn dummy_project_passes() {
    let server = shared_server();
    let run = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0)
        .expect_stdout("test_add")
        .expect_stdout("test_subtract")
        .expect_stdout("passed");
    assert!(!run.stdout().contains("failed"), "{run}");
    run.job_id();
}

#[test]
fn failing_project_fails() {
    let server = shared_server();
    let run = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(1)
        .expect_stdout("test_multiply")
        .expect_stdout("test_divide")
        .expect_stdout("failed");
    // The passing test is reported too, and the zero division shows.
    run.expect_stdout("ZeroDivisionError");
}

#[test]
fn invalid_project_errors() {
    let server = shared_server();
    let run = server
        .ci(&fixture("invalid_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(1);
    let out = run.stdout();
    assert!(
        out.contains("SyntaxError") && out.contains("error"),
        "{run}"
    );
}

#[test]
fn pytest_arguments_pass_through() {
    let server = shared_server();
    let run = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test", "--", "-k", "add or nothing", "-x"])
        .run();
    run.expect_code(0)
        .expect_stdout("running tests: python -m pytest -v -k 'add or nothing' -x")
        .expect_stdout("test_add PASSED")
        .expect_stdout("1 deselected");
    assert!(!run.stdout().contains("test_subtract PASSED"), "{run}");
    // A bad argument is pytest's to refuse: a usage error, shown as such.
    let bad = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test", "--", "--no-such-flag"])
        .run();
    bad.expect_code(1)
        .expect_stdout("unrecognized arguments: --no-such-flag");
}
