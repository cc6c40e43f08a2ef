"""The one reranker interface, batch first, for every paradigm, and the pointwise families' shared half.

A reranker receives all the requests of a stage at once. `Family.rerank` runs them through one
`Engine` (harness.engine: cache look-up, lazy loading, commits, the call log, progress, the time
split), the same for every family; a family writes only what is its own:

- `rank(requests, engine)`: turn requests into cache items, run them through the engine, and turn
  the outputs into judgments (listwise: one round of windows after another);
- `load()` and `compute(items)`: load the model (only when something is left to compute) and
  compute a batch of items into JSON-able outputs (what the cache stores);
- `fingerprint()`: what decides an output, the model part of the cache key; `preview(requests)`:
  the inputs as the model will see them, for `--dry-run`.

Pointwise families write even less: `pair_input` (the cache item of a pair), `render` (the model's
input; the item itself unless the family cuts it), `score_pairs` and `preview`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from harness.cache import Cache
from harness.engine import CALL_LOG_ENV, Engine, Progress, log_calls
from harness.errors import ConfigError
from harness.records import Document, Judgment, Ranking, Record, TruncationRecord
from harness.weights import ResolvedWeights, Weights, resolve_weights

log = logging.getLogger(__name__)


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
# Config fields that cannot change an output: kept out of every family's fingerprint.
NOT_IN_FINGERPRINT = {"name", "description", "batch_size", "cache_every", "weights", "device", "gpu_memory_gb",
                      "module"}


class ModelConfig(BaseModel):
    """Fields every model config has; each family adds its own, with a literal `type`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    # A family outside the package: a dotted module, or a .py file relative to the config, whose
    # import registers `type` (harness.registry.register_family).
    module: str | None = None
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

    @model_serializer(mode="wrap")
    def _without_unset_module(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A built-in family's config dumps as it did before `module` existed: the bundle identity and
        # provenance of its results do not change.
        data = handler(self)
        if isinstance(data, dict) and data.get("module") is None:
            data.pop("module", None)
        return data


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
    seconds: dict[str, float] = field(default_factory=dict)  # where the stage's time went: build, load, model, cache

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "from_cache": self.from_cache, "computed": self.computed,
                "fallbacks": dict(sorted(self.fallbacks.items())),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


@dataclass
class Preview:
    """A stage's inputs as its model will see them, for `--dry-run` (only tokenizers are loaded)."""

    example: str  # one rendered input
    lengths: list[int]  # tokens of every input (before any cut)
    context: int | None  # tokens the model takes
    budget: int = 0  # tokens reserved for the output (reasoning, answer)


class Reranker(Protocol):
    config: ModelConfig

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides an output: weights revision, dtype, backend, versions, prompt."""
        ...

    def rerank(self, requests: Sequence[RerankRequest], cache: Cache,
               progress: Progress | None = None) -> tuple[list[Ranking], RerankStats]:
        ...

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
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


def package_version(*dists: str) -> str | None:
    """The version of the first installed distribution of `dists`, read from its metadata: a
    fingerprint must be known before anything is loaded, so it imports neither torch nor vLLM."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def count_fallbacks(rankings: Sequence[Ranking]) -> dict[str, int]:
    """Every fallback of a stage: judgments' own, and the parse problems of listwise windows."""
    counts: dict[str, int] = {}
    for ranking in rankings:
        for j in ranking:
            if j.fallback:
                counts[j.fallback] = counts.get(j.fallback, 0) + 1
        for window in ranking.windows or ():
            for name, n in window.counts.items():
                counts[name] = counts.get(name, 0) + n
    return counts


class Family:
    """What every family shares: `rerank` runs the family's `rank` through one engine."""

    config: ModelConfig
    calls: int = 0  # items computed by the model in this process

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def cache_fingerprint(self) -> dict[str, Any]:
        """The model part of the cache key (default: the whole fingerprint)."""
        return self.fingerprint()

    def load(self) -> None:
        """Load the model; called once something is left to compute, so a run that finds every output
        in the cache loads none (and imports no torch). It must be idempotent."""

    def compute(self, items: list[Any]) -> list[Any]:
        """One JSON-able output (what the cache stores) per item, in order."""
        raise NotImplementedError

    def rank(self, requests: Sequence[RerankRequest], engine: Engine) -> list[Ranking]:
        """Each request's judgments, from the outputs `engine.run` gives for the family's items."""
        raise NotImplementedError

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        raise NotImplementedError(f"the {self.config.type} family has no preflight")

    def rerank(self, requests: Sequence[RerankRequest], cache: Cache,
               progress: Progress | None = None) -> tuple[list[Ranking], RerankStats]:
        engine = Engine(self, self.cache_fingerprint(), cache, cache_every=self.config.cache_every, progress=progress)
        rankings = self.rank(requests, engine)
        done = engine.stats
        stats = RerankStats(items=done.items, from_cache=done.from_cache, computed=done.computed,
                            fallbacks=count_fallbacks(rankings), seconds=dict(done.seconds))
        return rankings, stats


class PointwiseReranker(Family):
    """Shared machinery of families that score each (query, document) pair on its own."""

    backend: ClassVar[str] = ""
    # What the cache's `extra` of a judgment reads back as (None: the family records nothing)
    record_type: ClassVar[type[Record] | None] = TruncationRecord

    def __init__(self, config: ModelConfig, weights: ResolvedWeights | None = None) -> None:
        self.config = config
        self.weights = weights or resolve_weights(config.weights, config.name)
        self.calls = 0

    # --- what a family writes -------------------------------------------------------------
    def pair_input(self, query: str, doc: Document) -> Any:
        """The cache item of one pair (JSON-able): decided by the texts and the config alone, so that
        a cached rerun needs no tokenizer (the tokenizer is pinned by the weights' revision)."""
        raise NotImplementedError

    def pair(self, request: RerankRequest, doc: Document) -> tuple[Any, Any]:
        """(cache item, what `render` takes) of a candidate: the pair_input both, unless rendering
        needs more than the item (rank1 fills in the task's query template, and cuts a passage to
        its context: its item is the uncut prompt, its render takes the query and the passage)."""
        item = self.pair_input(request.query, doc)
        return item, item

    def render(self, source: Any) -> Any:
        """The model's input, as `score_pairs` takes it and preflight shows it (monoT5 cuts its
        passage here, with the tokenizer, which the cache item must not need)."""
        return source

    def inputs(self, requests: Sequence[RerankRequest]) -> list[Any]:
        """Every candidate's model input, rendered: what preflight shows and measures."""
        return [self.render(self.pair(r, d)[1]) for r in requests for d in r.candidates]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        """Score a batch of rendered inputs; query_id/doc_id of the judgments are filled in later."""
        raise NotImplementedError

    def backend_info(self) -> dict[str, Any]:
        """Versions (read from package metadata: no import) and what else decides an output."""
        return {}

    # --- shared --------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        # What cannot change an output stays out of the key: names, batch size, device, hardware hints.
        decided_by = self.config.model_dump(exclude=NOT_IN_FINGERPRINT)
        return {
            "weights": self.weights.source,
            "revision": self.weights.revision,
            "config": decided_by,
            "backend": self.backend,
            **self.backend_info(),
        }

    def compute(self, items: list[Any]) -> list[Any]:
        judged = self.score_pairs([self.render(source) for source in items])
        self.calls += len(items)
        return [self.output(j) for j in judged]

    @staticmethod
    def output(j: Judgment) -> dict[str, Any]:
        """What the cache keeps of a judgment (compute's, and a streaming family's, output)."""
        return {"score": j.score, "extra": j.record.row() if j.record else {}, "fallback": j.fallback}

    def record(self, extra: dict[str, Any]) -> Record | None:
        """A cached output's `extra` as the family's typed record."""
        if not extra or self.record_type is None:
            return None
        return self.record_type.model_validate(extra)

    def rank(self, requests: Sequence[RerankRequest], engine: Engine) -> list[Ranking]:
        pairs = [(r, doc) for r, req in enumerate(requests) for doc in req.candidates]
        made = [self.pair(requests[r], doc) for r, doc in pairs]
        outputs = engine.run([item for item, _ in made], inputs=[source for _, source in made])
        rankings = [Ranking(req.query_id, []) for req in requests]
        for (r, doc), (value, cached) in zip(pairs, outputs, strict=True):
            rankings[r].judgments.append(Judgment(requests[r].query_id, doc.doc_id, float(value["score"]),
                                                  self.record(value["extra"]), value["fallback"], cached))
        return rankings


__all__ = [
    "CALL_LOG_ENV",
    "Document",
    "Family",
    "Judgment",
    "ModelConfig",
    "PointwiseReranker",
    "Preview",
    "Progress",
    "Quantization",
    "Ranking",
    "RerankRequest",
    "RerankStats",
    "Reranker",
    "count_fallbacks",
    "log_calls",
    "package_version",
    "torch_device_and_dtype",
]
