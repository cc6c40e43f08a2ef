"""Line reading shared by every reader: BOM and CRLF tolerated but reported, empty files refused."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import InputError

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"


def note(notes: list[str] | None, message: str) -> None:
    """Log a recoverable input problem once and, when the caller keeps a list, count it there."""
    log.warning("%s", message)
    if notes is not None:
        notes.append(message)


def read_text(path: str | Path, what: str, notes: list[str] | None = None) -> bytes:
    """The bytes of a text file that has at least one non-blank line, without a byte-order mark.

    A UTF-8 byte-order mark and CRLF line ends are accepted (both are common in files that went
    through Windows tools); each is logged once and appended to `notes`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file does not exist")
    raw = path.read_bytes()
    bom = raw.startswith(BOM)
    if bom:
        raw = raw[len(BOM) :]
    if not raw or raw.isspace():
        raise InputError(path, f"{what} file is empty; expected at least one line")
    if bom:
        note(notes, f"{path}: starts with a UTF-8 byte-order mark; ignored")
    if b"\r" in raw and b"\r\n" in raw:
        note(notes, f"{path}: has CRLF line ends; read as LF")
    return raw


def numbered_lines(path: str | Path, raw: bytes) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its end) of the non-blank lines of `raw`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 ({exc.reason}); expected UTF-8 text", line=bad_line) from exc
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")
        if line.strip():
            yield number, line


def read_lines(path: str | Path, what: str, notes: list[str] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its end) of a non-empty text file; blank lines
    are skipped. The checks of `read_text` run at the call, before the first line."""
    return numbered_lines(path, read_text(path, what, notes))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Build a million small records without the cyclic collector scanning them again and again.

    Records of runs and qrels (tuples, dicts of strings and floats) hold no cycles; pausing the
    collector while they are made takes a 1M-line run from seconds to a fraction of one.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
