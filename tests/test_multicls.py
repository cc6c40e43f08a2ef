"""Multi-CLS cross-encoders on tiny BERTs built here: where the facet tokens go, the per-facet layers,
the re-parameterised combination, K=1 as a plain cross-encoder, save and reload, the family's scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from harness.cache import Cache
from harness.records import Document
from harness.registry import build_reranker, parse_model_config
from harness.rerankers.base import RerankRequest
from harness.rerankers.multicls import MultiClsRecord, folder_facets
from harness.rerankers.multicls_model import (
    MultiClsForSequenceClassification,
    default_facet_layers,
    from_encoder,
    plain_cross_encoder,
)

QUERY, PASSAGE = "what is the capital of france", "paris is the capital and most populous city of france"


@pytest.fixture()
def tokenizer(tiny_cross_encoder: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_cross_encoder)


def encoded(tokenizer: Any, n: int = 1) -> Any:
    return tokenizer([QUERY] * n, [PASSAGE] * n, return_tensors="pt")


def test_facet_tokens_land_right_after_cls(tiny_cross_encoder: Path, tokenizer: Any) -> None:
    assert "[unused0]" not in tokenizer.get_vocab()  # the tiny tokenizer lacks them: they are added
    model = from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=4)
    names = [f"[unused{k}]" for k in range(4)]
    assert model.config.facet_token_ids == tokenizer.convert_tokens_to_ids(names)
    assert model.bert.embeddings.word_embeddings.num_embeddings == len(tokenizer)
    enc = encoded(tokenizer)
    ids, mask, types = model.insert_facets(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    # the paper's layout: [CLS] s_1 .. s_K, then the pair as BERT reads it
    assert tokens[:5] == ["[CLS]", *names]
    assert tokens[5:] == tokenizer.convert_ids_to_tokens(enc["input_ids"][0])[1:]
    assert types[0, :5].tolist() == [0] * 5 and mask[0, :5].tolist() == [1] * 5
    assert types[0, 5:].tolist() == enc["token_type_ids"][0, 1:].tolist()
    # the facets start as copies of [CLS]'s embedding (no Multi-CLS pretraining to start from)
    table = model.bert.embeddings.word_embeddings.weight
    for fid in model.config.facet_token_ids:
        assert torch.equal(table[fid], table[tokenizer.cls_token_id])


def test_facet_layers_touch_only_the_facets(tiny_cross_encoder: Path, tokenizer: Any) -> None:
    model = from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=3, facet_layers=[1])
    model.eval()
    with torch.no_grad():
        for lin in model.maps(0):
            lin.weight.mul_(2.0)  # not the identity any more: the map shows where it acts
    seen: dict[str, torch.Tensor] = {}
    layer = model.bert.encoder.layer[1]

    def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def before(module: Any, args: tuple[Any, ...], output: Any) -> None:
        seen["out0"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True),  # runs after the facet hook
               model.bert.encoder.layer[0].register_forward_hook(before)]
    with torch.no_grad():
        model(**encoded(tokenizer))
    for h in handles:
        h.remove()
    h0, h1 = seen["out0"], seen["in"]
    assert torch.allclose(h1[:, 1:4], 2.0 * h0[:, 1:4], atol=1e-5)  # facets: Linear_{1,k}(h_k)
    assert torch.equal(h1[:, 0], h0[:, 0]) and torch.equal(h1[:, 4:], h0[:, 4:])  # [CLS] and text untouched
    assert default_facet_layers(12) == [4, 8] and default_facet_layers(6) == [2, 4]  # the paper's 4,8 of 12


def test_reparameterised_combination(tiny_cross_encoder: Path, tokenizer: Any) -> None:
    model = from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=3, pooler_activation="none", seed=3)
    model.eval()
    d = model.config.hidden_size
    same = torch.randn(1, 1, d).expand(2, 6, d)  # every facet in the same state
    terms = model.facet_terms(same)
    biases = sum(p.bias for p in model.projections())
    # sum_k (W_k - mean W) h + b_k = sum_k b_k: identical facets carry no signal (why the paper re-parameterises)
    assert torch.allclose(terms.sum(dim=1), biases.expand(2, d), atol=1e-5)
    seq = torch.randn(2, 6, d)
    weights = [p.weight for p in model.projections()]
    mean = sum(weights) / 3
    by_hand = sum(seq[:, 1 + k] @ (weights[k] - mean).T + model.projections()[k].bias for k in range(3))
    assert torch.allclose(model.facet_terms(seq).sum(dim=1), by_hand, atol=1e-5)
    with torch.no_grad():
        out = model(**encoded(tokenizer, 2))
    # without an activation, the score is the mean of the facets' own scores
    assert torch.allclose(out.facet_logits.mean(dim=1), out.logits[:, 0], atol=1e-5)


def test_k1_is_a_plain_cross_encoder(tiny_cross_encoder: Path, tokenizer: Any) -> None:
    model = from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=1)
    plain = BertForSequenceClassification.from_pretrained(tiny_cross_encoder)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in plain.state_dict().items()}  # the same parameters
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    enc = encoded(tokenizer, 2)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain(**enc).logits)  # and the same function
        assert torch.equal(plain_cross_encoder(model).eval()(**enc).logits, plain(**enc).logits)
    # the pretrained pooler is W_1, b_1
    loaded = BertForSequenceClassification.from_pretrained(tiny_cross_encoder)
    assert torch.equal(model.bert.pooler.dense.weight, loaded.bert.pooler.dense.weight)


def requests(dl19_texts: list[str]) -> list[RerankRequest]:
    docs = [Document(f"d{i}", text, "A title" if i % 3 == 0 else "") for i, text in enumerate(dl19_texts[60:72])]
    return [RerankRequest("q1", dl19_texts[0], docs[:6]), RerankRequest("q2", dl19_texts[1], docs[6:])]


def family_scores(weights: Path, reqs: list[RerankRequest], cache_path: Path, kind: str = "multi-cls",
                  **extra: Any) -> list[Any]:
    config = parse_model_config({"name": f"m-{kind}", "type": kind, "weights": {"path": str(weights)},
                                 "max_length": 64, "batch_size": 4, **extra}, "test")
    with Cache(cache_path) as cache:
        rankings, _ = build_reranker(config).rerank(reqs, cache)
    return [j for r in rankings for j in r]


def test_saved_and_reloaded_scores_identical(tiny_cross_encoder: Path, tokenizer: Any, tmp_path: Path,
                                             dl19_texts: list[str]) -> None:
    model = from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=3, seed=5)
    model.save_pretrained(tmp_path / "k3")
    tokenizer.save_pretrained(tmp_path / "k3")
    assert folder_facets(tmp_path / "k3") == 3
    reloaded = MultiClsForSequenceClassification.from_pretrained(tmp_path / "k3")
    model.eval()
    reloaded.eval()
    enc = encoded(tokenizer, 3)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc).logits)
    reqs = requests(dl19_texts)
    first = family_scores(tmp_path / "k3", reqs, tmp_path / "a.sqlite")
    again = family_scores(tmp_path / "k3", reqs, tmp_path / "b.sqlite")  # a new process's load, a fresh cache
    assert [j.score for j in first] == [j.score for j in again]
    # the family reads what the model computes, facet by facet, with their spread
    rec = first[0].record
    assert isinstance(rec, MultiClsRecord) and rec.facets is not None and len(rec.facets) == 3
    assert rec.spread == pytest.approx(float(torch.tensor(rec.facets).std(unbiased=False)))
    assert len({round(j.score, 6) for j in first}) > 1


def test_k1_family_scores_equal_the_cross_encoder_family(tiny_cross_encoder: Path, tokenizer: Any, tmp_path: Path,
                                                         dl19_texts: list[str]) -> None:
    folder = tmp_path / "k1"
    plain_cross_encoder(from_encoder(str(tiny_cross_encoder), tokenizer, num_facets=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reqs = requests(dl19_texts)
    multi = family_scores(folder, reqs, tmp_path / "m.sqlite")
    plain = family_scores(folder, reqs, tmp_path / "p.sqlite", kind="cross-encoder")
    assert [j.score for j in multi] == pytest.approx([j.score for j in plain], abs=1e-6)
    assert all(j.record is None or j.record.facets is None for j in multi)  # type: ignore[union-attr]  # K=1: no spread
    truncated = [j for j in multi if j.fallback == "truncated-passage"]
    assert [j.fallback for j in multi] == [j.fallback for j in plain] and truncated
