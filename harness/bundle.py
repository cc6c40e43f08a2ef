"""Result bundles: self-describing folders, one per (pipeline, task, first stage, depth).

    metrics.json      first_stage / reranked aggregates, counts, fallbacks, provenance
    run.trec          the final (reranked) run; first_stage.trec, the first stage cut at depth
    per_query.tsv     unit, measure, first stage value, reranked value (a unit is a query, or what
                      the measure averages over: NevIR's PairedAccuracy has one row per pair)
    judgments.jsonl   every model output: query, doc, score, fallback, what the family records
    execution.json    what varies between runs of the same job: timings, cache hits
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, InputError
from harness.io.trec import read_run, trec_tag, write_run
from harness.provenance import git_commit, library_versions, machine
from harness.records import Judgment, JudgmentRow, generated_tokens, judgment_row, read_judgment_row
from harness.schema import (
    SCHEMA_VERSION,
    Execution,
    FirstStageRecord,
    Metrics,
    Provenance,
    QueryCounts,
    StageExecution,
    StageRecord,
    dump,
    read,
)

if TYPE_CHECKING:
    from harness.pipeline import Outcome
    from harness.taskdata import TaskData

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _token_stats(judgments: list[Judgment]) -> dict[str, Any]:
    tokens = generated_tokens([j.record for j in judgments])
    if not tokens:
        return {}
    return {"generated_tokens_mean": sum(tokens) / len(tokens), "generated_tokens_max": max(tokens)}


def write_bundle(outcome: Outcome, data: TaskData, results: Path) -> Path:
    from harness.identity import check_replaceable
    from harness.pipeline import bundle_dir

    stage0 = outcome.first_stage
    if outcome.identity is None:
        raise ValueError("write_bundle needs the outcome's identity (run_pipeline computes it)")
    out = bundle_dir(results, outcome.task.name, stage0.name, stage0.depth, outcome.pipeline.name)
    # Checked again here: another process may have finished a bundle of other content meanwhile.
    check_replaceable(out, outcome.identity, [st.config.name for st in outcome.stages])
    out.mkdir(parents=True, exist_ok=True)
    # Rewriting a finished bundle: take its marker away first, so that a kill half way leaves a
    # bundle that reads as unfinished, never old metrics beside half-written new files.
    (out / "metrics.json").unlink(missing_ok=True)
    fs_eval, rr_eval = outcome.first_eval, outcome.final_eval
    fallbacks: dict[str, int] = {}
    for st in outcome.stages:
        for k, v in st.stats.fallbacks.items():
            fallbacks[f"{st.config.name}:{k}"] = v
    metrics = Metrics(
        schema_version=SCHEMA_VERSION,
        task=outcome.task.name,
        pipeline=outcome.pipeline.name,
        first_stage_name=stage0.name,
        depth=stage0.depth,
        identity=outcome.identity,  # what decides this content: a bundle of other content never replaces it
        measures=list(fs_eval.aggregate),
        first_stage=_measured(fs_eval.aggregate),
        reranked=_measured(rr_eval.aggregate) if rr_eval else None,
        units={m: u for m, u in fs_eval.unit.items() if u != "query"},
        details={k: v.details for k, v in (("first_stage", fs_eval), ("reranked", rr_eval)) if v and v.details},
        queries=QueryCounts(
            judged=len(fs_eval.judged_queries),
            missing_from_first_stage=fs_eval.missing_queries,
            missing_from_reranked=rr_eval.missing_queries if rr_eval else None,
            unjudged_in_run=len(fs_eval.unjudged_queries),
        ),
        fallbacks=fallbacks,
        significance=outcome.significance,
        stages=[StageRecord(model=st.config.name, type=st.config.type, depth=st.depth, items=st.stats.items,
                            fingerprint=st.fingerprint, **_token_stats(st.judgments))
                for st in outcome.stages],
        provenance=Provenance(
            task=outcome.task.model_dump(mode="json"),
            pipeline=outcome.pipeline.model_dump(mode="json"),
            models=[st.config.model_dump(mode="json") for st in outcome.stages],
            first_stage=FirstStageRecord(name=stage0.name, description=stage0.description, depth=stage0.depth,
                                         notes=stage0.notes),
            data_checksums=dict(sorted(data.files.items())),
            data_unverified=data.unverified,  # read with no pinned sha256 to check them against
            data_notes=data.notes,  # what the topics, qrels or corpus readers accepted and said
            libraries=library_versions(),
            code=git_commit(),
        ),
    )
    write_run(out / "first_stage.trec", stage0.run, trec_tag(f"first-stage.{stage0.name}"))
    write_run(out / "run.trec", outcome.final_run, trec_tag(outcome.pipeline.name))
    rows = ["query_id\tmeasure\tfirst_stage\treranked"]
    # Query measures row by row of each query, then each measure of other units (NevIR pairs) by unit.
    by_query = fs_eval.query_measures()
    for qid in fs_eval.judged_queries:
        for measure in by_query:
            # A measure may have no value for a query (calibration: the first stage, a query with no
            # judged pair): NaN, as for a side that was not run.
            other = rr_eval.per_unit[measure].get(qid, math.nan) if rr_eval else math.nan
            rows.append(f"{qid}\t{measure}\t{fs_eval.per_unit[measure].get(qid, math.nan)!r}\t{other!r}")
    for measure in (m for m in fs_eval.aggregate if m not in by_query):
        for unit, value in fs_eval.per_unit[measure].items():
            other = rr_eval.per_unit[measure].get(unit, float("nan")) if rr_eval else float("nan")
            rows.append(f"{unit}\t{measure}\t{value!r}\t{other!r}")
    _atomic_write(out / "per_query.tsv", "\n".join(rows) + "\n")
    lines = []
    for st in outcome.stages:
        # A query's windows (listwise) are written once, with its first judgment (its top document).
        windows = {id(ranking[0]): ranking.windows for ranking in st.rankings if ranking.windows is not None
                   and len(ranking)}
        for j in sorted(st.judgments, key=lambda j: (j.query_id, j.doc_id)):
            row = judgment_row(st.config.name, j, windows.get(id(j)))
            lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False))
    _atomic_write(out / "judgments.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    execution = Execution(
        schema_version=SCHEMA_VERSION,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        seconds=round(outcome.seconds, 3),
        phases={name: round(sec, 3) for name, sec in outcome.timings.items()},
        machine=machine(),
        stages=[_stage_execution(st) for st in outcome.stages],
    )
    _atomic_write(out / "execution.json", dump(execution))
    from harness.calibration_report import write_calibration

    write_calibration(out, outcome, data)  # calibration.json, reliability.png (a final stage with a probability)
    _atomic_write(out / "metrics.json", dump(metrics))  # last: its presence marks a finished bundle
    return out


def _stage_execution(st: Any) -> StageExecution:
    """A stage's wall time (and where it went: build, load, model, cache), counts, peak memory, and the
    Ray workers that computed it (their devices, items and seconds)."""
    counts = st.stats.as_dict()
    split = counts.pop("seconds", None)
    return StageExecution(model=st.config.name, seconds=round(st.seconds, 3), **counts, seconds_split=split or None,
                          peak_rss_mb=_round(st.peak_rss_mb), peak_gpu_mb=_round(st.peak_gpu_mb),
                          mode=st.mode, workers=st.workers)  # workers: Ray's (--workers), with their devices


def _measured(aggregate: dict[str, float]) -> dict[str, float]:
    """The values a run has: a measure that does not apply to it (calibration of a first stage, NaN)
    is left out, and reads as absent ("-")."""
    return {m: v for m, v in aggregate.items() if not math.isnan(v)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class Bundle:
    """A finished result bundle read back through its typed records: what `compare`, `tables` and the
    report work from."""

    path: Path
    metrics: Metrics

    @property
    def reranked(self) -> bool:
        return self.metrics.reranked is not None

    @property
    def label(self) -> str:
        m = self.metrics
        return f"{m.pipeline} ({m.task}, {m.first_stage_name} top-{m.depth})"

    def aggregate(self, measure: str) -> float | None:
        """The final value of a measure: reranked, or the first stage's for `none`."""
        return self.metrics.final.get(measure)

    def unit(self, measure: str) -> str:
        """What the measure's per-unit values are about: "query", or e.g. "pair" (NevIR)."""
        return self.metrics.units.get(measure, "query")

    @cached_property
    def _units(self) -> dict[str, dict[str, tuple[float, float]]]:
        path = self.path / "per_query.tsv"
        out: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in self.metrics.measures}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
            parts = line.split("\t")
            if len(parts) != 4:
                raise InputError(path, f"expected 4 tab-separated columns, found {len(parts)}", line=n)
            out.setdefault(parts[1], {})[parts[0]] = (float(parts[2]), float(parts[3]))
        return out

    def measures(self) -> list[str]:
        """In the task's order: the first is the headline (PairedAccuracy on NevIR, nDCG@10 on DL)."""
        return list(self._units)

    def values(self, measure: str, *, first_stage: bool = False) -> dict[str, float]:
        """Per-unit values (queries; the measure's own units, e.g. NevIR pairs) of the final run, or of
        its first stage."""
        if measure not in self._units:
            raise HarnessError(f"{self.path}: no per-query values of {measure}; it has {self.measures()}. "
                               "Re-run the evaluation with --measures including it.")
        col = 0 if first_stage or not self.reranked else 1
        return {u: v[col] for u, v in self._units[measure].items() if not math.isnan(v[col])}

    @cached_property
    def run(self) -> Any:
        """The final run (read once: tau and the score scatter both use it)."""
        return read_run(self.path / "run.trec")

    def judgments(self) -> list[dict[str, Any]]:
        """The last stage's model outputs, as the rows of judgments.jsonl (see `judgment_rows`)."""
        return [raw for _, raw in self._last_stage_rows()]

    def judgment_rows(self) -> list[JudgmentRow]:
        """The last stage's model outputs read back as typed records (harness.records)."""
        path = self.path / "judgments.jsonl"
        return [read_judgment_row(raw, path, n) for n, raw in self._last_stage_rows()]

    def _last_stage_rows(self) -> list[tuple[int, dict[str, Any]]]:
        path = self.path / "judgments.jsonl"
        if not path.is_file():
            return []
        last = self.metrics.stages[-1].model if self.metrics.stages else None
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line:
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not a JSON line: {exc}", line=n) from exc
            if not isinstance(raw, dict):
                raise InputError(path, "expected a JSON object per line", line=n)
            if raw.get("stage") == last:
                rows.append((n, raw))
        return rows

    @cached_property
    def execution(self) -> Execution | None:
        """execution.json, or None when the bundle has none (copied without it)."""
        path = self.path / "execution.json"
        return read(path, Execution) if path.is_file() else None


def read_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise HarnessError(f"{path} is not a finished result bundle (no metrics.json); run the evaluation first")
    return Bundle(path, read(metrics_path, Metrics))
