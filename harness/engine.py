"""The one execution core under every family.

A family declares how an input becomes its cache item, how a batch of items is computed, and how
outputs become judgments; the engine owns the rest, the same for pointwise pairs, listwise windows
and reasoning chains:

- cache look-up under (model fingerprint, exact item), duplicates computed once;
- lazy loading: `family.load()` runs only when something is left to compute in this process, so a
  fully cached rerun loads no model and imports no torch;
- commits every `cache_every` computed items, cut from the same key order on every run, so a resumed
  run computes exactly the batches an uninterrupted one would (same padding, same bits), and a kill
  loses at most the chunk in flight;
- sharing the work with other processes on the same cache (`compute_once`: an item another process
  holds is waited for, or taken over when its lease runs out);
- the call log (`HARNESS_CALL_LOG`), progress, and the time split: load, model, cache (and wait).

A family whose backend finishes items one by one (vLLM's engine) may offer `stream(items)`,
yielding groups of finished (index, output); the engine commits each group as it comes, so a kill
loses only the items in flight.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from harness.cache import Cache, compute_once, stable_hash

Progress = Callable[[int], None]  # called with the number of units just finished

# A file to which every computed batch appends one JSON line {"pid", "model", "n", "keys"}: an
# honest count of model calls across processes (the kill-and-resume tests read it). Unset: no log.
CALL_LOG_ENV = "HARNESS_CALL_LOG"


def log_calls(model: str, keys: Sequence[str]) -> None:
    """Record that the model computed these items (cache keys), if $HARNESS_CALL_LOG names a file.

    Called after the model returned and before the commit, so a kill between the two shows up as
    computed but not cached. One `write` in append mode per batch: lines of several processes do not
    interleave, and a killed process loses nothing it wrote.
    """
    path = os.environ.get(CALL_LOG_ENV)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "model": model, "n": len(keys), "keys": list(keys)}) + "\n"
    with open(path, "a", encoding="utf-8") as log_file:
        log_file.write(line)


class Computes(Protocol):
    """What the engine needs of a family."""

    def load(self) -> None:
        """Load the model (idempotent); called once something is left to compute."""
        ...

    def compute(self, items: list[Any]) -> list[Any]:
        """One JSON-able output per item, in order."""
        ...


@runtime_checkable
class Streams(Protocol):
    def stream(self, items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
        """Groups of (index into items, output) as items finish (vLLM: those of one engine step),
        every item exactly once; each group is committed as it comes."""
        ...


class Executor(Protocol):
    """Computes an engine's pending items somewhere else (harness.workers: Ray actors, one model replica
    each), in the engine's chunks, committing each on this process with `commit(outputs, logged=True)`
    (the worker wrote the call-log line); returns the seconds it waited (for workers, other processes)."""

    def compute(self, engine: Engine, todo: dict[str, Any], commit: Callable[..., None],
                arrived: Callable[[dict[str, Any]], None]) -> float:
        ...


_EXECUTOR: ContextVar[Executor | None] = ContextVar("harness_executor", default=None)


@contextmanager
def executing(executor: Executor | None) -> Iterator[None]:
    """Engines made inside compute their pending items on `executor` (None: in this process). The
    pipeline sets it around a stage, so every family, and each member of an ensemble, uses it."""
    token = _EXECUTOR.set(executor)
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


@dataclass
class EngineStats:
    """Counts and seconds of every `run` of one engine. `computed`: distinct items computed by this
    process; `from_cache`: items whose output this process did not compute (found in the cache, or
    computed meanwhile by another process)."""

    items: int = 0
    from_cache: int = 0
    computed: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"load": 0.0, "model": 0.0, "cache": 0.0})

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def streams_whole_job(family: object) -> bool:
    """Whether a streaming family wants the whole job at once (its `streams_whole_job`, e.g. a vLLM
    backend) rather than `cache_every` items at a time (a transformers backend streams in lock step,
    so a chunk is what a kill may lose)."""
    return isinstance(family, Streams) and bool(getattr(family, "streams_whole_job", False))


class Engine:
    """Runs the items of one family through one cache. `run` may be called several times (the rounds
    of listwise windows); counts and times add up across calls."""

    def __init__(self, family: Computes, fingerprint: dict[str, Any], cache: Cache, *, cache_every: int,
                 progress: Progress | None = None, executor: Executor | None = None) -> None:
        self.family = family
        self.executor = executor if executor is not None else _EXECUTOR.get()
        self.model_key = stable_hash(fingerprint)
        self.cache = cache
        self.cache_every = max(1, cache_every)
        self.progress = progress
        self.stats = EngineStats()
        self._loaded = False

    def key(self, item: Any) -> str:
        return Cache.key(self.model_key, item)

    def advance(self, units: int) -> None:
        """Progress for units with nothing to compute (a listwise query shorter than two passages)."""
        if self.progress and units:
            self.progress(units)

    def run(self, items: Sequence[Any], weights: Sequence[int] | None = None,
            inputs: Sequence[Any] | None = None) -> list[tuple[Any, bool]]:
        """(output, came from the cache) for each item, in order. `weights` say how many progress
        units each item stands for (default 1; 0: it reports no progress). `inputs`, when given, are
        what `compute` receives in place of the items (the first of duplicates): the item is the cache
        key, decided by texts and config alone; the input may carry what rendering needs beside it."""
        started = time.perf_counter()
        before = self.stats.seconds["load"] + self.stats.seconds["model"]
        keys = [self.key(item) for item in items]
        units: Counter[str] = Counter()
        for key, weight in zip(keys, weights if weights is not None else [1] * len(keys), strict=True):
            units[key] += weight
        self.stats.items += len(keys)
        known = self.cache.get_many(set(keys))
        if known:
            self.advance(sum(units[k] for k in known))
        todo: dict[str, Any] = {}
        for key, given in zip(keys, inputs if inputs is not None else items, strict=True):
            if key not in known and key not in todo:
                todo[key] = given
        computed: set[str] = set()

        def commit(outputs: dict[str, Any], logged: bool = False) -> None:
            if not logged:
                log_calls(self.model_key, list(outputs))
            self.cache.put_many(self.model_key, outputs)
            known.update(outputs)
            computed.update(outputs)
            self.advance(sum(units[k] for k in outputs))

        def compute(chunk: list[str]) -> None:
            self._ensure_loaded()
            self._compute([todo[k] for k in chunk], chunk, commit)

        def arrived(found: dict[str, Any]) -> None:  # computed meanwhile by another process
            known.update(found)
            self.advance(sum(units[k] for k in found))

        if todo and self.executor is not None:  # on workers, in the same chunks; committed here
            waited = self.executor.compute(self, todo, commit, arrived)
        else:
            # A backend that streams a whole job (vLLM) gets every pending item in one call: fixed chunks
            # would leave its engine idle at each chunk's tail. Items are still committed as they finish.
            step = len(todo) if streams_whole_job(self.family) else self.cache_every
            waited = compute_once(self.cache, list(todo), step, compute, arrived) if todo else 0.0
        self.stats.computed += len(computed)
        self.stats.from_cache += sum(1 for k in keys if k not in computed)
        # Cache: everything else of the run (look-up, claims, commits, keys), not timed piece by piece.
        spent = self.stats.seconds["load"] + self.stats.seconds["model"] - before
        self.stats.add("cache", time.perf_counter() - started - spent - waited)
        if waited:
            self.stats.add("wait", waited)
        return [(known[k], k not in computed) for k in keys]

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            clock = time.perf_counter()
            self.family.load()
            self.stats.add("load", time.perf_counter() - clock)
            self._loaded = True

    def _compute(self, items: list[Any], keys: list[str], commit: Callable[[dict[str, Any]], None]) -> None:
        """Compute one claimed chunk and commit it: whole, or group by group for a streaming family."""
        name = type(self.family).__name__
        if isinstance(self.family, Streams):
            seen: set[int] = set()
            clock = time.perf_counter()
            for group in self.family.stream(items):
                self.stats.add("model", time.perf_counter() - clock)
                outputs = {}
                for index, output in group:
                    if index in seen or not 0 <= index < len(keys):
                        raise RuntimeError(f"{name}.stream gave item {index} twice or out of range")
                    seen.add(index)
                    outputs[keys[index]] = output
                if outputs:
                    commit(outputs)
                clock = time.perf_counter()
            self.stats.add("model", time.perf_counter() - clock)
            if len(seen) != len(keys):
                raise RuntimeError(f"{name}.stream finished {len(seen)} of {len(keys)} items")
            return
        clock = time.perf_counter()
        computed = self.family.compute(items)
        self.stats.add("model", time.perf_counter() - clock)
        if len(computed) != len(keys):
            raise RuntimeError(f"{name}.compute returned {len(computed)} outputs for {len(keys)} items")
        commit(dict(zip(keys, computed, strict=True)))
