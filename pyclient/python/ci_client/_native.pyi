# The types of ci_client._native, the Rust half of the package (pyclient/src/lib.rs).
import os
from typing import Iterator, List, Literal, Optional, Sequence, Union

Status = Literal[
    "queued", "running", "passed", "failed", "error", "timed_out", "cancelled", "lost"
]

__version__: str

class CIError(Exception):
    """Anything that went wrong talking to the server or submitting a project.

    ``status`` is the HTTP status when the server answered, else ``None``.
    """

    status: Optional[int]

class AuthError(CIError):
    """No API key, or the server refused it (401, 403)."""

class NotFound(CIError):
    """No such job, or not yours (404), or its log was removed (410)."""

class ServerUnavailable(CIError):
    """The server cannot be reached, or answered 5xx (busy, restarting, its database away)."""

class Rejected(CIError):
    """The server refused the request as it is (400, 409, 413, 429: a cap, a bad argument)."""

class ProjectError(CIError):
    """The project cannot be submitted as it is: no such directory, nothing in it, too big,
    or no Python of the server's fits it. Nothing was uploaded."""

class Counts:
    """How many tests passed, failed, ... (pytest's own counts)."""

    passed: int
    failed: int
    errors: int
    skipped: int
    xfailed: int
    xpassed: int
    duration_secs: float

class Result:
    """How a finished job ended."""

    job_id: str
    status: Status
    reason: Optional[str]
    exit_code: Optional[int]
    counts: Optional[Counts]
    duration_secs: Optional[float]
    failed_tests: List[str]
    @property
    def ok(self) -> bool: ...

class LogStream(Iterator[str]):
    """A job's log, chunk by chunk, as the server writes it; ends when the job ends."""

    @property
    def offset(self) -> int: ...
    def __iter__(self) -> "LogStream": ...
    def __next__(self) -> str: ...

class Job:
    """A job on the server, as last seen (``refresh()`` asks again)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> Status: ...
    @property
    def phase(self) -> Optional[str]: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def exit_code(self) -> Optional[int]: ...
    @property
    def python(self) -> Optional[str]: ...
    @property
    def project(self) -> Optional[str]: ...
    @property
    def created(self) -> str: ...
    @property
    def started(self) -> Optional[str]: ...
    @property
    def finished(self) -> Optional[str]: ...
    @property
    def duration_secs(self) -> Optional[float]: ...
    @property
    def queue_position(self) -> Optional[int]: ...
    @property
    def log_bytes(self) -> int: ...
    @property
    def counts(self) -> Optional[Counts]: ...
    @property
    def url(self) -> str: ...
    @property
    def done(self) -> bool: ...
    def refresh(self) -> "Job": ...
    def follow(self, from_start: bool = False) -> LogStream: ...
    def wait(self, timeout: Optional[float] = None) -> Result: ...
    def log(self) -> str: ...
    def cancel(self) -> None: ...

class Client:
    """A connection to a ci server."""

    def __init__(
        self, server: Optional[str] = None, api_key: Optional[str] = None
    ) -> None: ...
    @property
    def server(self) -> str: ...
    def submit(
        self,
        path: Union[str, "os.PathLike[str]"] = ".",
        pytest_args: Sequence[str] = (),
        timeout: Optional[float] = None,
        python: Optional[str] = None,
    ) -> Job: ...
    def job(self, id: str) -> Job: ...
    def jobs(
        self,
        limit: Optional[int] = None,
        status: Optional[Status] = None,
        project: Optional[str] = None,
    ) -> List[Job]: ...
    def cancel(self, id: str) -> Job: ...
    def server_version(self) -> str: ...

def run_cli(argv: Sequence[str]) -> int: ...
