"""The error family: each kind is also the builtin it replaced, and the command line prints one line."""
from pathlib import Path

import pytest

from hybrid_retrieval.cli import main
from hybrid_retrieval.errors import (
    BadInputError,
    HybridRetrievalError,
    IncompatibleModelError,
    MissingDependencyError,
    NotFoundError,
    OfflineError,
    run_reporting_errors,
)


@pytest.mark.parametrize("kind, builtin", [(NotFoundError, FileNotFoundError), (OfflineError, ConnectionError),
                                           (IncompatibleModelError, ValueError), (BadInputError, ValueError),
                                           (MissingDependencyError, ImportError)])
def test_each_kind_is_its_builtin_too(kind: type, builtin: type) -> None:
    with pytest.raises(builtin, match="named value"):
        raise kind("the named value")
    assert issubclass(kind, HybridRetrievalError)
    assert str(kind("one line")) == "one line"


def test_reporting_prints_one_line_and_keeps_bugs(capsys: pytest.CaptureFixture) -> None:
    def refuse() -> int:
        raise BadInputError("--top must be at least 1, not 0")

    assert run_reporting_errors(refuse) == 2
    assert capsys.readouterr().err == "error: --top must be at least 1, not 0\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a user error
        run_reporting_errors(lambda: 1 // 0)


@pytest.mark.parametrize("argv, expected", [
    (["search", "{tmp}/missing.index", "rain"], "error: no index at {tmp}/missing.index"),
    (["index", "build", "{tmp}", "--checkpoint", "{tmp}/nothing", "--out", "{tmp}/x.index"],
     "error: no checkpoint found at {tmp}/nothing"),
    (["similar", "{tmp}/q.wav", "--catalog", "{tmp}", "--checkpoint", "{tmp}/nothing"],
     "error: query audio file not found: {tmp}/q.wav"),
])
def test_cli_errors_are_one_line(argv: list[str], expected: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected.format(tmp=tmp_path)) and err.count("\n") == 1 and "Traceback" not in err
