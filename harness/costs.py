"""Cost cells of a published table: what a run cost (from a bundle's execution record) and what a
model weighs (from its weights on disk).

A cost measure is a name a table's cell writes in `measure:`, beside the ir_measures strings. Each
name says its unit, and `COST_MEASURES` says what it measures, so that a regenerated table names
what every cost cell holds. Cost values are in the measure's own unit: `scale` does not apply.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from math import prod
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.schema import StageExecution

SECONDS_PER_QUERY = "seconds/query"
SECONDS_PER_100_DOCS = "seconds/100 docs"
DOCS_PER_SECOND = "docs/s"
PEAK_GPU_GB = "peak GPU GB"
DISK_GB = "disk GB"
PARAMETERS_B = "parameters B"

_SCORING = "wall time of the reranking stages, model loading excluded (execution.json)"
COST_MEASURES: dict[str, str] = {
    SECONDS_PER_QUERY: f"{_SCORING}, per judged query",
    SECONDS_PER_100_DOCS: f"{_SCORING}, per 100 documents of the first stage handed to the reranker",
    DOCS_PER_SECOND: f"documents of the first stage handed to the reranker, per second of {_SCORING}",
    PEAK_GPU_GB: "the largest peak torch CUDA allocation among the reranking stages, in 10^9 bytes "
                 "(execution.json; vLLM stages allocate outside torch and have none)",
    DISK_GB: "the weight files (safetensors, else .bin/.pt) of the model's resolved local folder, in "
             "10^9 bytes; a LoRA adapter's folder holds the adapter only, not its base",
    PARAMETERS_B: "parameters counted from the safetensors headers of the model's local folder, in 10^9",
}

# Measures read from a bundle's execution record: they need a run whose outputs were all computed
# (a cached output costs nothing and loads no model).
FROM_EXECUTION = {SECONDS_PER_QUERY, SECONDS_PER_100_DOCS, DOCS_PER_SECOND, PEAK_GPU_GB}
# Measures read from the weights alone: no task, no run, no GPU.
FROM_WEIGHTS = {DISK_GB, PARAMETERS_B}

# Files in a checkpoint folder that hold training state, not the model.
_NOT_WEIGHTS = ("optimizer", "scheduler", "rng_state", "training_args")


def is_cost(measure: str) -> bool:
    return measure in COST_MEASURES


def from_execution(bundle: Any, measure: str) -> tuple[float | None, str]:
    """The cost `measure` of a finished bundle (`harness.bundle.Bundle`), or None and why not."""
    stages = bundle.execution.stages if bundle.execution else []
    if not stages:
        return None, "no reranking stage to measure"
    if used_cache(bundle):
        return None, "unusable: some outputs came from the cache (measure it with a fresh cache)"
    if measure == PEAK_GPU_GB:
        peaks = [s.peak_gpu_mb for s in stages]
        if any(p is None for p in peaks):
            which = ", ".join(s.model for s, p in zip(stages, peaks, strict=True) if p is None)
            return None, f"no GPU peak in the execution record for {which} (ran without a GPU, or on vLLM)"
        return max(peaks) * 2**20 / 1e9, ""
    # Model loading is paid once per run, not per document: it stays out of every time.
    seconds = sum(_scoring_seconds(s) for s in stages)
    if measure == SECONDS_PER_QUERY:
        return seconds / bundle.metrics.queries.judged, ""
    docs = _documents_handed_over(bundle.path)
    if not docs or seconds <= 0:
        return None, "the bundle records no documents or no scoring time"
    if measure == SECONDS_PER_100_DOCS:
        return seconds * 100 / docs, ""
    return docs / seconds, ""


def used_cache(bundle: Any) -> bool:
    return any(s.computed < s.items for s in (bundle.execution.stages if bundle.execution else []))


def _scoring_seconds(stage: StageExecution) -> float:
    split = stage.seconds_split or {}
    return stage.seconds - split.get("build", 0.0) - split.get("load", 0.0)


def _documents_handed_over(bundle_path: Path) -> int:
    """Lines of the bundle's first_stage.trec: the first stage cut at the depth, which the first
    reranking stage scored (a listwise stage's `items` count windows, not documents)."""
    path = bundle_path / "first_stage.trec"
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def weight_files(folder: Path) -> list[Path]:
    """The files that hold a model's weights: safetensors when there are any (a folder may carry a
    .bin copy of the same tensors), else PyTorch pickles; training state is left out."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if safetensors:
        return safetensors
    return [p for p in files if p.suffix in (".bin", ".pt", ".pth") and not p.name.startswith(_NOT_WEIGHTS)]


def from_weights(folders: Sequence[Path], measure: str) -> tuple[float | None, str]:
    """Disk size or parameter count of the weights in `folders` (one per model of the row)."""
    files = [f for folder in folders for f in weight_files(folder)]
    if not files:
        return None, f"no weight files in {', '.join(map(str, folders))}"
    if measure == DISK_GB:
        return sum(f.stat().st_size for f in files) / 1e9, ""  # stat follows the hub cache's symlinks
    tensors = [f for f in files if f.suffix == ".safetensors"]
    if len(tensors) != len(files):
        return None, "a parameter count needs safetensors weights (their header lists every shape)"
    return sum(_parameters(f) for f in tensors) / 1e9, ""


def _parameters(path: Path) -> int:
    """Elements of every tensor listed in a safetensors header: an 8-byte little-endian length,
    then that many bytes of JSON (name -> dtype, shape, offsets). No tensor data is read."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (struct.error, ValueError) as exc:
        raise InputError(path, f"not a safetensors file: its header does not parse ({exc})") from exc
    return sum(prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
