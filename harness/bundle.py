"""Result bundles: self-describing folders, one per (pipeline, task, first stage, depth).

    metrics.json      first_stage / reranked aggregates, counts, fallbacks, provenance
    run.trec          the final (reranked) run; first_stage.trec, the first stage cut at depth
    per_query.tsv     query, measure, first stage value, reranked value (for PairedAccuracy: pair
                      id, PairedAccuracy, 0/1 for the first stage, 0/1 reranked)
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
from harness.evaluate import PAIRED_ACCURACY
from harness.io.trec import read_run, trec_tag, write_run
from harness.provenance import git_commit, library_versions, machine

if TYPE_CHECKING:
    from harness.pipeline import Outcome
    from harness.taskdata import TaskData

SCHEMA_VERSION = 1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _token_stats(judgments: list[Any]) -> dict[str, Any]:
    tokens = [j.extra["generated_tokens"] for j in judgments if "generated_tokens" in j.extra]
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
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": outcome.task.name,
        "pipeline": outcome.pipeline.name,
        "first_stage_name": stage0.name,
        "depth": stage0.depth,
        "identity": outcome.identity,  # what decides this content: a bundle of other content never replaces it
        "first_stage": fs_eval.aggregate,
        "reranked": rr_eval.aggregate if rr_eval else None,
        "queries": {
            "judged": len(fs_eval.per_query),
            "missing_from_first_stage": fs_eval.missing_queries,
            "missing_from_reranked": rr_eval.missing_queries if rr_eval else None,
            "unjudged_in_run": len(fs_eval.unjudged_queries),
        },
        "fallbacks": fallbacks,
        "significance": outcome.significance,
        "stages": [
            {"model": st.config.name, "type": st.config.type, "depth": st.depth,
             "items": st.stats.items, "fingerprint": st.fingerprint, **_token_stats(st.judgments)}
            for st in outcome.stages
        ],
        "provenance": {
            "task": outcome.task.model_dump(mode="json"),
            "pipeline": outcome.pipeline.model_dump(mode="json"),
            "models": [st.config.model_dump(mode="json") for st in outcome.stages],
            "first_stage": {"name": stage0.name, "description": stage0.description,
                            "depth": stage0.depth, "notes": stage0.notes},
            "data_checksums": dict(sorted(data.files.items())),
            "data_unverified": data.unverified,  # read with no pinned sha256 to check them against
            "libraries": library_versions(),
            "code": git_commit(),
        },
    }
    if rr_eval is not None and rr_eval.extra:
        metrics["reranked_extra"] = {k: {kk: vv for kk, vv in v.items() if kk != "per_pair"}  # type: ignore[attr-defined]
                                     for k, v in rr_eval.extra.items()}
    if fs_eval.extra:
        metrics["first_stage_extra"] = {k: {kk: vv for kk, vv in v.items() if kk != "per_pair"}  # type: ignore[attr-defined]
                                        for k, v in fs_eval.extra.items()}
    write_run(out / "first_stage.trec", stage0.run, trec_tag(f"first-stage.{stage0.name}"))
    write_run(out / "run.trec", outcome.final_run, trec_tag(outcome.pipeline.name))
    rows = ["query_id\tmeasure\tfirst_stage\treranked"]
    for qid in sorted(fs_eval.per_query):
        for measure, value in fs_eval.per_query[qid].items():
            other = rr_eval.per_query[qid][measure] if rr_eval else float("nan")
            rows.append(f"{qid}\t{measure}\t{value!r}\t{other!r}")
    pairs_fs = fs_eval.extra.get("paired_accuracy")
    if isinstance(pairs_fs, dict):
        pairs_rr = rr_eval.extra["paired_accuracy"]["per_pair"] if rr_eval else {}  # type: ignore[index]
        for pair_id, value in sorted(pairs_fs["per_pair"].items()):
            rows.append(f"{pair_id}\t{PAIRED_ACCURACY}\t{value!r}\t{pairs_rr.get(pair_id, float('nan'))!r}")
    _atomic_write(out / "per_query.tsv", "\n".join(rows) + "\n")
    lines = []
    for st in outcome.stages:
        for j in sorted(st.judgments, key=lambda j: (j.query_id, j.doc_id)):
            lines.append(json.dumps({"stage": st.config.name, "query_id": j.query_id, "doc_id": j.doc_id,
                                     "score": j.score, "fallback": j.fallback, **j.extra},
                                    sort_keys=True, ensure_ascii=False))
    _atomic_write(out / "judgments.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    execution = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(outcome.seconds, 3),
        "phases": {name: round(sec, 3) for name, sec in outcome.timings.items()},
        "machine": machine(),
        "stages": [_stage_execution(st) for st in outcome.stages],
    }
    _atomic_write(out / "execution.json", _dump(execution))
    _atomic_write(out / "metrics.json", _dump(metrics))  # last: its presence marks a finished bundle
    return out


def _stage_execution(st: Any) -> dict[str, Any]:
    """A stage's wall time (and where it went, when the family says), counts and peak memory."""
    counts = st.stats.as_dict()
    split = counts.pop("seconds", None)
    out = {"model": st.config.name, "seconds": round(st.seconds, 3), **counts,
           "peak_rss_mb": _round(st.peak_rss_mb), "peak_gpu_mb": _round(st.peak_gpu_mb)}
    if split:
        out["seconds_split"] = split
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class Bundle:
    """A finished result bundle read back: what `compare` and `tables` work from."""

    path: Path
    metrics: dict[str, Any]

    @property
    def reranked(self) -> bool:
        return self.metrics["reranked"] is not None

    @property
    def label(self) -> str:
        m = self.metrics
        return f"{m['pipeline']} ({m['task']}, {m['first_stage_name']} top-{m['depth']})"

    def aggregate(self, measure: str) -> float | None:
        """The final value of a measure: reranked, or the first stage's for `none`."""
        values = self.metrics["reranked"] if self.reranked else self.metrics["first_stage"]
        return values.get(measure)

    @cached_property
    def _units(self) -> dict[str, dict[str, tuple[float, float]]]:
        path = self.path / "per_query.tsv"
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
            parts = line.split("\t")
            if len(parts) != 4:
                raise InputError(path, f"expected 4 tab-separated columns, found {len(parts)}", line=n)
            out.setdefault(parts[1], {})[parts[0]] = (float(parts[2]), float(parts[3]))
        return out

    def measures(self) -> list[str]:
        return list(self._units)

    def values(self, measure: str, *, first_stage: bool = False) -> dict[str, float]:
        """Per-unit values (queries; pairs for PairedAccuracy) of the final run, or of its first stage."""
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
        """The last stage's model outputs."""
        path = self.path / "judgments.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        last = self.metrics["stages"][-1]["model"] if self.metrics["stages"] else None
        return [r for r in rows if r["stage"] == last]

    @cached_property
    def execution(self) -> dict[str, Any]:
        path = self.path / "execution.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise HarnessError(f"{path} is not a finished result bundle (no metrics.json); run the evaluation first")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(metrics_path, f"not valid JSON: {exc.msg}", line=exc.lineno) from exc
    if metrics.get("schema_version") != SCHEMA_VERSION:
        raise InputError(metrics_path, f"schema_version {metrics.get('schema_version')!r}; this harness reads "
                         f"{SCHEMA_VERSION}")
    return Bundle(path, metrics)
