"""A family that lives outside the package: one module and one YAML (word-overlap.yaml), no edit under
harness/. Its config names this file with `module:`; importing it registers the type.

Score: the share of the query's words (those in the vocabulary of the weights' WordPiece `vocab.txt`)
that the passage contains. The vocabulary is read in `load`, so a fully cached rerun reads nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from harness.records import Document, Judgment, Record
from harness.registry import register_family
from harness.rerankers.base import ModelConfig, PointwiseReranker, Preview, RerankRequest

WORD = re.compile(r"[a-z0-9]+")


class WordOverlapConfig(ModelConfig):
    type: Literal["word-overlap"]
    lowercase: bool = True


class OverlapRecord(Record):
    matched: int  # query words found in the passage


class WordOverlap(PointwiseReranker):
    config: WordOverlapConfig
    backend = "python"
    record_type = OverlapRecord

    def __init__(self, config: WordOverlapConfig, weights: Any = None) -> None:
        super().__init__(config, weights)
        self.vocabulary: set[str] | None = None
        self.loads = 0

    def load(self) -> None:
        if self.vocabulary is None:
            self.vocabulary = set((Path(self.weights.local_dir) / "vocab.txt").read_text(encoding="utf-8").split())
            self.loads += 1

    def pair_input(self, query: str, doc: Document) -> Any:
        text = f"{doc.title} {doc.text}".strip()
        return [query.lower(), text.lower()] if self.config.lowercase else [query, text]

    def score_pairs(self, inputs: list[Any]) -> list[Judgment]:
        assert self.vocabulary is not None, "the engine loads the family before computing"
        out = []
        for query, passage in inputs:
            words = {w for w in WORD.findall(query) if w in self.vocabulary}
            matched = len(words & set(WORD.findall(passage)))
            out.append(Judgment("", "", matched / len(words) if words else 0.0, OverlapRecord(matched=matched)))
        return out

    def preview(self, requests: Sequence[RerankRequest]) -> Preview:
        inputs = self.inputs(requests)
        return Preview(f"{inputs[0][0]}  ||  {inputs[0][1]}" if inputs else "",
                       [len(WORD.findall(q)) + len(WORD.findall(d)) for q, d in inputs], None)


register_family("word-overlap", WordOverlapConfig, WordOverlap)
