"""A task's records from Hugging Face datasets, in the two layouts the field publishes them in.

- `hf-mteb`, MTEB's retrieval layout (what `mteb`'s loaders read): corpus rows `_id` (or `id`), `title`,
  `text`; query rows `_id` (or `id`), `text`; qrels rows `query-id`,
  `corpus-id`, `score`; instruction rows `query-id`, `instruction`; top_ranked and qrel_diff rows
  `query-id`, `corpus-ids` (a list).
- `hf-bright`, BRIGHT's (xlangai/BRIGHT): example rows `id`, `query`, `gold_ids`, `excluded_ids` (the
  documents to remove from run and qrels alike; `["N/A"]` for none); document rows `id`, `content`.

Ids are read as strings (MTEB casts them so too) and checked as every reader checks them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.data import DataFile
from harness.errors import InputError
from harness.hfdata import HFTable, read_split
from harness.io.jsonfmt import _load_json
from harness.io.text import brief, id_problem, read_head, read_lines
from harness.records import Document, Qrel

Pair = tuple[str, str, str, str, str]
NO_EXCLUSION = "N/A"  # BRIGHT's excluded_ids of a query that excludes nothing


def _id(table: HFTable, value: Any, what: str, row: int) -> str:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    problem = id_problem(text, what) if text is not None else f"{what} {brief(value)} is not a string or integer"
    if problem:
        raise InputError(table.source, problem, key=f"row {row}")
    assert text is not None
    return text


def _ids(table: HFTable, values: Any, what: str, row: int) -> list[str]:
    if not isinstance(values, list):
        raise InputError(table.source, f"expected a list of {what}s, found {brief(values)}", key=f"row {row}")
    return [_id(table, v, what, row) for v in values]


def _id_column(table: HFTable) -> str:
    return "_id" if "_id" in table.columns else "id"


def read_queries(file: DataFile, what: str) -> tuple[dict[str, str], HFTable]:
    """Query id -> text (an instruction, in its own config, is joined by harness.taskdata)."""
    if file.format == "hf-bright":
        table = read_split(file, what, ["id", "query"])
        return {_id(table, r["id"], "query id", i): str(r["query"]) for i, r in enumerate(table.rows())}, table
    table = read_split(file, what, [], ["_id", "id", "text"])
    key = _id_column(table)
    if key not in table.columns or "text" not in table.columns:
        raise InputError(table.source, "expected query rows with '_id' (or 'id') and 'text'")
    return {_id(table, r[key], "query id", i): str(r["text"]) for i, r in enumerate(table.rows())}, table


def read_corpus(file: DataFile, what: str) -> tuple[dict[str, Document], HFTable]:
    if file.format == "hf-bright":
        table = read_split(file, what, ["id", "content"])
        return {(d := _id(table, r["id"], "document id", i)): Document(d, str(r["content"]))
                for i, r in enumerate(table.rows())}, table
    table = read_split(file, what, ["text"], ["_id", "id", "title"])
    key = _id_column(table)
    if key not in table.columns:
        raise InputError(table.source, "expected document rows with '_id' (or 'id'), 'title' and 'text'")
    return {(d := _id(table, r[key], "document id", i)): Document(d, str(r["text"]), str(r.get("title") or ""))
            for i, r in enumerate(table.rows())}, table


def read_qrels(file: DataFile, what: str) -> tuple[list[Qrel], dict[str, set[str]], HFTable]:
    """Judgments, and per query the documents to exclude (BRIGHT's excluded_ids; none in MTEB's layout).

    BRIGHT's judgments are its gold ids (relevance 1) with the excluded ids removed, as its run.py
    removes them from the run and asserts them absent from the ground truth."""
    if file.format == "hf-bright":
        table = read_split(file, what, ["id", "gold_ids"], ["excluded_ids"])
        qrels: list[Qrel] = []
        excluded: dict[str, set[str]] = {}
        for i, r in enumerate(table.rows()):
            qid = _id(table, r["id"], "query id", i)
            drop = {d for d in _ids(table, r.get("excluded_ids") or [], "document id", i) if d != NO_EXCLUSION}
            if drop:
                excluded[qid] = drop
            qrels += [Qrel(qid, d, 1) for d in dict.fromkeys(_ids(table, r["gold_ids"], "document id", i))
                      if d not in drop]
        return qrels, excluded, table
    table = read_split(file, what, ["query-id", "corpus-id", "score"])
    qrels = []
    for i, r in enumerate(table.rows()):
        score = r["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score):
            raise InputError(table.source, f"expected an integer score, found {brief(score)}", key=f"row {i}")
        qrels.append(Qrel(_id(table, r["query-id"], "query id", i), _id(table, r["corpus-id"], "document id", i),
                          int(score)))
    return qrels, {}, table


def read_instructions(file: DataFile, what: str) -> tuple[dict[str, str], HFTable]:
    table = read_split(file, what, ["query-id", "instruction"])
    return {_id(table, r["query-id"], "query id", i): str(r["instruction"] or "")
            for i, r in enumerate(table.rows())}, table


def read_id_lists(file: DataFile, what: str) -> tuple[dict[str, list[str]], HFTable]:
    """query id -> document ids: MTEB's top_ranked (candidates, in order) and qrel_diff (changed documents)."""
    table = read_split(file, what, ["query-id", "corpus-ids"])
    return {_id(table, r["query-id"], "query id", i): _ids(table, r["corpus-ids"], "document id", i)
            for i, r in enumerate(table.rows())}, table


def nevir_pairs(qrels: list[Qrel], source: str) -> list[Pair]:
    """NevIR's pairs from MTEB's ids, as MTEB's paired_accuracy reads them: queries `<key>_q1` and
    `<key>_q2`, each with its own relevant document."""
    relevant: dict[str, list[str]] = {}
    for q in qrels:
        if q.relevance > 0:
            relevant.setdefault(q.query_id, []).append(q.doc_id)
    pairs = []
    for key in sorted({qid.split("_")[0] for qid in relevant}):
        q1, q2 = f"{key}_q1", f"{key}_q2"
        docs = [relevant.get(q1, []), relevant.get(q2, [])]
        if any(len(d) != 1 for d in docs):
            raise InputError(source, f"pair {key!r}: expected queries {q1!r} and {q2!r} with one relevant document "
                             f"each (MTEB's NevIR ids), found {docs[0]} and {docs[1]}")
        pairs.append((key, q1, q2, docs[0][0], docs[1][0]))
    if not pairs:
        raise InputError(source, "no NevIR pairs: expected queries '<key>_q1' and '<key>_q2'")
    return pairs


def read_reasoning_queries(path: Path, notes: list[str] | None = None) -> dict[str, str]:
    """Queries rewritten by a model (BRIGHT's GPT-4 reasoning, a user's GPT-4o chains of thought), as
    BRIGHT's run.py takes them with --input_file: a JSON list of examples with `id` and `query`, or the
    same objects one per line."""
    head = read_head(path, "queries").lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        rows = _load_json(path, notes, "queries")
        where = [(f"[{i}]", r) for i, r in enumerate(rows)]
    else:
        where = []
        for number, line in read_lines(path, "queries", notes):
            try:
                where.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg})", line=number) from exc
    out: dict[str, str] = {}
    for key, row in where:
        if not isinstance(row, Mapping) or not isinstance(row.get("query"), str) or "id" not in row:
            raise InputError(path, "expected an object with 'id' and a string 'query'", key=key)
        qid = str(row["id"])
        problem = id_problem(qid, "query id")
        if problem:
            raise InputError(path, problem, key=key)
        out[qid] = row["query"]
    if not out:
        raise InputError(path, "no queries found")
    return out
