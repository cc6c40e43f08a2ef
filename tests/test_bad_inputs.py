"""The bad input catalogue (tests/bad_inputs/catalogue.yaml): every malformed file gets its message.

Fatal inputs raise a HarnessError that names the file, the line or key, and what was expected;
through the command line they stop the run with exit status 2 before a model is built or a result is
written. Recoverable inputs are accepted and counted: notes for a byte-order mark or CRLF, unjudged
queries, and the families' fallbacks for model outputs, which reach the bundle's metrics.json.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import Cache
from harness.data import verify
from harness.errors import ConfigError, HarnessError, InputError
from harness.evaluate import evaluate
from harness.firststage import read_any_run
from harness.identity import check_results_folder
from harness.io.jsonfmt import read_beir_corpus, read_beir_queries, read_mteb, read_rankgpt
from harness.io.trec import read_qrels, read_run, read_topics
from harness.pipeline import PipelineSpec, run_pipeline
from harness.records import Rank1Record
from harness.registry import load_model_config
from harness.rerankers.listwise import parse_ranking
from harness.rerankers.rank1 import Generation, judge, render_prompt
from harness.runspec import load_run_spec
from harness.taskdata import load_task_data
from harness.tasks import load_task

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "bad_inputs"
CATALOGUE: list[dict[str, Any]] = yaml.safe_load((BAD / "catalogue.yaml").read_text(encoding="utf-8"))
T, F = 101, 202  # the token ids that stand for " true" and " false" in the rank1 replays


def dl19_eval(path: Path, notes: list[str]) -> dict[str, int]:
    """What `eval --first-stage FILE` does with a run on trec-dl-2019: read, evaluate, count."""
    run, _, _ = read_any_run(path)
    task = load_task("trec-dl-2019")
    result = evaluate(run, load_task_data(task).qrels, task.measures)
    return {"unjudged_queries": len(result.unjudged_queries), "queries": len(run),
            "documents": sum(len(d) for d in run.values())}


def read_run_counts(path: Path, notes: list[str]) -> dict[str, int]:
    run = read_run(path, notes=notes)
    return {"queries": len(run), "documents": sum(len(d) for d in run.values())}


def dl19_pipeline(path: Path, notes: list[str]) -> dict[str, int]:
    """What `eval --model none --task trec-dl-2019 --first-stage FILE` does with a run, up to its bundle."""
    with tempfile.TemporaryDirectory() as tmp:
        out = run_pipeline(PipelineSpec(name="none"), "trec-dl-2019", first_stage=str(path), results=Path(tmp))
    return {"queries": len(out.first_stage.run)}


READERS: dict[str, Callable[[Path, list[str]], object]] = {
    "run": read_run_counts,
    "any-run": lambda p, notes: read_any_run(p),
    "dl19-eval": dl19_eval,
    "dl19-pipeline": dl19_pipeline,  # a run that matches nothing judged stops before any model or bundle
    "qrels": lambda p, notes: read_qrels(p, notes=notes),
    "topics": lambda p, notes: read_topics(p, notes=notes),
    "beir-queries": lambda p, notes: read_beir_queries(p, notes=notes),
    "beir-corpus": lambda p, notes: read_beir_corpus(p, notes=notes),
    "candidates": lambda p, notes: read_rankgpt(p, notes=notes),
    "mteb": lambda p, notes: read_mteb(p, notes=notes),
    "model-config": lambda p, notes: load_model_config(str(p)),
    "run-config": lambda p, notes: load_run_spec(p),
    # a weights folder given with --weights in place of a shipped config's
    "weights-folder": lambda p, notes: load_model_config("minilm-l6", weights_path=str(p)),
    # a local copy of DL19's qrels checked against the sha256 the task pins (truncated, or another file)
    "pinned-dl19-qrels": lambda p, notes: verify(load_task("trec-dl-2019").qrels[0], p, "trec-dl-2019 qrels"),
    # a path given as --results (or a run config's `results:`), checked before any work
    "results-folder": lambda p, notes: check_results_folder(p),
    # a results folder's cache file, opened as a run opens it
    "cache": lambda p, notes: Cache(p).close(),
}


def test_catalogue_covers_the_folder() -> None:
    files = sorted(p.name for p in BAD.iterdir() if p.name not in ("catalogue.yaml", ".gitattributes"))
    listed = [entry["file"] for entry in CATALOGUE]
    assert sorted(listed) == files, "every file of tests/bad_inputs is in the catalogue, once"
    assert len(files) >= 30
    kinds = {entry["reader"] for entry in CATALOGUE}
    assert kinds == set(READERS) | {"rank1-output", "listwise-output"}
    assert {e["fatal"] for e in CATALOGUE} == {True, False}


FATAL = [e for e in CATALOGUE if e["fatal"]]
INPUT_FILES = [e for e in CATALOGUE if not e["fatal"] and e["reader"] in READERS]


@pytest.mark.parametrize("entry", FATAL, ids=[e["file"] for e in FATAL])
def test_fatal_input_names_file_place_and_expectation(entry: dict[str, Any]) -> None:
    path = BAD / entry["file"]
    with pytest.raises(HarnessError) as err:
        READERS[entry["reader"]](path, [])
    exc, message = err.value, str(err.value)
    assert isinstance(exc, (InputError, ConfigError))
    assert entry["file"] in message, message
    if "line" in entry:
        assert isinstance(exc, InputError) and exc.line == entry["line"], message
        assert f"line {entry['line']}" in message
    if "key" in entry:
        assert isinstance(exc, InputError) and exc.key == entry["key"], message
        assert f"key {entry['key']!r}" in message
    for text in entry["expect"]:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("entry", INPUT_FILES, ids=[e["file"] for e in INPUT_FILES])
def test_recoverable_input_is_read_and_counted(entry: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    notes: list[str] = []
    with caplog.at_level(logging.WARNING):
        counts = READERS[entry["reader"]](BAD / entry["file"], notes)
    assert isinstance(counts, dict)
    expected = dict(entry["counts"])
    assert len(notes) == expected.pop("notes", len(notes))
    assert {k: counts[k] for k in expected} == expected
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in entry["expect"]:
        assert text in logged, f"{text!r} not logged: {logged!r}"
    for note in notes:
        assert entry["file"] in note and note in logged  # each note names its file and is logged once
        assert logged.count(note) == 1


RANK1 = [e for e in CATALOGUE if e["reader"] == "rank1-output"]


def _logprobs(raw: dict[str, float]) -> dict[int, float]:
    ids = {"true": T, "false": F}
    return {ids[k] if k in ids else int(k): v for k, v in raw.items()}


@pytest.mark.parametrize("entry", RANK1, ids=[e["file"] for e in RANK1])
def test_rank1_output_fallback_is_counted(entry: dict[str, Any]) -> None:
    """The recorded generation goes through rank1's own `judge`: its forcing and its fallback names."""
    recorded = json.loads((BAD / entry["file"]).read_text(encoding="utf-8"))
    prompt = render_prompt("who painted the blue room", "The Blue Room was painted by a young artist in Paris.")
    forced_prompts: list[str] = []

    def replay(prompts: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        if allowed is None:
            return [Generation((7,) * len(recorded["text"].split()), recorded["text"], recorded["finish"],
                               _logprobs(recorded["last_logprobs"]), 40) for _ in prompts]
        forced_prompts.extend(prompts)
        return [Generation((T,), "", "length", _logprobs(recorded["forced_logprobs"]), 50) for _ in prompts]

    [judgment] = judge([prompt], replay, T, F, max_new_tokens=64)
    counts: dict[str, int] = {}
    if judgment.fallback:
        counts[judgment.fallback] = 1
    assert counts == entry["counts"]
    assert len(forced_prompts) == 1
    assert forced_prompts[0].startswith(prompt) and forced_prompts[0].endswith(entry["expect"][0])
    assert isinstance(judgment.record, Rank1Record) and judgment.record.forced is True
    if judgment.fallback == "unscorable":
        assert judgment.score < 0  # below every real score, never a silent 0.5
    else:
        lt, lf = recorded["forced_logprobs"]["true"], recorded["forced_logprobs"]["false"]
        assert judgment.score == pytest.approx(math.exp(lt) / (math.exp(lt) + math.exp(lf)))


LISTWISE = [e for e in CATALOGUE if e["reader"] == "listwise-output"]


@pytest.mark.parametrize("entry", LISTWISE, ids=[e["file"] for e in LISTWISE])
def test_listwise_output_fallback_is_counted(entry: dict[str, Any]) -> None:
    parsed = parse_ranking((BAD / entry["file"]).read_text(encoding="utf-8"), entry["window"])
    assert parsed.counts() == entry["counts"]
    assert [k + 1 for k in parsed.order] == entry["order"]


# --- through the command line and the pipeline --------------------------------------------------------
def harness_cli(*argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    return out, time.perf_counter() - started


def unloadable_model(tmp_path: Path) -> Path:
    """A valid config whose weights folder has the right file names but no model in them: building the
    model would fail with another error, so an input error that comes out proves it was never built."""
    (tmp_path / "empty-weights").mkdir()
    (tmp_path / "empty-weights" / "config.json").write_text("{}")
    (tmp_path / "empty-weights" / "model.safetensors").write_text("not weights")
    path = tmp_path / "unloadable.yaml"
    path.write_text(yaml.safe_dump({"name": "unloadable", "type": "cross-encoder",
                                    "weights": {"path": str(tmp_path / "empty-weights")}}))
    return path


@pytest.mark.parametrize(("bad", "where"), [("run_duplicate_document.trec", "line 4"),
                                            ("candidates_missing_content.json", "key '[0].hits[1]'")])
def test_cli_eval_refuses_bad_first_stage_before_any_model(tmp_path: Path, bad: str, where: str) -> None:
    results = tmp_path / "results"
    out, seconds = harness_cli("eval", "--model", str(unloadable_model(tmp_path)), "--task", "trec-dl-2019",
                               "--first-stage", f"tests/bad_inputs/{bad}", "--results", str(results), "--no-progress")
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
    assert out.returncode == 2, text
    assert f"{bad}, {where}" in text
    assert not results.exists() or not any(results.rglob("*")), "nothing may be written: no cache, no bundle"
    assert seconds < 60


@pytest.mark.parametrize(("bad", "where"), [("runconfig_unknown_task.yaml", "key 'tasks.1'"),
                                            ("runconfig_unknown_first_stage.yaml", "key 'first_stage'")])
def test_cli_run_refuses_bad_config_before_the_first_job(tmp_path: Path, bad: str, where: str) -> None:
    results = tmp_path / "results"
    out, seconds = harness_cli("run", f"tests/bad_inputs/{bad}", "--results", str(results), "--no-progress")
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert f"{bad}, {where}" in text
    assert not results.exists(), "the valid first job (trec-dl-2019, none) must not have run"
    assert seconds < 60


def test_cli_counts_unknown_query_in_bundle(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out, _ = harness_cli("eval", "--model", "none", "--task", "trec-dl-2019", "--first-stage",
                         "tests/bad_inputs/run_unknown_query.trec", "--results", str(results), "--no-progress",
                         "--allow-unmatched")  # its judged query ranks hand-written, unjudged documents
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads(next(results.rglob("metrics.json")).read_text())
    assert metrics["queries"]["unjudged_in_run"] == 1
    assert len(metrics["queries"]["missing_from_first_stage"]) == 42  # the run has 1 of the 43 judged queries


def test_model_fallbacks_and_unknown_query_reach_the_bundle(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    """A real (tiny) cross-encoder over hand-written candidates: one unjudged query, and one passage
    per query too long for max_length 128. Both queries are reranked; the bundle counts both."""
    config = tmp_path / "tiny-ce.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder", "max_length": 128,
                                      "weights": {"path": str(tiny_cross_encoder)}}))
    out = run_pipeline(PipelineSpec.single(str(config)), "trec-dl-2019",
                       first_stage=str(BAD / "candidates_unknown_query.json"), results=tmp_path / "results",
                       allow_unmatched=True)  # hand-written documents, none judged
    assert out.bundle is not None
    metrics = json.loads((out.bundle / "metrics.json").read_text())
    assert metrics["fallbacks"] == {"tiny-ce:truncated-passage": 2}
    assert metrics["queries"]["unjudged_in_run"] == 1
    judgments = (out.bundle / "judgments.jsonl").read_text().splitlines()
    assert len(judgments) == 5
    assert sum(json.loads(j)["fallback"] == "truncated-passage" for j in judgments) == 2
