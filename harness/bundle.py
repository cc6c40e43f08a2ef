"""Result bundles: self-describing folders, one per (pipeline, task, first stage, depth).

    metrics.json      first_stage / reranked aggregates, counts, fallbacks, provenance
    run.trec          the final (reranked) run; first_stage.trec, the first stage cut at depth
    per_query.tsv     query, measure, first stage value, reranked value
    judgments.jsonl   every model output: query, doc, score, fallback, what the family records
    execution.json    what varies between runs of the same job: timings, cache hits
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.io.trec import write_run
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
    from harness.pipeline import bundle_dir

    stage0 = outcome.first_stage
    out = bundle_dir(results, outcome.task.name, stage0.name, stage0.depth, outcome.pipeline.name)
    out.mkdir(parents=True, exist_ok=True)
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
        "first_stage": fs_eval.aggregate,
        "reranked": rr_eval.aggregate if rr_eval else None,
        "queries": {
            "judged": len(fs_eval.per_query),
            "missing_from_first_stage": fs_eval.missing_queries,
            "missing_from_reranked": rr_eval.missing_queries if rr_eval else None,
            "unjudged_in_run": len(fs_eval.unjudged_queries),
        },
        "fallbacks": fallbacks,
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
    write_run(out / "first_stage.trec", stage0.run, f"first-stage.{stage0.name}")
    write_run(out / "run.trec", outcome.final_run, outcome.pipeline.name)
    rows = ["query_id\tmeasure\tfirst_stage\treranked"]
    for qid in sorted(fs_eval.per_query):
        for measure, value in fs_eval.per_query[qid].items():
            other = rr_eval.per_query[qid][measure] if rr_eval else float("nan")
            rows.append(f"{qid}\t{measure}\t{value!r}\t{other!r}")
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
        "machine": machine(),
        "stages": [{"model": st.config.name, "seconds": round(st.seconds, 3), **st.stats.as_dict()}
                   for st in outcome.stages],
    }
    _atomic_write(out / "execution.json", _dump(execution))
    _atomic_write(out / "metrics.json", _dump(metrics))  # last: its presence marks a finished bundle
    return out
