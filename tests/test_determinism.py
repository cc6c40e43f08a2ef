"""Determinism: the same job run twice on CPU, each with its own cache (so both really compute), gives
byte-identical run files and the same metrics, to the last bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 6
SAME_BYTES = ("run.trec", "first_stage.trec", "per_query.tsv", "judgments.jsonl")


def _metrics(bundle: Path) -> dict[str, Any]:
    metrics = json.loads((bundle / "metrics.json").read_text())
    del metrics["provenance"]["code"]  # the git commit: another commit between the runs could change it
    return dict(metrics)


def test_two_cold_runs_are_identical(tmp_path: Path) -> None:
    """The packaged all-MiniLM-L6-v2 (real weights), started twice at once in separate processes with
    different hash seeds: no set or dict order may leak into batches, scores or files."""
    config = yaml.safe_load((ROOT / "configs/models/minilm-l6.yaml").read_text())
    config_path = tmp_path / "minilm-l6.yaml"
    config_path.write_text(yaml.safe_dump({**config, "cache_every": 64}))  # several cache chunks
    procs = []
    for seed in ("1", "2"):
        results = tmp_path / f"results-{seed}"
        cmd = [sys.executable, "-m", "harness", "eval", "--model", str(config_path), "--task", "trec-dl-2019",
               "--depth", str(DEPTH), "--results", str(results), "--no-progress"]
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                      results / "trec-dl-2019" / f"bm25.top{DEPTH}" / "minilm-l6"))
    for proc, _ in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out.decode()[-3000:]
    (_, a), (_, b) = procs
    for bundle in (a, b):  # each run computed everything itself
        stage = json.loads((bundle / "execution.json").read_text())["stages"][0]
        assert stage["computed"] == 43 * DEPTH and stage["from_cache"] == 0
    for name in SAME_BYTES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = _metrics(a), _metrics(b)
    assert ma["reranked"] == mb["reranked"] and ma["first_stage"] == mb["first_stage"]
    assert ma == mb
    assert ma["reranked"]["nDCG@10"] != ma["first_stage"]["nDCG@10"]  # the model did rerank
