"""`python -m harness cache recover FILE`: copy every output row of a damaged cache that can still be
read into a new file beside it.

The damaged file is never written: SQLite writes even when it only reads (it replays a `-wal` file
and checkpoints it on close), so the file and its `-wal` are copied into a temporary folder beside it
and read there, in two passes:

1. through SQLite, in rowid order, as far as the table can be walked;
2. page by page, as SQLite's own `.recover` does: every table-leaf page of the file and of the
   `-wal` is parsed (https://www.sqlite.org/fileformat.html), so rows the table can no longer reach
   (a truncated file loses the inner pages that are written last) are found too. A key found several
   times there (an old copy on a freed page) keeps its newest row.

Only rows of the cache's shape are kept: text key, model and JSON value, and a number (the time).
"""

from __future__ import annotations

import codecs
import json
import mmap
import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.cache import SCHEMA, CacheFileError

MAGIC = b"SQLite format 3\x00"
TABLE_LEAF = 0x0D
WAL_HEADER, FRAME_HEADER = 32, 24

Row = tuple[str, str, str, float]  # key, model, value, created


@dataclass(frozen=True)
class Recovery:
    source: Path
    target: Path
    rows: int  # rows copied
    from_pages: int  # of which the table no longer reached: found by reading the pages


def _valid(key: object, model: object, value: object, created: object) -> Row | None:
    if not (isinstance(key, str) and isinstance(model, str) and isinstance(value, str)
            and isinstance(created, (int, float)) and not isinstance(created, bool)):
        return None
    try:
        json.loads(value)
    except ValueError:
        return None
    return key, model, value, float(created)


def _table_rows(db: sqlite3.Connection) -> Iterator[Row]:
    """The rows SQLite reaches through the table, up to the first damaged page."""
    try:
        # Lets SQLite open a file shorter than its header says (a truncated copy); read-only here.
        db.execute("PRAGMA writable_schema=ON")
        db.execute("PRAGMA query_only=ON")
        for row in db.execute("SELECT key, model, value, created FROM outputs ORDER BY rowid"):
            valid = _valid(*row)
            if valid is not None:
                yield valid
    except sqlite3.DatabaseError:
        return


# --- the file format, for pages the table no longer reaches --------------------------------------------
def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


class _Pages:
    """The pages of a database file and its -wal, read through memory maps (a cache can be large)."""

    def __init__(self, data: bytes | mmap.mmap, wal: bytes | mmap.mmap) -> None:
        self.data, self.wal = data, wal
        size = struct.unpack(">H", data[16:18])[0]
        self.size = 65536 if size == 1 else size
        if self.size < 512 or self.size & (self.size - 1):
            raise ValueError(f"page size {self.size}")
        self.usable = self.size - data[20]
        self.encoding = {1: "utf-8", 2: "utf-16-le", 3: "utf-16-be"}.get(data[56], "utf-8")
        # Where the newest copy of each page is: the -wal's last frame for it, else the file.
        self.in_wal: dict[int, int] = {}
        self.older: list[tuple[bytes | mmap.mmap, int]] = []  # copies since replaced: may hold rows moved since
        if len(wal) >= WAL_HEADER and struct.unpack(">I", wal[8:12])[0] == self.size:
            frame = FRAME_HEADER + self.size
            for at in range(WAL_HEADER, len(wal) - frame + 1, frame):
                number = struct.unpack(">I", wal[at : at + 4])[0]
                if number in self.in_wal:
                    self.older.append((wal, self.in_wal[number]))
                elif number <= len(data) // self.size:
                    self.older.append((data, (number - 1) * self.size))
                self.in_wal[number] = at + FRAME_HEADER
        self.count = max(len(data) // self.size, max(self.in_wal, default=0))

    def page(self, number: int) -> bytes | None:
        if number in self.in_wal:
            at = self.in_wal[number]
            return self.wal[at : at + self.size]
        if 1 <= number <= len(self.data) // self.size:
            return self.data[(number - 1) * self.size : number * self.size]
        return None

    def payload(self, page: bytes, at: int) -> tuple[bytes, int]:
        """The payload of the table-leaf cell at `at` (its overflow pages followed) and its rowid."""
        size, at = _varint(page, at)
        rowid, at = _varint(page, at)
        local_max = self.usable - 35
        if size <= local_max:
            return page[at : at + size], rowid
        least = (self.usable - 12) * 32 // 255 - 23
        local = least + (size - least) % (self.usable - 4)
        local = local if local <= local_max else least
        parts = [page[at : at + local]]
        number, have, seen = struct.unpack(">I", page[at + local : at + local + 4])[0], local, set()
        while have < size:
            over = self.page(number)
            if number in seen or over is None:
                raise ValueError("broken overflow chain")
            seen.add(number)
            take = min(size - have, self.usable - 4)
            parts.append(over[4 : 4 + take])
            have += take
            number = struct.unpack(">I", over[:4])[0]
        return b"".join(parts), rowid

    def record(self, payload: bytes) -> list[object]:
        header, at = _varint(payload, 0)
        types = []
        while at < header:
            serial, at = _varint(payload, at)
            types.append(serial)
        values: list[object] = []
        at = header
        for serial in types:
            if serial in (1, 2, 3, 4, 5, 6):
                width = (0, 1, 2, 3, 4, 6, 8)[serial]
                values.append(int.from_bytes(payload[at : at + width], "big", signed=True))
            elif serial == 7:
                values.append(struct.unpack(">d", payload[at : at + 8])[0])
                width = 8
            elif serial >= 12:
                width = (serial - 12) // 2
                chunk = payload[at : at + width]
                values.append(codecs.decode(chunk, self.encoding) if serial % 2 else chunk)
            else:  # NULL, the constants 0 and 1, or reserved
                values.append({8: 0, 9: 1}.get(serial))
                width = 0
            if at + width > len(payload):
                raise ValueError("record runs past its payload")
            at += width
        return values

    def _all(self) -> Iterator[bytes]:
        for number in range(1, self.count + 1):
            page = self.page(number)
            if page is not None:
                yield page
        for source, at in self.older:
            yield source[at : at + self.size]

    def rows(self) -> Iterator[Row]:
        for page in self._all():
            start = 100 if page[:16] == MAGIC else 0  # page 1 holds the schema, after the header
            if len(page) < start + 8 or page[start] != TABLE_LEAF:
                continue
            cells = struct.unpack(">H", page[start + 3 : start + 5])[0]
            for i in range(cells):
                try:
                    at = struct.unpack(">H", page[start + 8 + 2 * i : start + 10 + 2 * i])[0]
                    values = self.record(self.payload(page, at)[0])
                except (IndexError, ValueError, struct.error, UnicodeDecodeError):
                    continue  # a damaged cell: the next one may be whole
                if len(values) == 4:
                    valid = _valid(*values)
                    if valid is not None:
                        yield valid


def _mapped(path: Path) -> bytes | mmap.mmap:
    if not path.is_file() or path.stat().st_size == 0:
        return b""
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _page_rows(copy: Path) -> Iterator[Row]:
    data, wal = _mapped(copy), _mapped(copy.with_name(copy.name + "-wal"))
    try:
        if len(data) < 100 or data[:16] != MAGIC:
            return
        try:
            pages = _Pages(data, wal)
        except (ValueError, struct.error):
            return
        yield from pages.rows()
    finally:
        for mapped in (data, wal):
            if isinstance(mapped, mmap.mmap):
                mapped.close()


# --- the command ------------------------------------------------------------------------------------------
def recovered_name(path: Path) -> Path:
    """`cache.recovered.sqlite`, or `cache.recovered-2.sqlite`...: a name nothing has yet."""
    n = 1
    while True:
        name = f"{path.stem}.recovered{'' if n == 1 else f'-{n}'}{path.suffix}"
        if not any(path.with_name(name + side).exists() for side in ("", "-wal", "-shm", "-journal")):
            return path.with_name(name)
        n += 1


def _place(fresh: Path, path: Path) -> Path:
    """Give the finished file its name beside `path`; a link, so that nothing is ever overwritten."""
    while True:
        target = recovered_name(path)
        try:
            os.link(fresh, target)
            return target
        except FileExistsError:
            continue  # taken since we looked: the next name
        except OSError:  # a file system without hard links
            os.replace(fresh, target)
            return target


def _copy_rows(copy: Path, fresh: Path) -> tuple[int, int]:
    src = sqlite3.connect(copy, isolation_level=None)
    dst = sqlite3.connect(fresh, isolation_level=None)
    try:
        dst.executescript(SCHEMA)
        dst.execute("BEGIN")
        dst.executemany("INSERT OR IGNORE INTO outputs VALUES (?, ?, ?, ?)", _table_rows(src))
        reached = int(dst.execute("SELECT COUNT(*) FROM outputs").fetchone()[0])
        # Rows the table reached are the live ones; among the others, the newest copy of a key wins.
        dst.execute("CREATE TEMP TABLE reached (key TEXT PRIMARY KEY)")
        dst.execute("INSERT INTO reached SELECT key FROM outputs")
        dst.executemany("INSERT INTO outputs VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                        "model = excluded.model, value = excluded.value, created = excluded.created "
                        "WHERE excluded.created > outputs.created "
                        "AND NOT EXISTS (SELECT 1 FROM reached WHERE reached.key = outputs.key)",
                        _page_rows(copy))
        dst.execute("COMMIT")
        total = int(dst.execute("SELECT COUNT(*) FROM outputs").fetchone()[0])
        return total, total - reached
    finally:
        src.close()
        dst.close()


def recover(path: str | Path) -> Recovery:
    path = Path(path)
    if not path.exists():
        raise CacheFileError(path, "does not exist; expected the cache file to recover")
    if not path.is_file():
        raise CacheFileError(path, "is not a file; expected the cache file to recover (an SQLite file)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.recover-") as work:
        copy = Path(work) / "damaged.sqlite"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file():  # committed transactions not yet written into the file itself
            shutil.copyfile(wal, Path(work) / "damaged.sqlite-wal")
        fresh = Path(work) / "recovered.sqlite"
        rows, from_pages = _copy_rows(copy, fresh)
        if rows == 0:
            raise CacheFileError(path, (
                "no row of the cache could be read (the file is not an SQLite database, or nothing of it is "
                f"left); there is nothing to keep. Move it aside (`mv {path} {path}.damaged`): the next run "
                "starts an empty cache and computes every output again"))
        target = _place(fresh, path)
    return Recovery(path, target, rows, from_pages)
