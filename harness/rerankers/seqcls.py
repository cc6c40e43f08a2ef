"""Sequence-classification rerankers through transformers: cross-encoders, RankLLaMA, DeAR-P.

The input is a (query, document) text pair built from two templates and cut to `max_length`
tokens; the score is the single logit (or the log-probability of `positive_label` when the head
has several labels).
"""

from __future__ import annotations

from typing import Any, Literal

from harness.errors import require
from harness.records import Document, Judgment
from harness.rerankers.base import ModelConfig, PointwiseReranker, torch_device_and_dtype


class SeqClsConfig(ModelConfig):
    type: Literal["cross-encoder"]
    query_template: str = "{query}"
    document_template: str = "{title} {text}"
    max_length: int = 512
    truncation: Literal["longest_first", "only_second"] = "longest_first"
    positive_label: int = 1  # used only when the head has more than one label
    padding_side: Literal["left", "right"] | None = None  # None: the tokenizer's own


class SequenceClassifier(PointwiseReranker):
    config: SeqClsConfig
    backend = "transformers"

    def __init__(self, config: SeqClsConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        transformers = require("transformers", "models", "the cross-encoder family")
        device, dtype = torch_device_and_dtype(config)
        local = self.weights.local_dir
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
            local, trust_remote_code=config.trust_remote_code)
        if self.tokenizer.pad_token is None:
            # Llama-family tokenizers ship without a pad token; padding with EOS is the usual
            # choice (and the one DeAR and RankLLaMA were trained with).
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if config.padding_side:
            self.tokenizer.padding_side = config.padding_side
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(  # type: ignore[attr-defined]
            local, dtype=dtype, trust_remote_code=config.trust_remote_code)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device = device

    def backend_info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"versions": {"transformers": transformers.__version__, "torch": torch.__version__}}

    def pair_input(self, query: str, doc: Document) -> Any:
        q = self.config.query_template.format(query=query)
        d = self.config.document_template.format(title=doc.title, text=doc.text).strip()
        return [q, d]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        cfg = self.config
        enc = self.tokenizer([q for q, _ in inputs], [d for _, d in inputs], truncation=False,
                             add_special_tokens=True)
        full_lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(inputs)), key=lambda i: full_lengths[i], reverse=True)
        scores: list[float] = [0.0] * len(inputs)
        with torch.inference_mode():
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                batch = self.tokenizer([inputs[i][0] for i in idx], [inputs[i][1] for i in idx],
                                       padding=True, truncation=cfg.truncation, max_length=cfg.max_length,
                                       return_tensors="pt").to(self.device)
                logits = self.model(**batch).logits.float()
                if logits.shape[-1] == 1:
                    values = logits[:, 0]
                else:
                    values = torch.log_softmax(logits, dim=-1)[:, cfg.positive_label]
                for i, v in zip(idx, values.cpu().tolist(), strict=True):
                    scores[i] = float(v)
        out = []
        for i, s in enumerate(scores):
            truncated = full_lengths[i] > cfg.max_length
            out.append(Judgment("", "", s, {"truncated": True} if truncated else {},
                                "truncated-passage" if truncated else None))
        return out
