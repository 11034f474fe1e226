"""The exception hierarchy. Each error carries the exit code the CLI returns for it.

Exit codes (all commands): 0 done, 1 failed (what the batch changed was rolled back),
2 invalid input or usage, 3 lock held by another run, 4 waiting (approval or window) in
non-interactive mode, 5 rollback failed (a person must act), 6 audit verification failed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a declaration: the file, where in it, and what."""

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        where = f": {self.where}" if self.where else ""
        return f"{self.file}{where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "where": self.where, "message": self.message}


class CutoverError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = 1
    status = "failed"


class RunFailed(CutoverError):
    exit_code = 1
    status = "failed"


class InvalidInput(CutoverError):
    """Bad declarations or usage. Nothing was executed."""

    exit_code = 2
    status = "invalid"

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        self.problems = list(problems)
        first = str(self.problems[0]).lstrip(": ") if self.problems else "invalid input"
        more = len(self.problems) - 1
        summary = first if not more else f"{first} (and {more} more)"
        super().__init__(summary)


class LockHeld(CutoverError):
    exit_code = 3
    status = "locked"


class Waiting(CutoverError):
    exit_code = 4
    status = "waiting"


class RollbackFailed(CutoverError):
    exit_code = 5
    status = "rollback_failed"


class AuditFailed(CutoverError):
    exit_code = 6
    status = "audit_failed"
