"""`compare A B`: is B different from A, or equivalent to it? (e.g. an AWQ checkpoint vs its twin)

Per task, over the same judged units (queries; NevIR pairs): the per-unit deltas of the task's
measure (B - A), a paired t-test and a paired randomization test, both Holm-corrected across the
tasks, and an equivalence test (TOST) with a stated margin. Equivalence over all tasks holds when
it holds on each (an intersection-union test: no correction needed). Beside them: Kendall's tau
between the two rankings of each query, the flip rate of the true/false decision for families that
make one, the change in generated tokens, and wall time and peak memory per 100 documents.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import stats
from harness.bundle import Bundle, read_bundle
from harness.errors import ConfigError, HarnessError
from harness.records import generated_tokens

log = logging.getLogger(__name__)

# Families whose score implies a yes/no relevance decision, and its threshold.
DECISIONS = {
    "rank1": 0.5,  # p(true) / (p(true) + p(false)) > 0.5
    "monot5": math.log(0.5),  # log p(true) over {true, false} > log 0.5
}
UNSCORABLE = "unscorable"


@dataclass
class SideCost:
    items: int
    computed: int
    seconds: float
    peak_rss_mb: float | None
    peak_gpu_mb: float | None

    @property
    def per_100(self) -> float | None:
        """Seconds per 100 documents, when every document was computed (a cached share would hide cost)."""
        return 100 * self.seconds / self.computed if self.computed and self.computed == self.items else None


@dataclass
class TaskComparison:
    task: str
    measure: str
    units: list[str]
    a: list[float]
    b: list[float]
    test: stats.Paired
    p_t_holm: float = math.nan
    p_randomization_holm: float = math.nan
    taus: list[float] = field(default_factory=list)
    untied_queries: int = 0
    flips: int | None = None
    decisions: int | None = None
    tokens: tuple[float, float] | None = None
    cost: tuple[SideCost | None, SideCost | None] = (None, None)
    scores: tuple[list[float], list[float]] = ([], [])  # joined model (or run) scores, for the scatter
    same_scale: bool = False  # both scores from one family: the diagonal means "unchanged"

    @property
    def tau_mean(self) -> float:
        return statistics.fmean(self.taus) if self.taus else math.nan

    @property
    def flip_rate(self) -> float | None:
        return None if not self.decisions else (self.flips or 0) / self.decisions


@dataclass
class Comparison:
    a: str
    b: str
    margin: float
    alpha: float
    tasks: list[TaskComparison]
    pooled: stats.Paired | None
    bundles: dict[str, tuple[str, str]]
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED

    def equivalent(self) -> bool:
        return all(t.test.p_tost is not None and t.test.p_tost < self.alpha for t in self.tasks)


def resolve_side(spec: str, tasks: list[str], *, first_stage: str | None, depth: int, results: Path,
                 run_missing: bool, measures: list[str] | None = None) -> dict[str, Bundle]:
    """A bundle folder, or `MODEL[@FIRST_STAGE]` evaluated (or read back) on each task."""
    path = Path(spec)
    if (path / "metrics.json").is_file():
        bundle = read_bundle(path)
        return {bundle.metrics.task: bundle}
    if not tasks:
        raise ConfigError(f"{spec!r} is not a result bundle folder, so name the tasks to compare on (--task)")
    model, _, stage = spec.partition("@")
    out = {}
    for task in tasks:
        out[task] = find_or_run(model, task, stage or first_stage, depth, results, run_missing, measures)
    return out


def find_or_run(model: str, task: str, first_stage: str | None, depth: int, results: Path, run_missing: bool,
                measures: list[str] | None = None) -> Bundle:
    from harness.pipeline import PipelineSpec, find_bundle, run_pipeline

    pipeline = PipelineSpec.single(model)
    found = find_bundle(results, task, first_stage, depth, pipeline)  # of other content: StaleBundleError
    if found is not None:
        return read_bundle(found)
    if not run_missing:
        raise HarnessError(f"no result bundle of {pipeline.name} on {task} (first stage {first_stage or 'default'}, "
                           f"depth {depth}) under {results}; run it, or drop --no-run")
    log.info("evaluating %s on %s (no bundle yet)", pipeline.name, task)
    outcome = run_pipeline(pipeline, task, first_stage=first_stage, depth=depth, results=results, measures=measures)
    assert outcome.bundle is not None
    return read_bundle(outcome.bundle)


def default_measure(bundle: Bundle) -> str:
    """The task's headline measure: its first (PairedAccuracy on NevIR, nDCG@10 on DL and BEIR)."""
    return bundle.metrics.headline


def compare(a: dict[str, Bundle], b: dict[str, Bundle], *, labels: tuple[str, str], measure: str | None = None,
            margin: float = 0.01, alpha: float = stats.ALPHA, resamples: int = stats.RESAMPLES,
            seed: int = stats.SEED) -> Comparison:
    tasks = [t for t in a if t in b]
    if not tasks:
        raise HarnessError(f"{labels[0]} and {labels[1]} share no task: {sorted(a)} vs {sorted(b)}")
    rows = []
    for task in tasks:
        ba, bb = a[task], b[task]
        m = measure or default_measure(ba)
        va, vb = ba.values(m), bb.values(m)
        units = sorted(set(va) & set(vb))
        if set(va) != set(vb):
            log.warning("%s: the two bundles judge different units (%d vs %d); comparing the %d shared",
                        task, len(va), len(vb), len(units))
        xa, xb = [va[u] for u in units], [vb[u] for u in units]
        row = TaskComparison(task, m, units, xa, xb,
                             stats.paired(xa, xb, margin=margin, resamples=resamples, seed=seed))
        _rankings(row, ba, bb)
        _judgments(row, ba, bb)
        row.cost = (_cost(ba), _cost(bb))
        rows.append(row)
    for key in ("p_t", "p_randomization"):
        for row, p in zip(rows, stats.holm([getattr(r.test, key) for r in rows]), strict=True):
            setattr(row, f"{key}_holm", p)
    pooled = None
    if len(rows) > 1 and len({r.measure for r in rows}) == 1:
        pooled = stats.paired([x for r in rows for x in r.a], [x for r in rows for x in r.b], margin=margin,
                              resamples=resamples, seed=seed)
    return Comparison(labels[0], labels[1], margin, alpha, rows, pooled,
                      {t: (str(a[t].path), str(b[t].path)) for t in tasks}, resamples, seed)


def _rankings(row: TaskComparison, ba: Bundle, bb: Bundle) -> None:
    """Kendall's tau between the two orders of each query's candidates (the top `depth` of both)."""
    ra, rb = ba.run, bb.run
    for qid in sorted(set(ra) & set(rb)):
        sa = {d.doc_id: d.score for d in ra[qid][: ba.metrics.depth]}
        sb = {d.doc_id: d.score for d in rb[qid][: bb.metrics.depth]}
        docs = sorted(set(sa) & set(sb))
        tau = stats.kendall_tau([sa[d] for d in docs], [sb[d] for d in docs])
        if math.isnan(tau):
            continue
        row.taus.append(tau)
    row.untied_queries = len(row.taus)


def _judgments(row: TaskComparison, ba: Bundle, bb: Bundle) -> None:
    ja = {(j.query_id, j.doc_id): j for j in ba.judgment_rows()}
    jb = {(j.query_id, j.doc_id): j for j in bb.judgment_rows()}
    keys = sorted(set(ja) & set(jb))
    if keys:
        row.scores = ([ja[k].score for k in keys], [jb[k].score for k in keys])
        row.same_scale = _last_type(ba) == _last_type(bb)
    else:  # first stages, or different candidates: the run scores of the shared top documents
        ra, rb = ba.run, bb.run
        xs, ys = [], []
        for qid in sorted(set(ra) & set(rb)):
            sb = {d.doc_id: d.score for d in rb[qid][: bb.metrics.depth]}
            for d in ra[qid][: ba.metrics.depth]:
                if d.doc_id in sb:
                    xs.append(d.score)
                    ys.append(sb[d.doc_id])
        row.scores = (xs, ys)
    types = {_last_type(ba), _last_type(bb)}
    if len(types) == 1 and (family := types.pop()) in DECISIONS:
        threshold = DECISIONS[family]
        usable = [k for k in keys if ja[k].fallback != UNSCORABLE and jb[k].fallback != UNSCORABLE]
        row.decisions = len(usable)
        row.flips = sum((ja[k].score > threshold) != (jb[k].score > threshold) for k in usable)
    ta = generated_tokens([ja[k].record for k in keys])
    tb = generated_tokens([jb[k].record for k in keys])
    if ta and tb:
        row.tokens = (statistics.fmean(ta), statistics.fmean(tb))


def _last_type(bundle: Bundle) -> str | None:
    stages = bundle.metrics.stages
    return stages[-1].type if stages else None


def _cost(bundle: Bundle) -> SideCost | None:
    stages = bundle.execution.stages if bundle.execution else []
    if not stages:
        return None
    rss = [s.peak_rss_mb for s in stages if s.peak_rss_mb is not None]
    gpu = [s.peak_gpu_mb for s in stages if s.peak_gpu_mb is not None]
    return SideCost(sum(s.items for s in stages), sum(s.computed for s in stages),
                    sum(s.seconds for s in stages), max(rss) if rss else None, max(gpu) if gpu else None)


# -- report ---------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def markdown(c: Comparison, plots: Iterable[str] = ()) -> str:
    lines = [f"# {c.b} vs {c.a}", "",
             f"A = `{c.a}`, B = `{c.b}`; delta = B - A per judged unit (query; pair for PairedAccuracy). "
             f"Paired t-test and paired randomization test ({c.resamples:,} sign flips, seed {c.seed}; "
             f"exact when 2^n <= {c.resamples:,}), two-sided, Holm-corrected across the {len(c.tasks)} task(s); "
             f"equivalence: TOST within ±{c.margin:g}; alpha {c.alpha:g}.", "",
             "| task | measure | n | A | B | delta (95% CI) | p t-test (Holm) | p randomization (Holm) "
             "| TOST p | equivalent | Kendall tau | decision flips | generated tokens A → B |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in c.tasks:
        t = r.test
        flips = "-" if r.flip_rate is None else f"{r.flip_rate:.2%} ({r.flips}/{r.decisions})"
        tokens = "-" if r.tokens is None else f"{r.tokens[0]:.1f} → {r.tokens[1]:.1f}"
        equivalent = "yes" if t.p_tost is not None and t.p_tost < c.alpha else "no"
        lines.append(
            f"| {r.task} | {r.measure} | {t.n} | {_f(t.mean_a)} | {_f(t.mean_b)} | {t.delta:+.4f} "
            f"({_f(t.ci_low)}, {_f(t.ci_high)}) | {_p(t.p_t)} ({_p(r.p_t_holm)}) | {_p(t.p_randomization)} "
            f"({_p(r.p_randomization_holm)}) | {_p(t.p_tost)} | {equivalent} | {_f(r.tau_mean, 3)} "
            f"({r.untied_queries} q) | {flips} | {tokens} |")
    if c.pooled is not None:
        t = c.pooled
        equivalent = "yes" if t.p_tost is not None and t.p_tost < c.alpha else "no"
        lines.append(f"| all tasks (pooled units) | {c.tasks[0].measure} | {t.n} | {_f(t.mean_a)} | {_f(t.mean_b)} "
                     f"| {t.delta:+.4f} ({_f(t.ci_low)}, {_f(t.ci_high)}) | {_p(t.p_t)} | {_p(t.p_randomization)} "
                     f"| {_p(t.p_tost)} | {equivalent} | | | |")
    significant = [r.task for r in c.tasks if r.p_t_holm < c.alpha]
    lines += ["", f"Significant differences (t-test, Holm): {', '.join(significant) or 'none'}. "
              f"Equivalent within ±{c.margin:g} on every task: {'yes' if c.equivalent() else 'no'}.", ""]
    lines += ["## Cost", "",
              "Wall time of the reranking stages (model load included) over the documents they computed; "
              "peak memory of the process (RSS) and of torch on the GPU.", "",
              "| side | task | documents | computed | seconds / 100 documents | peak RSS (MB) | peak GPU (MB) |",
              "|---|---|---|---|---|---|---|"]
    for r in c.tasks:
        for label, cost in zip(("A", "B"), r.cost, strict=True):
            if cost is None:
                lines.append(f"| {label} | {r.task} | - | - | no model stage | - | - |")
                continue
            per = (_f(cost.per_100, 2) if cost.per_100 is not None
                   else "partly or all from the cache: time it with a fresh cache")
            lines.append(f"| {label} | {r.task} | {cost.items} | {cost.computed} | {per} | {_f(cost.peak_rss_mb, 0)} "
                         f"| {_f(cost.peak_gpu_mb, 0)} |")
    from harness.calibration_report import compare_section

    lines += ["", *compare_section(c.a, c.b, c.bundles)]
    plots = list(plots)
    if plots:
        lines += ["", "## Plots", "", *(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    lines += ["", "## Bundles", ""]
    for task, (pa, pb) in c.bundles.items():
        lines.append(f"- {task}: A `{pa}`, B `{pb}`")
    return "\n".join(lines) + "\n"


def as_json(c: Comparison) -> dict[str, Any]:
    def task(r: TaskComparison) -> dict[str, Any]:
        return {"task": r.task, "measure": r.measure, **r.test.as_dict(), "p_t_holm": r.p_t_holm,
                "p_randomization_holm": r.p_randomization_holm, "kendall_tau_mean": r.tau_mean,
                "kendall_tau_queries": r.untied_queries, "flips": r.flips, "decisions": r.decisions,
                "generated_tokens": r.tokens, "per_unit": dict(zip(r.units, zip(r.a, r.b, strict=True), strict=True)),
                "cost": [None if x is None else {**x.__dict__, "seconds_per_100": x.per_100} for x in r.cost]}

    from harness.calibration_report import compare_json

    return {"a": c.a, "b": c.b, "margin": c.margin, "alpha": c.alpha, "equivalent": c.equivalent(),
            "tasks": [task(r) for r in c.tasks], "pooled": c.pooled.as_dict() if c.pooled else None,
            "bundles": c.bundles, "calibration": compare_json(c.bundles)}


def plot(c: Comparison, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.tasks)
    paths = []
    fig, axes = plt.subplots(1, n, figsize=(max(5, 4.5 * n), 3.6), squeeze=False)
    for ax, r in zip(axes[0], c.tasks, strict=True):
        deltas = sorted((y - x for x, y in zip(r.a, r.b, strict=True)), reverse=True)
        ax.bar(range(len(deltas)), deltas, width=1.0, color=["tab:green" if d > 0 else "tab:red" for d in deltas])
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(r.test.delta, color="tab:blue", lw=1, ls="--", label=f"mean {r.test.delta:+.4f}")
        ax.set_title(f"{r.task}: {r.measure}, B - A per unit", fontsize=9)
        ax.set_xlabel("units, sorted by delta")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "delta.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, n, figsize=(max(4.5, 4.2 * n), 4), squeeze=False)
    for ax, r in zip(axes[0], c.tasks, strict=True):
        xs, ys = r.scores
        ax.scatter(xs, ys, s=4, alpha=0.5)
        if xs and r.same_scale:
            lo, hi = min(min(xs), min(ys)), max(max(xs), max(ys))
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set_title(f"{r.task}: scores ({len(xs)} shared documents)", fontsize=9)
        ax.set_xlabel(f"A: {c.a}", fontsize=8)
        ax.set_ylabel(f"B: {c.b}", fontsize=8)
    fig.tight_layout()
    paths.append(out / "scatter.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    from harness.calibration_report import compare_plots

    return paths + compare_plots(c.a, c.b, c.bundles, out)  # selective.png, when a side has a spread


def summary(c: Comparison) -> list[str]:
    """A few lines per task for the terminal; the report has everything."""
    lines = [f"B = {c.b} vs A = {c.a} (delta = B - A)"]
    for r in c.tasks:
        t = r.test
        verdict = "significant" if r.p_t_holm < c.alpha else "not significant"
        equivalent = t.p_tost is not None and t.p_tost < c.alpha
        lines += [
            f"{r.task} {r.measure} over {t.n} units: A {_f(t.mean_a)}  B {_f(t.mean_b)}  delta {t.delta:+.4f} "
            f"(95% CI {_f(t.ci_low)}, {_f(t.ci_high)})",
            f"  t-test p {_p(t.p_t)} (Holm {_p(r.p_t_holm)}), randomization p {_p(t.p_randomization)} "
            f"(Holm {_p(r.p_randomization_holm)}): {verdict}",
            f"  TOST within ±{c.margin:g}: p {_p(t.p_tost)}, {'equivalent' if equivalent else 'not shown equivalent'}; "
            f"Kendall tau {_f(r.tau_mean, 3)} over {r.untied_queries} queries",
        ]
        extra = []
        if r.flip_rate is not None:
            extra.append(f"decision flips {r.flip_rate:.2%} ({r.flips}/{r.decisions})")
        if r.tokens is not None:
            extra.append(f"generated tokens {r.tokens[0]:.1f} → {r.tokens[1]:.1f}")
        for label, cost in zip(("A", "B"), r.cost, strict=True):
            if cost is not None and cost.per_100 is not None:
                extra.append(f"{label} {cost.per_100:.2f} s / 100 docs, peak RSS {_f(cost.peak_rss_mb, 0)} MB"
                             + (f", GPU {_f(cost.peak_gpu_mb, 0)} MB" if cost.peak_gpu_mb is not None else ""))
        if extra:
            lines.append("  " + "; ".join(extra))
    if c.pooled is not None:
        t = c.pooled
        lines.append(f"all tasks (pooled, {t.n} units): delta {t.delta:+.4f}, t-test p {_p(t.p_t)}, "
                     f"TOST p {_p(t.p_tost)}")
    from harness.calibration_report import compare_summary

    return lines + compare_summary(c.bundles)


def write_report(c: Comparison, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(c, out)
    (out / "compare.json").write_text(json.dumps(as_json(c), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    report = out / "report.md"
    report.write_text(markdown(c, [str(p) for p in plots]), encoding="utf-8")
    return report
