"""How a command can end badly: bad input (exit 2), a failed run (exit 1), an interrupted run."""

from __future__ import annotations

import signal


class RecipeError(ValueError):
    """Bad input: a recipe, an override or a data file that cannot be used.

    ``field`` is the dotted path of the offending field (``optimizer.lr``) and ``source`` the file
    it came from, when known. ``str()`` gives the one-line message the CLI prints.
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.message = message
        self.field = field
        self.source = source
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.source, self.field) if p)
        return f"{where}: {self.message}" if where else self.message


class RunFailed(RuntimeError):
    """Training failed; the run is recorded as FAILED and ``run_id`` names it."""

    def __init__(self, message: str, run_id: str | None):
        super().__init__(message)
        self.run_id = run_id


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a run (Lightning re-raises BaseExceptions untouched)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, torch's OutOfMemoryError (CUDA) or its CPU allocator's
    RuntimeError ("can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def failure(exc: BaseException) -> str:
    """The one line a failed run records: the exception, with ``out of memory:`` in front when it is one."""
    text = f"{type(exc).__name__}: {exc}"
    return f"out of memory: {text}" if out_of_memory(exc) else text
