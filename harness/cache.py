"""A persistent cache of model outputs in SQLite, shared safely by several processes.

The key of an entry is a hash of everything that decides the output: the model fingerprint (id,
revision or weights checksum, dtype, quantization, backend and its version, decoding parameters,
prompt template hash) and the exact input. Entries are committed batch by batch, so a run killed
half way keeps all it finished. WAL mode and a busy timeout let several processes share one file.

Leases keep two processes from computing the same item: before computing a chunk a process claims
the keys no live lease holds (`claim`), and the commit of their outputs drops the leases
(`put_many`). A lease lasts `lease_seconds` and is renewed by a thread while its owner lives, so one
whose owner stalled runs out; one whose owner died on this machine is free at once. `compute_once`
is the loop every family runs through it.

A file that is not a usable cache (not SQLite, damaged, a directory) is refused when it is opened,
before any model is built, with a `CacheFileError` that says how to recover; the file is never
changed. `harness.cache_recovery` copies the rows that can still be read into a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""
OUTPUT_COLUMNS = ("key", "model", "value", "created")

BUSY_SECONDS = 60.0  # how long a process waits for another's transaction before it gives up
LEASE_ENV = "HARNESS_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0  # how long a stalled process can keep others waiting
MAX_POLL_SECONDS = 1.0  # the longest pause between two looks for outputs another process computes


class CacheFileError(InputError):
    """The cache file cannot be used: not an SQLite database, damaged, a directory, not a cache."""


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


def damaged(path: Path, detail: str) -> CacheFileError:
    return CacheFileError(path, (
        f"the cache is damaged ({detail}); nothing in it was changed. To keep the outputs that can still be "
        f"read, run `python -m harness cache recover {path}`: it copies them into a new file beside it and "
        f"says how to put that in place. Or move it aside, with its -wal and -shm files if there are any "
        f"(`mv {path} {path}.damaged`): the next run starts an empty cache and computes every output again"))


def _is_damage(exc: sqlite3.Error) -> bool:
    # SQLITE_CORRUPT and SQLITE_NOTADB come as the base class; locks, full disks and permissions as
    # OperationalError, constraint failures as IntegrityError.
    return type(exc) is sqlite3.DatabaseError


def lease_seconds_from_env() -> float:
    raw = os.environ.get(LEASE_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"environment variable {LEASE_ENV}={raw!r}: expected a number of seconds > 0 "
                          f"(how long a lease on an item lasts unless renewed; default {DEFAULT_LEASE_SECONDS:g})")
    return value


# --- who holds a lease -------------------------------------------------------------------------------
def _machine() -> str:
    """This host, and its pid namespace: pids mean the same thing only where both are equal."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe test (os.kill(pid, 0) kills on Windows): wait for the lease to end
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    try:  # a killed process its parent has not reaped yet is a zombie: it computes nothing
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _owner_alive(owner: str) -> bool:
    """False when the owner is known dead: a process of this machine that no longer runs."""
    machine, _, rest = owner.partition("|")
    pid = rest.partition("|")[0]
    if machine != _machine() or not pid.isdigit():
        return True  # another machine: only its lease's end tells
    return _pid_alive(int(pid))


class _Renewal:
    """A thread that keeps this owner's leases alive while the process runs (a SIGKILL or SIGSTOP
    stops it too, so the leases of a dead or stalled process run out)."""

    def __init__(self, path: Path, owner: str, seconds: float) -> None:
        self.path, self.owner, self.seconds = path, owner, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-lease-renewal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        every = self.seconds / 3
        db = sqlite3.connect(self.path, timeout=every, isolation_level=None)
        try:
            while not self._stop.wait(every):
                try:
                    db.execute("UPDATE leases SET expires = ? WHERE owner = ?",
                               (time.time() + self.seconds, self.owner))
                except sqlite3.Error as exc:
                    # Not fatal: at worst the lease runs out and another process computes the items too.
                    log.warning("could not renew the leases in %s (%s); another process may compute the same "
                                "items", self.path, exc)
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.seconds)


class Cache:
    def __init__(self, path: str | Path, *, lease_seconds: float | None = None) -> None:
        self.path = Path(path)
        self.lease_seconds = lease_seconds if lease_seconds is not None else lease_seconds_from_env()
        self.owner = f"{_machine()}|{os.getpid()}|{uuid.uuid4().hex[:12]}"
        self._renewal: _Renewal | None = None
        if self.path.exists() and not self.path.is_file():
            kind = "a directory" if self.path.is_dir() else "not a regular file"
            raise CacheFileError(self.path, f"is {kind}, not a cache file; move it aside (the next run then starts "
                                            "an empty cache) or pass another --results folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise CacheFileError(self.path, f"cannot be opened ({exc}); expected a writable file") from exc
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Check the file before anything writes to it, then set it up."""
        db = self._db
        try:
            db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
            # Reads every page of the file (about 0.7 ms per MB): damage anywhere shows here, before
            # any model is built, not half way through a run.
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise damaged(self.path, "; ".join(problems))
            columns = tuple(row[1] for row in db.execute("PRAGMA table_info(outputs)"))
            if columns and columns != OUTPUT_COLUMNS:
                raise CacheFileError(self.path, (
                    f"is an SQLite database but not a harness cache: its table `outputs` has columns "
                    f"({', '.join(columns)}); expected ({', '.join(OUTPUT_COLUMNS)}). Move it aside or pass "
                    "another --results folder"))
            db.execute("PRAGMA synchronous=NORMAL")
            _when_free(lambda: db.execute("PRAGMA journal_mode=WAL"))
            _when_free(lambda: db.executescript(SCHEMA))
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise damaged(self.path, str(exc)) from exc
            raise CacheFileError(self.path, f"cannot be used as the cache ({exc}); expected a writable SQLite "
                                            "file (is the folder writable, the disk full?)") from exc

    @contextmanager
    def _checked(self) -> Iterator[None]:
        """Damage found after the file was opened (another program wrote to it) is named too."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise damaged(self.path, str(exc)) from exc
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._checked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select_keys(self, sql: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(sql.format(marks=marks), chunk).fetchall()
        return rows

    @staticmethod
    def key(model_fingerprint: str, item: Any) -> str:
        return stable_hash([model_fingerprint, item])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        with self._checked():
            rows = self._select_keys("SELECT key, value FROM outputs WHERE key IN ({marks})", list(keys))
        return {key: json.loads(value) for key, value in rows}

    def put_many(self, model: str, entries: Mapping[str, Any]) -> None:
        """Store entries in one transaction (all or none), and drop every lease on their keys."""
        now = time.time()
        rows = [(k, model, json.dumps(v, sort_keys=True), now) for k, v in entries.items()]
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)", rows)
            self._db.executemany("DELETE FROM leases WHERE key = ?", [(k,) for k in entries])

    def claim(self, keys: Sequence[str], limit: int | None = None) -> list[str]:
        """Lease the keys (at most `limit`, in order) that have no output and no live lease of another
        owner, in one transaction, and return them. The caller computes them and commits them with
        `put_many`; until then the renewal thread keeps the leases alive."""
        keys = list(dict.fromkeys(keys))
        with self._transaction():
            now = time.time()
            done = {k for (k,) in self._select_keys("SELECT key FROM outputs WHERE key IN ({marks})", keys)}
            held = {k: (owner, expires) for k, owner, expires in
                    self._select_keys("SELECT key, owner, expires FROM leases WHERE key IN ({marks})", keys)}
            alive: dict[str, bool] = {}
            free = []
            for k in keys:
                if k in done:
                    continue
                owner, expires = held.get(k, (self.owner, 0.0))
                if owner != self.owner and expires > now:
                    if owner not in alive:
                        alive[owner] = _owner_alive(owner)
                    if alive[owner]:
                        continue
                free.append(k)
                if limit is not None and len(free) >= limit:
                    break
            self._db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                                 [(k, self.owner, now + self.lease_seconds) for k in free])
        if free and self._renewal is None:
            self._renewal = _Renewal(self.path, self.owner, self.lease_seconds)
        return free

    def release(self) -> None:
        """Drop this owner's leases (what it claimed and did not commit): others need not wait."""
        with self._transaction():
            self._db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))

    def count(self, model: str | None = None) -> int:
        with self._checked():
            if model is None:
                return int(self._db.execute("SELECT COUNT(*) FROM outputs").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM outputs WHERE model = ?", (model,)).fetchone()[0])

    def close(self) -> None:
        if self._renewal is not None:
            self._renewal.stop()
            try:
                self.release()
            except sqlite3.Error as exc:  # closing after a failure: the leases run out on their own
                log.warning("could not release the leases in %s (%s); they run out in %g s",
                            self.path, exc, self.lease_seconds)
            self._renewal = None
        self._db.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_once(cache: Cache, keys: Sequence[str], step: int, compute: Callable[[list[str]], None],
                 arrived: Callable[[dict[str, Any]], None]) -> float:
    """Get an output into the cache for every key, each computed once by the processes that share it.

    `keys` (none of them in the cache when the caller looked) are cut into chunks of `step` in their
    order; of each chunk this process claims what no other holds and calls `compute(claimed)`, which
    must commit those keys with `put_many`. Keys another process holds are done last: their outputs
    are awaited (polling with back-off) and handed to `arrived` as they appear, and a lease that ran
    out (its owner stalled or died) is claimed and computed here. With no other process the chunks
    are exactly the cuts of `keys`, so a resumed run computes the batches an uninterrupted one would.
    Returns the seconds spent waiting.
    """
    step = max(1, step)
    deferred: list[str] = []
    for start in range(0, len(keys), step):
        chunk = list(keys[start : start + step])
        claimed = cache.claim(chunk)
        if claimed:
            compute(claimed)
        if len(claimed) < len(chunk):
            mine = set(claimed)
            deferred += [k for k in chunk if k not in mine]
    waited, pause = 0.0, 0.02
    while deferred:
        found = cache.get_many(deferred)
        if found:
            arrived(found)
            deferred = [k for k in deferred if k not in found]
        claimed = cache.claim(deferred, limit=step) if deferred else []
        if claimed:
            compute(claimed)
            mine = set(claimed)
            deferred = [k for k in deferred if k not in mine]
        elif deferred:
            if not waited:
                log.info("%d items are being computed by another process sharing %s; waiting for them",
                         len(deferred), cache.path)
            time.sleep(pause)
            waited += pause
            pause = min(2 * pause, MAX_POLL_SECONDS, cache.lease_seconds / 4)
    return waited
