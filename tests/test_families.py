"""DeAR pointwise with LoRA, RankLLaMA-style seq-cls on a tiny Llama, and monoT5 on a tiny T5."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from harness.cache import Cache
from harness.pipeline import PipelineSpec, run_pipeline
from harness.records import Document
from harness.registry import build_reranker, parse_model_config
from harness.rerankers.base import RerankRequest

DEAR = {"type": "cross-encoder", "query_template": "query: {query}", "document_template": "document: {title} {text}",
        "max_length": 228, "padding_side": "right", "batch_size": 4}


@pytest.fixture(scope="session")
def tiny_dear(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> tuple[Path, Path]:
    from harness.tiny import build_lora_adapter, build_seq_cls

    base = build_seq_cls(tmp_path_factory.mktemp("dear-base"), dl19_texts, "llama")
    adapter = build_lora_adapter(base, tmp_path_factory.mktemp("dear-lora"))
    return base, adapter


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_t5

    return build_t5(tmp_path_factory.mktemp("t5"), dl19_texts)


def requests(dl19_texts: list[str]) -> list[RerankRequest]:
    docs = [Document(f"d{i}", text, "A title" if i % 3 == 0 else "") for i, text in enumerate(dl19_texts[50:62])]
    return [RerankRequest("q1", dl19_texts[0], docs[:6]), RerankRequest("q2", dl19_texts[1], docs[6:])]


def scores(config: dict, reqs: list[RerankRequest], tmp_path: Path, name: str) -> list[float]:  # type: ignore[type-arg]
    reranker = build_reranker(parse_model_config({"name": name, **config}, "test"))
    with Cache(tmp_path / f"{name}.sqlite") as cache:
        judged, stats = reranker.rerank(reqs, cache)
    assert stats.computed == sum(len(r.candidates) for r in reqs)
    return [j.score for js in judged for j in js]


def test_lora_merged_equals_unmerged(tiny_dear: tuple[Path, Path], dl19_texts: list[str], tmp_path: Path) -> None:
    base, adapter = tiny_dear
    reqs = requests(dl19_texts)
    merged = scores({**DEAR, "weights": {"path": str(adapter)}, "base": {"path": str(base)}}, reqs, tmp_path, "m")
    unmerged = scores({**DEAR, "weights": {"path": str(adapter)}, "base": {"path": str(base)}, "merge_lora": False},
                      reqs, tmp_path, "u")
    plain = scores({**DEAR, "weights": {"path": str(base)}}, reqs, tmp_path, "b")
    assert merged == pytest.approx(unmerged, abs=1e-4)
    # the adapter does change the model: otherwise the test above would prove nothing
    assert max(abs(a - b) for a, b in zip(merged, plain, strict=True)) > 1e-3


def test_adapter_base_comes_from_adapter_config(tiny_dear: tuple[Path, Path], dl19_texts: list[str],
                                                tmp_path: Path) -> None:
    base, adapter = tiny_dear
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    reqs = requests(dl19_texts)
    implicit = scores({**DEAR, "weights": {"path": str(adapter)}}, reqs, tmp_path, "i")
    explicit = scores({**DEAR, "weights": {"path": str(adapter)}, "base": {"path": str(base)}}, reqs, tmp_path, "e")
    assert implicit == pytest.approx(explicit, abs=1e-6)


def test_padding_does_not_change_scores(tiny_dear: tuple[Path, Path], dl19_texts: list[str], tmp_path: Path) -> None:
    """Llama has no pad token: padding with EOS on the right must leave each pair's score as if alone."""
    base, _ = tiny_dear
    reqs = requests(dl19_texts)
    batched = scores({**DEAR, "weights": {"path": str(base)}}, reqs, tmp_path, "batched")
    alone = scores({**DEAR, "weights": {"path": str(base)}, "batch_size": 1}, reqs, tmp_path, "alone")
    assert batched == pytest.approx(alone, abs=1e-4)


def test_dear_input_is_capped_at_228_tokens(tiny_dear: tuple[Path, Path], dl19_texts: list[str],
                                            tmp_path: Path) -> None:
    base, _ = tiny_dear
    long_doc = Document("long", " ".join(dl19_texts[100:110]))
    reranker = build_reranker(parse_model_config({"name": "d", **DEAR, "weights": {"path": str(base)}}, "test"))
    with Cache(tmp_path / "c.sqlite") as cache:
        judged, stats = reranker.rerank([RerankRequest("q", "a query", [long_doc, Document("s", "short")])], cache)
    assert stats.fallbacks == {"truncated-passage": 1}
    record = judged[0][0].record
    assert record is not None and record.row() == {"truncated": True}


def test_monot5_scores_are_log_probabilities(tiny_t5: Path, dl19_texts: list[str], tmp_path: Path) -> None:
    reqs = requests(dl19_texts)
    config = {"type": "monot5", "weights": {"path": str(tiny_t5)}, "batch_size": 4, "max_length": 512}
    values = scores(config, reqs, tmp_path, "t5")
    assert all(v < 0 for v in values)
    # P(true) + P(false) = 1 over the two tokens: each value is a proper log-probability
    assert all(0 < math.exp(v) < 1 for v in values)
    assert len(set(values)) > 1


def test_monot5_keeps_relevant_when_truncating(tiny_t5: Path, dl19_texts: list[str], tmp_path: Path) -> None:
    reranker = build_reranker(parse_model_config(
        {"name": "t5", "type": "monot5", "weights": {"path": str(tiny_t5)}, "max_length": 64}, "test"))
    item = reranker.pair_input("what is a flea", Document("x", " ".join(dl19_texts[100:105])))  # type: ignore[attr-defined]
    prompt, cut = reranker.render(item)  # type: ignore[attr-defined]
    assert cut and prompt.endswith("Relevant:")
    assert len(reranker.tokenizer(prompt)["input_ids"]) <= 64  # type: ignore[attr-defined]


def test_dear_lora_end_to_end(tiny_dear: tuple[Path, Path], tmp_path: Path, results: Path) -> None:
    _, adapter = tiny_dear
    path = tmp_path / "tiny-dear.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny-dear-lora", **DEAR, "weights": {"path": str(adapter)}}))
    out = run_pipeline(PipelineSpec.single(str(path)), "trec-dl-2019", depth=5, results=results)
    metrics = json.loads((out.bundle / "metrics.json").read_text())  # type: ignore[operator]
    assert metrics["stages"][0]["fingerprint"]["base"]["revision"].startswith("sha256:")
    assert metrics["reranked"]["nDCG@10"] != metrics["first_stage"]["nDCG@10"]
