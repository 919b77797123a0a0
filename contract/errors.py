"""The project's exceptions: one base, a subclass per kind, an exit code on user-facing ones.

Both planes raise from here: the control plane (manifest, store, transports, CLI) and the data
plane (``workers/``: pipeline backends, compression). The CLI maps every one of them to a
message and an exit code in one place (``orchestrator.cli.cli``); foreign errors are wrapped
with ``raise ... from`` where they happen (SQLite's ``OperationalError`` by the engine itself,
see ``orchestrator.database``).

Exit codes: 0 success, 1 something failed, 2 bad input, 3 a busy or full resource (try again),
130 stopped by a signal.
"""

from __future__ import annotations

import errno


class OrchestratorError(Exception):
    """Something went wrong in the orchestrator."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(OrchestratorError):
    """The command was given an input it cannot use."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration is not valid."""


class JobNotFound(UsageError):
    """No such job."""


# -- resources that are busy, full or away: a state to wait out, never a crash ----------------


class TransientError(OrchestratorError):
    """A resource is busy, full or unreachable for now; the same call may succeed later."""

    exit_code = 3


class DatabaseError(OrchestratorError):
    """The job database could not be used."""


class DatabaseBusy(DatabaseError, TransientError):
    """The job database is locked by another process; try again in a moment."""

    exit_code = 3


class DatabaseFull(DatabaseError, TransientError):
    """The disk holding the job database is full; free some space."""

    exit_code = 3


class DiskFull(TransientError):
    """The disk holding the output folder is full (or a file-size limit was hit)."""


class OutputUnwritable(TransientError):
    """The output folder cannot be written into (no permission, a read-only disk, a file where
    a folder should be): nothing is saved until it can be, and nothing is lost meanwhile."""


class PublishBlocked(OrchestratorError):
    """A committed image cannot be put at its job's path; it waits in the staging folder and
    publishing it is tried again with backoff. Only that job is held up."""


# errno values that mean "no room to write": a full disk, a quota, a file-size limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def describe_os_error(exc: OSError, *, paths: bool = True) -> str:
    """``Permission denied (EACCES): '/out/3'``: the reason, its errno name, and (with
    ``paths``) the path the system named (a rename names both)."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    if name:
        text += f" ({name})"
    named = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if paths and named:
        text += ": " + " -> ".join(repr(p) for p in named)
    return text


class RedisUnavailable(TransientError):
    """Redis cannot be reached (or refused the credentials)."""


class CoordinatorConflict(OrchestratorError):
    """Another coordinator holds this database."""


# -- what a job can raise on a worker ------------------------------------------------------


class JobError(OrchestratorError):
    """A job could not be done on this worker."""


class JobInputError(JobError, UsageError):
    """The job asks for something this worker can never do; retrying will not help."""


class ModelLoadError(JobError):
    """The model could not be loaded."""


class ModelNotFound(JobInputError, ModelLoadError):
    """The model is nowhere this worker may look: not built in, not a folder here, not in the
    Hugging Face cache, and the hub says it has none or may not be asked (HF_HUB_OFFLINE).
    Retrying cannot help."""


class JobInterrupted(JobError):
    """The job was stopped between denoising steps (shutdown, cancel, or lost lease)."""


class JudgeError(JobError):
    """The judge of a job's quality gate could not score an image."""


class QualityGateFailed(JobError):
    """No seed of this attempt made an image that passed the job's quality gate."""

    def __init__(self, message: str, scores: list[tuple[int, float]] | None = None) -> None:
        super().__init__(message)
        self.scores = list(scores or [])  # (seed, score) of every image tried, in order


class CompressionError(UsageError):
    """A compression input (analysis, recipe, model layer) is not usable."""


# -- manifests -------------------------------------------------------------------------------


class ManifestIssue:
    """One problem in a manifest, located by file, line and column."""

    __slots__ = ("column", "line", "message", "path", "value")

    def __init__(
        self, path: str, line: int, column: str | None, value: str | None, message: str
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.value = value
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        if self.column is not None:
            where += f": column '{self.column}'"
        if self.value is not None:
            shown = self.value if len(self.value) <= 60 else self.value[:57] + "..."
            return f"{where}: {self.message} (got {shown!r})"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "value": self.value,
            "message": self.message,
        }


class ManifestError(UsageError):
    """The manifest is not valid; nothing was submitted."""

    def __init__(self, issues: list[ManifestIssue], note: str = "") -> None:
        self.issues = issues
        n = len(issues)
        super().__init__(
            f"{n} error{'s' if n != 1 else ''} in the manifest; nothing was submitted{note}"
        )
