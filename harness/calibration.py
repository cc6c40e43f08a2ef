"""Calibration beside nDCG: is a reranker's probability of relevance what the judgments say?

**Which families have a probability.** Each family states how its score maps to a probability of
relevance (`probability_map`): rank1 gives p(true) / (p(true) + p(false)) as its score; monoT5 gives
log p(true) (the probability is its exp); a one-logit cross-encoder's probability is the sigmoid of
its logit (a head with several labels scores log p(positive label): exp); `multi-cls` the sigmoid of
its logit; an `ensemble` the mean of its members' probabilities, when every member has one. A
bi-encoder's score is a similarity of embeddings (minilm-l6: a cosine) and a listwise score is a
position: they have none, say so, and get no calibration row. A family outside this table states
its own with a static `probability(judgment) -> float | None` on its reranker class (and a
`spread_of(judgment)` when it has a confidence spread).

**Measures** (`ECE`, `Brier`, `LogLoss`, through harness.measures): over the judged (query,
document) pairs that the final stage scored, relevance binarized at the task's threshold
(`relevance_threshold:` of the task file; 2 on TREC DL, as `trec_eval -l 2`, else 1). Unjudged pairs
are left out and counted (`details`), as are judgments without a probability (rank1's unscorable).
- ECE: 10 equal-mass bins (pairs sorted by probability, cut into bins of equal count; a query with
  fewer than 10 pairs has one bin per pair), sum over bins of (share of pairs) x |fraction relevant -
  mean probability|.
- Brier: mean squared difference between probability and relevance.
- LogLoss: mean negative log-likelihood, probabilities clipped to [eps, 1 - eps] with the float64
  machine epsilon (as scikit-learn clips).
Lower is better for all three. The unit is the query, so that `compare` and the significance
marks work as for any measure; the value a bundle reports is the measure over all pairs pooled
(the usual definition; for ECE it is not the mean of the per-query values). The first stage has no
probability: its value is absent ("-").

**Confidence as a signal** (families with a spread: multi-cls, ensemble): does a large spread flag
the wrong decisions? A decision is probability > 0.5 against the binarized judgment; the area under
the ROC curve of the spread as a detector of wrong decisions (0.5: no signal). Selective curves: the
decision accuracy of the pairs kept when the most spread-out are set aside, and the headline
measure of the queries kept when the queries with the largest mean spread over their top 10 are set
aside. The bundle holds `calibration.json`, `reliability.png` and, with a spread, `selective.png`
(harness/calibration_report.py, which also gives `compare` both sides' calibration).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ir_measures import Metric

from harness.measures import MeasureContext, register_measure
from harness.records import Judgment, Qrel, Run

if TYPE_CHECKING:
    from harness.pipeline import StageResult
    from harness.rerankers.base import ModelConfig
    from harness.weights import ResolvedWeights

BINS = 10
EPS = float(np.finfo(np.float64).eps)
# What the pipeline adds to a task's measures when the final stage has a probability (no --measures).
DEFAULT_MEASURES = ("ECE", "Brier")
MEASURES = ("ECE", "Brier", "LogLoss")

Probability = Callable[[Judgment], "float | None"]


# -- the arithmetic, on arrays ---------------------------------------------------------------------


def equal_mass_bins(p: Sequence[float] | np.ndarray, bins: int = BINS) -> list[np.ndarray]:
    """Indices of the pairs in each bin: sorted by probability (ties by position), cut into `bins`
    bins of equal count (the first ones one larger when the count does not divide)."""
    order = np.argsort(np.asarray(p, dtype=float), kind="stable")
    n = min(bins, len(order))
    return [chunk for chunk in np.array_split(order, n)] if n else []


def ece(p: Sequence[float], y: Sequence[float], bins: int = BINS) -> float:
    """Expected calibration error with equal-mass bins."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if not len(pa):
        return math.nan
    return float(sum(len(b) / len(pa) * abs(ya[b].mean() - pa[b].mean()) for b in equal_mass_bins(pa, bins)))


def brier(p: Sequence[float], y: Sequence[float]) -> float:
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    return float(np.mean((pa - ya) ** 2)) if len(pa) else math.nan


def log_loss(p: Sequence[float], y: Sequence[float]) -> float:
    pa, ya = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS), np.asarray(y, dtype=float)
    return float(-np.mean(ya * np.log(pa) + (1 - ya) * np.log(1 - pa))) if len(pa) else math.nan


def reliability(p: Sequence[float], y: Sequence[float], bins: int = BINS) -> list[dict[str, float]]:
    """Per equal-mass bin: pairs, mean probability, fraction relevant, and the bin's range."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    return [{"pairs": len(b), "mean_probability": float(pa[b].mean()), "fraction_relevant": float(ya[b].mean()),
             "low": float(pa[b].min()), "high": float(pa[b].max())} for b in equal_mass_bins(pa, bins)]


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` as a detector of `positive` (ties count half), or None
    when one class is empty. Mann-Whitney U over average ranks."""
    from scipy.stats import rankdata

    s, pos = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def selective(confidence_order: Sequence[float], values: Sequence[float]) -> list[dict[str, float]]:
    """Keep the k most confident units (lowest spread first, ties in the given order), k = 1..n:
    the coverage k/n and the mean value of the kept units."""
    order = np.argsort(np.asarray(confidence_order, dtype=float), kind="stable")
    kept = np.cumsum(np.asarray(values, dtype=float)[order])
    n = len(order)
    return [{"coverage": (k + 1) / n, "value": float(kept[k] / (k + 1))} for k in range(n)]


# -- which families have a probability -------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _unit_interval(j: Judgment) -> float | None:
    return j.score if 0.0 <= j.score <= 1.0 else None  # rank1: -1.0 marks an unscorable judgment


def _exp(j: Judgment) -> float | None:
    return math.exp(min(j.score, 0.0))


def _logit(j: Judgment) -> float | None:
    return _sigmoid(j.score)


def _labels(weights: ResolvedWeights | None) -> int:
    if weights is None or not weights.local_dir:
        return 1
    path = Path(weights.local_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 1  # an adapter folder: its base's head; one logit is what the configs here use
    return int(config.get("num_labels", len(config.get("id2label") or {0: 0})))


@dataclass(frozen=True)
class ProbabilityMap:
    """How a family's judgment maps to a probability of relevance (`of`), or why it has none."""

    of: Probability | None
    says: str
    spread: Callable[[Judgment], float | None] | None = None


def probability_map(config: ModelConfig, weights: ResolvedWeights | None = None) -> ProbabilityMap:
    from harness.registry import family

    kind = config.type
    if kind == "rank1":
        return ProbabilityMap(_unit_interval, "p(true) / (p(true) + p(false)), the score itself")
    if kind == "monot5":
        return ProbabilityMap(_exp, "p(true) over {true, false}: exp of the score, log p(true)")
    if kind == "cross-encoder":
        if _labels(weights) > 1:
            return ProbabilityMap(_exp, "p(positive label): exp of the score, its log-softmax")
        return ProbabilityMap(_logit, "the sigmoid of the logit")
    if kind == "bi-encoder":
        return ProbabilityMap(None, "none: the score is a similarity of embeddings (cosine or dot product), "
                                    "not a probability")
    if kind == "listwise":
        return ProbabilityMap(None, "none: the score is a position in the final order")
    found = family(kind)
    builder = found[1] if found else None
    own = getattr(builder, "probability", None)
    spread = getattr(builder, "spread_of", None)
    statement = getattr(builder, "probability_statement", None)
    if callable(statement):
        return statement(config, weights)  # type: ignore[no-any-return]  # a family that decides per config
    if callable(own):
        return ProbabilityMap(own, (own.__doc__ or "stated by the family").strip().splitlines()[0],
                              spread if callable(spread) else None)
    return ProbabilityMap(None, f"none: the {kind} family states no probability")


def default_measures(config: ModelConfig, weights: ResolvedWeights | None) -> list[str]:
    """The calibration measures the pipeline adds for a final stage with a probability."""
    return list(DEFAULT_MEASURES) if probability_map(config, weights).of is not None else []


@dataclass
class Scored:
    """The final stage's probabilities (and spreads) per query and document."""

    model: str
    family: str
    says: str
    probabilities: dict[str, dict[str, float]]
    spreads: dict[str, dict[str, float]] | None
    without_probability: int = 0


def scored_stage(config: ModelConfig, weights: ResolvedWeights | None, stage: StageResult) -> Scored | None:
    """The stage's probabilities, or None when its family has none."""
    mapping = probability_map(config, weights)
    if mapping.of is None:
        return None
    probabilities: dict[str, dict[str, float]] = {}
    spreads: dict[str, dict[str, float]] = {}
    missing = 0
    for j in stage.judgments:
        p = mapping.of(j)
        if p is None or not math.isfinite(p):
            missing += 1
            continue
        probabilities.setdefault(j.query_id, {})[j.doc_id] = min(max(float(p), 0.0), 1.0)
        s = mapping.spread(j) if mapping.spread else None
        if s is not None:
            spreads.setdefault(j.query_id, {})[j.doc_id] = float(s)
    return Scored(config.name, config.type, mapping.says, probabilities, spreads or None, missing)


# -- the measures ----------------------------------------------------------------------------------


def relevance(qrels: Iterable[Qrel]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for q in qrels:
        key = (q.query_id, q.doc_id)
        out[key] = max(out.get(key, q.relevance), q.relevance)
    return out


@dataclass
class Pairs:
    """The judged pairs with a probability, per query, and what was left out."""

    per_query: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # qid -> (p, y)
    unjudged: int = 0

    def pooled(self) -> tuple[list[float], list[float]]:
        p = [x for ps, _ in self.per_query.values() for x in ps]
        y = [x for _, ys in self.per_query.values() for x in ys]
        return p, y


def judged_pairs(ctx: MeasureContext) -> Pairs:
    probabilities: Mapping[str, Mapping[str, float]] = getattr(ctx, "probabilities", None) or {}
    threshold = int(getattr(ctx, "relevance_threshold", 1))
    grades = relevance(ctx.qrels)
    out = Pairs()
    for qid in sorted(probabilities):
        ps, ys = [], []
        for doc, p in sorted(probabilities[qid].items()):
            grade = grades.get((qid, doc))
            if grade is None:
                out.unjudged += 1
                continue
            ps.append(p)
            ys.append(1.0 if grade >= threshold else 0.0)
        if ps:
            out.per_query[qid] = (ps, ys)
    return out


class _Calibration:
    unit: ClassVar[str] = "query"
    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = False

    @staticmethod
    def value(p: Sequence[float], y: Sequence[float]) -> float:
        raise NotImplementedError

    def units(self, ctx: MeasureContext) -> list[str]:
        return sorted(judged_pairs(ctx).per_query)

    def iter_calc(self, run: Run, ctx: MeasureContext) -> Iterator[Metric]:
        for qid, (p, y) in judged_pairs(ctx).per_query.items():
            yield Metric(qid, self.name, self.value(p, y))  # type: ignore[arg-type]  # by name

    def aggregate(self, run: Run, ctx: MeasureContext) -> float:
        """Over every judged pair pooled (NaN when nothing has a probability: the first stage)."""
        return self.value(*judged_pairs(ctx).pooled())

    def details(self, run: Run, ctx: MeasureContext) -> dict[str, Any]:
        pairs = judged_pairs(ctx)
        if not pairs.per_query:
            return {}
        p, y = pairs.pooled()
        return {"pairs": len(p), "relevant": int(sum(y)), "queries": len(pairs.per_query),
                "unjudged_left_out": pairs.unjudged, "relevance_threshold": int(getattr(ctx, "relevance_threshold", 1))}


@register_measure("ECE")
class ECE(_Calibration):
    """Expected calibration error, 10 equal-mass bins."""

    @staticmethod
    def value(p: Sequence[float], y: Sequence[float]) -> float:
        return ece(p, y, BINS)


@register_measure("Brier")
class Brier(_Calibration):
    """Mean squared difference between probability and binarized relevance."""

    @staticmethod
    def value(p: Sequence[float], y: Sequence[float]) -> float:
        return brier(p, y)


@register_measure("LogLoss")
class LogLoss(_Calibration):
    """Mean negative log-likelihood of the binarized relevance."""

    @staticmethod
    def value(p: Sequence[float], y: Sequence[float]) -> float:
        return log_loss(p, y)
