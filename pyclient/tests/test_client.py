"""ci_client against a real ci-server: results, the live log through cut connections,
timeouts and cancel, listing, errors, settings as the CLI reads them, threads."""

import concurrent.futures
import importlib.metadata
import logging
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List
from urllib.parse import urlsplit

import pytest

import ci_client
from cutproxy import CutProxy

#: Every wait in this suite is bounded: a job of the test server takes a few seconds.
JOB_TIMEOUT = 180.0

PYTEST = "pytest==7.4.3\n"


def write_project(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def seed(client: ci_client.Client, fixtures: Path) -> Dict[str, ci_client.Result]:
    """The seed's three projects, submitted in this order (so they run side by side), then
    waited for: name -> result."""
    jobs = {
        name: client.submit(fixtures / name)
        for name in ("dummy_project", "failing_project", "invalid_project")
    }
    return {name: job.wait(timeout=JOB_TIMEOUT) for name, job in jobs.items()}


# --- results ------------------------------------------------------------------------------


def test_dummy_project_passes(client: ci_client.Client, seed: Dict[str, ci_client.Result]):
    result = seed["dummy_project"]
    assert result.status == "passed", result.reason
    assert result.ok is True
    assert result.exit_code == 0
    assert result.counts is not None
    assert result.counts.passed == 2
    assert result.counts.failed == 0
    assert result.failed_tests == []
    assert result.duration_secs is not None and result.duration_secs > 0
    log = client.job(result.job_id).log()
    assert "test_add PASSED" in log
    assert "test_subtract PASSED" in log


def test_failing_project_fails(seed: Dict[str, ci_client.Result]):
    result = seed["failing_project"]
    assert result.status == "failed", result.reason
    assert result.ok is False
    assert result.exit_code not in (None, 0)
    assert result.counts is not None and result.counts.failed >= 1
    assert result.failed_tests, "a failed run names its failed tests"
    assert any("test_divide" in t for t in result.failed_tests), result.failed_tests


def test_invalid_project_is_not_ok(seed: Dict[str, ci_client.Result]):
    result = seed["invalid_project"]
    assert result.status in ("error", "failed"), result.status
    assert result.ok is False
    assert not (result.counts and result.counts.passed), "nothing can pass: a SyntaxError"


# --- the live log -------------------------------------------------------------------------


@pytest.fixture
def proxy(server_url: str):
    target = urlsplit(server_url)
    p = CutProxy((target.hostname, target.port or 80))
    yield p
    p.close()


def slow_log_project(root: Path, tests: int = 12, secs: float = 0.4) -> Path:
    """A project whose pytest -v output comes a line every ``secs``, ending with a line of
    characters that take more than one byte in UTF-8 (so offsets in bytes and characters
    differ)."""
    body = "import time\n\n" + "".join(
        f"\ndef test_slow_{i:02d}():\n    time.sleep({secs})\n" for i in range(tests)
    )
    conftest = (
        "def pytest_terminal_summary(terminalreporter):\n"
        "    terminalreporter.write_line('fin: \\u00e9t\\u00e9 \\u2713 \\U0001f40d')\n"
    )
    return write_project(
        root,
        {
            "requirements.txt": PYTEST,
            "conftest.py": conftest,
            "tests/test_slow.py": body,
        },
    )


def test_follow_survives_cut_connections(
    client: ci_client.Client, api_key: str, proxy: CutProxy, tmp_path: Path, caplog
):
    caplog.set_level(logging.INFO, logger="ci_client")
    through = ci_client.Client(server=proxy.url, api_key=api_key)
    job = through.submit(slow_log_project(tmp_path / "slowlog"))
    stream = job.follow(from_start=True)
    chunks: List[str] = []
    failure: List[BaseException] = []
    cuts: List[int] = []

    def consume() -> None:
        try:
            for chunk in stream:
                assert isinstance(chunk, str)
                chunks.append(chunk)
                text = "".join(chunks)
                # Once at the first bytes, once more mid-run (the tests are printing).
                if len(cuts) == 0:
                    cuts.append(proxy.cut())
                elif len(cuts) == 1 and "test_slow_02 PASSED" in text:
                    cuts.append(proxy.cut())
        except BaseException as e:  # handed to the test's thread
            failure.append(e)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    reader.join(JOB_TIMEOUT)
    if reader.is_alive():
        client.cancel(job.id)
        reader.join(30)
        pytest.fail(f"the log stream did not end in {JOB_TIMEOUT}s; got {''.join(chunks)!r}")
    if failure:
        raise failure[0]

    assert len(cuts) == 2, f"the stream ended before the second cut: {''.join(chunks)!r}"
    assert proxy.cut_connections >= 2, "the cuts closed nothing"
    result = client.job(job.id).wait(timeout=JOB_TIMEOUT)
    assert result.status == "passed", result.reason
    assert result.counts is not None and result.counts.passed == 12
    # What came through the cuts is the stored log, byte for byte: nothing lost, nothing twice.
    stored = client.job(job.id).log()
    followed = "".join(chunks)
    assert followed == stored
    assert stream.offset == len(stored.encode("utf-8"))
    assert "fin: \u00e9t\u00e9 \u2713 \U0001f40d" in stored
    assert proxy.accepted > 2, "no reconnection went through the proxy"
    notices = [
        r
        for r in caplog.records
        if r.name == "ci_client" and r.levelno == logging.WARNING and "reconnecting" in r.getMessage()
    ]
    assert notices, [(r.name, r.levelname, r.getMessage()) for r in caplog.records]


def test_wait_times_out_then_cancel_ends_the_job(client: ci_client.Client, tmp_path: Path):
    project = write_project(
        tmp_path / "sleeper",
        {
            "requirements.txt": PYTEST,
            "tests/test_sleep.py": "import time\n\ndef test_sleep():\n    time.sleep(60)\n",
        },
    )
    job = client.submit(project)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.5)
    assert time.monotonic() - started < 10, "wait(timeout=0.5) took far longer"
    assert not job.refresh().done
    cancelled = client.cancel(job.id)
    assert cancelled.id == job.id
    started = time.monotonic()
    result = job.wait(timeout=JOB_TIMEOUT)
    assert result.status == "cancelled"
    assert result.ok is False
    assert time.monotonic() - started < 50, "the cancel did not end the 60 s test"
    assert job.refresh().status == "cancelled"


# --- listing and looking up ---------------------------------------------------------------


def test_jobs_lists_newest_first_and_filters(
    client: ci_client.Client, seed: Dict[str, ci_client.Result]
):
    ids = {name: r.job_id for name, r in seed.items()}
    listed = [j.id for j in client.jobs(limit=100)]
    for name, id in ids.items():
        assert id in listed, f"{name} ({id}) is not listed"
    # Submitted dummy, failing, invalid: listed the other way round.
    positions = [listed.index(ids[n]) for n in ("invalid_project", "failing_project", "dummy_project")]
    assert positions == sorted(positions), listed

    newest = client.jobs(limit=1)
    assert len(newest) == 1 and newest[0].id == listed[0]

    failed = client.jobs(limit=100, status="failed")
    assert failed and all(j.status == "failed" for j in failed)
    assert ids["failing_project"] in [j.id for j in failed]
    assert ids["dummy_project"] not in [j.id for j in failed]
    passed = client.jobs(limit=100, status="passed", project="dummy_project")
    assert ids["dummy_project"] in [j.id for j in passed]
    assert all(j.status == "passed" and j.project == "dummy_project" for j in passed)


def test_job_lookup_refresh_and_not_found(
    client: ci_client.Client, server_url: str, seed: Dict[str, ci_client.Result]
):
    id = seed["dummy_project"].job_id
    job = client.job(id)
    assert job.id == id
    assert job.status == "passed" and job.done
    assert job.url.endswith("/" + id) and job.url.startswith(server_url)
    assert job.project == "dummy_project"
    assert job.log_bytes == len(job.log().encode("utf-8")) > 0
    assert job.counts is not None and job.counts.passed == 2
    assert job.finished is not None and job.created
    again = job.refresh()
    assert again.id == id and again.status == "passed"
    # A finished job's wait answers at once.
    assert job.wait(timeout=5).status == "passed"

    with pytest.raises(ci_client.NotFound) as raised:
        client.job("0123456789ab")
    assert raised.value.status == 404
    assert isinstance(raised.value, ci_client.CIError)


# --- errors -------------------------------------------------------------------------------


def test_bad_key_is_an_auth_error(server_url: str):
    with pytest.raises(ci_client.AuthError) as raised:
        ci_client.Client(server=server_url, api_key="ci_bogus").jobs()
    assert raised.value.status == 401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_server_is_unavailable_quickly(api_key: str):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ci_client.ServerUnavailable) as raised:
        ci_client.Client(server=dead, api_key=api_key).jobs()
    assert time.monotonic() - started < 15
    assert dead.split("//")[1] in str(raised.value)
    assert raised.value.status is None


def test_project_errors_submit_nothing(client: ci_client.Client, tmp_path: Path):
    before = [j.id for j in client.jobs(limit=1)]
    with pytest.raises(ci_client.ProjectError) as missing:
        client.submit(tmp_path / "no-such-dir")
    assert "no-such-dir" in str(missing.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ci_client.ProjectError):
        client.submit(empty)
    assert [j.id for j in client.jobs(limit=1)] == before


# --- settings, as the ci command reads them -----------------------------------------------


def test_settings_come_from_arguments_env_then_config(
    monkeypatch, tmp_path: Path, server_url: str, api_key: str
):
    home = tmp_path / "home"
    (home / ".ci").mkdir(parents=True)
    config = home / ".ci" / "config"
    config.write_text(f"server_url = {server_url}/\napi_key = {api_key}\n")
    config.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CI_SERVER_URL", raising=False)
    monkeypatch.delenv("CI_API_KEY", raising=False)

    from_file = ci_client.Client()
    assert from_file.server == server_url
    from_file.jobs(limit=1)  # the key in the file is the one sent

    elsewhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CI_SERVER_URL", elsewhere)
    assert ci_client.Client().server == elsewhere
    argued = ci_client.Client(server=server_url)
    assert argued.server == server_url
    argued.jobs(limit=1)
    monkeypatch.setenv("CI_API_KEY", "ci_bogus")
    with pytest.raises(ci_client.AuthError):
        ci_client.Client(server=server_url).jobs(limit=1)
    ci_client.Client(server=server_url, api_key=api_key).jobs(limit=1)


def test_no_key_anywhere_is_an_auth_error(monkeypatch, tmp_path: Path, server_url: str):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI_API_KEY", raising=False)
    monkeypatch.setenv("CI_SERVER_URL", server_url)
    with pytest.raises(ci_client.AuthError) as raised:
        ci_client.Client().jobs()
    assert "api_key" in str(raised.value)


def test_a_key_others_can_read_is_a_logged_warning(
    monkeypatch, tmp_path: Path, caplog, capfd, server_url: str, api_key: str
):
    """What ci says on stderr about its config goes to the ci_client logger instead."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI_API_KEY", raising=False)
    monkeypatch.setenv("CI_SERVER_URL", server_url)
    config = tmp_path / ".ci" / "config"
    config.parent.mkdir()
    config.write_text(f"api_key={api_key}\n")
    config.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ci_client"):
        ci_client.Client().jobs(limit=1)
    assert any(
        "readable by others" in r.getMessage() and "chmod 600" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    assert "readable by others" not in capfd.readouterr().err
    caplog.clear()
    config.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="ci_client"):
        ci_client.Client().jobs(limit=1)
    assert not caplog.records, caplog.text


# --- threads ------------------------------------------------------------------------------


def test_jobs_in_parallel_threads(client: ci_client.Client, fixtures: Path, tmp_path: Path):
    projects = [
        shutil.copytree(fixtures / "dummy_project", tmp_path / f"dummy_{i}") for i in range(3)
    ]

    def run(path) -> ci_client.Result:
        return client.submit(path).wait(timeout=JOB_TIMEOUT)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(projects)) as pool:
        results = list(pool.map(run, projects, timeout=JOB_TIMEOUT + 30))
    assert [r.status for r in results] == ["passed"] * len(projects), [r.reason for r in results]
    assert len({r.job_id for r in results}) == len(projects)
    assert all(r.counts is not None and r.counts.passed == 2 for r in results)


def test_a_forked_child_uses_the_parents_client(client: ci_client.Client, fixtures: Path):
    """multiprocessing's fork start method: fork copies only the calling thread, so the child
    cannot use the parent's runtime threads; it must build its own and not hang."""
    import multiprocessing

    job = client.submit(fixtures / "dummy_project")  # the parent's runtime exists now
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:  # runs in the forked child; the closure is inherited, not pickled
        out.put([j.id for j in client.jobs(limit=5)])

    procs = [ctx.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    seen = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0, p.exitcode
    for ids in seen:
        assert job.id in ids, ids
    assert job.wait(timeout=JOB_TIMEOUT).status == "passed"


# --- the package --------------------------------------------------------------------------


def test_version_is_the_distribution_version():
    assert ci_client.__version__ == importlib.metadata.version("ci-client")
    assert ci_client._native.__version__ == ci_client.__version__
    exported = set(ci_client.__all__)
    for name in ("CIError", "AuthError", "NotFound", "ServerUnavailable", "Rejected", "ProjectError"):
        assert name in exported
        assert issubclass(getattr(ci_client, name), ci_client.CIError)
