"""TREC formats: runs (`qid Q0 docid rank score tag`), qrels (`qid iter docid rel`), TSV topics."""

from __future__ import annotations

import math
from pathlib import Path

from harness.errors import InputError
from harness.io.text import read_lines
from harness.records import Qrel, Run, ScoredDoc, sort_trec


def read_run(path: str | Path) -> Run:
    """Read a TREC run; documents of each query come back best first (trec_eval order)."""
    run: Run = {}
    seen: dict[str, dict[str, int]] = {}
    ranks: dict[str, dict[int, int]] = {}
    for number, line in read_lines(path, "run"):
        cols = line.split()
        if len(cols) != 6:
            raise InputError(
                path,
                f"expected 6 columns 'qid Q0 docid rank score tag', found {len(cols)}",
                line=number,
            )
        qid, _, docid, rank_s, score_s, _ = cols
        try:
            rank = int(rank_s)
        except ValueError:
            raise InputError(path, f"rank {rank_s!r} is not an integer", line=number) from None
        if rank < 0:
            raise InputError(path, f"rank {rank} is negative", line=number)
        try:
            score = float(score_s)
        except ValueError:
            raise InputError(path, f"score {score_s!r} is not a number", line=number) from None
        if math.isnan(score):
            raise InputError(path, "score is NaN", line=number)
        first = seen.setdefault(qid, {}).get(docid)
        if first is not None:
            raise InputError(
                path, f"document {docid!r} appears twice for query {qid!r} (first on line {first})",
                line=number,
            )
        seen[qid][docid] = number
        earlier = ranks.setdefault(qid, {}).get(rank)
        if earlier is not None:
            raise InputError(
                path, f"rank {rank} repeated for query {qid!r} (first on line {earlier})",
                line=number,
            )
        ranks[qid][rank] = number
        run.setdefault(qid, []).append(ScoredDoc(qid, docid, score))
    return {qid: sort_trec(docs) for qid, docs in run.items()}


def write_run(path: str | Path, run: Run, tag: str) -> None:
    """Write a run in TREC format, best first, ranks from 1. Byte-identical for equal runs."""
    lines = []
    for qid in sorted(run):
        for rank, doc in enumerate(sort_trec(run[qid]), start=1):
            lines.append(f"{qid} Q0 {doc.doc_id} {rank} {doc.score!r} {tag}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_qrels(path: str | Path) -> list[Qrel]:
    """Read qrels in TREC (`qid iter docid rel`) or BEIR TSV (`query-id corpus-id score`) form."""
    qrels: list[Qrel] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in read_lines(path, "qrels"):
        cols = line.split()
        if number == 1 and cols[:2] == ["query-id", "corpus-id"]:
            continue  # BEIR header
        if len(cols) == 4:
            qid, _, docid, rel_s = cols
        elif len(cols) == 3:
            qid, docid, rel_s = cols
        else:
            raise InputError(
                path,
                f"expected 4 columns 'qid iter docid relevance' (or 3 in BEIR TSV), found {len(cols)}",
                line=number,
            )
        try:
            rel = int(rel_s)
        except ValueError:
            raise InputError(
                path, f"relevance {rel_s!r} is not an integer", line=number
            ) from None
        first = seen.get((qid, docid))
        if first is not None:
            raise InputError(
                path, f"query {qid!r} judges document {docid!r} twice (first on line {first})",
                line=number,
            )
        seen[(qid, docid)] = number
        qrels.append(Qrel(qid, docid, rel))
    return qrels


def read_topics(path: str | Path) -> dict[str, str]:
    """Read TSV topics `qid<TAB>text`."""
    topics: dict[str, str] = {}
    for number, line in read_lines(path, "topics"):
        qid, sep, text = line.partition("\t")
        qid, text = qid.strip(), text.strip()
        if not sep:
            raise InputError(path, "expected 'qid<TAB>text', found no tab", line=number)
        if not qid:
            raise InputError(path, "query id is empty", line=number)
        if not text:
            raise InputError(path, f"query {qid!r} has empty text", line=number)
        if qid in topics:
            raise InputError(path, f"query id {qid!r} appears twice", line=number)
        topics[qid] = text
    return topics
