"""Sequence-classification rerankers through transformers: cross-encoders, RankLLaMA, DeAR-P.

The input is a (query, document) text pair built from two templates and cut to `max_length`
tokens; the score is the single logit (or the log-probability of `positive_label` when the head
has several labels). A LoRA adapter (`weights` pointing at an adapter folder) is applied with
peft onto the base its `adapter_config.json` names (or `base:`), merged by default.
`backend: vllm` computes the same pairs on vLLM's pooling runner (`seqcls_vllm.py`).

DeAR pointwise follows the authors' published usage (`tokenizer("query: q", "document: title text",
max_length=228, truncation=True)`, one logit). Their evaluation script instead builds the ids by
hand (query cut to 32 tokens, passage to 193) and sets the model's pad id to 0 while padding with
EOS to 228 tokens, so that the head may read a padding position; we pad with EOS, set the model's
pad id to the tokenizer's, and pad on the right, so the head reads the last real token.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from harness.errors import MissingDependencyError, require
from harness.records import Document, Judgment, TruncationRecord
from harness.rerankers.base import (
    MIN_MAX_LENGTH,
    ModelConfig,
    PointwiseReranker,
    Preview,
    RerankRequest,
    package_version,
    torch_device_and_dtype,
)
from harness.rerankers.hf import load_kwargs, load_model, place, resolve_base
from harness.weights import ResolvedWeights, Weights


class SeqClsConfig(ModelConfig):
    type: Literal["cross-encoder"]
    query_template: str = "{query}"
    document_template: str = "{title} {text}"
    max_length: int = Field(default=512, ge=MIN_MAX_LENGTH)
    truncation: Literal["longest_first", "only_second"] = "longest_first"
    positive_label: int = Field(default=1, ge=0)  # used only when the head has more than one label
    padding_side: Literal["left", "right"] | None = None  # None: the tokenizer's own
    base: Weights | None = None  # the base of a LoRA adapter, when its adapter_config should not decide
    merge_lora: bool = True
    # `vllm`: vLLM's pooling runner (seqcls_vllm.py); the settings below are for it alone
    backend: Literal["transformers", "vllm"] = "transformers"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)

    @field_validator("backend")
    @classmethod
    def _vllm_can_run_it(cls, value: str, info: ValidationInfo) -> str:
        if value != "vllm":
            return value
        if info.data.get("merge_lora") is False:
            raise ValueError("vllm runs LoRA adapters merged: set merge_lora: true, or backend: transformers")
        quantization = info.data.get("quantization")
        if quantization is not None and not isinstance(quantization, str):
            raise ValueError(f"quantizing on load ({quantization.method}) needs backend: transformers; "
                             "vLLM takes checkpoints quantized already (quantization: awq)")
        return value


# Settings of the vLLM backend: absent from the transformers backend's cache key, which they cannot change.
VLLM_SETTINGS = ("backend", "gpu_memory_utilization", "enforce_eager", "tensor_parallel_size", "max_num_seqs")


def build_cross_encoder(config: SeqClsConfig, weights: ResolvedWeights | None = None) -> PointwiseReranker:
    """The reranker of a `cross-encoder` config, on the backend it names."""
    if config.backend == "vllm":
        from harness.rerankers.seqcls_vllm import VllmSequenceClassifier

        return VllmSequenceClassifier(config, weights)
    return SequenceClassifier(config, weights)


def tokenizer_dir(weights: ResolvedWeights, base: ResolvedWeights | None) -> str:
    """An adapter folder may lack a tokenizer: the base's is the one it was trained with."""
    if base is not None and not (Path(weights.local_dir) / "tokenizer_config.json").is_file():
        return base.local_dir
    return weights.local_dir


def pair_text(config: SeqClsConfig, query: str, doc: Document) -> list[str]:
    """The (query, document) texts of a pair, from the config's templates; both backends key on it."""
    d = config.document_template.format(title=doc.title, text=doc.text).strip()
    return [config.query_template.format(query=query), d]


def pair_preview(reranker: PointwiseReranker, tokenizer: Any, requests: Sequence[RerankRequest],
                 max_length: int) -> Preview:
    """The pairs as both backends tokenize them (lengths before the cut to max_length)."""
    pairs = reranker.inputs(requests)
    lengths = [len(ids) for ids in tokenizer([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]]
    return Preview(f"{pairs[0][0]}  ||  {pairs[0][1]}" if pairs else "", lengths, max_length)


def seqcls_judgment(score: float, truncated: bool) -> Judgment:
    if truncated:
        return Judgment("", "", score, TruncationRecord(), "truncated-passage")
    return Judgment("", "", score)


class SequenceClassifier(PointwiseReranker):
    config: SeqClsConfig
    backend = "transformers"

    def __init__(self, config: SeqClsConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        if importlib.util.find_spec("transformers") is None:
            raise MissingDependencyError("transformers", "models", "the cross-encoder family")
        self.base = resolve_base(self.weights, config.base, config.name)
        # Both loaded when first needed (transformers' tokenizers import torch): a fully cached rerun
        # loads neither.
        self._tokenizer: Any = None
        self._model: Any = None
        self.device: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "models", "the cross-encoder family")
            tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
                tokenizer_dir(self.weights, self.base), trust_remote_code=self.config.trust_remote_code)
            if tokenizer.pad_token is None:
                # Llama-family tokenizers ship without a pad token; padding with EOS is the usual
                # choice (and the one DeAR and RankLLaMA were trained with).
                tokenizer.pad_token = tokenizer.eos_token
            if self.config.padding_side:
                tokenizer.padding_side = self.config.padding_side
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The model, loaded on first use."""
        self.load()
        return self._model

    @model.setter
    def model(self, value: Any) -> None:  # None gives its memory back; the next use loads it again
        self._model = value

    def load(self) -> None:
        if self._model is not None:
            return
        config = self.config
        transformers = require("transformers", "models", "the cross-encoder family")
        device, dtype = torch_device_and_dtype(config)
        model = load_model(transformers.AutoModelForSequenceClassification,  # type: ignore[attr-defined]
                           self.weights, self.base, merge=config.merge_lora,
                           trust_remote_code=config.trust_remote_code, dtype=dtype,
                           **load_kwargs(config.quantization, device))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self._model = place(model, device)
        self.device = device

    def backend_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"versions": {"transformers": package_version("transformers"),
                                             "torch": package_version("torch")}}
        if self.base is not None:
            info["base"] = {"source": self.base.source, "revision": self.base.revision}
        return info

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["config"] = {k: v for k, v in fp["config"].items() if k not in VLLM_SETTINGS}
        return fp

    def pair_input(self, query: str, doc: Document) -> Any:
        return pair_text(self.config, query, doc)

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        return pair_preview(self, self.tokenizer, requests, self.config.max_length)

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        self.load()
        cfg = self.config
        enc = self.tokenizer([q for q, _ in inputs], [d for _, d in inputs], truncation=False,
                             add_special_tokens=True)
        full_lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(inputs)), key=lambda i: full_lengths[i], reverse=True)
        scores: list[float] = [0.0] * len(inputs)
        with torch.no_grad():  # not inference_mode: quanto weights fail under it
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
        return [seqcls_judgment(s, full_lengths[i] > cfg.max_length) for i, s in enumerate(scores)]
