"""Preflight (`--dry-run`): before any compute, show what each stage would send to its model.

For every stage: one rendered input, token-length statistics of all inputs against the model's
context (the reasoning or answer budget included), and how many inputs would be truncated. Only
tokenizers are loaded, never weights.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.records import Document
from harness.rerankers.base import ModelConfig, RerankRequest
from harness.rerankers.hf import resolve_base
from harness.weights import resolve_weights


@dataclass
class StagePreflight:
    model: str
    type: str
    inputs: int = 0
    example: str = ""
    context: int | None = None  # tokens the model can take
    budget: int = 0  # tokens reserved for the output (reasoning, answer)
    lengths: list[int] = field(default_factory=list)
    over: int = 0  # inputs that would be truncated (or that do not fit with the budget)
    problem: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "type": self.type, "inputs": self.inputs}
        if self.problem:
            out["problem"] = self.problem
        if self.lengths:
            ordered = sorted(self.lengths)
            out.update(tokens_mean=round(statistics.fmean(ordered), 1), tokens_median=ordered[len(ordered) // 2],
                       tokens_p95=ordered[int(0.95 * (len(ordered) - 1))], tokens_max=ordered[-1])
        out.update(context=self.context, output_budget=self.budget, over_context=self.over)
        return out


def _tokenizer(config: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    weights = resolve_weights(config.weights, config.name)
    folder = weights.local_dir
    if not (Path(folder) / "tokenizer_config.json").is_file():
        base = resolve_base(weights, getattr(config, "base", None), config.name)
        if base is not None:
            folder = base.local_dir
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=config.trust_remote_code)


def _pairs(requests: list[RerankRequest]) -> list[tuple[RerankRequest, Document]]:
    return [(r, d) for r in requests for d in r.candidates]


# type -> function(config, tokenizer, requests, report) that fills the report
Renderer = Callable[[Any, Any, list[RerankRequest], StagePreflight], None]


def _seq_cls(config: Any, tok: Any, requests: list[RerankRequest], rep: StagePreflight) -> None:
    pairs = [(config.query_template.format(query=r.query),
              config.document_template.format(title=d.title, text=d.text).strip()) for r, d in _pairs(requests)]
    rep.example = f"{pairs[0][0]}  ||  {pairs[0][1]}"
    rep.lengths = [len(ids) for ids in tok([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]]
    rep.context = config.max_length


def _monot5(config: Any, tok: Any, requests: list[RerankRequest], rep: StagePreflight) -> None:
    prompts = [config.template.format(query=r.query, text=f"{d.title} {d.text}".strip() if d.title else d.text)
               for r, d in _pairs(requests)]
    rep.example = prompts[0]
    rep.lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
    rep.context = config.max_length


def _bi_encoder(config: Any, tok: Any, requests: list[RerankRequest], rep: StagePreflight) -> None:
    docs = [f"{d.title} {d.text}".strip() if d.title else d.text for _, d in _pairs(requests)]
    rep.example = config.document_prefix + docs[0]
    rep.lengths = [len(ids) for ids in tok(docs)["input_ids"]]
    st_config = Path(tok.name_or_path) / "sentence_bert_config.json"
    own = json.loads(st_config.read_text())["max_seq_length"] if st_config.is_file() else None
    rep.context = config.max_length or own or min(int(tok.model_max_length), 512)


def _family_hook(config: Any, tok: Any, requests: list[RerankRequest], rep: StagePreflight) -> None:
    """Families with their own prompt logic expose `preflight_prompts(config, tokenizer, requests)`,
    returning (prompts, output budget, context)."""
    import importlib

    from harness.registry import FAMILIES

    module = importlib.import_module(FAMILIES[config.type][1].partition(":")[0])
    hook = getattr(module, "preflight_prompts", None)
    if hook is None:
        rep.problem = f"the {config.type} family has no preflight"
        return
    prompts, rep.budget, rep.context = hook(config, tok, requests)
    rep.example = prompts[0] if prompts else ""
    rep.lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]


RENDERERS: dict[str, Renderer] = {"cross-encoder": _seq_cls, "monot5": _monot5, "bi-encoder": _bi_encoder}


def preflight_stage(config: ModelConfig, requests: list[RerankRequest]) -> StagePreflight:
    rep = StagePreflight(config.name, config.type, inputs=sum(len(r.candidates) for r in requests))
    try:
        tok = _tokenizer(config)
    except HarnessError as exc:
        rep.problem = str(exc)
        return rep
    RENDERERS.get(config.type, _family_hook)(config, tok, requests, rep)
    if rep.context is not None:
        rep.over = sum(1 for n in rep.lengths if n + rep.budget > rep.context)
    return rep


def requests_for(run: Mapping[str, list[Any]], queries: Mapping[str, str], documents: Mapping[str, Document],
                 depth: int | None, prompt_key: str) -> list[RerankRequest]:
    out = []
    for qid in sorted(run):
        if qid not in queries:
            continue
        head = run[qid][:depth] if depth else run[qid]
        out.append(RerankRequest(qid, queries[qid], [documents[d.doc_id] for d in head if d.doc_id in documents],
                                 prompt_key))
    return out
