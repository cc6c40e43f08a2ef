"""Small typed records with the IR field names; qrels and scored docs are ir_measures' own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ir_measures import Qrel, ScoredDoc

__all__ = ["Document", "Judgment", "Qrel", "Run", "ScoredDoc", "sort_trec"]

# A run: query id -> scored documents, best first.
Run = dict[str, list[ScoredDoc]]


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""


@dataclass
class Judgment:
    """What a reranker said about one document of one query.

    `extra` carries what a family records beside the score (reasoning text, token counts,
    finish status); `fallback` names the fallback taken, if any, so that it is counted.
    """

    query_id: str
    doc_id: str
    score: float
    extra: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    cached: bool = False


def sort_trec(docs: list[ScoredDoc]) -> list[ScoredDoc]:
    """Order as trec_eval does: score descending, ties by doc id descending."""
    return sorted(docs, key=lambda d: (d.score, d.doc_id), reverse=True)
