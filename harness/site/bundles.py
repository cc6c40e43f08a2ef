"""A bundle's pages: its page (measures, per-query table, plots, execution, provenance) and one
judgment-reader page per query; and its row of the index."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from harness.bundle import Bundle
from harness.significance import FIRST_STAGE, legend, marks
from harness.site.collect import FoundBundle, reading
from harness.site.judgments import Reader, high_cut
from harness.site.plots import delta_plot
from harness.site.render import Writer, file_name
from harness.site.texts import TextSource

CALIBRATION_PLOTS = ("reliability.png", "selective.png")


def bundle_page(rel: str) -> str:
    return f"bundles/{rel}/index.html"


def query_page(rel: str, qid: str) -> str:
    return f"bundles/{rel}/q/{file_name(qid)}.html"


@dataclass
class IndexRow:
    """One bundle in the index; `problem` set when the site could not read it."""

    rel: str
    page: str | None
    task: str = ""
    first_stage: str = ""
    depth: int | None = None
    pipeline: str = ""
    headline: str = ""
    first_value: float | None = None
    final_value: float | None = None
    mark: str = ""
    others: list[tuple[str, float, str]] = field(default_factory=list)  # measure, final value, mark
    judged: int | None = None
    fallbacks: int = 0
    fallback_text: str = ""
    seconds: float | None = None
    cost_text: str = ""
    problem: str = ""

    @property
    def delta(self) -> float | None:
        if self.first_value is None or self.final_value is None or self.final_value is self.first_value:
            return None
        return self.final_value - self.first_value


def index_row(found: FoundBundle, problem: str = "") -> IndexRow:
    b = found.bundle
    if b is None:
        return IndexRow(found.rel, None, problem=found.problem)
    m = b.metrics
    head = m.headline
    row = IndexRow(found.rel, bundle_page(found.rel), m.task, m.first_stage_name, m.depth, m.pipeline, head,
                   m.first_stage.get(head), m.final.get(head), marks(m.significance, head),
                   [(x, m.final[x], marks(m.significance, x)) for x in m.measures[1:] if x in m.final],
                   m.queries.judged, sum(m.fallbacks.values()),
                   ", ".join(f"{k} {v}" for k, v in sorted(m.fallbacks.items())), problem=problem)
    if m.reranked is None:
        row.final_value = row.first_value  # the first stage alone: no delta
    if b.execution is not None:
        row.seconds = b.execution.seconds
        row.cost_text = "; ".join(_stage_cost(s) for s in b.execution.stages)
    return row


def _stage_cost(s: Any) -> str:
    text = f"{s.model}: {s.items} items, {s.computed} computed, {s.from_cache} cached, {s.seconds:.1f} s"
    if s.computed and s.computed == s.items:
        text += f" ({100 * s.seconds / s.computed:.2f} s / 100 docs)"
    if s.peak_gpu_mb is not None:
        text += f", peak GPU {s.peak_gpu_mb:.0f} MB"
    return text


def write_bundle_pages(writer: Writer, found: FoundBundle, texts: TextSource) -> None:
    """The bundle's page and its query pages (in the order of the bundle's query table)."""
    b = found.bundle
    assert b is not None  # unreadable bundles have an index row only
    rel = found.rel
    folder = writer.folder(f"bundles/{rel}")
    reader = Reader(b, texts.for_bundle(b))
    m = b.metrics
    query_measure = next((x for x in b.measures() if b.unit(x) == "query"), None)
    order = _by_delta(reader.values, query_measure) if query_measure else []
    listed = set(order)
    order += [q for q in reader.query_ids() if q not in listed]  # in the run but judged by no query measure
    views = {q: reader.query(q) for q in order}
    plots: dict[str, str] = {}
    head_values = _unit_deltas(b, m.headline)
    if m.reranked is not None and head_values:
        delta_plot([(u, d) for u, _, _, d in head_values], m.headline, m.first_stage_name, m.pipeline,
                   folder / "delta.png")
        plots["delta"] = "delta.png"
    for name in CALIBRATION_PLOTS:  # the bundle's own (harness.calibration), when its final stage has a probability
        if (b.path / name).is_file():
            plots[name.removesuffix(".png")] = writer.copy(b.path / name, f"bundles/{rel}/{name}").rsplit("/", 1)[1]
    calibration = _calibration(b)
    rows = [(q, views[q], reader.values.get(q, {})) for q in order]
    for i, q in enumerate(order):
        writer.page(query_page(rel, q), "query.html", bundle=b, rel=rel, view=views[q], family=reader.family,
                    level=reader.level, cut=high_cut(len(views[q].candidates)), missing=reader.texts.missing,
                    prev=f"{file_name(order[i - 1])}.html" if i else None,
                    next=f"{file_name(order[i + 1])}.html" if i + 1 < len(order) else None,
                    position=(i + 1, len(order)), query_measure=query_measure)
    writer.page(bundle_page(rel), "bundle.html", bundle=b, rel=rel, m=m, measures=_measure_rows(b),
                legend=legend(m.significance), query_measure=query_measure, rows=rows,
                other_measures=[x for x in b.measures() if x != query_measure and b.unit(x) == "query"
                                and x in m.first_stage],
                unit_rows=head_values if b.unit(m.headline) != "query" else [], plots=plots, calibration=calibration,
                family=reader.family, level=reader.level, missing=reader.texts.missing,
                execution=b.execution, pages={q: f"q/{file_name(q)}.html" for q in order},
                provenance=json.dumps(m.provenance.model_dump(mode="json"), indent=2, ensure_ascii=False),
                fingerprints=json.dumps([s.fingerprint for s in m.stages], indent=2, ensure_ascii=False),
                identity=json.dumps(m.identity, indent=2, ensure_ascii=False))


def _by_delta(values: dict[str, dict[str, tuple[float, float]]], measure: str) -> list[str]:
    """Queries from the largest loss to the largest gain (reranked - first stage), then by id."""
    def key(q: str) -> tuple[float, str]:
        fs, final = values[q].get(measure, (math.nan, math.nan))
        d = final - fs
        return (math.inf if math.isnan(d) else d, q)

    return sorted(values, key=key)


def _unit_deltas(b: Bundle, measure: str) -> list[tuple[str, float, float, float]]:
    fs, final = b.values(measure, first_stage=True), b.values(measure)
    rows = [(u, fs[u], final[u], final[u] - fs[u]) for u in fs if u in final]
    return sorted(rows, key=lambda r: (r[3], r[0]))


def _measure_rows(b: Bundle) -> list[dict[str, Any]]:
    m = b.metrics
    against = (m.significance or {}).get("against", {})
    rows = []
    for x in m.measures:
        tests = [(ref, t[x]) for ref, t in sorted(against.items(), key=lambda kv: kv[0] != FIRST_STAGE) if x in t]
        rows.append({"measure": x, "unit": b.unit(x), "first": m.first_stage.get(x),
                     "final": m.reranked.get(x) if m.reranked else None, "mark": marks(m.significance, x),
                     "tests": tests})
    return rows


def _calibration(b: Bundle) -> dict[str, Any] | None:
    """calibration.json's headline figures (harness.calibration writes it beside reliability.png)."""
    path = b.path / "calibration.json"
    if not path.is_file():
        return None
    with reading(path):
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {key: raw[key] for key in ("model", "probability", "relevance_threshold", "pairs", "relevant",
                                          "unjudged_left_out", "ECE", "Brier", "LogLoss")}
