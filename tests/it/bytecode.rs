//! Bytecode: compiled once and reused, never stale. An unchanged suite's second run finds
//! pytest's rewritten test modules from the first; an edit that keeps a file's size and mtime
//! (what Python's own check trusts) still runs the new code; an image that ships no `*.pyc`
//! (as the real python:*-slim images) gets its standard library compiled once, not per job.

use ci_e2e::{project, shared_server, test_image, Server, ServerOptions};

/// The root conftest says, before any test module is imported, how many rewritten test
/// modules the bytecode cache already holds.
const CONFTEST: &str = r#"import glob, sys

def pytest_report_header(config):
    cached = glob.glob("/ci-pycache/workspace/tests/*-pytest-*.pyc")
    return [f"bytecode prefix: {sys.pycache_prefix}", f"rewritten test modules cached: {len(cached)}"]
"#;

#[test]
fn an_unchanged_suite_reuses_its_bytecode_and_an_edit_is_never_stale() {
    let server = shared_server();
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("conftest.py", CONFTEST),
        (
            "tests/test_value.py",
            "def test_value():\n    assert 1 == 1\n",
        ),
    ]);
    let first = server.ci(dir.path()).args(["submit", "test"]).run();
    first.expect_code(0);
    first.expect_stdout("bytecode prefix: /ci-pycache");
    first.expect_stdout("rewritten test modules cached: 0");

    let second = server.ci(dir.path()).args(["submit", "test"]).run();
    second.expect_code(0);
    second.expect_stdout("rewritten test modules cached: 1");

    // The same size and the same mtime, other code: Python and pytest would trust their
    // bytecode for it. The run must test the new code.
    let file = dir.path().join("tests/test_value.py");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "def test_value():\n    assert 1 == 2\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let edited = server.ci(dir.path()).args(["submit", "test"]).run();
    edited.expect_code(1);
    edited.expect_stdout("assert 1 == 2");
    edited.expect_stdout("rewritten test modules cached: 0");
}

#[test]
fn an_image_without_bytecode_gets_its_standard_library_compiled_once() {
    let image = format!("{}-nopyc", test_image());
    let server = Server::start(ServerOptions {
        image: Some(image),
        ..ServerOptions::default()
    });
    let tests = r#"import importlib.util, os, sys

def test_the_image_has_no_pyc_and_the_cache_has_them():
    stdlib = os.path.dirname(os.__file__)
    assert not os.path.exists(os.path.join(stdlib, "__pycache__")), "not the stripped image"
    # A module pytest does not import: compiled with the image, before any job.
    cached = importlib.util.cache_from_source(os.path.join(stdlib, "calendar.py"))
    assert cached.startswith(sys.pycache_prefix)
    assert os.path.exists(cached), cached
"#;
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_stdlib.py", tests),
    ]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0);
}
