"""Kill and resume: SIGKILL an evaluation at random moments, start it again each time, and get the
bundle of an uninterrupted run, with no finished item computed twice.

The model calls are counted by the harness itself ($HARNESS_CALL_LOG: one line per computed batch,
written after the model returned and before the batch is committed to the cache).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 20  # 43 queries x 20 = 860 items
ITEMS = 43 * DEPTH
CHUNK = 20  # cache_every: 43 commits
BUNDLE_FILES = ("first_stage.trec", "run.trec", "per_query.tsv", "judgments.jsonl")


def _config(tmp_path: Path, weights: Path) -> Path:
    cfg = {"name": "tiny-ce", "type": "cross-encoder", "weights": {"path": str(weights)}, "max_length": 128,
           "batch_size": 8, "cache_every": CHUNK}
    path = tmp_path / "tiny-ce.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Job:
    """One `harness eval` command line with its results folder and call log."""

    def __init__(self, config: Path, results: Path, calls: Path, depth: int = DEPTH) -> None:
        self.results, self.calls = results, calls
        self.cmd = [sys.executable, "-m", "harness", "eval", "--model", str(config), "--task", "trec-dl-2019",
                    "--depth", str(depth), "--results", str(results), "--no-progress"]
        # One thread everywhere: the reference and the resumed run do the same arithmetic.
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HARNESS_CALL_LOG": str(calls)}
        self.bundle = results / "trec-dl-2019" / f"bm25.top{depth}" / config.stem
        self.attempt = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.attempt += 1
        log = open(self.results.parent / f"{self.results.name}.attempt{self.attempt}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def lines(self, pid: int | None = None) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        rows = [json.loads(line) for line in self.calls.read_text().splitlines()]
        return [r for r in rows if pid is None or r["pid"] == pid]

    def committed(self) -> set[str]:
        db = sqlite3.connect(self.results / "cache.sqlite")
        try:
            return {k for (k,) in db.execute("SELECT key FROM outputs")}
        finally:
            db.close()

    def output(self) -> str:
        return (self.results.parent / f"{self.results.name}.attempt{self.attempt}.log").read_text()


def _wait(proc: subprocess.Popen[bytes], until: Any, what: str, job: Job) -> None:
    deadline = time.monotonic() + 120
    while not until():
        assert proc.poll() is None, f"the run ended before {what}:\n{job.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _metrics(bundle: Path) -> dict[str, Any]:
    """metrics.json without the code version, which another commit in between could change."""
    metrics = json.loads((bundle / "metrics.json").read_text())
    del metrics["provenance"]["code"]
    return dict(metrics)


def _assert_same_bundle(bundle: Path, reference: Path) -> None:
    for name in BUNDLE_FILES:
        assert (bundle / name).read_bytes() == (reference / name).read_bytes(), name
    assert _metrics(bundle) == _metrics(reference)


def test_sigkill_at_random_moments_resumes_to_the_same_bundle(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    config = _config(tmp_path, tiny_cross_encoder)
    rng = random.Random(20240605)
    reference = Job(config, tmp_path / "reference", tmp_path / "reference-calls.jsonl")
    job = Job(config, tmp_path / "results", tmp_path / "calls.jsonl")
    uninterrupted = reference.start()  # beside the killed runs: one thread each, two cores

    # Three kills while scoring, after a random number of batches and a random part of the next one.
    lost: set[str] = set()
    for _ in range(3):
        proc = job.start()
        batches = rng.randint(2, 8)
        _wait(proc, lambda: len(job.lines(proc.pid)) >= batches, f"{batches} batches", job)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.1))  # about one batch of 20 pairs
        proc.kill()
        proc.wait()
        committed, mine = job.committed(), job.lines(proc.pid)
        computed = {k for line in mine for k in line["keys"]}
        # All that was lost is the batch between the model and its commit; all that is cached was counted.
        assert computed - committed <= set(mine[-1]["keys"])
        assert committed <= {k for line in job.lines() for k in line["keys"]}
        lost |= computed - committed
        assert CHUNK * (batches - 1) <= len(committed) < ITEMS

    # The fourth run finishes the scoring from where the third stopped.
    before = len(job.committed())
    proc = job.start()
    assert proc.wait(timeout=300) == 0, job.output()[-3000:]
    execution = json.loads((job.bundle / "execution.json").read_text())["stages"][0]
    assert (execution["from_cache"], execution["computed"]) == (before, ITEMS - before)
    assert uninterrupted.wait(timeout=300) == 0, reference.output()[-3000:]
    _assert_same_bundle(job.bundle, reference.bundle)

    # A rerun into the finished bundle, killed while it writes the bundle: the bundle must not read
    # as finished (metrics.json is the marker) beside half-written files.
    first_file = job.bundle / "first_stage.trec"
    for _ in range(3):
        stamp = first_file.stat().st_mtime_ns
        proc = job.start()
        while proc.poll() is None and first_file.stat().st_mtime_ns == stamp:
            time.sleep(0.001)
        proc.kill()
        if proc.wait() == -9:
            break  # killed half way; otherwise it was too quick for us: try again
    assert proc.returncode == -9, "could not kill the run while it wrote its bundle"
    assert not (job.bundle / "metrics.json").exists()
    assert not job.lines(proc.pid)  # nothing to compute: everything was in the cache

    # The last run, warm, gives the reference bundle again.
    proc = job.start()
    assert proc.wait(timeout=300) == 0, job.output()[-3000:]
    _assert_same_bundle(job.bundle, reference.bundle)

    # Counting model calls: each item computed once, except the few lost between model and commit.
    counts = Counter(k for line in job.lines() for k in line["keys"])
    assert set(counts) == job.committed() and len(counts) == ITEMS
    assert {k for k, n in counts.items() if n > 1} == lost and max(counts.values()) <= 2
    assert sum(line["n"] for line in job.lines()) == ITEMS + len(lost)
    assert sum(line["n"] for line in reference.lines()) == ITEMS


# --- listwise: windows go through the same engine --------------------------------------------------

LW_DEPTH = 6  # window 3, step 2: three windows a query, in three rounds
LW_WINDOWS = 43 * 3
LW_CHUNK = 4  # cache_every: windows between commits


def _rows_without_cached_flags(bundle: Path) -> list[dict[str, Any]]:
    """judgments.jsonl, without the windows' `cached` flags (a resumed run found some in the cache)."""
    rows = [json.loads(line) for line in (bundle / "judgments.jsonl").read_text().splitlines()]
    for row in rows:
        for window in row.get("listwise_windows", []):
            del window["cached"]
    return rows


def test_listwise_sigkill_resumes_to_the_same_bundle(tmp_path: Path, dl19_texts: list[str]) -> None:
    """Listwise windows are committed by the engine every `cache_every`, as pointwise pairs: killed in
    the middle of a round, the run resumes where it stopped and gives the uninterrupted bundle, with
    no committed window generated twice."""
    from harness.tiny import build_causal_lm

    weights = build_causal_lm(tmp_path / "tiny-llama", dl19_texts, "llama")
    config = tmp_path / "tiny-listwise.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-listwise", "type": "listwise", "weights": {"path": str(weights)},
                                      "window": 3, "step": 2, "max_new_tokens": 6, "max_passage_words": 40,
                                      "batch_size": 4, "cache_every": LW_CHUNK}))
    rng = random.Random(20240611)
    reference = Job(config, tmp_path / "reference", tmp_path / "reference-calls.jsonl", LW_DEPTH)
    job = Job(config, tmp_path / "results", tmp_path / "calls.jsonl", LW_DEPTH)
    uninterrupted = reference.start()

    lost: set[str] = set()
    for _ in range(2):
        proc = job.start()
        batches = rng.randint(2, 14)
        _wait(proc, lambda: len(job.lines(proc.pid)) >= batches, f"{batches} batches", job)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.wait()
        committed, mine = job.committed(), job.lines(proc.pid)
        computed = {k for line in mine for k in line["keys"]}
        assert computed - committed <= set(mine[-1]["keys"])  # lost: at most the chunk in flight
        assert {k for line in mine[:-1] for k in line["keys"]} <= committed
        assert committed <= {k for line in job.lines() for k in line["keys"]}
        assert len(committed) < LW_WINDOWS
        lost |= computed - committed

    before = len(job.committed())
    proc = job.start()
    assert proc.wait(timeout=300) == 0, job.output()[-3000:]
    execution = json.loads((job.bundle / "execution.json").read_text())["stages"][0]
    assert (execution["items"], execution["from_cache"], execution["computed"]) == (LW_WINDOWS, before,
                                                                                    LW_WINDOWS - before)
    assert set(execution["seconds_split"]) >= {"build", "load", "model", "cache"}
    assert uninterrupted.wait(timeout=300) == 0, reference.output()[-3000:]
    for name in ("first_stage.trec", "run.trec", "per_query.tsv"):
        assert (job.bundle / name).read_bytes() == (reference.bundle / name).read_bytes(), name
    assert _metrics(job.bundle) == _metrics(reference.bundle)
    assert _rows_without_cached_flags(job.bundle) == _rows_without_cached_flags(reference.bundle)

    # Counting model calls: each window generated once, except those lost between model and commit.
    counts = Counter(k for line in job.lines() for k in line["keys"])
    assert set(counts) == job.committed() and len(counts) == LW_WINDOWS
    assert {k for k, n in counts.items() if n > 1} == lost and max(counts.values()) <= 2
    assert sum(line["n"] for line in job.lines()) == LW_WINDOWS + len(lost)
    assert sum(line["n"] for line in reference.lines()) == LW_WINDOWS
    assert max(line["n"] for line in reference.lines()) == LW_CHUNK
