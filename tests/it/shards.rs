//! Shards: `ci submit test --shards N` splits the suite across N test containers of one job
//! by test file; every test runs exactly once, the other shards' output follows the first's
//! under a header, and the report reads like one run.

use ci_e2e::{project, Server, ServerOptions};

fn server(max_jobs: &str) -> Server {
    Server::start(ServerOptions {
        extra_args: vec!["--max-jobs".into(), max_jobs.into()],
        ..ServerOptions::default()
    })
}

/// Four test files of three tests each; `bad` makes one test of the last file fail.
fn suite(bad: bool) -> tempfile::TempDir {
    let file = |name: &str, fail: bool| {
        let last = if fail { "assert 1 == 2" } else { "assert 3" };
        (
            format!("tests/test_{name}.py"),
            format!(
                "def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n\ndef test_three():\n    {last}\n"
            ),
        )
    };
    let files = [
        file("a", false),
        file("b", false),
        file("c", false),
        file("d", bad),
    ];
    let mut all: Vec<(&str, &str)> = vec![("requirements.txt", "pytest==7.4.3\n")];
    all.extend(files.iter().map(|(p, b)| (p.as_str(), b.as_str())));
    project(&all)
}

#[test]
fn a_suite_split_in_two_runs_every_test_once_and_reads_as_one_run() {
    let server = server("4");
    let dir = suite(false);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--shards", "2"])
        .run();
    run.expect_code(0)
        .expect_stdout("==> shards: 2 test containers, by test file")
        .expect_stdout("==> shard 2/2\n")
        .expect_stdout("==> tests: 12 passed");
    let out = run.stdout();
    for file in ["a", "b", "c", "d"] {
        for test in ["one", "two", "three"] {
            let line = format!("tests/test_{file}.py::test_{test} PASSED");
            assert_eq!(out.matches(&line).count(), 1, "{line} in\n{out}");
        }
    }
    // Each shard kept its share: two files each, the others deselected.
    let kept = "collected 12 items / 6 deselected / 6 selected";
    assert_eq!(out.matches(kept).count(), 2, "{out}");

    // A failure in either shard fails the job, and the report lists it.
    let dir = suite(true);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--shards", "2"])
        .run();
    run.expect_code(1)
        .expect_stdout("tests/test_d.py::test_three FAILED")
        .expect_stdout("==> tests: 11 passed, 1 failed")
        .expect_stdout("==> result: failed");
    let report = server.report(&run.job_id());
    assert_eq!(
        report["failed"][0]["node_id"],
        "tests/test_d.py::test_three"
    );

    // A suite that collects differently in each shard cannot be split: never a pass for
    // tests that no shard ran.
    let shifty = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_shifty.py",
            "import os, pytest\n\nN = 2 * int(os.environ['CI_SHARD'].split('/')[0])\n\n@pytest.mark.parametrize('i', range(N))\ndef test_n(i):\n    assert i >= 0\n",
        ),
        ("tests/test_plain.py", "def test_plain():\n    assert True\n"),
    ]);
    let run = server
        .ci(shifty.path())
        .args(["submit", "test", "--shards", "2"])
        .run();
    run.expect_code(1)
        .expect_stdout("==> result: error: the shards did not split the suite exactly");
}

#[test]
fn shards_never_take_more_containers_than_free_job_slots() {
    let server = server("1");
    let dir = suite(false);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--shards", "3"])
        .run();
    run.expect_code(0)
        .expect_stdout("==> shards: 3 asked, 1 job slot free: 1 test container")
        .expect_stdout("==> tests: 12 passed");
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--shards", "auto"])
        .run();
    run.expect_code(0)
        .expect_stdout("==> shards: auto: 1 test container");

    // A count out of range is refused before anything is sent.
    let bad = server
        .ci(dir.path())
        .args(["submit", "test", "--shards", "0"])
        .run();
    bad.expect_code(2).expect_stderr("from 1 to 32");
}
