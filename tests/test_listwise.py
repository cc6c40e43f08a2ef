"""DeAR listwise: windows, parsing and permutation by hand; then a tiny Llama (and a merged LoRA) on DL19."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from harness.cache import Cache
from harness.errors import ConfigError
from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
from harness.records import Document
from harness.rerankers.base import RerankRequest
from harness.rerankers.listwise import (
    BARE_INTEGERS,
    INVALID,
    MISSING,
    NO_THINK,
    POST_PROMPT,
    REPEATED,
    SYSTEM_PROMPT,
    UNPARSABLE,
    ListwiseConfig,
    ListwiseReranker,
    apply_permutation,
    build_messages,
    parse_ranking,
    window_spans,
)


# --- windows -------------------------------------------------------------------------------------
def official_spans(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """The loop of the official DeAR/RankGPT code, as the notes describe it (rank_start 0, rank_end n)."""
    spans = []
    end, start = n, n - window
    while start >= 0:
        spans.append((start, end))
        end, start = end - step, start - step
    return spans


@pytest.mark.parametrize("window", [1, 2, 3, 5, 6, 10, 20])
def test_windows_cover_every_position(window: int) -> None:
    for step in range(1, window + 1):
        for n in range(61):
            spans = window_spans(n, window, step)
            if n == 0:
                assert spans == []
                continue
            covered = {i for s, e in spans for i in range(s, e)}
            assert covered == set(range(n)), (n, window, step)
            assert spans[0][1] == n and spans[-1][0] == 0  # bottom first, the last one reaches the top
            assert all(0 <= s < e <= n and e - s <= window for s, e in spans)
            ends = [e for _, e in spans]
            assert ends == sorted(ends, reverse=True) and len(set(ends)) == len(ends)  # bottom-up
            assert all(s > 0 for s, _ in spans[:-1])  # nothing after the top is reached
            if n >= window and (n - window) % step == 0:
                assert spans == official_spans(n, window, step)  # where the official loop is right


def test_windows_fix_the_official_gaps() -> None:
    assert window_spans(30, 20, 10) == official_spans(30, 20, 10) == [(10, 30), (0, 20)]
    assert official_spans(25, 20, 10) == [(5, 25)]  # positions 0-4 never reranked
    assert window_spans(25, 20, 10) == [(5, 25), (0, 15)]
    assert official_spans(10, 20, 10) == []  # fewer candidates than the window: nothing at all
    assert window_spans(10, 20, 10) == [(0, 10)]
    assert window_spans(12, 6, 3) == [(6, 12), (3, 9), (0, 6)]
    with pytest.raises(ValueError, match="step"):
        window_spans(10, 3, 4)


def test_scripted_permutations_hand_worked() -> None:
    items = ["a", "b", "c", "d", "e"]
    answers = iter(["</think> [3] > [1] > [2]", "</think> [3] > [2] > [1]"])
    for start, end in window_spans(5, 3, 2):  # (2, 5) then (0, 3)
        items = apply_permutation(items, start, end, parse_ranking(next(answers), end - start).order)
    # window c,d,e -> e,c,d gives a,b,e,c,d; window a,b,e -> e,b,a gives e,b,a,c,d
    assert items == ["e", "b", "a", "c", "d"]
    assert apply_permutation([1, 2, 3, 4], 1, 4, [2, 0, 1]) == [1, 4, 2, 3]
    with pytest.raises(ValueError, match="permutation"):
        apply_permutation([1, 2, 3], 0, 3, [0, 0, 1])


# --- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "n", "order", "counts"), [
    ("<think>passage 2 answers it</think>\n[2] > [1] > [3]", 3, [1, 0, 2], {}),
    ("[2] > [3] > [1]", 3, [1, 2, 0], {NO_THINK: 1}),
    ("</THINK> [2] > [2] > [1] > [3]", 3, [1, 0, 2], {REPEATED: 1}),
    ("</think>[4] > [0] > [2] > [1] > [3]", 3, [1, 0, 2], {INVALID: 2}),
    ("</think>[3]", 4, [2, 0, 1, 3], {MISSING: 3}),
    # without </think> the official parser reads every integer: 1, 2, 3, 1, 2 -> identity order
    ("Step 1. needs X. Step 2. find them. Step 3. [3] > [1] > [2]", 3, [2, 0, 1], {NO_THINK: 1}),
    ("</think> 3 > 1 > 2", 3, [2, 0, 1], {BARE_INTEGERS: 1}),
    ("</think> 3, 7, 3", 3, [2, 0, 1], {BARE_INTEGERS: 1, INVALID: 1, REPEATED: 1, MISSING: 2}),
    ("", 3, [0, 1, 2], {NO_THINK: 1, UNPARSABLE: 1, MISSING: 3}),
    ("<think>[2] looks best</think>", 2, [0, 1], {UNPARSABLE: 1, MISSING: 2}),  # ids inside the reasoning do not count
    ("</think> no ranking here", 2, [0, 1], {UNPARSABLE: 1, MISSING: 2}),
])
def test_parse_ranking(text: str, n: int, order: list[int], counts: dict[str, int]) -> None:
    parsed = parse_ranking(text, n)
    assert parsed.order == order
    assert parsed.counts() == counts


def test_messages_are_the_official_ones() -> None:
    docs = [Document("d1", "one  two\nthree four five"), Document("d2", "alpha beta", title="Greek")]
    messages = build_messages("what is x", docs, max_words=3)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] + ["user", "assistant"] * 2 + ["user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[1]["content"] == ("I will provide you with 2 passages, each indicated by number identifier [].\n"
                                      "Rank the passages based on their relevance to query: what is x.")
    assert messages[2]["content"] == "Okay, please provide the passages."
    assert messages[3]["content"] == "[1] one two three"
    assert messages[4]["content"] == "Received passage [1]."
    assert messages[5]["content"] == "[2] Title: Greek Content:"  # the title counts in the 3 words
    assert messages[6]["content"] == "Received passage [2]."
    assert messages[7]["content"] == POST_PROMPT.format(query="what is x", n=2)
    assert messages[7]["content"].startswith("Search Query: what is x.\nRank the 2 passages above")
    assert messages[7]["content"].endswith("Only output the ranking using identifiers; no explanations.")


def test_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="step"):
        ListwiseConfig(name="x", type="listwise", weights={"path": "."}, window=5, step=6)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="top_p"):
        ListwiseConfig(name="x", type="listwise", weights={"path": "."}, top_p=0.9)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="backend"):
        ListwiseConfig(name="x", type="listwise", weights={"path": "."}, backend="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="quantizing on load"):
        ListwiseConfig(name="x", type="listwise", weights={"path": "."}, backend="vllm",  # type: ignore[arg-type]
                       quantization={"method": "quanto"})


# --- a tiny Llama --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny-llama"), dl19_texts, "llama")


@pytest.fixture(scope="session")
def tiny_llama_lora(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from harness.tiny import build_lora_adapter

    return build_lora_adapter(tiny_llama, tmp_path_factory.mktemp("tiny-llama-lora"), task_type="CAUSAL_LM")


@pytest.fixture(scope="session")
def dl19_requests(data: Path) -> list[RerankRequest]:
    entries = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [RerankRequest(e["hits"][0]["qid"], e["query"], [Document(h["docid"], h["content"]) for h in e["hits"][:12]])
            for e in entries[:3]]


def tiny_config(weights: Path, **extra: object) -> ListwiseConfig:
    fields = {"name": "tiny-listwise", "type": "listwise", "weights": {"path": str(weights)},
              "window": 6, "step": 3, "max_new_tokens": 20, "batch_size": 4, **extra}
    return ListwiseConfig.model_validate(fields)


def check_result(requests: list[RerankRequest], judged: list, expected_spans: list[list[int]]) -> None:  # type: ignore[type-arg]
    for req, js in zip(requests, judged, strict=True):
        ids = [d.doc_id for d in req.candidates]
        assert sorted(j.doc_id for j in js) == sorted(ids)  # a permutation of the input
        n = len(ids)
        assert [j.score for j in js] == [float(n - p) for p in range(n)]
        windows = [w.row() for w in js.windows]
        assert [w["span"] for w in windows] == expected_spans
        # replaying the recorded window orders on the input gives the final order
        order = ids
        for w in windows:
            s, e = w["span"]
            assert w["input"] == order[s:e]
            order = apply_permutation(order, s, e, [k - 1 for k in w["order"]])
        assert order == [j.doc_id for j in js]


def total_counts(judged: list) -> dict[str, int]:  # type: ignore[type-arg]
    totals: dict[str, int] = {}
    for js in judged:
        for w in [w.row() for w in js.windows]:
            for k, v in w["counts"].items():
                totals[k] = totals.get(k, 0) + v
    return totals


def test_tiny_llama_reranks_and_caches(tmp_path: Path, tiny_llama: Path, dl19_requests: list[RerankRequest]) -> None:
    spans = [[6, 12], [3, 9], [0, 6]]
    with Cache(tmp_path / "cache.sqlite") as cache:
        first = ListwiseReranker(tiny_config(tiny_llama))
        judged, stats = first.rerank(dl19_requests, cache)
        assert first.calls == 9 and stats.items == 9 and stats.computed == 9 and stats.from_cache == 0
        check_result(dl19_requests, judged, spans)
        assert stats.fallbacks == total_counts(judged) and stats.fallbacks  # random weights: garbage, counted
        windows = [w.row() for js in judged for w in js.windows]
        assert all(w["output"] and w["new_tokens"] >= 1 and w["prompt_tokens"] > 100 for w in windows)
        # the rerun makes no model call and does not even load the model
        second = ListwiseReranker(tiny_config(tiny_llama))
        again, stats2 = second.rerank(dl19_requests, cache)
        assert second.calls == 0 and second._model is None
        assert stats2.computed == 0 and stats2.from_cache == 9 and stats2.fallbacks == stats.fallbacks
        assert [[(j.doc_id, j.score) for j in js] for js in again] == [[(j.doc_id, j.score) for j in js]
                                                                       for js in judged]
        assert all(j.cached for js in again for j in js)
        # window and step are not in the key but in the prompt: another stride reuses the windows whose
        # prompt is the same (at least the bottom one, (6, 12), of each query)
        third = ListwiseReranker(tiny_config(tiny_llama, step=6))
        _, stats3 = third.rerank(dl19_requests, cache)
        assert stats3.items == 6 and stats3.from_cache >= 3 and stats3.from_cache + stats3.computed == 6
    # one BOS: the chat template writes it, tokenizing adds none (the official client would add a second)
    tok = first.tokenizer
    prompt = first.render("q", dl19_requests[0].candidates[:2])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok(prompt, add_special_tokens=True)["input_ids"][:2] == [tok.bos_token_id] * 2


def test_merged_lora(tmp_path: Path, tiny_llama: Path, tiny_llama_lora: Path,
                     dl19_requests: list[RerankRequest]) -> None:
    requests = dl19_requests[:2]
    with Cache(tmp_path / "cache.sqlite") as cache:
        base = ListwiseReranker(tiny_config(tiny_llama))
        base_judged, _ = base.rerank(requests, cache)
        lora = ListwiseReranker(tiny_config(tiny_llama_lora))
        assert lora.base is not None and lora.base.source == str(tiny_llama)  # from the adapter's config
        judged, stats = lora.rerank(requests, cache)
        assert stats.computed == 6 and lora.calls == 6  # not the base model's cache entries
        check_result(requests, judged, [[6, 12], [3, 9], [0, 6]])
        outputs = [w.output for js in judged for w in js.windows]
        base_outputs = [w.output for js in base_judged for w in js.windows]
        assert outputs != base_outputs  # the adapter was merged in
        fp = lora.fingerprint()
        assert fp["base"]["revision"].startswith("sha256:") and "peft" in fp["versions"]
        # an explicit base overrides the adapter's; same folder here, so the same outputs, from the cache
        named = ListwiseReranker(tiny_config(tiny_llama_lora, base={"path": str(tiny_llama)}))
        _, stats2 = named.rerank(requests, cache)
        assert stats2.computed == 0
    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        ListwiseReranker(tiny_config(tiny_llama, base={"path": str(tiny_llama)}))


def test_sampling_is_seeded(tmp_path: Path, tiny_llama: Path, dl19_requests: list[RerankRequest]) -> None:
    requests = dl19_requests[:1]
    outputs = []
    for run in range(2):
        with Cache(tmp_path / f"cache{run}.sqlite") as cache:
            reranker = ListwiseReranker(tiny_config(tiny_llama, temperature=0.7, top_p=0.9, seed=3))
            judged, stats = reranker.rerank(requests, cache)
            assert stats.computed == 3
            outputs.append([w.output for w in judged[0].windows])
    assert outputs[0] == outputs[1]
    with Cache(tmp_path / "greedy.sqlite") as cache:
        greedy, _ = ListwiseReranker(tiny_config(tiny_llama)).rerank(requests, cache)
    assert outputs[0] != [w.output for w in greedy[0].windows]  # it did sample


def test_two_stage_pipeline(tmp_path: Path, tiny_cross_encoder: Path, tiny_llama: Path, results: Path) -> None:
    ce = tmp_path / "tiny-ce.yaml"
    ce.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder", "max_length": 128, "batch_size": 16,
                                  "weights": {"path": str(tiny_cross_encoder)}}))
    lw = tmp_path / "tiny-listwise.yaml"
    lw.write_text(yaml.safe_dump({"name": "tiny-listwise", "type": "listwise", "weights": {"path": str(tiny_llama)},
                                  "window": 6, "step": 3, "max_new_tokens": 8, "batch_size": 8}))
    stages = [StageSpec(model=str(ce), depth=10), StageSpec(model=str(lw), depth=5)]
    pipeline = PipelineSpec(name="tiny-dual", stages=stages)
    dry = run_pipeline(pipeline, "trec-dl-2019", depth=20, results=results, dry_run=True)
    listwise_pre = dry.preflight[1].summary()
    assert "problem" not in listwise_pre and listwise_pre["context"] == 8192 and listwise_pre["output_budget"] == 8
    assert dry.preflight[1].example.count("Received passage [") == 5 and "You are RankLLM" in dry.preflight[1].example
    assert not (results / "cache.sqlite").exists()
    out = run_pipeline(pipeline, "trec-dl-2019", depth=20, results=results)
    ce_stage, lw_stage = out.stages
    assert lw_stage.depth == 5 and lw_stage.stats.items == 43 and lw_stage.stats.computed == 43  # one window each
    assert lw_stage.fingerprint["windowing"] == {"window": 6, "step": 3, "max_passage_words": 300}
    ce_run = {}
    for j in ce_stage.judgments:
        ce_run.setdefault(j.query_id, []).append(j)
    for qid, docs in out.final_run.items():
        ce_top = sorted(ce_run[qid], key=lambda j: (j.score, j.doc_id), reverse=True)
        assert {d.doc_id for d in docs[:5]} == {j.doc_id for j in ce_top[:5]}  # the listwise head
        assert [d.doc_id for d in docs[5:10]] == [j.doc_id for j in ce_top[5:10]]  # the CE's order below
        assert [d.doc_id for d in docs[10:]] == [d.doc_id for d in out.first_stage.run[qid][10:]]
    lines = [json.loads(x) for x in (out.bundle / "judgments.jsonl").read_text().splitlines()]  # type: ignore[operator]
    listwise = [x for x in lines if x["stage"] == "tiny-listwise"]
    assert len(listwise) == 43 * 5
    assert sum(1 for x in listwise if "listwise_windows" in x) == 43
    metrics = json.loads((out.bundle / "metrics.json").read_text())  # type: ignore[operator]
    assert any(k.startswith("tiny-listwise:listwise-") for k in metrics["fallbacks"])
    again = run_pipeline(pipeline, "trec-dl-2019", depth=20, results=results)
    assert [s.stats.computed for s in again.stages] == [0, 0]
    assert (again.bundle / "run.trec").read_bytes() == (out.bundle / "run.trec").read_bytes()  # type: ignore[operator]
