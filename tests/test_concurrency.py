"""Several processes share one cache file at the same time: no entry is lost, nothing is corrupt."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from harness.cache import Cache

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 500  # transactions per writer
OWN, SHARED = 10, 10  # entries per transaction: the writer's own, and keys every writer writes

# A writer: waits at the gate with the others, then opens the (new) cache file and commits ROUNDS
# transactions of its own keys and shared keys; after each it reads its writes and a sample of the
# others' back and checks every value it sees.
WRITER = r"""
import hashlib, os, random, sys, time
from harness.cache import Cache

path, gate = sys.argv[1], sys.argv[2]
worker, rounds, n_own, n_shared = map(int, sys.argv[3:])

def value(key):
    digest = hashlib.sha256(key.encode()).hexdigest()
    return {"score": int(digest[:12], 16) / 16**12, "text": digest * 8}

rng = random.Random(worker)
while not os.path.exists(gate):
    time.sleep(0.0005)
with Cache(path) as cache:
    for r in range(rounds):
        own = [f"w{worker}-r{r}-{i}" for i in range(n_own)]
        shared = [f"shared-{rng.randrange(300)}" for _ in range(n_shared)]
        cache.put_many(f"writer-{worker}", {k: value(k) for k in own + shared})
        others = [f"w{w}-r{rng.randrange(r + 1)}-{i}" for w in range(3) for i in (0, n_own - 1)]
        got = cache.get_many(own + shared + others)
        missing = [k for k in own + shared if k not in got]
        wrong = [k for k, v in got.items() if v != value(k)]
        if missing or wrong:
            sys.exit(f"round {r}: missing {missing[:3]}, wrong {wrong[:3]}")
        print(r, flush=True)
"""


def _value(key: str) -> dict[str, object]:
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()
    return {"score": int(digest[:12], 16) / 16**12, "text": digest * 8}


def _all_rows(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return dict(db.execute("SELECT key, value FROM outputs"))
    finally:
        db.close()


def test_writers_at_once_and_one_killed(tmp_path: Path) -> None:
    """Three processes create and fill one cache at once; the third is SIGKILLed half way. The two
    others lose nothing; the killed one leaves whole transactions only; every value is intact."""
    path, gate = tmp_path / "cache.sqlite", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(gate), *map(str, (w, ROUNDS, OWN, SHARED))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(3)]
    time.sleep(0.5)  # let them all reach the gate: they open the file together
    gate.touch()
    victim = procs[2]
    kill_after = random.Random(4).randint(ROUNDS // 4, ROUNDS // 2)
    assert victim.stdout is not None
    for line in victim.stdout:
        if int(line) >= kill_after:
            break
    victim.kill()
    victim.wait()
    for proc in procs[:2]:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert out.split()[-1] == str(ROUNDS - 1)

    rows = _all_rows(path)
    assert all(json.loads(v) == _value(k) for k, v in rows.items())
    for w in (0, 1):  # finished writers: every entry there
        assert all(f"w{w}-r{r}-{i}" in rows for r in range(ROUNDS) for i in range(OWN))
    # the killed writer: a prefix of its rounds, each transaction whole (all its entries or none)
    done = [sum(f"w2-r{r}-{i}" in rows for i in range(OWN)) for r in range(ROUNDS)]
    assert set(done) <= {0, OWN}
    finished = done.count(OWN)
    assert kill_after + 1 <= finished < ROUNDS and done[:finished] == [OWN] * finished
    shared = {k for k in rows if k.startswith("shared-")}
    assert len(rows) == (2 * ROUNDS + finished) * OWN + len(shared)
    with Cache(path) as cache:
        assert cache.count() == len(rows)


def test_two_evals_share_one_cache(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    """Two `harness eval` processes of overlapping work (depth 6 and depth 12 of the same model) run
    at once on one results folder: both finish, and the cache holds every item once, uncorrupted."""
    config = tmp_path / "tiny-ce.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder", "cache_every": 20,
                                      "weights": {"path": str(tiny_cross_encoder)}, "max_length": 128}))
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "eval", "--model", str(config), "--task",
                               "trec-dl-2019", "--depth", str(depth), "--results", str(results), "--no-progress"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for depth in (12, 6)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
    rows = _all_rows(results / "cache.sqlite")
    assert len(rows) == 43 * 12  # the depth-6 pairs are among the depth-12 ones: one entry each
    for depth in (6, 12):
        bundle = results / "trec-dl-2019" / f"bm25.top{depth}" / "tiny-ce"
        stage = json.loads((bundle / "execution.json").read_text())["stages"][0]
        assert stage["items"] == 43 * depth and stage["from_cache"] + stage["computed"] == 43 * depth
        assert len((bundle / "run.trec").read_text().splitlines()) == 43 * depth
    for value in rows.values():
        entry = json.loads(value)
        assert set(entry) == {"score", "extra", "fallback"} and isinstance(entry["score"], float)
