//! Real projects as they are: each way a project declares its test environment is detected and
//! installed into `/venv`, the project is installed per job, and its tests run on the read-only
//! original.

use std::path::Path;

use ci_e2e::{fixture, project, scratch, shared_server, Run};

/// `ci submit test` in `dir` against the shared server.
fn submit(dir: &Path) -> Run {
    shared_server().ci(dir).args(["submit", "test"]).run()
}

/// Asserts that the job log has `line` as a whole line.
fn expect_line(run: &Run, line: &str) {
    assert!(
        run.stdout().lines().any(|l| l.trim_end() == line),
        "stdout lacks the line {line:?}\n{run}"
    );
}

/// Submits `dir` and asserts that it passed, that the install phase said `==> installing:
/// {install}`, and that each of `tests` (pytest node ids) is reported PASSED.
fn expect_passes(dir: &Path, install: &str, tests: &[&str]) -> Run {
    let run = submit(dir);
    run.expect_code(0);
    expect_line(&run, &format!("==> installing: {install}"));
    for test in tests {
        run.expect_stdout(&format!("{test} PASSED"));
    }
    run.expect_stdout("==> result: passed");
    run
}

/// A copy of the fixture `name` in a temp dir, for tests that edit it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("project-")
        .tempdir_in(scratch())
        .unwrap();
    copy(&fixture(name), dir.path());
    dir
}

#[test]
fn seed_requirements_txt_is_installed_as_before() {
    expect_passes(
        &fixture("dummy_project"),
        "uv pip install -r requirements.txt (requirements.txt)",
        &[
            "tests/test_calculator.py::test_add",
            "tests/test_calculator.py::test_subtract",
        ],
    );
}

#[test]
fn src_layout_with_a_test_extra() {
    let run = expect_passes(
        &fixture("src_layout_extras"),
        "uv pip install '.[test]' (pyproject.toml [project.optional-dependencies] test)",
        &[
            "tests/test_core.py::test_add",
            "tests/test_core.py::test_scale",
            "tests/test_core.py::test_distribution_is_installed",
        ],
    );
    run.expect_stdout("==> installing the project: ");
}

#[test]
fn dependency_group_with_an_included_group() {
    expect_passes(
        &fixture("dependency_groups"),
        "uv pip install --group test . (pyproject.toml [dependency-groups] test)",
        &[
            "tests/test_groupedpkg.py::test_shout",
            "tests/test_groupedpkg.py::test_included_group_is_installed",
        ],
    );
}

#[test]
fn uv_lock_is_synced_as_locked() {
    expect_passes(
        &fixture("uv_locked"),
        "uv sync --locked --group test (uv.lock)",
        &[
            "tests/test_lockedpkg.py::test_count_words",
            "tests/test_lockedpkg.py::test_locked_pytest_is_at_least_8",
        ],
    );
}

#[test]
fn requirements_dev_that_installs_the_project_itself() {
    // The file has `-e .`: no second ` .` is added.
    expect_passes(
        &fixture("requirements_dev_only"),
        "uv pip install -r requirements-dev.txt (requirements-dev.txt)",
        &[
            "tests/test_flatreq.py::test_reverse",
            "tests/test_flatreq.py::test_distribution_is_installed",
        ],
    );
}

#[test]
fn setup_py_with_tox_deps() {
    // `{posargs}` among the deps is tox's placeholder for command-line arguments: empty here.
    expect_passes(
        &fixture("setup_py_tox"),
        "uv pip install pytest six . (tox.ini [testenv] deps)",
        &[
            "tests/test_toxpkg.py::test_is_text",
            "tests/test_toxpkg.py::test_distribution_is_installed",
        ],
    );
}

#[test]
fn tool_ci_config_sets_groups_arguments_env_and_timeout() {
    let run = expect_passes(
        &fixture("tool_ci"),
        "uv pip install --group ci . ([tool.ci] in pyproject.toml)",
        &[
            "tests/test_configured.py::test_env_from_config",
            "tests/test_configured.py::test_group_from_config_is_installed",
        ],
    );
    run.expect_stdout("1 deselected");
    assert!(
        !run.stdout().contains("test_skipped_by_config FAILED"),
        "{run}"
    );
    let job = shared_server().job(&run.job_id());
    assert_eq!(job["timeout_secs"], 300, "{job}");
}

#[test]
fn setuptools_scm_version_without_git() {
    // The upload has no .git (hidden directories stay out), so only a pretended version lets
    // setuptools-scm build the project.
    expect_passes(
        &fixture("scm_version"),
        "uv pip install --group test . (pyproject.toml [dependency-groups] test)",
        &[
            "tests/test_scmpkg.py::test_double",
            "tests/test_scmpkg.py::test_has_a_version",
        ],
    );
}

#[test]
fn building_the_project_leaves_the_tested_original_untouched() {
    // setuptools writes build/ and src/*.egg-info next to the sources it builds: that must
    // happen in the writable copy, never in the /workspace the tests see.
    let dir = project(&[
        (
            "pyproject.toml",
            r#"[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "readonlypkg"
version = "0.1.0"

[project.optional-dependencies]
test = ["pytest"]
"#,
        ),
        ("src/readonlypkg/__init__.py", "VALUE = 7\n"),
        (
            "tests/test_readonly.py",
            r#"import errno
from pathlib import Path

import readonlypkg

ROOT = Path(__file__).resolve().parent.parent


def test_runs_in_workspace():
    assert ROOT == Path("/workspace")


def test_build_left_nothing_in_the_project():
    assert not (ROOT / "build").exists()
    assert list((ROOT / "src").glob("*.egg-info")) == []
    assert list(ROOT.glob("*.egg-info")) == []


def test_project_is_read_only():
    try:
        (ROOT / "written-by-a-test").write_text("x")
    except OSError as e:
        assert e.errno == errno.EROFS, e
    else:
        raise AssertionError("wrote into the project")


def test_package_is_installed():
    assert readonlypkg.VALUE == 7
"#,
        ),
    ]);
    expect_passes(
        dir.path(),
        "uv pip install '.[test]' (pyproject.toml [project.optional-dependencies] test)",
        &[
            "tests/test_readonly.py::test_runs_in_workspace",
            "tests/test_readonly.py::test_build_left_nothing_in_the_project",
            "tests/test_readonly.py::test_project_is_read_only",
            "tests/test_readonly.py::test_package_is_installed",
        ],
    );
}

#[test]
fn edited_code_is_tested_while_dependencies_are_reused() {
    let dir = copy_fixture("src_layout_extras");
    let source = dir.path().join("src/srcextras/core.py");
    let good = std::fs::read_to_string(&source).unwrap();
    assert!(good.contains("return a + b"), "{good}");

    submit(dir.path())
        .expect_code(0)
        .expect_stdout("==> installing the project: ");
    // The same upload again: its install is reused, and the tests still pass.
    submit(dir.path())
        .expect_code(0)
        .expect_stdout("==> the project is unchanged since an earlier job: reusing its install")
        .expect_stdout("tests/test_core.py::test_add PASSED");

    std::fs::write(&source, good.replace("return a + b", "return a - b")).unwrap();
    let broken = submit(dir.path());
    broken
        .expect_code(1)
        .expect_stdout("==> dependencies unchanged since an earlier job: reusing them")
        .expect_stdout("==> installing the project: ")
        .expect_stdout("tests/test_core.py::test_add FAILED")
        .expect_stdout("assert -1 == 5")
        .expect_stdout("tests/test_core.py::test_scale PASSED")
        .expect_stdout("==> result: failed");

    std::fs::write(&source, &good).unwrap();
    let fixed = submit(dir.path());
    fixed
        .expect_code(0)
        .expect_stdout("==> dependencies unchanged since an earlier job: reusing them")
        .expect_stdout("tests/test_core.py::test_add PASSED");
}

#[test]
fn projects_sharing_requirements_and_an_import_name_stay_apart() {
    // Same requirements.txt, same pyproject.toml, same import name: only the code differs, so
    // only a per-job install of each project tells them apart.
    let make = |value: u32| {
        project(&[
            (
                "pyproject.toml",
                "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"samepkg\"\nversion = \"0.1.0\"\n",
            ),
            ("requirements.txt", "pytest\n.\n"),
            ("src/samepkg/__init__.py", &format!("VALUE = {value}\n")),
            (
                "tests/test_value.py",
                &format!("import samepkg\n\n\ndef test_value():\n    assert samepkg.VALUE == {value}\n"),
            ),
        ])
    };
    let (a, b) = (make(1), make(2));
    for (dir, reused) in [(&a, false), (&b, true), (&a, true)] {
        let run = expect_passes(
            dir.path(),
            "uv pip install -r requirements.txt (requirements.txt)",
            &["tests/test_value.py::test_value"],
        );
        if reused {
            run.expect_stdout("==> dependencies unchanged since an earlier job: reusing them");
        }
    }
}

#[test]
fn a_clean_subprocess_still_finds_the_virtualenv() {
    let dir = project(&[
        ("requirements.txt", "pytest\nsix\n"),
        (
            "tests/test_env.py",
            r#"import shutil
import subprocess
import sys


def test_subprocess_with_an_empty_environment():
    out = subprocess.run(
        [sys.executable, "-c", "import six; print(six.__version__)"],
        env={},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_console_scripts_are_on_path():
    assert shutil.which("pytest") is not None


def test_runs_in_the_virtualenv():
    assert sys.prefix == "/venv"
"#,
        ),
    ]);
    expect_passes(
        dir.path(),
        "uv pip install -r requirements.txt (requirements.txt)",
        &[
            "tests/test_env.py::test_subprocess_with_an_empty_environment",
            "tests/test_env.py::test_console_scripts_are_on_path",
            "tests/test_env.py::test_runs_in_the_virtualenv",
        ],
    );
}

#[test]
fn invalid_tool_ci_config_is_refused_at_upload() {
    let dir = project(&[
        (
            "pyproject.toml",
            "[project]\nname = \"badconfig\"\nversion = \"0.1.0\"\n\n[tool.ci]\ngrups = [\"test\"]\n",
        ),
        ("tests/test_x.py", "def test_x():\n    pass\n"),
    ]);
    let run = submit(dir.path());
    run.expect_code(2).expect_stderr(r#"unknown key "grups""#);
    assert_eq!(run.stderr().trim().lines().count(), 1, "{run}");
}

#[test]
fn git_requirement_without_git_is_a_job_error() {
    let dir = project(&[
        (
            "requirements.txt",
            "pytest\ngit+https://example.invalid/x.git#egg=x\n",
        ),
        ("tests/test_x.py", "def test_x():\n    pass\n"),
    ]);
    let run = submit(dir.path());
    run.expect_code(1)
        .expect_stdout("==> result: error: ")
        .expect_stdout("needs git");
    let job = shared_server().job(&run.job_id());
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("needs git"),
        "{job}"
    );
}

#[test]
fn c_extension_without_a_compiler_says_so() {
    // The image has no C compiler (as python:*-slim): building the extension must fail with
    // one line that names the requirement and what is missing.
    let dir = project(&[
        (
            "pyproject.toml",
            "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"cext\"\nversion = \"0.1\"\n",
        ),
        (
            "setup.py",
            "from setuptools import Extension, setup\nsetup(ext_modules=[Extension(\"cext._speed\", [\"cext/_speed.c\"])], packages=[\"cext\"])\n",
        ),
        ("cext/__init__.py", ""),
        ("cext/_speed.c", "#include <Python.h>\n"),
        ("tests/test_x.py", "def test_x():\n    pass\n"),
    ]);
    let run = submit(dir.path());
    run.expect_code(1)
        .expect_stdout("==> result: error: building cext")
        .expect_stdout("needs a C compiler, which the image does not have");
}

#[test]
fn lock_file_that_does_not_match_pyproject_is_named() {
    let dir = copy_fixture("uv_locked");
    let pyproject = dir.path().join("pyproject.toml");
    let text = std::fs::read_to_string(&pyproject).unwrap();
    // A new dependency the lock does not know: `uv sync --locked` refuses.
    let edited = text.replacen(
        "requires-python = \">=3.11\"\n",
        "requires-python = \">=3.11\"\ndependencies = [\"six\"]\n",
        1,
    );
    assert_ne!(text, edited, "the fixture declares requires-python");
    std::fs::write(&pyproject, edited).unwrap();
    let run = submit(dir.path());
    run.expect_code(1).expect_stdout(
        "==> result: error: uv.lock does not match pyproject.toml (uv sync --locked): run `uv lock` and submit again",
    );
}

#[test]
fn without_uv_the_server_installs_with_pip() {
    // An index that cannot be reached and an empty tools dir: uv cannot be had, so the job
    // says so and installs with the image's pip, with the same result.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let index = format!("http://{}/simple", closed.local_addr().unwrap());
    drop(closed);
    let tools = tempfile::tempdir_in(scratch()).unwrap();
    let server = ci_e2e::Server::start(ci_e2e::ServerOptions {
        extra_args: vec![
            "--uv-index-url".into(),
            index,
            "--tools-dir".into(),
            tools.path().display().to_string(),
        ],
        ..Default::default()
    });
    let run = server
        .ci(&fixture("src_layout_extras"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0)
        .expect_stdout("uv cannot be used (failed to ")
        .expect_stdout("): installing with pip")
        .expect_stdout("==> result: passed");
    expect_line(
        &run,
        "==> installing: pip install '.[test]' (pyproject.toml [project.optional-dependencies] test)",
    );
}

/// The sdist of a well-known project as PyPI serves it, downloaded once into `target/`.
fn sdist(name: &str, version: &str) -> tempfile::TempDir {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-sdists");
    let archive = cache.join(format!("{name}-{version}.tar.gz"));
    if !archive.is_file() {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
            ])
            .arg(format!("{name}=={version}"))
            .arg("-d")
            .arg(&cache)
            .output()
            .unwrap();
        assert!(
            out.status.success() && archive.is_file(),
            "pip download {name}=={version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    tar::Archive::new(gz).unpack(dir.path()).unwrap();
    dir
}

#[test]
fn unmodified_click_sdist_passes_as_in_a_host_virtualenv() {
    // click 8.1.7 as released: setup.py + setup.cfg, src layout, pinned requirements/tests.txt.
    // A host virtualenv with `pip install -r requirements/tests.txt .` gives
    // 589 passed, 21 skipped, 1 xfailed.
    let dir = sdist("click", "8.1.7");
    let run = submit(&dir.path().join("click-8.1.7"));
    run.expect_code(0);
    expect_line(
        &run,
        "==> installing: uv pip install -r requirements/tests.txt . (requirements/tests.txt)",
    );
    run.expect_stdout("589 passed, 21 skipped, 1 xfailed");
}
