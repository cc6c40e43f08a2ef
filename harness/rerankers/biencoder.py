"""Bi-encoders through sentence-transformers: score = the model's similarity of the embeddings."""

from __future__ import annotations

from typing import Any, Literal

from harness.errors import require
from harness.records import Document, Judgment
from harness.rerankers.base import ModelConfig, PointwiseReranker, torch_device_and_dtype


class BiEncoderConfig(ModelConfig):
    type: Literal["bi-encoder"]
    max_length: int | None = None  # None: the model's own max_seq_length
    query_prefix: str = ""
    document_prefix: str = ""
    normalize: bool = False


class BiEncoder(PointwiseReranker):
    config: BiEncoderConfig
    backend = "sentence-transformers"

    def __init__(self, config: BiEncoderConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        st = require("sentence_transformers", "models", "the bi-encoder family")
        device, dtype = torch_device_and_dtype(config)
        self.model = st.SentenceTransformer(  # type: ignore[attr-defined]
            self.weights.local_dir, device=str(device), trust_remote_code=config.trust_remote_code,
            model_kwargs={"torch_dtype": dtype},
        )
        if config.max_length is not None:
            self.model.max_seq_length = config.max_length
        self.truncated = 0

    def backend_info(self) -> dict[str, Any]:
        import sentence_transformers
        import torch
        import transformers

        return {"versions": {"sentence-transformers": sentence_transformers.__version__,
                             "transformers": transformers.__version__, "torch": torch.__version__},
                "similarity": str(self.model.similarity_fn_name),
                "max_seq_length": int(self.model.max_seq_length)}

    def pair_input(self, query: str, doc: Document) -> Any:
        text = f"{doc.title} {doc.text}".strip() if doc.title else doc.text
        return [self.config.query_prefix + query, self.config.document_prefix + text]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        import torch

        queries = sorted({q for q, _ in inputs})
        docs = sorted({d for _, d in inputs})
        kw = {"batch_size": self.config.batch_size, "convert_to_tensor": True,
              "normalize_embeddings": self.config.normalize, "show_progress_bar": False}
        with torch.inference_mode():
            q_emb = self.model.encode(queries, **kw)
            d_emb = self.model.encode(docs, **kw)
        q_index = {q: i for i, q in enumerate(queries)}
        d_index = {d: i for i, d in enumerate(docs)}
        qi = torch.tensor([q_index[q] for q, _ in inputs])
        di = torch.tensor([d_index[d] for _, d in inputs])
        scores = self.model.similarity_pairwise(q_emb[qi], d_emb[di]).float().cpu().tolist()
        limit = self.model.max_seq_length
        tokenizer = self.model.tokenizer
        lengths = {d: len(tokenizer(d, add_special_tokens=True)["input_ids"]) for d in docs}
        out = []
        for (_, d), s in zip(inputs, scores, strict=True):
            truncated = lengths[d] > limit
            out.append(Judgment("", "", float(s), {"truncated": truncated} if truncated else {},
                                "truncated-passage" if truncated else None))
        return out
