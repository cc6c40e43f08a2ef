"""Speed and memory of the pointwise families at their real sizes on a GPU, with random weights.

The published checkpoints cannot be downloaded everywhere; their architectures can be built. This
makes a random-weight checkpoint of the real shape (Llama-3.1-8B with a one-logit head for DeAR-P-8B,
T5-3B for monoT5-3B), loads it through the same `from_pretrained(path)` code as the hub checkpoint,
and runs the shipped config (templates, 228-token cap, batch size) over the DL19 BM25 top-100
(4,300 passages) in each dtype asked for. It prints docs/s, model-load seconds and peak GPU memory,
and compares the dtypes query by query with `harness.compare` (random weights: the nDCG values mean
nothing, the agreement between dtypes and the costs do).

    python bench/gpu_real_size.py --models dear-8b-ce monot5-3b --dtypes float16 float32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
from harness.registry import load_model_config

# The real shapes (config.json of meta-llama/Llama-3.1-8B and google-t5/t5-3b).
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 131072}
T5_3B = {"d_model": 1024, "d_ff": 16384, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 32, "d_kv": 128,
         "vocab_size": 32128, "feed_forward_proj": "relu"}
PUBLISHED_DOCS_PER_S = {"dear-8b-ce": 45.0}  # DeAR README: 2.2 s per query of 100 documents (GPU not stated)


def texts() -> list[str]:
    from harness.data import mirror_dir

    mirror = mirror_dir()
    if mirror is None:
        sys.exit("could not run: the data mirror is missing: set HARNESS_DATA_MIRROR")
    entries = json.loads((mirror / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [e["query"] for e in entries] + [h["content"] for e in entries for h in e["hits"][:40]]


def build(name: str, out: Path) -> Path:
    import transformers

    if (out / "config.json").is_file():
        return out
    from harness.tiny import build_t5, train_byte_bpe

    corpus = texts()
    started = time.perf_counter()
    with torch.device("cuda"):
        if name.startswith("dear-8b"):
            tokenizer = train_byte_bpe(corpus, vocab_size=32000, add_bos=True)
            config = transformers.LlamaConfig(**LLAMA_8B, num_labels=1, bos_token_id=tokenizer.bos_token_id,
                                              eos_token_id=tokenizer.eos_token_id)
            model = transformers.LlamaForSequenceClassification(config).to(torch.bfloat16)
        elif name.startswith("monot5"):
            build_t5(out, corpus)  # its tokenizer (with ▁true, ▁false); the 2-layer model is replaced
            tokenizer = transformers.AutoTokenizer.from_pretrained(out)
            config = transformers.T5Config(**T5_3B, decoder_start_token_id=tokenizer.pad_token_id,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            model = transformers.T5ForConditionalGeneration(config).to(torch.bfloat16)
        else:
            raise SystemExit(f"no real-size shape for {name}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {name}: {params / 1e9:.2f} B parameters in {time.perf_counter() - started:.0f} s -> {out}")
    del model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dear-8b-ce", "monot5-3b"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpu-real-size"))
    parser.add_argument("--results", type=Path, default=Path("results/gpu-real-size"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("could not run: this benchmark needs CUDA, and torch sees no GPU")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for name in args.models:
        weights = build(name, args.workdir / name)
        bundles = {}
        for dtype in args.dtypes:
            base = load_model_config(name, str(weights))
            label = f"{name}-random-{dtype}"
            config = base.model_copy(update={"name": label, "dtype": dtype})
            pipeline = PipelineSpec(name=label, stages=[StageSpec(model=name, weights=str(weights))])
            outcome = run_pipeline(pipeline, "trec-dl-2019", first_stage="bm25", depth=100, results=args.results,
                                   cache_path=args.workdir / f"cache-{label}.sqlite", configs=[config])
            st = outcome.stages[0]
            split = st.stats.as_dict().get("seconds") or {}
            load = float(split.get("build", 0.0)) + float(split.get("load", 0.0))  # weights to the GPU
            docs = st.stats.computed
            rows.append((name, dtype, docs, st.seconds, load, docs / max(st.seconds - load, 1e-9),
                         (st.peak_gpu_mb or 0) / 1024, outcome.final_eval.aggregate["nDCG@10"] if outcome.final_eval
                         else float("nan")))
            bundles[dtype] = outcome.bundle
        if len(bundles) == 2:
            from harness.bundle import read_bundle
            from harness.compare import compare, summary, write_report

            (da, pa), (db, pb) = bundles.items()
            c = compare({"trec-dl-2019": read_bundle(pa)}, {"trec-dl-2019": read_bundle(pb)},
                        labels=(f"{name}-{da}", f"{name}-{db}"))
            write_report(c, args.results / "compare" / f"{name}-{db}__vs__{da}")
            print("\n".join(summary(c)))
    print("\nmodel | dtype | passages | stage s | load s | docs/s (excl. load) | peak GPU GB | nDCG@10 (random)")
    for name, dtype, docs, sec, load, rate, peak, ndcg in rows:
        ref = PUBLISHED_DOCS_PER_S.get(name)
        ratio = f" ({rate / ref:.1f}x the published {ref:.0f} docs/s)" if ref else ""
        print(f"{name} | {dtype} | {docs} | {sec:.1f} | {load:.1f} | {rate:.0f}{ratio} | {peak:.1f} | {ndcg:.4f}")


if __name__ == "__main__":
    main()
