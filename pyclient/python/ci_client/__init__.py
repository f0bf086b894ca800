"""Run Python projects' tests on a ci server, from Python.

The same client as the ``ci`` command (which this package also installs), as a library::

    import ci_client

    client = ci_client.Client()          # as ci: CI_SERVER_URL / CI_API_KEY / ~/.ci/config
    job = client.submit("path/to/project", pytest_args=["-x"])
    for chunk in job.follow():           # the live log; survives a dropped connection
        print(chunk, end="")
    result = job.wait()
    print(result.status, result.counts.passed if result.counts else "-")

Errors are ``CIError`` and its subclasses: ``AuthError``, ``NotFound``,
``ServerUnavailable``, ``Rejected``, ``ProjectError``.
"""

from typing import Literal

from ._native import (
    AuthError,
    CIError,
    Client,
    Counts,
    Job,
    LogStream,
    NotFound,
    ProjectError,
    Rejected,
    Result,
    ServerUnavailable,
    __version__,
)

#: A job's status, as ``Job.status`` and ``Result.status`` give it.
Status = Literal[
    "queued", "running", "passed", "failed", "error", "timed_out", "cancelled", "lost"
]

__all__ = [
    "AuthError",
    "CIError",
    "Client",
    "Counts",
    "Job",
    "LogStream",
    "NotFound",
    "ProjectError",
    "Rejected",
    "Result",
    "ServerUnavailable",
    "Status",
    "__version__",
]
