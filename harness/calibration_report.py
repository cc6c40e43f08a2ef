"""The calibration files of a bundle and of a `compare` report (harness/calibration.py says what
they measure): `calibration.json` (pooled ECE, Brier and log loss, counts, the reliability bins and,
for a family with a spread, the spread as a confidence signal), `reliability.png`, `selective.png`;
and both sides' calibration and confidence in `compare`'s report, JSON and terminal summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.calibration import (
    BINS,
    Scored,
    auroc,
    brier,
    ece,
    judged_pairs,
    log_loss,
    relevance,
    reliability,
    selective,
)
from harness.measures import MeasureContext
from harness.records import Run

if TYPE_CHECKING:
    from harness.pipeline import Outcome
    from harness.taskdata import TaskData


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
