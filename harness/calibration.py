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
aside. The bundle holds `calibration.json`, `reliability.png` and, with a spread, `selective.png`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ir_measures import Metric

from harness.measures import MeasureContext, register_measure
from harness.records import Judgment, Qrel, Run

if TYPE_CHECKING:
    from harness.pipeline import Outcome, StageResult
    from harness.rerankers.base import ModelConfig
    from harness.taskdata import TaskData
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


# -- the bundle's files ----------------------------------------------------------------------------


def confidence(scored: Scored, ctx: MeasureContext, run: Run, headline: str,
               per_query: Mapping[str, float]) -> dict[str, Any] | None:
    """The spread as a signal: AUROC of wrong decisions, and the two selective curves."""
    if not scored.spreads:
        return None
    threshold = int(getattr(ctx, "relevance_threshold", 1))
    grades = relevance(ctx.qrels)
    spread_pairs, wrong = [], []
    for qid in sorted(scored.spreads):
        for doc, s in sorted(scored.spreads[qid].items()):
            grade = grades.get((qid, doc))
            p = scored.probabilities.get(qid, {}).get(doc)
            if grade is None or p is None:
                continue
            spread_pairs.append(s)
            wrong.append((p > 0.5) != (grade >= threshold))
    query_spread, query_value = [], []
    for qid in sorted(per_query):
        top = [d.doc_id for d in sorted(run.get(qid, []), key=lambda d: (-d.score, d.doc_id))[:10]]
        spreads = [scored.spreads.get(qid, {})[d] for d in top if d in scored.spreads.get(qid, {})]
        if spreads:
            query_spread.append(sum(spreads) / len(spreads))
            query_value.append(per_query[qid])
    pair_curve = selective(spread_pairs, [0.0 if w else 1.0 for w in wrong]) if wrong else []
    query_curve = selective(query_spread, query_value) if query_value else []
    return {
        "signal": "spread",
        "decision": "probability > 0.5 against relevance >= the task's threshold",
        "pairs": len(wrong), "wrong_decisions": int(sum(wrong)),
        "auroc_wrong": auroc(spread_pairs, wrong),
        "accuracy": 1 - sum(wrong) / len(wrong) if wrong else None,
        "selective_pairs": _thin(pair_curve),
        "selective_queries": {"measure": headline, "queries": len(query_value),
                              "area": float(np.mean([c["value"] for c in query_curve])) if query_curve else None,
                              "all": float(np.mean(query_value)) if query_value else None,
                              "curve": query_curve},
    }


def _thin(curve: list[dict[str, float]], points: int = 50) -> list[dict[str, float]]:
    """At most `points` evenly spread points of a long curve (the last, coverage 1, always)."""
    if len(curve) <= points:
        return curve
    picks = sorted({round(i * (len(curve) - 1) / (points - 1)) for i in range(points)})
    return [curve[i] for i in picks]


def write_calibration(out: Path, outcome: Outcome, data: TaskData) -> list[Path]:
    """calibration.json, reliability.png and (with a spread) selective.png of a bundle, when its final
    stage has a probability; nothing otherwise (and stale files of an earlier run are removed)."""
    names = ("calibration.json", "reliability.png", "selective.png")
    for name in names:
        (out / name).unlink(missing_ok=True)
    scored: Scored | None = getattr(outcome, "scored", None)
    final = outcome.final_eval
    if scored is None or final is None:
        return []
    ctx = replace(data.measure_context(), probabilities=scored.probabilities)
    pairs = judged_pairs(ctx)
    p, y = pairs.pooled()
    if not p:
        return []
    headline = next(iter(final.aggregate))
    record: dict[str, Any] = {
        "model": scored.model, "family": scored.family, "probability": scored.says,
        "relevance_threshold": int(getattr(ctx, "relevance_threshold", 1)),
        "pairs": len(p), "relevant": int(sum(y)), "queries": len(pairs.per_query),
        "unjudged_left_out": pairs.unjudged, "without_probability": scored.without_probability,
        "ECE": ece(p, y), "Brier": brier(p, y), "LogLoss": log_loss(p, y), "bins": BINS,
        "reliability": reliability(p, y),
        "confidence": confidence(scored, ctx, outcome.final_run, headline, final.per_unit.get(headline, {})),
    }
    paths = [out / "calibration.json"]
    paths[0].write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths.append(plot_reliability(record, p, out / "reliability.png"))
    if record["confidence"]:
        paths.append(plot_selective(record["confidence"], out / "selective.png", scored.model))
    return paths


def plot_reliability(record: Mapping[str, Any], p: Sequence[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = record["reliability"]
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    top.plot([b["mean_probability"] for b in bins], [b["fraction_relevant"] for b in bins], marker="o",
             label=f"{record['bins']} equal-mass bins")
    top.set_ylabel(f"fraction relevant (>= {record['relevance_threshold']})")
    top.set_title(f"{record['model']}: ECE {record['ECE']:.4f}, Brier {record['Brier']:.4f}\n"
                  f"{record['pairs']} judged pairs ({record['unjudged_left_out']} unjudged left out)", fontsize=9)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    bottom.hist(list(p), bins=20, range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set_xlabel("predicted probability of relevance")
    bottom.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_selective(conf: Mapping[str, Any], path: Path, label: str, others: Sequence[tuple[str, Any]] = ()) -> Path:
    """Decision accuracy of the kept pairs, and the headline measure of the kept queries, against
    coverage (the most confident kept first); `others` adds further systems' curves (compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, c in [(label, conf), *others]:
        if not c:
            continue
        auc = c.get("auroc_wrong")
        left.plot([x["coverage"] for x in c["selective_pairs"]], [x["value"] for x in c["selective_pairs"]],
                  label=f"{name} (AUROC {auc:.3f})" if auc is not None else name)
        q = c["selective_queries"]
        right.plot([x["coverage"] for x in q["curve"]], [x["value"] for x in q["curve"]], label=name)
    left.set_xlabel("coverage (pairs kept, least spread first)")
    left.set_ylabel("decision accuracy of kept pairs")
    right.set_xlabel("coverage (queries kept, least mean spread first)")
    right.set_ylabel(f"{conf['selective_queries']['measure']} of kept queries")
    for ax in (left, right):
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def read_confidence(bundle_path: Path) -> dict[str, Any] | None:
    """A bundle's calibration record (None when its final stage has no probability)."""
    path = bundle_path / "calibration.json"
    if not path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return record


# -- `compare`: both sides' calibration and confidence ---------------------------------------------


def _sides(bundles: Mapping[str, tuple[str, str]]) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    return {task: (read_confidence(Path(a)), read_confidence(Path(b))) for task, (a, b) in bundles.items()}


def _auc(record: Mapping[str, Any] | None) -> float | None:
    conf = (record or {}).get("confidence") or {}
    value = conf.get("auroc_wrong")
    return float(value) if value is not None else None


def _cell(record: Mapping[str, Any] | None, key: str, digits: int = 4) -> str:
    if record is None:
        return "no probability"
    value = record.get(key) if key != "auroc" else _auc(record)
    return "-" if value is None else f"{value:.{digits}f}"


def compare_section(a: str, b: str, bundles: Mapping[str, tuple[str, str]]) -> list[str]:
    """Markdown: each side's calibration over judged pairs and its spread as a signal (`compare`)."""
    sides = _sides(bundles)
    if not any(x or y for x, y in sides.values()):
        return []
    lines = ["## Calibration and confidence", "",
             "Over the judged pairs each final stage scored (relevance binarized at the task's threshold; "
             "lower is better); AUROC: the spread as a detector of wrong decisions (probability > 0.5 vs the "
             "judgment; 0.5 = no signal, '-' = no spread); selective: the headline measure averaged over the "
             "coverages of the selective curve (the queries with the least mean spread kept first) beside its value "
             "over all queries (higher than it: the spread picks the better-ranked queries). Per-query values of "
             "ECE/Brier/LogLoss compare like any measure (`--measure ECE`).", "",
             "| task | side | model | ECE | Brier | LogLoss | pairs | spread AUROC | decision accuracy "
             "| selective area (all) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, pair in sides.items():
        for label, name, record in (("A", a, pair[0]), ("B", b, pair[1])):
            conf = (record or {}).get("confidence") or {}
            accuracy = conf.get("accuracy")
            pairs = (record or {}).get("pairs", "-")
            kept = conf.get("selective_queries") or {}
            area = "-" if kept.get("area") is None else f"{kept['area']:.4f} ({kept['all']:.4f})"
            lines.append(f"| {task} | {label} | {name} | {_cell(record, 'ECE')} | {_cell(record, 'Brier')} | "
                         f"{_cell(record, 'LogLoss')} | {pairs} | {_cell(record, 'auroc', 3)} "
                         f"| {'-' if accuracy is None else f'{accuracy:.4f}'} | {area} |")
    return [*lines, ""]


def compare_json(bundles: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    keys = ("ECE", "Brier", "LogLoss", "pairs", "relevance_threshold", "probability")
    out = {}
    for task, (ra, rb) in _sides(bundles).items():
        out[task] = {side: None if r is None else {**{k: r.get(k) for k in keys}, "spread_auroc": _auc(r)}
                     for side, r in (("a", ra), ("b", rb))}
    return out


def compare_summary(bundles: Mapping[str, tuple[str, str]]) -> list[str]:
    lines = []
    for task, (ra, rb) in _sides(bundles).items():
        if ra or rb:
            lines.append(f"  {task} calibration: A ECE {_cell(ra, 'ECE')} Brier {_cell(ra, 'Brier')} spread AUROC "
                         f"{_cell(ra, 'auroc', 3)}; B ECE {_cell(rb, 'ECE')} Brier {_cell(rb, 'Brier')} spread AUROC "
                         f"{_cell(rb, 'auroc', 3)}")
    return lines


def compare_plots(a: str, b: str, bundles: Mapping[str, tuple[str, str]], out: Path) -> list[Path]:
    """selective.png: both sides' selective curves, for the first task where either has a spread."""
    for _task, (ra, rb) in _sides(bundles).items():
        ca, cb = (ra or {}).get("confidence"), (rb or {}).get("confidence")
        if ca or cb:
            if ca:
                return [plot_selective(ca, out / "selective.png", a, [(b, cb)])]
            assert cb is not None
            return [plot_selective(cb, out / "selective.png", b)]
    return []
