"""Bi-encoders through sentence-transformers: score = the model's similarity of the embeddings.

Speed: the texts of a batch of pairs (queries and passages, each once) are tokenized once, sorted
by their token count and encoded in batches of `batch_size` of near-equal length, so that dynamic
padding adds almost nothing (sentence-transformers' own `encode` sorts by characters, which pads
about a quarter more tokens on MS MARCO passages). The model is loaded only when something is left
to compute: a run that finds every output in the cache imports neither torch nor the model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from harness.errors import MissingDependencyError, require
from harness.records import Document, Judgment, TruncationRecord
from harness.rerankers.base import (
    MIN_MAX_LENGTH,
    ModelConfig,
    PointwiseReranker,
    Preview,
    RerankRequest,
    torch_device_and_dtype,
)


class BiEncoderConfig(ModelConfig):
    type: Literal["bi-encoder"]
    max_length: int | None = Field(default=None, ge=MIN_MAX_LENGTH)  # None: the model's own max_seq_length
    query_prefix: str = ""
    document_prefix: str = ""
    normalize: bool = False


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class BiEncoder(PointwiseReranker):
    config: BiEncoderConfig
    backend = "sentence-transformers"

    def __init__(self, config: BiEncoderConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        if importlib.util.find_spec("sentence_transformers") is None:
            raise MissingDependencyError("sentence_transformers", "models", "the bi-encoder family")
        self._model: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        st = require("sentence_transformers", "models", "the bi-encoder family")
        device, dtype = torch_device_and_dtype(self.config)
        model = st.SentenceTransformer(  # type: ignore[attr-defined]
            self.weights.local_dir, device=str(device), trust_remote_code=self.config.trust_remote_code,
            model_kwargs={"torch_dtype": dtype},
        )
        if self.config.max_length is not None:
            model.max_seq_length = self.config.max_length
        self._model = model

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    def backend_info(self) -> dict[str, Any]:
        # No model and no import here: the cache key must be known before anything is loaded. The
        # similarity function and max_seq_length the model uses are decided by its files (the
        # weights revision), the sentence-transformers version and `max_length`, all in the key.
        return {"versions": {"sentence-transformers": _version("sentence-transformers"),
                             "transformers": _version("transformers"), "torch": _version("torch")}}

    def pair_input(self, query: str, doc: Document) -> Any:
        text = f"{doc.title} {doc.text}".strip() if doc.title else doc.text
        return [self.config.query_prefix + query, self.config.document_prefix + text]

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        """The passages as the model reads them (prefix included), against its max_seq_length; the
        tokenizer alone is loaded."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.weights.local_dir,
                                                  trust_remote_code=self.config.trust_remote_code)
        docs = [text for _, text in self.inputs(requests)]
        st_config = Path(self.weights.local_dir) / "sentence_bert_config.json"
        own = json.loads(st_config.read_text())["max_seq_length"] if st_config.is_file() else None
        context = self.config.max_length or own or min(int(tokenizer.model_max_length), 512)
        return Preview(docs[0] if docs else "", [len(ids) for ids in tokenizer(docs)["input_ids"]], context)

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        model = self.model
        # Every distinct text once; queries and passages share batches (the prefixes are in the text).
        texts = sorted({t for pair in inputs for t in pair})
        index = {t: i for i, t in enumerate(texts)}
        limit = int(model.max_seq_length)
        full = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
        # Longest first (an out-of-memory shows at once), ties in text order: the same batches every run.
        order = sorted(range(len(texts)), key=lambda i: -min(full[i], limit))
        kw = {"convert_to_tensor": True, "normalize_embeddings": self.config.normalize, "show_progress_bar": False}
        parts = []
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start : start + self.config.batch_size]
                parts.append(model.encode([texts[i] for i in batch], batch_size=len(batch), **kw))
            emb = torch.empty((len(texts), parts[0].shape[1]), dtype=parts[0].dtype, device=parts[0].device)
            emb[torch.tensor(order, device=emb.device)] = torch.cat(parts)
            qi = torch.tensor([index[q] for q, _ in inputs], device=emb.device)
            di = torch.tensor([index[d] for _, d in inputs], device=emb.device)
            scores = model.similarity_pairwise(emb[qi], emb[di]).float().cpu().tolist()
        return [Judgment("", "", float(s), TruncationRecord(), "truncated-passage") if full[index[d]] > limit
                else Judgment("", "", float(s)) for (_, d), s in zip(inputs, scores, strict=True)]
