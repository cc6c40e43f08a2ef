"""The one reranker interface, batch first, for every paradigm.

A reranker receives all the requests of a stage at once and owns sorting, batching and caching.
Pointwise families only write `pair_input` and `score_pairs`; `PointwiseReranker.rerank` does the
rest (cache look-up, loading the model only when something is left to compute, committing finished
batches, sharing the work with other processes on the same cache, counting what was computed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.cache import Cache, compute_once, stable_hash
from harness.errors import ConfigError
from harness.records import Document, Judgment
from harness.weights import ResolvedWeights, Weights, resolve_weights

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of items just finished

# A file to which every computed batch appends one JSON line {"pid", "model", "n", "keys"}: an
# honest count of model calls across processes (the kill-and-resume test reads it). Unset: no log.
CALL_LOG_ENV = "HARNESS_CALL_LOG"


def log_calls(model: str, keys: Sequence[str]) -> None:
    """Record that the model computed these items (cache keys), if $HARNESS_CALL_LOG names a file.

    Called after the model returned a batch and before the batch is committed, so a kill between the
    two shows up as computed but not cached. One `write` in append mode per batch: lines of several
    processes do not interleave, and a killed process loses nothing it wrote.
    """
    path = os.environ.get(CALL_LOG_ENV)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "model": model, "n": len(keys), "keys": list(keys)}) + "\n"
    with open(path, "a", encoding="utf-8") as log_file:
        log_file.write(line)


class Quantization(BaseModel):
    """Quantize a full-precision checkpoint while loading it (transformers backends).

    `quanto` (optimum-quanto) runs on CPU and GPU; `bitsandbytes` needs CUDA. Checkpoints that are
    quantized already (AWQ, GPTQ, compressed-tensors) need no such field: their config says so.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["quanto", "bitsandbytes"]
    weights: Literal["int8", "int4", "float8", "nf4"] = "int8"


# The devices torch can be given by name; anything else would fail only once the model is loading.
DEVICE_PATTERN = "^(auto|cpu|mps|cuda(:[0-9]+)?)$"
# The least `max_length` of the families that cut their input to a token budget: tokenizers ignore
# a budget shorter than their special tokens (a BERT pair has three) instead of failing, so the
# model would see the whole input while every item is counted as truncated.
MIN_MAX_LENGTH = 8


class ModelConfig(BaseModel):
    """Fields every model config has; each family adds its own, with a literal `type`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    description: str = ""
    weights: Weights
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # The pattern is in the schema; the validator below says it in words.
    device: str = Field(default="auto", json_schema_extra={"pattern": DEVICE_PATTERN})
    batch_size: int = Field(default=32, ge=1)
    trust_remote_code: bool = False
    cache_every: int = Field(default=512, ge=1)  # items between cache commits: what a kill can lose at most
    # A string names the checkpoint's own scheme (awq, gptq: vLLM's `quantization`); a mapping
    # (`{method: quanto, weights: int8}`) quantizes a full-precision checkpoint while loading it.
    quantization: Quantization | str | None = None
    # The GPU memory the model needs (GB); unset: small enough to run on a CPU. `tables` reports
    # cells of such models as "not run: no GPU" on machines without CUDA.
    gpu_memory_gb: float | None = Field(default=None, gt=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps (found {value!r})")
        return value


@dataclass(frozen=True)
class RerankRequest:
    query_id: str
    query: str
    candidates: list[Document]  # in the order of the previous stage
    prompt_key: str = ""  # the task's key for per-dataset prompt templates (e.g. "scifact")


@dataclass
class RerankStats:
    items: int = 0
    from_cache: int = 0
    computed: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # where the stage's time went: load, model, cache

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "from_cache": self.from_cache, "computed": self.computed,
                "fallbacks": dict(sorted(self.fallbacks.items())),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


class Reranker(Protocol):
    config: ModelConfig

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides an output: weights revision, dtype, backend, versions, prompt."""
        ...

    def rerank(self, requests: Sequence[RerankRequest], cache: Cache,
               progress: Progress | None = None) -> tuple[list[list[Judgment]], RerankStats]:
        ...


def torch_device_and_dtype(config: ModelConfig) -> tuple[Any, Any]:
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # torch would fail inside the model's loading with a traceback; say which setting to change.
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"only {count} CUDA device(s)" if count else "no CUDA"
            raise ConfigError(f"model {config.name!r}: device {config.device!r}, but this machine has {have}; "
                              "set `device: auto` (CUDA when there is one, else the CPU) or `device: cpu`")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model {config.name!r}: device 'mps', but Apple's MPS is not available on this "
                          "machine; set `device: auto` or `device: cpu`")
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return torch.device(device), dtype


class PointwiseReranker:
    """Shared machinery of families that score each (query, document) pair on its own."""

    config: ModelConfig
    backend: ClassVar[str] = ""

    def __init__(self, config: ModelConfig, weights: ResolvedWeights | None = None) -> None:
        self.config = config
        self.weights = weights or resolve_weights(config.weights, config.name)
        self.calls = 0  # items computed by the model in this process

    # --- what a family writes -------------------------------------------------------------
    def pair_input(self, query: str, doc: Document) -> Any:
        """The exact input of one pair (after templating): part of the cache key."""
        raise NotImplementedError

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        """Score a batch of pair inputs; query_id/doc_id of the judgments are filled in later."""
        raise NotImplementedError

    def backend_info(self) -> dict[str, Any]:
        return {}

    def load(self) -> None:
        """Load the model; called once something is left to compute, so a run that finds every output
        in the cache loads none. Families that load in `__init__` leave this empty; it must be
        idempotent."""

    # --- shared --------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        # What cannot change an output stays out of the key: names, batch size, device, hardware hints.
        decided_by = self.config.model_dump(
            exclude={"name", "description", "batch_size", "cache_every", "weights", "device", "gpu_memory_gb"})
        return {
            "weights": self.weights.source,
            "revision": self.weights.revision,
            "config": decided_by,
            "backend": self.backend,
            **self.backend_info(),
        }

    def rerank(self, requests: Sequence[RerankRequest], cache: Cache,
               progress: Progress | None = None) -> tuple[list[list[Judgment]], RerankStats]:
        fp = stable_hash(self.fingerprint())
        flat: list[tuple[int, Document, Any, str]] = []
        for r, req in enumerate(requests):
            for doc in req.candidates:
                item = self.pair_input(req.query, doc)
                flat.append((r, doc, item, Cache.key(fp, item)))
        stats = RerankStats(items=len(flat))
        clock = time.perf_counter()
        known = cache.get_many({k for *_, k in flat})
        multiplicity = Counter(k for *_, k in flat)
        if progress and known:
            progress(sum(multiplicity[k] for k in known))
        todo: dict[str, Any] = {}
        for _, _, item, key in flat:
            if key not in known and key not in todo:
                todo[key] = item
        computed: set[str] = set()
        seconds = {"load": 0.0, "model": 0.0}

        def compute(chunk: list[str]) -> None:
            if not computed:  # the model is loaded only once something is left to compute here
                started = time.perf_counter()
                self.load()
                seconds["load"] += time.perf_counter() - started
            started = time.perf_counter()
            judged = self.score_pairs([todo[k] for k in chunk])
            seconds["model"] += time.perf_counter() - started
            self.calls += len(chunk)
            log_calls(fp, chunk)
            entries = {k: {"score": j.score, "extra": j.extra, "fallback": j.fallback}
                       for k, j in zip(chunk, judged, strict=True)}
            cache.put_many(fp, entries)
            known.update(entries)
            computed.update(chunk)
            if progress:
                progress(sum(multiplicity[k] for k in chunk))

        def arrived(found: dict[str, Any]) -> None:  # computed meanwhile by another process
            known.update(found)
            if progress:
                progress(sum(multiplicity[k] for k in found))

        # Chunks of `cache_every` cut from the same key order on every run, each committed whole: a
        # resumed run scores exactly the batches an uninterrupted one would (same padding, same bits).
        # Keys another process is computing are waited for instead (compute_once).
        waited = compute_once(cache, list(todo), self.config.cache_every, compute, arrived)
        total = time.perf_counter() - clock
        stats.computed = len(computed)
        stats.from_cache = sum(1 for *_, k in flat if k not in computed)
        stats.seconds = {**seconds, "cache": total - seconds["load"] - seconds["model"] - waited}
        if waited:
            stats.seconds["wait"] = waited
        out: list[list[Judgment]] = [[] for _ in requests]
        for r, doc, _, key in flat:
            value = known[key]
            j = Judgment(requests[r].query_id, doc.doc_id, float(value["score"]), dict(value["extra"]),
                         value["fallback"], cached=key not in computed)
            if j.fallback:
                stats.fallbacks[j.fallback] = stats.fallbacks.get(j.fallback, 0) + 1
            out[r].append(j)
        return out, stats


__all__ = [
    "Document",
    "Judgment",
    "ModelConfig",
    "PointwiseReranker",
    "Quantization",
    "RerankRequest",
    "RerankStats",
    "Reranker",
    "log_calls",
    "torch_device_and_dtype",
]
