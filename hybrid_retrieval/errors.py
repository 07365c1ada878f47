"""The project's error family: one base class, a few kinds, each also the builtin it replaces.

    HybridRetrievalError            anything this project refuses, with a message naming the file or value
    ├── NotFoundError               (also FileNotFoundError) a file, folder, checkpoint or weights missing
    ├── OfflineError                (also ConnectionError) a download asked for while offline, or failed
    ├── IncompatibleModelError      (also ValueError) a model, index, cache or checkpoint made by another model
    ├── BadInputError               (also ValueError) a value, file or config that cannot be used
    └── MissingDependencyError      (also ImportError) an optional dependency is not installed

Callers that catch the builtins (`except ValueError`, `except FileNotFoundError`) keep working;
the command line catches `HybridRetrievalError` once and prints its message as one line. The
message is the whole story: code never parses it, and an exception that needs to carry more (a
short reason, the path) does so in attributes.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


class HybridRetrievalError(Exception):
    """Base of every error this project raises on purpose."""


class NotFoundError(HybridRetrievalError, FileNotFoundError):
    """Something the user named or the project looked for does not exist."""


class OfflineError(HybridRetrievalError, ConnectionError):
    """The network was needed but is switched off (an offline variable) or unreachable."""


class IncompatibleModelError(HybridRetrievalError, ValueError):
    """Two things that must come from the same model (or the same tower weights) do not."""


class BadInputError(HybridRetrievalError, ValueError):
    """A value, file or configuration that cannot be used as given."""


class MissingDependencyError(HybridRetrievalError, ImportError):
    """An optional dependency a feature needs is not installed (the message says which extra)."""


def report_error(exc: HybridRetrievalError) -> None:
    """Print `exc` as the one `error: ...` line on stderr; control characters in the message (a
    file name's terminal escapes, line breaks) are printed escaped."""
    from hybrid_retrieval.terminal import printable

    print(f"error: {printable(exc)}", file=sys.stderr)


def run_reporting_errors(main: Callable[[], int]) -> int:
    """Run a command's `main`; a HybridRetrievalError becomes one `error: ...` line on stderr and
    exit status 2 (anything else is a bug and keeps its traceback)."""
    try:
        return main()
    except HybridRetrievalError as exc:
        report_error(exc)
        return 2


@contextlib.contextmanager
def exiting_on_error() -> Iterator[None]:
    """Inside a framework that prints tracebacks of what it catches (sacred's run): a
    HybridRetrievalError becomes the one `error: ...` line and SystemExit(2), which passes through."""
    try:
        yield
    except HybridRetrievalError as exc:
        report_error(exc)
        raise SystemExit(2) from None
