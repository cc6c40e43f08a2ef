"""The cache file: a damaged one stops a run with a message that says how to recover (and the user's
file is never changed); `python -m harness cache recover` keeps every row that can be read; leases
let processes that share a cache compute each item once."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import Cache, CacheFileError, compute_once
from harness.cli import main
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PAGE = 4096  # SQLite's default page size


def _value(i: int) -> dict[str, Any]:
    # about 600 bytes a row, like a cross-encoder's output with its extras: a few hundred pages in all
    return {"score": i / 7, "extra": {"passage": f"passage {i} " * 50}, "fallback": None}


def _real_cache(path: Path, rows: int = 3000) -> dict[str, Any]:
    entries = {Cache.key("fp", i): _value(i) for i in range(rows)}
    keys = list(entries)
    with Cache(path) as cache:
        for start in range(0, rows, 500):
            cache.put_many("model", {k: entries[k] for k in keys[start : start + 500]})
    return entries


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage(path: Path, how: str) -> None:
    """Make `path` (absent, or a real cache) into a damaged cache of the kind `how`."""
    if how == "garbage":
        path.write_bytes(b"these are not the bytes of a database\n" * 40)
    elif how == "truncated":
        _real_cache(path)
        os.truncate(path, path.stat().st_size // 2 + 100)  # a copy cut short, not on a page boundary
    elif how == "damaged-page":
        _real_cache(path)
        with path.open("r+b") as fh:  # three pages in the middle overwritten
            fh.seek(60 * PAGE)
            fh.write(bytes(range(256)) * (3 * PAGE // 256))
    elif how == "directory":
        path.mkdir()
        (path / "something").write_text("a folder where the cache file should be\n")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["garbage", "truncated", "damaged-page", "directory"])
def test_a_damaged_cache_is_refused_and_left_as_it_was(tmp_path: Path, how: str) -> None:
    path = tmp_path / "cache.sqlite"
    _damage(path, how)
    before = _sha(path) if path.is_file() else None
    with pytest.raises(CacheFileError) as err:
        Cache(path)
    message = str(err.value)
    assert str(path) in message
    if how == "directory":
        assert "is a directory" in message and "move it aside" in message
    else:
        assert "damaged" in message and f"python -m harness cache recover {path}" in message
        assert "move it aside" in message
        assert _sha(path) == before  # not one byte changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]  # nothing written beside it


@pytest.mark.parametrize("how", ["garbage", "truncated", "directory"])
def test_eval_on_a_damaged_cache_exits_2_before_any_model(tmp_path: Path, tiny_cross_encoder: Path, how: str) -> None:
    """Through the command line: exit status 2, the message, no traceback, no reranker built, nothing
    computed, the file unchanged."""
    config = tmp_path / "tiny-ce.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder",
                                      "weights": {"path": str(tiny_cross_encoder)}}))
    results = tmp_path / "results"
    results.mkdir()
    cache = results / "cache.sqlite"
    _damage(cache, how)
    before = _sha(cache) if cache.is_file() else None
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HARNESS_CALL_LOG": str(calls), "COLUMNS": "300"}
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", str(config), "--task", "trec-dl-2019",
                          "--depth", "5", "--results", str(results), "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and str(cache) in text.replace("\n", "")
    assert "stage tiny-ce" not in text  # the stage (and its reranker) never started
    assert not calls.exists()
    if before is not None:
        assert _sha(cache) == before
        assert "cache recover" in text


@pytest.mark.parametrize("how", ["truncated", "damaged-page"])
def test_recover_copies_every_readable_row_beside_the_file(tmp_path: Path, how: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cache.sqlite"
    _damage(path, how)
    entries = _real_cache(tmp_path / "reference.sqlite")  # the same rows, undamaged
    (tmp_path / "reference.sqlite").unlink()
    before = _sha(path)
    assert main(["cache", "recover", str(path)]) == 0
    out = capsys.readouterr().out
    recovered = tmp_path / "cache.recovered.sqlite"
    assert str(recovered) in out.replace("\n", "") and "mv " in out
    assert _sha(path) == before  # the damaged file is left as it was
    db = sqlite3.connect(recovered)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(db.execute("SELECT key, value FROM outputs"))
    finally:
        db.close()
    with Cache(recovered) as cache:  # a cache the harness opens
        got = cache.get_many(entries)
    assert set(got) == set(rows) and all(got[k] == entries[k] for k in got)
    keys = list(entries)
    if how == "truncated":  # a prefix survives: the first half of the file, less a page or two
        assert 0.3 * len(keys) < len(got) < 0.6 * len(keys)
    else:  # three pages lost: the rows of those pages only, and rows after them are kept
        assert 0.9 * len(keys) < len(got) < len(keys)
        assert keys[-1] in got and keys[0] in got
    assert f"{len(got)} rows" in out


def test_recover_refuses_a_file_with_nothing_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite"
    _damage(path, "garbage")
    assert main(["cache", "recover", str(path)]) == 2
    assert "no row of the cache could be read" in caplog.text and str(path) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]


def test_recover_never_overwrites_an_earlier_recovery(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    _damage(path, "truncated")
    first = tmp_path / "cache.recovered.sqlite"
    first.write_text("an earlier recovery the user kept\n")
    assert main(["cache", "recover", str(path)]) == 0
    assert first.read_text() == "an earlier recovery the user kept\n"
    with Cache(tmp_path / "cache.recovered-2.sqlite") as cache:
        assert cache.count() > 0


def test_an_sqlite_file_that_is_not_a_cache_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outputs (id INTEGER, text TEXT)")
    db.commit()
    db.close()
    with pytest.raises(CacheFileError, match=r"not a harness cache.*columns \(id, text\)"):
        Cache(path)


# --- leases ---------------------------------------------------------------------------------------

def test_a_leased_key_is_not_claimed_by_another_owner_until_committed(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with Cache(path) as a, Cache(path) as b:
        assert a.claim(["k1", "k2", "k3"]) == ["k1", "k2", "k3"]
        assert b.claim(["k0", "k1", "k2", "k3", "k4"]) == ["k0", "k4"]  # a's keys stay a's
        a.put_many("m", {"k1": 1, "k2": 2})  # committed: the leases go with the commit
        assert b.claim(["k1", "k2", "k3"]) == []  # done, or still leased (k3)
    with Cache(path) as c:  # a closed: its lease on k3 is released; b's on k0 and k4 too
        assert c.claim(["k1", "k3", "k0", "k4"]) == ["k3", "k0", "k4"]


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with Cache(path, lease_seconds=60) as a, Cache(path, lease_seconds=60) as b:
        assert a.claim(["k"]) == ["k"]
        assert b.claim(["k"]) == []
        db = sqlite3.connect(path)  # a stalled: its lease runs out
        db.execute("UPDATE leases SET expires = ?", (time.time() - 1,))
        db.commit()
        db.close()
        assert b.claim(["k"]) == ["k"]


KILLED_OWNER = r"""
import os, signal, sys
from harness.cache import Cache

cache = Cache(sys.argv[1], lease_seconds=3600)
assert cache.claim(["k1", "k2"]) == ["k1", "k2"]
print("claimed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_leases_of_a_killed_process_are_free_at_once(tmp_path: Path) -> None:
    """A process of this machine that died holding hour-long leases keeps no one waiting."""
    path = tmp_path / "cache.sqlite"
    proc = subprocess.run([sys.executable, "-c", KILLED_OWNER, str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9 and "claimed" in proc.stdout, proc.stderr
    db = sqlite3.connect(path)
    try:
        assert {k for (k,) in db.execute("SELECT key FROM leases WHERE expires > ?", (time.time() + 3000,))} \
            == {"k1", "k2"}  # still there, far from running out
    finally:
        db.close()
    with Cache(path, lease_seconds=3600) as cache:
        assert cache.claim(["k1", "k2", "k3"]) == ["k1", "k2", "k3"]


def test_compute_once_waits_for_what_another_owner_computes(tmp_path: Path) -> None:
    """b finds k0..k3 leased by a: it computes the rest first, then waits, and takes a's outputs."""
    path = tmp_path / "cache.sqlite"
    keys = [f"k{i}" for i in range(10)]
    computed: list[list[str]] = []
    arrived: dict[str, Any] = {}
    with Cache(path) as a:
        assert a.claim(keys[:4]) == keys[:4]

        def worker() -> None:  # b: its own connection, in its own thread
            with Cache(path) as b:

                def compute(chunk: list[str]) -> None:
                    computed.append(chunk)
                    b.put_many("m", {k: f"b:{k}" for k in chunk})

                compute_once(b, keys, 3, compute, arrived.update)

        thread = threading.Thread(target=worker)
        thread.start()
        deadline = time.monotonic() + 30
        while len(computed) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert thread.is_alive()  # waiting for k0..k3
        a.put_many("m", {k: f"a:{k}" for k in keys[:4]})
        thread.join(30)
        assert not thread.is_alive()
    assert computed == [["k4", "k5"], ["k6", "k7", "k8"], ["k9"]]  # the chunks of 3, less a's keys
    assert arrived == {k: f"a:{k}" for k in keys[:4]}


def test_the_lease_time_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_LEASE_SECONDS", "2.5")
    with Cache(tmp_path / "c.sqlite") as cache:
        assert cache.lease_seconds == 2.5
    monkeypatch.setenv("HARNESS_LEASE_SECONDS", "soon")
    with pytest.raises(ConfigError, match=r"HARNESS_LEASE_SECONDS.*'soon'.*seconds"):
        Cache(tmp_path / "c.sqlite")
