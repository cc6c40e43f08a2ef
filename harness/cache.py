"""A persistent cache of model outputs in SQLite.

The key of an entry is a hash of everything that decides the output: the model fingerprint (id,
revision or weights checksum, dtype, quantization, backend and its version, decoding parameters,
prompt template hash) and the exact input. Entries are committed batch by batch, so a run killed
half way keeps all it finished. WAL mode and a busy timeout let several processes share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
);
"""


BUSY_SECONDS = 60.0  # how long a process waits for another's transaction before it gives up


def _when_free(statement: Callable[[], object]) -> None:
    """Run a statement, retrying while another process holds the lock.

    SQLite does not call the busy handler for every lock: several processes opening a new file at
    once can get "database is locked" at once from the switch to WAL mode. They wait and retry here.
    """
    deadline, pause = time.monotonic() + BUSY_SECONDS, 0.001
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        _when_free(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        _when_free(lambda: self._db.executescript(SCHEMA))

    @staticmethod
    def key(model_fingerprint: str, item: Any) -> str:
        return stable_hash([model_fingerprint, item])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, value FROM outputs WHERE key IN ({marks})", chunk)  # noqa: S608
            for key, value in rows:
                found[key] = json.loads(value)
        return found

    def put_many(self, model: str, entries: Mapping[str, Any]) -> None:
        """Store entries in one transaction (all or none)."""
        now = time.time()
        rows = [(k, model, json.dumps(v, sort_keys=True), now) for k, v in entries.items()]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._db.execute("SELECT COUNT(*) FROM outputs").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM outputs WHERE model = ?", (model,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
