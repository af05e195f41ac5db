"""How a command can end badly: bad input (exit 2), a failed run (exit 1), an interrupted run."""

from __future__ import annotations

import signal


class RecipeError(ValueError):
    """Bad input: a recipe, an override or a data file that cannot be used.

    ``field`` is the dotted path of the offending field (``optimizer.lr``) and ``source`` the file
    it came from, when known. ``str()`` gives the one-line message the CLI prints, each part shortened
    (a 5 MB value quoted in a message must not make a 5 MB line).
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.message = message
        self.field = field
        self.source = source
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [shorten(p, 200) for p in (self.source, self.field) if p]
        where = ": ".join(parts)
        message = shorten(self.message, 1000)
        return f"{where}: {message}" if where else message


def shorten(text: str, limit: int) -> str:
    """``text`` on one line and at most about ``limit`` characters: its start and end around the count cut."""
    text = " ".join(str(text).splitlines()) if "\n" in str(text) or "\r" in str(text) else str(text)
    if len(text) <= limit:
        return text
    keep = limit // 2 - 20
    return f"{text[:keep]}... ({len(text) - 2 * keep:,} characters) ...{text[-keep:]}"


class RunFailed(RuntimeError):
    """Training failed; the run is recorded as FAILED and ``run_id`` names it."""

    def __init__(self, message: str, run_id: str | None):
        super().__init__(message)
        self.run_id = run_id


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a run (Lightning re-raises BaseExceptions untouched).

    The runner fills in the run it ended (``run_id`` in the store ``uri``) and whether it saved a checkpoint
    to resume from, for the command line's last words."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_id: str | None = None
        self.uri: str | None = None
        self.resumable = False


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
