"""`type: multi-cls`: Multi-CLS BERT cross-encoders (Chang et al., ACL 2023), K facets in one encoder.

The model (harness/rerankers/multicls_model.py, which says what follows the paper's code and what is
adapted) is loaded with `from_pretrained(path)` from a folder that `python -m harness train` writes:
a Multi-CLS folder (`model_type: multi-cls-bert`), or for K=1 a plain BERT sequence classifier, which
is what a K=1 Multi-CLS model is (the `cross-encoder` family loads the same folder to the same scores).

Input and score: the cross-encoder's (query, document) pair from the same templates, cut to
`max_length` tokens including the K facet tokens; the score is the relevance logit, and its
probability of relevance is the logit's sigmoid (the model is trained with binary cross-entropy).

Confidence, an adaptation for ranking: the paper reads its facets only through their combination.
Here every judgment also carries each facet's own score (the head applied as if all facets agreed
with that facet) and their spread (population standard deviation), the family's confidence signal:
`harness.calibration` measures whether it flags the wrong decisions. K=1 has no spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from harness.errors import ConfigError, require
from harness.records import Document, Judgment, Record
from harness.rerankers.base import (
    MIN_MAX_LENGTH,
    ModelConfig,
    PointwiseReranker,
    Preview,
    RerankRequest,
    package_version,
    torch_device_and_dtype,
)
from harness.weights import ResolvedWeights

MODEL_TYPE = "multi-cls-bert"  # config.json's model_type of a saved Multi-CLS model (K > 1)


class MultiClsModelConfig(ModelConfig):
    type: Literal["multi-cls"]
    query_template: str = "{query}"
    document_template: str = "{title} {text}"
    # Every token the encoder reads, the K facet tokens included.
    max_length: int = Field(default=512, ge=MIN_MAX_LENGTH)
    truncation: Literal["longest_first", "only_second"] = "longest_first"
    # Tasks whose judgments trained the model (`harness train` writes it): it is never evaluated on them.
    trained_on: list[str] = Field(default_factory=list)


class MultiClsRecord(Record):
    """Beside the score: each facet's own score and their spread (K > 1), and the cut, if any."""

    facets: list[float] | None = None
    spread: float | None = None
    truncated: bool | None = None

    def row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def folder_facets(local_dir: str | Path) -> int:
    """K of a saved model folder, read from its config.json (a plain sequence classifier is K=1)."""
    path = Path(local_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a model config ({exc})") from exc
    if config.get("model_type") == MODEL_TYPE:
        return int(config.get("num_facets", 1))
    if int(config.get("num_labels", len(config.get("id2label") or {0: 0}))) != 1:
        raise ConfigError(f"{path}: a sequence classifier with several labels; the multi-cls family reads one "
                          "relevance logit (K=1 folders are plain one-logit cross-encoders)")
    return 1


def spread(values: Sequence[float]) -> float:
    """Population standard deviation: 0 for one value."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class MultiClsReranker(PointwiseReranker):
    config: MultiClsModelConfig
    backend = "transformers"
    record_type: ClassVar[type[Record] | None] = MultiClsRecord
    score_scale: ClassVar[str] = "logit"  # harness.calibration: the probability is the sigmoid of the score

    def __init__(self, config: MultiClsModelConfig, weights: ResolvedWeights | None = None) -> None:
        super().__init__(config, weights)
        self.facets = folder_facets(self.weights.local_dir)
        inserted = self.facets if self.facets > 1 else 0
        if config.max_length - inserted < MIN_MAX_LENGTH:
            raise ConfigError(f"model {config.name!r}: max_length {config.max_length} leaves "
                              f"{config.max_length - inserted} tokens beside the {inserted} facet tokens")
        self.text_length = config.max_length - inserted  # what the pair itself may take
        self._tokenizer: Any = None
        self.model: Any = None
        self.device: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "models", "the multi-cls family")
            if self.facets > 1:  # the tokenizer reads config.json: its model type must be known
                from harness.rerankers.multicls_model import register_auto

                register_auto()
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(  # type: ignore[attr-defined]
                self.weights.local_dir)
        return self._tokenizer

    def load(self) -> None:
        if self.model is not None:
            return
        require("torch", "models", "the multi-cls family")
        device, dtype = torch_device_and_dtype(self.config)
        if self.facets > 1:
            from harness.rerankers.multicls_model import MultiClsForSequenceClassification

            model = MultiClsForSequenceClassification.from_pretrained(self.weights.local_dir, dtype=dtype)
        else:
            transformers = require("transformers", "models", "the multi-cls family")
            model = transformers.AutoModelForSequenceClassification.from_pretrained(  # type: ignore[attr-defined]
                self.weights.local_dir, dtype=dtype)
        self.model = model.to(device).eval()
        self.device = device

    def backend_info(self) -> dict[str, Any]:
        return {"facets": self.facets,
                "versions": {"transformers": package_version("transformers"), "torch": package_version("torch")}}

    def pair_input(self, query: str, doc: Document) -> Any:
        text = self.config.document_template.format(title=doc.title, text=doc.text).strip()
        return [self.config.query_template.format(query=query), text]

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        pairs = self.inputs(requests)
        lengths = [len(ids) + (self.facets if self.facets > 1 else 0)
                   for ids in self.tokenizer([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]]
        return Preview(f"{pairs[0][0]}  ||  {pairs[0][1]}" if pairs else "", lengths, self.config.max_length)

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        self.load()
        cfg = self.config
        full = [len(ids) for ids in self.tokenizer([q for q, _ in inputs], [d for _, d in inputs])["input_ids"]]
        order = sorted(range(len(inputs)), key=lambda i: full[i], reverse=True)
        scores: list[float] = [0.0] * len(inputs)
        facets: list[list[float]] = [[] for _ in inputs]
        with torch.no_grad():
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                batch = self.tokenizer([inputs[i][0] for i in idx], [inputs[i][1] for i in idx], padding=True,
                                       truncation=cfg.truncation, max_length=self.text_length,
                                       return_tensors="pt").to(self.device)
                out = self.model(**batch)
                logits = out.logits.float()[:, 0].cpu().tolist()
                per_facet = out.facet_logits.float().cpu().tolist() if self.facets > 1 else [[v] for v in logits]
                for i, value, fs in zip(idx, logits, per_facet, strict=True):
                    scores[i] = float(value)
                    facets[i] = [float(f) for f in fs]
        judged = []
        for i, score in enumerate(scores):
            truncated = full[i] > self.text_length
            record = None
            if self.facets > 1 or truncated:
                record = MultiClsRecord(facets=facets[i] if self.facets > 1 else None,
                                        spread=spread(facets[i]) if self.facets > 1 else None,
                                        truncated=True if truncated else None)
            judged.append(Judgment("", "", score, record, "truncated-passage" if truncated else None))
        return judged

    @staticmethod
    def probability(judgment: Judgment) -> float | None:
        """The probability of relevance: the sigmoid of the logit (trained with binary cross-entropy)."""
        return sigmoid(judgment.score)

    @staticmethod
    def spread_of(judgment: Judgment) -> float | None:
        record = judgment.record
        return record.spread if isinstance(record, MultiClsRecord) else None
