"""Reading shared by every reader: only regular files are opened, gzip is read transparently, BOM and
CRLF are tolerated but reported, empty files refused; ids are checked and values in messages kept short."""

from __future__ import annotations

import gc
import gzip
import logging
import os
import re
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import InputError

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
# What a truncated or damaged gzip stream raises, depending on where the damage is.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_WHITESPACE = re.compile(r"\s")  # the same characters str.split() separates columns at
MESSAGE_VALUE_CHARS = 80


def brief(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with an ellipsis: a message quotes what it found, never
    a whole data structure or a 10,000-character line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def id_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be a query or document id, or None. A TREC file separates its columns with
    whitespace, so an id with a space inside would come back from the bundle's run as extra columns."""
    if not value:
        return f"{what} is empty; expected a non-empty id without whitespace"
    if _WHITESPACE.search(value):
        return (f"{what} {brief(value)} contains whitespace; expected an id without spaces, tabs or line breaks "
                "(TREC files separate their columns with whitespace)")
    return None


def has_whitespace(values: str) -> bool:
    return _WHITESPACE.search(values) is not None


def check_regular_file(path: str | Path, what: str) -> Path:
    """Stat `path` before anything opens it: opening a FIFO with no writer would wait for ever, and a
    folder or a device is not what the user meant to give."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(path, f"{what} file does not exist") from None
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    if stat.S_ISDIR(mode):
        raise InputError(path, f"is a folder; expected a {what} file")
    if not stat.S_ISREG(mode):
        raise InputError(path, f"is not a regular file (a FIFO, socket or device); expected a {what} file")
    return path


def is_gzip(path: Path, head: bytes) -> bool:
    """A file is read as gzip when it says so by name or by its first two bytes."""
    return path.name.endswith(".gz") or head.startswith(GZIP_MAGIC)


def read_input(path: str | Path, what: str, *, decompress: bool = True) -> bytes:
    """All bytes of a regular file, gunzipped when it is gzip (`.gz` or the gzip magic bytes)."""
    path = check_regular_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    if decompress and is_gzip(path, raw):
        try:
            raw = gzip.decompress(raw)
        except _GZIP_ERRORS as exc:
            raise _bad_gzip(path, what, exc) from None
    return raw


def read_head(path: str | Path, what: str, size: int = 4096) -> bytes:
    """The first `size` bytes of a file's content (gunzipped when it is gzip), to guess its format."""
    path = check_regular_file(path, what)
    try:
        with path.open("rb") as fh:
            head = fh.read(size)
            if not is_gzip(path, head):
                return head
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh) as unpacked:
                return unpacked.read(size)
    except _GZIP_ERRORS as exc:
        raise _bad_gzip(path, what, exc) from None
    except OSError as exc:
        raise _unreadable(path, what, exc) from None


def note(notes: list[str] | None, message: str) -> None:
    """Log a recoverable input problem once and, when the caller keeps a list, count it there."""
    log.warning("%s", message)
    if notes is not None:
        notes.append(message)


def _unreadable(path: Path, what: str, exc: OSError) -> InputError:
    return InputError(path, f"cannot be read ({exc.strerror or exc}); expected a readable {what} file")


def _bad_gzip(path: Path, what: str, exc: Exception) -> InputError:
    return InputError(path, f"not a valid gzip file ({exc or type(exc).__name__}); expected a complete "
                      f"gzip-compressed {what} file, or no .gz ending if it is not compressed")


def read_text(path: str | Path, what: str, notes: list[str] | None = None) -> bytes:
    """The bytes of a text file that has at least one non-blank line, without a byte-order mark.

    A UTF-8 byte-order mark and CRLF line ends are accepted (both are common in files that went
    through Windows tools); each is logged once and appended to `notes`. A gzip file is read
    through gzip.
    """
    raw = read_input(path, what)
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
