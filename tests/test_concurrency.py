"""Several processes share one cache file at the same time: no entry is lost, nothing is corrupt."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


# --- leases: processes that share a results folder compute each item once ------------------------------

# `python -m harness eval ...` behind a gate: the slow imports come first, so that two processes
# released together start their work together (else one may finish before the other has begun).
EVAL_AT_GATE = r"""
import os, sys, time
import torch, transformers  # noqa: F401
import harness.cli, harness.pipeline, harness.rerankers.seqcls  # noqa: F401
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
sys.exit(harness.cli.main(sys.argv[2:]))
"""


def _tiny_config(tmp_path: Path, name: str, weights: Path, cache_every: int = 10) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "type": "cross-encoder", "weights": {"path": str(weights)},
                                    "max_length": 128, "batch_size": 8, "cache_every": cache_every}))
    return path


def _eval_args(config: Path, results: Path, depth: int) -> list[str]:
    return ["eval", "--model", str(config), "--task", "trec-dl-2019", "--depth", str(depth), "--results",
            str(results), "--no-progress"]


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _stage(bundle: Path) -> dict[str, Any]:
    return dict(json.loads((bundle / "execution.json").read_text())["stages"][0])


def test_two_runs_of_the_same_work_compute_each_item_once(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    """Two evaluations of the same work at once on one results folder (two names for one model: the
    name is not part of the cache key, and each gets its own bundle): every item is computed once in
    all, both take part, and the two bundles hold the same numbers."""
    depth, results, calls, gate = 20, tmp_path / "results", tmp_path / "calls.jsonl", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HARNESS_CALL_LOG": str(calls)}
    procs = [subprocess.Popen([sys.executable, "-c", EVAL_AT_GATE, str(gate),
                               *_eval_args(_tiny_config(tmp_path, name, tiny_cross_encoder), results, depth)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("tiny-a", "tiny-b")]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    gate.touch()
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]

    lines = _calls(calls)
    keys = [k for line in lines for k in line["keys"]]
    assert len(keys) == len(set(keys)) == 43 * depth  # each item computed once, by one of the two
    assert {line["pid"] for line in lines} == {p.pid for p in procs}  # both computed a share
    bundles = [results / "trec-dl-2019" / f"bm25.top{depth}" / name for name in ("tiny-a", "tiny-b")]
    stages = [_stage(b) for b in bundles]
    assert sum(int(s["computed"]) for s in stages) == 43 * depth
    for stage in stages:
        assert int(stage["computed"]) + int(stage["from_cache"]) == 43 * depth

    def named(bundle: Path, file: str) -> str:
        return (bundle / file).read_text().replace(bundle.name, "NAME")

    for file in ("run.trec", "judgments.jsonl", "per_query.tsv"):
        assert named(bundles[0], file) == named(bundles[1], file), file
    metrics = [json.loads((b / "metrics.json").read_text()) for b in bundles]
    assert metrics[0]["reranked"] == metrics[1]["reranked"]


def _stop_holding_leases(proc: subprocess.Popen[bytes], cache: Path, calls: Path) -> list[str]:
    """SIGSTOP `proc` once it has computed two batches, at a moment it holds leases outside a
    transaction (so that it holds no SQLite lock); the keys it holds."""
    deadline = time.monotonic() + 300
    while len([line for line in _calls(calls) if line["pid"] == proc.pid]) < 2:
        assert proc.poll() is None, "the run ended before it computed two batches"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    while True:
        assert proc.poll() is None, "the run ended before it was caught holding leases"
        assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGSTOP)
        db = sqlite3.connect(cache, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")  # fails while the stopped process is inside a transaction
            held = [k for k, owner in db.execute("SELECT key, owner FROM leases") if f"|{proc.pid}|" in owner]
            db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            held = []
        finally:
            db.close()
        if held:
            return held
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)


def test_a_stalled_runs_leases_run_out_and_are_taken_over(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    """A run stopped (SIGSTOP) while it holds leases renews them no more: a second run takes them over
    once they run out and finishes; the stalled run, continued, finishes too, and the bundle it
    rewrites is the same. (A run SIGKILLed holding leases blocks no one even before they run out: its
    owner is a dead process of this machine; tests/test_resume.py kills and restarts runs, and
    tests/test_cache.py checks such leases directly.)"""
    depth, results, calls = 10, tmp_path / "results", tmp_path / "calls.jsonl"
    config = _tiny_config(tmp_path, "tiny-ce", tiny_cross_encoder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HARNESS_CALL_LOG": str(calls),
           "HARNESS_LEASE_SECONDS": "3"}
    stalled = subprocess.Popen([sys.executable, "-m", "harness", *_eval_args(config, results, depth)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        held = _stop_holding_leases(stalled, results / "cache.sqlite", calls)
        second = subprocess.run([sys.executable, "-m", "harness", *_eval_args(config, results, depth)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        bundle = results / "trec-dl-2019" / f"bm25.top{depth}" / "tiny-ce"
        run = (bundle / "run.trec").read_bytes()
        lines = _calls(calls)
        taken = {k for line in lines if line["pid"] != stalled.pid for k in line["keys"]}
        assert set(held) <= taken
        assert len(_all_rows(results / "cache.sqlite")) == 43 * depth
    finally:
        if stalled.poll() is None:
            os.kill(stalled.pid, signal.SIGCONT)
    out, _ = stalled.communicate(timeout=300)
    assert stalled.returncode == 0, out.decode()[-3000:]
    assert (bundle / "run.trec").read_bytes() == run
