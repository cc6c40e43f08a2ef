"""Line reading shared by every reader: BOM and CRLF tolerated but reported, empty files refused."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from harness.errors import InputError

log = logging.getLogger(__name__)


def read_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its end) of a non-empty text file.

    Blank lines are skipped. A UTF-8 byte-order mark and CRLF line ends are accepted (both are
    common in files that went through Windows tools) and logged once.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file does not exist")
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(path, f"{what} file is empty; expected at least one line")
    if raw.startswith(b"\xef\xbb\xbf"):
        log.warning("%s: starts with a UTF-8 byte-order mark; ignored", path)
        raw = raw[3:]
    if b"\r\n" in raw:
        log.warning("%s: has CRLF line ends; read as LF", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 ({exc.reason})", line=bad_line) from exc
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")
        if line.strip():
            yield number, line
