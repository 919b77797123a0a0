"""The project's exceptions: one base, a subclass per kind, an exit code on user-facing ones."""

from __future__ import annotations


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


class DatabaseError(OrchestratorError):
    """The job database could not be used."""


class JobNotFound(UsageError):
    """No such job."""


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

    def __init__(self, issues: list[ManifestIssue]) -> None:
        self.issues = issues
        n = len(issues)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in the manifest; nothing was submitted")
