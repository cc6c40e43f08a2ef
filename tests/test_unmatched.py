"""A run that matches nothing judged stops before any work, unless the user allows it.

A prefix added to every document id, or query ids of another collection, would otherwise give 0.0
for every measure and exit 0. Each case goes through the command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def dl19_run(data: Path, tmp_path: Path, name: str, *, query_prefix: str = "", doc_prefix: str = "") -> Path:
    """The real RepLLaMA DL19 run (first 10 documents a query), its ids prefixed."""
    lines = []
    for line in (data / "msmarco-passage/trec-dl-2019/repllama.top100.trec").read_text().splitlines():
        qid, q0, doc, rank, score, tag = line.split()
        if int(rank) <= 10:
            lines.append(f"{query_prefix}{qid} {q0} {doc_prefix}{doc} {rank} {score} {tag}\n")
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def harness(*argv: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "COLUMNS": "1000"})  # one line a message, unwrapped
    return out.returncode, " ".join((out.stdout + out.stderr).split())


def eval_dl19(run: Path, results: Path, *flags: str) -> tuple[int, str]:
    return harness("eval", "--model", "none", "--task", "trec-dl-2019", "--first-stage", str(run),
                   "--results", str(results), "--no-progress", *flags)


def first_stage_values(results: Path) -> dict[str, float]:
    (metrics,) = results.rglob("metrics.json")
    values: dict[str, float] = json.loads(metrics.read_text())["first_stage"]
    return values


@pytest.mark.parametrize(("prefix", "said"), [
    ({"doc_prefix": "msmarco-"}, ["none of the 430 documents it ranks for its 43 judged queries is judged",
                                  "run doc 'msmarco-"]),
    ({"query_prefix": "dl19-"}, ["none of its 43 queries is among the 43 judged queries",
                                 "run query 'dl19-"]),
])
def test_unmatched_run_stops_the_cli(data: Path, tmp_path: Path, prefix: dict[str, str], said: list[str]) -> None:
    run = dl19_run(data, tmp_path, "prefixed.trec", **prefix)
    results = tmp_path / "results"
    status, text = eval_dl19(run, results)
    assert status == 2, text
    assert f"{run}: the run matches nothing judged in trec-dl-2019's qrels" in text
    for part in [*said, "vs qrels", "--allow-unmatched", "allow_unmatched: true"]:
        assert part in text, (part, text)
    assert "Traceback" not in text
    assert not results.exists(), "nothing may be written"


def test_allowed_unmatched_run_gives_zeros(data: Path, tmp_path: Path) -> None:
    run = dl19_run(data, tmp_path, "prefixed.trec", doc_prefix="msmarco-")
    results = tmp_path / "results"
    status, text = eval_dl19(run, results, "--allow-unmatched")
    assert status == 0, text
    values = first_stage_values(results)
    assert set(values) == {"nDCG@10", "AP(rel=2)", "R(rel=2)@100", "RR(rel=2)@10"}
    assert all(v == 0.0 for v in values.values()), values


def test_run_config_allows_unmatched(data: Path, tmp_path: Path) -> None:
    run = dl19_run(data, tmp_path, "prefixed.trec", query_prefix="dl19-")
    config = {"name": "unmatched", "tasks": ["trec-dl-2019"], "models": ["none"], "first_stage": str(run)}
    strict, allowing = tmp_path / "strict.yaml", tmp_path / "allowing.yaml"
    strict.write_text(yaml.safe_dump(config))
    allowing.write_text(yaml.safe_dump({**config, "allow_unmatched": True}))
    status, text = harness("run", str(strict), "--results", str(tmp_path / "strict"), "--no-progress")
    assert status == 2 and "matches nothing judged" in text, text
    status, text = harness("run", str(allowing), "--results", str(tmp_path / "allowed"), "--no-progress")
    assert status == 0, text
    assert all(v == 0.0 for v in first_stage_values(tmp_path / "allowed").values())


def test_a_run_matching_one_judged_document_is_evaluated(data: Path, tmp_path: Path) -> None:
    """Only a run that matches nothing at all is stopped: one judged document is enough (here a
    relevant one, so that a measure shows it was matched)."""
    qrels = (data / "msmarco-passage/trec-dl-2019/qrels.dl19-passage.txt").read_text().splitlines()
    relevant = {(q, d) for q, _, d, rel in map(str.split, qrels) if int(rel) > 0}
    run = dl19_run(data, tmp_path, "prefixed.trec", doc_prefix="msmarco-")
    lines = run.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if (line.split()[0], line.split()[2][8:]) in relevant)
    lines[i] = lines[i].replace("msmarco-", "", 1)
    run.write_text("".join(lines))
    status, text = eval_dl19(run, tmp_path / "results")
    assert status == 0, text
    assert first_stage_values(tmp_path / "results")["nDCG@10"] > 0
