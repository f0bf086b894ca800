"""Fixtures of the ci_client suite, which runs against a real ci-server.

Set ``CI_SERVER_URL``, ``CI_API_KEY`` (a normal user's key) and ``CI_TEST_FIXTURES`` (the
repository's ``tests/fixtures``); ``tests/it/wheel.rs`` runs this suite so, from a venv the
wheel was installed into.
"""

import os
from pathlib import Path

import pytest

import ci_client


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"{name} is not set: this suite needs CI_SERVER_URL, CI_API_KEY and CI_TEST_FIXTURES "
            "(tests/it/wheel.rs sets them)",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def server_url() -> str:
    return _env("CI_SERVER_URL").rstrip("/")


@pytest.fixture(scope="session")
def api_key() -> str:
    return _env("CI_API_KEY")


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = Path(_env("CI_TEST_FIXTURES"))
    assert (path / "dummy_project").is_dir(), f"{path} holds no dummy_project"
    return path


@pytest.fixture(scope="session")
def client(server_url: str, api_key: str) -> ci_client.Client:
    """A client given its settings as arguments (the environment is not what it reads)."""
    return ci_client.Client(server=server_url, api_key=api_key)
