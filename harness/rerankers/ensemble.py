"""`type: ensemble`: a reranker made of other model configs, whose scores it combines.

    name: minilm-ce-ensemble
    type: ensemble
    members: [results/train/minilm-ce-k1-s1, results/train/minilm-ce-k1-s2, my-model, configs/x.yaml]
    normalize: zscore      # per query and member: zscore (default) | minmax | probability | none
    combine: mean          # mean (default) | median

A member is anything `--model` takes: a config name, a YAML path, or a trained model's folder
(relative paths from the working folder, else from the project). Each member runs as itself, through
the cache under its own fingerprint, so an ensemble of models already evaluated on a task computes
nothing new, and a member's outputs are the ones it gives alone.

Counts: a pair is `computed` when every member computed it, else `from_cache`; the stage's seconds
are split per member (`member NAME`), so the ensemble's scoring cost is the sum of its members'.

Score: each member's scores are normalized per query (z-score over the query's candidates by
default: members on different scales weigh alike; `probability`: each member's probability of
relevance, `none`: raw scores) and combined (mean by default). Beside it every judgment records the
members' normalized scores, their spread (population standard deviation: the ensemble's confidence
signal, see harness.calibration) and, when every member has a probability of relevance, their mean:
the ensemble's probability (for any `normalize`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from harness.cache import Cache, stable_hash
from harness.data import PROJECT_ROOT
from harness.errors import ConfigError
from harness.records import Judgment, Ranking, Record
from harness.rerankers.base import ModelConfig, Preview, Progress, RerankRequest, RerankStats
from harness.weights import ResolvedWeights, Weights


class EnsembleConfig(ModelConfig):
    type: Literal["ensemble"]
    weights: Weights | None = None  # type: ignore[assignment]  # an ensemble's weights are its members'
    members: list[str] = Field(min_length=1)
    normalize: Literal["zscore", "minmax", "probability", "none"] = "zscore"
    combine: Literal["mean", "median"] = "mean"

    @field_validator("members")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("a member is an empty name; give a config name, a YAML path or a trained folder")
        return value

    def member_configs(self) -> list[ModelConfig]:
        """The members' configs, read now (a member that does not exist yet, e.g. not trained, stops here)."""
        from harness.registry import FOLDER_CONFIG, load_model_config

        configs = []
        for i, member in enumerate(self.members):
            looks_trained = "/" in member and not member.endswith((".yaml", ".yml"))
            if looks_trained and not any((base / member / FOLDER_CONFIG).is_file() for base in (Path(), PROJECT_ROOT)):
                raise ConfigError(
                    f"ensemble {self.name!r}, member {i + 1} ({member!r}): no trained model there yet (no "
                    f"{FOLDER_CONFIG}); train it first: python -m harness train CONFIG, or the run config that "
                    "trains it (python -m harness run configs/runs/multicls-vs-ensemble.yaml)")
            try:
                config = load_model_config(member)
            except ConfigError as exc:
                raise ConfigError(f"ensemble {self.name!r}, member {i + 1} ({member!r}): {exc}") from exc
            if isinstance(config, EnsembleConfig):
                raise ConfigError(f"ensemble {self.name!r}, member {i + 1} ({member!r}) is an ensemble itself; "
                                  "list its members instead")
            configs.append(config)
        return configs

    def resolve_own_weights(self) -> ResolvedWeights:
        """The members' weights together: a revision that changes when any member's config or weights do."""
        from harness.identity import config_identity
        from harness.registry import resolve_model_weights

        parts = [(config_identity(c), resolve_model_weights(c).revision) for c in self.member_configs()]
        return ResolvedWeights(local_dir="", source="ensemble:" + ",".join(self.members),
                               revision="sha256:" + stable_hash(parts))

    @property
    def trained_on(self) -> list[str]:
        """The tasks any member was trained on."""
        return sorted({t for c in self.member_configs() for t in getattr(c, "trained_on", None) or []})


class EnsembleRecord(Record):
    members: list[float]  # each member's normalized score, in the order of `members`
    spread: float
    probability: float | None = None  # the members' mean probability of relevance, when all have one


def normalized(scores: Sequence[float], how: str) -> list[float]:
    """One member's scores of one query's candidates, normalized."""
    if how == "zscore":
        mean = statistics.fmean(scores)
        sd = statistics.pstdev(scores)
        return [(s - mean) / sd if sd > 0 else 0.0 for s in scores]
    if how == "minmax":
        low, high = min(scores), max(scores)
        return [(s - low) / (high - low) if high > low else 0.0 for s in scores]
    return list(scores)


class Ensemble:
    config: EnsembleConfig
    record_type: ClassVar[type[Record]] = EnsembleRecord

    def __init__(self, config: EnsembleConfig, weights: ResolvedWeights | None = None) -> None:
        from harness.calibration import probability_map
        from harness.registry import build_reranker, resolve_model_weights

        self.config = config
        self.member_configs = config.member_configs()
        resolved = [resolve_model_weights(c) for c in self.member_configs]
        self.members = [build_reranker(c, w) for c, w in zip(self.member_configs, resolved, strict=True)]
        self.probabilities = [probability_map(c, w).of for c, w in zip(self.member_configs, resolved, strict=True)]
        if config.normalize == "probability" and None in self.probabilities:
            lacking = [c.name for c, p in zip(self.member_configs, self.probabilities, strict=True) if p is None]
            raise ConfigError(f"ensemble {config.name!r}: normalize: probability, but {', '.join(lacking)} "
                              "state(s) no probability of relevance; use zscore or minmax")

    def fingerprint(self) -> dict[str, Any]:
        return {"members": [m.fingerprint() for m in self.members], "normalize": self.config.normalize,
                "combine": self.config.combine}

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        first = self.members[0].preview(requests)
        first.example = f"(member 1 of {len(self.members)}, {self.member_configs[0].name}) {first.example}"
        return first

    def rerank(self, requests: Sequence[RerankRequest], cache: Cache,
               progress: Progress | None = None) -> tuple[list[Ranking], RerankStats]:
        outputs: list[list[Ranking]] = []
        stats = RerankStats(items=sum(len(r.candidates) for r in requests))
        seconds: dict[str, float] = {}
        cached: set[tuple[str, str]] = set()  # pairs for which some member's output came from the cache
        share = _Share(progress, len(self.members))
        for config, member in zip(self.member_configs, self.members, strict=True):
            started = time.perf_counter()
            rankings, done = member.rerank(requests, cache, share)
            outputs.append(rankings)
            for phase, value in done.seconds.items():
                seconds[phase] = seconds.get(phase, 0.0) + value
            seconds[f"member {config.name}"] = seconds.get(f"member {config.name}", 0.0) + time.perf_counter() - started
            for name, n in done.fallbacks.items():
                stats.fallbacks[f"{config.name}:{name}"] = stats.fallbacks.get(f"{config.name}:{name}", 0) + n
            cached.update((j.query_id, j.doc_id) for r in rankings for j in r if j.cached)
        # A pair counts as computed only when every member computed it: then the stage's time is the whole
        # ensemble's cost (compare's seconds per 100 documents); with a member cached it is not.
        stats.from_cache = len(cached)
        stats.computed = stats.items - stats.from_cache
        stats.seconds = seconds
        return [self._combine(req, [member[q] for member in outputs]) for q, req in enumerate(requests)], stats

    def _combine(self, request: RerankRequest, rankings: list[Ranking]) -> Ranking:
        cfg = self.config
        columns = []
        for m, ranking in enumerate(rankings):
            judged = list(ranking)
            if [j.doc_id for j in judged] != [d.doc_id for d in request.candidates]:
                raise RuntimeError(f"member {self.member_configs[m].name} judged other candidates than asked")
            if cfg.normalize == "probability":
                of = self.probabilities[m]
                assert of is not None
                values = [of(j) for j in judged]
                if any(v is None for v in values):
                    raise ConfigError(f"ensemble {cfg.name!r}: member {self.member_configs[m].name} gave a judgment "
                                      "without a probability (e.g. unscorable); use normalize: zscore")
                columns.append([float(v) for v in values if v is not None])
            else:
                columns.append(normalized([j.score for j in judged], cfg.normalize))
        out = Ranking(request.query_id, [])
        for i, doc in enumerate(request.candidates):
            row = [col[i] for col in columns]
            score = statistics.median(row) if cfg.combine == "median" else statistics.fmean(row)
            probs = [of(r[i]) if of is not None else None for of, r in zip(self.probabilities, rankings, strict=True)]
            probability = statistics.fmean(p for p in probs if p is not None) if all(
                p is not None and math.isfinite(p) for p in probs) else None
            members = [r[i] for r in rankings]
            fallback = next((j.fallback for j in members if j.fallback), None)
            out.judgments.append(Judgment(request.query_id, doc.doc_id, score,
                                          EnsembleRecord(members=row, spread=statistics.pstdev(row),
                                                         probability=probability),
                                          fallback, all(j.cached for j in members)))
        return out

    @staticmethod
    def probability_statement(config: EnsembleConfig, weights: ResolvedWeights | None = None) -> Any:
        """harness.calibration's ProbabilityMap: the members' mean, when every member has a probability."""
        from harness.calibration import ProbabilityMap, probability_map
        from harness.registry import resolve_model_weights

        members = config.member_configs()
        lacking = [c.name for c in members if probability_map(c, resolve_model_weights(c)).of is None]
        if lacking:
            return ProbabilityMap(None, f"none: member(s) {', '.join(lacking)} state no probability of relevance")
        return ProbabilityMap(Ensemble.probability, "the mean of the members' probabilities of relevance",
                              Ensemble.spread_of)

    @staticmethod
    def probability(judgment: Judgment) -> float | None:
        """The members' mean probability of relevance (none unless every member has one)."""
        record = judgment.record
        return record.probability if isinstance(record, EnsembleRecord) else None

    @staticmethod
    def spread_of(judgment: Judgment) -> float | None:
        record = judgment.record
        return record.spread if isinstance(record, EnsembleRecord) else None


class _Share:
    """Progress of M members over one bar of N items: each member's units count 1/M."""

    def __init__(self, progress: Progress | None, members: int) -> None:
        self.progress, self.members, self.units, self.reported = progress, members, 0, 0

    def __call__(self, n: int) -> None:
        if self.progress is None:
            return
        self.units += n
        due = self.units // self.members
        if due > self.reported:
            self.progress(due - self.reported)
            self.reported = due
