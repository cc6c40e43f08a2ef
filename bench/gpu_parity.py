"""The CUDA paths give the CPU's scores: each transformers family on tiny random-weight models,
scored on the CPU in float32 and on the GPU in float32 and bfloat16, over the same DL19 pairs.

    python bench/gpu_parity.py          # prints the largest score difference and Kendall tau per family
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from harness import stats, tiny
from harness.cache import Cache
from harness.data import mirror_dir
from harness.records import Document
from harness.registry import build_reranker, parse_model_config
from harness.rerankers.base import RerankRequest


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("could not run: this benchmark needs CUDA, and torch sees no GPU")
    mirror = mirror_dir()
    if mirror is None:
        sys.exit("could not run: the data mirror is missing: set HARNESS_DATA_MIRROR")
    entries = json.loads((mirror / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    texts = [e["query"] for e in entries] + [h["content"] for e in entries for h in e["hits"][:30]]
    requests = [RerankRequest(str(i), e["query"], [Document(str(h["docid"]), h["content"]) for h in e["hits"][:20]])
                for i, e in enumerate(entries[:10])]
    work = Path(tempfile.mkdtemp())
    families = {
        "cross-encoder (BERT)": {"type": "cross-encoder", "weights": {"path": str(tiny.build_bert_cross_encoder(
            work / "bert", texts))}},
        "cross-encoder (Llama seq-cls, DeAR-P template)": {
            "type": "cross-encoder", "weights": {"path": str(tiny.build_seq_cls(work / "llama", texts))},
            "query_template": "query: {query}", "document_template": "document: {title} {text}", "max_length": 228,
            "padding_side": "right"},
        "monot5 (T5)": {"type": "monot5", "weights": {"path": str(tiny.build_t5(work / "t5", texts))}},
    }
    print(f"GPU: {torch.cuda.get_device_name()}; {sum(len(r.candidates) for r in requests)} pairs per family")
    for label, raw in families.items():
        scores = {}
        for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
            config = parse_model_config({"name": "t", **raw, "device": device, "dtype": dtype}, "bench")
            with Cache(work / f"{label}-{device}-{dtype}.sqlite".replace(" ", "_")) as cache:
                judged, _ = build_reranker(config).rerank(requests, cache)
            scores[(device, dtype)] = [j.score for js in judged for j in js]
        ref = scores[("cpu", "float32")]
        for key in (("cuda", "float32"), ("cuda", "bfloat16")):
            got = scores[key]
            diff = max(abs(a - b) for a, b in zip(ref, got, strict=True))
            spread = max(ref) - min(ref)
            print(f"{label}: {key[0]} {key[1]} vs cpu float32: max |diff| {diff:.2e} (score range {spread:.2e}), "
                  f"Kendall tau {stats.kendall_tau(ref, got):.4f}")


if __name__ == "__main__":
    main()
