"""What the command line reads and prints: checked argument values, and names made safe to print.

File names come from disks and CSVs that anyone may have written: a name holding terminal escape
sequences would recolour, retitle or clear the user's terminal if printed raw, so text output and
error lines print such characters escaped (`\\x1b`). JSON output is escaped by json.dumps.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from hybrid_retrieval.errors import BadInputError, NotFoundError


def printable(text: object) -> str:
    """`text` with every non-printable character (controls, escapes, line breaks) written as a
    Python escape, so that it prints as one inert line; printable text (any script) is unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _count(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {number}")
    return number


def at_least_one(value: str) -> int:
    """argparse type of counts such as --top: an integer of at least 1."""
    return _count(value, 1)


def at_least_zero(value: str) -> int:
    """argparse type of counts that may be 0, such as --workers."""
    return _count(value, 0)


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def positive_number(value: str) -> float:
    """argparse type of lengths such as --window-seconds: a finite number above 0."""
    number = _number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return number


def window_length(value: str) -> float:
    """argparse type of --window-seconds: a finite number of at least 0 (0: whole clips)."""
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0 (0: whole clips), not {value}")
    return number


def recall(value: str) -> float:
    """argparse type of a target recall: a number above 0 and at most 1."""
    number = _number(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {value}")
    return number


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --window-seconds and --device, as the commands that embed audio or text with a
    retrieval model take them (`models.load_retrieval_model`, `window_or_default`)."""
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint or run directory (its latest), a released checkpoint, audioset_tags "
                             "(training-free) or a Hugging Face Hub id")
    parser.add_argument("--window-seconds", type=window_length, default=None,
                        help="embed longer files as the mean of windows of this length, read one at a time "
                             "(default: the audio model's training clip length, 10 s; 0: whole files)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def window_or_default(given: float | None, default: float) -> float | None:
    """A --window-seconds value as the embedding code takes it: `default` (the audio tower's) when
    not given; None (whole files) for 0."""
    seconds = default if given is None else given
    return seconds or None


def readable_file(path: str | Path, what: str = "file") -> Path:
    """`path` if it is a file that can be opened; otherwise one BadInputError (NotFoundError when
    missing) naming it and why: a symlink loop, a folder, no permission."""
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{what} not found: {printable(path)}") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, EACCES on a parent, ...
        raise BadInputError(f"{what} {printable(path)} cannot be opened: {exc.strerror}") from exc
    if not path.is_file():
        raise BadInputError(f"{what} {printable(path)} is not a file")
    return path


def check_queries(queries: list[str]) -> list[str]:
    """Refuse empty or whitespace-only text queries, naming which."""
    for number, query in enumerate(queries, 1):
        if not query.strip():
            raise BadInputError(f"query {number} of {len(queries)} is empty ({query!r}); give some words to search for")
    return queries
